"""The plugin's worker loop and suggestion logic, driven without Qt."""

from __future__ import annotations

import numpy as np
import pytest

# Only numpy/torch modules of the plugin package: importable without a display.
from napari_frontier._napari._loop import Mailbox, _Predictor, live_training
from napari_frontier._napari._suggest import suggest_location
from napari_frontier.errors import ScribbleError
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig

SMALL = dict(width=8, depth=1)


def _segmenter():
    return Segmenter(train_config=TrainConfig(threads=1, seed=0), model_config=SMALL)


def _drive(gen, mailbox, until):
    """Run the loop until ``until(updates)`` is true, then stop it; return all updates."""
    updates = []
    for upd in gen:
        updates.append(upd)
        if not mailbox.stopped and until(updates):
            mailbox.stop()
    return updates


def test_loop_trains_predicts_takes_new_scribbles_and_stops(disk_image):
    image, scribbles, truth = disk_image
    seg, box = _segmenter(), Mailbox()
    more = scribbles.copy()
    more[10:14, 10:30] = 2
    posted = []

    def until(updates):
        overlays = [u for u in updates if u.overlay is not None]
        if len(overlays) == 1 and not posted:
            box.post(scribbles=(7, more))
            posted.append(True)
        return any(u.overlay is not None and u.overlay.scribbles_version == 7 for u in updates)

    updates = _drive(live_training(seg, image, scribbles, box, predict_interval=0.1), box, until)
    assert box.done.is_set()
    assert all(u.error is None for u in updates)
    messages = [u.train.message for u in updates if u.train is not None]
    assert "scribbles updated" in messages
    last = updates[-1]
    assert last.final and last.overlay is not None and last.overlay.region == (0, 96, 0, 96)
    p_is = last.overlay.p_is
    assert p_is.shape == truth.shape and np.nanmax(p_is) <= 1.0
    assert last.overlay.uncertainty.shape == truth.shape
    assert all(c.shape[1] == 2 for c in last.overlay.contours())
    # The raster frontier is exactly the "is" side of every 0.5 crossing.
    f = last.overlay.frontier.astype(bool)
    assert f.any() and (p_is[f] >= 0.5).all()
    inside = p_is >= 0.5
    assert (inside[1:] != inside[:-1]).any() and f.sum() < inside.sum()
    assert seg.step > 0


def test_loop_reports_scribble_errors_instead_of_raising(disk_image):
    image, scribbles, _ = disk_image
    box = Mailbox()
    updates = list(live_training(_segmenter(), image, np.where(scribbles == 2, 0, scribbles), box))
    assert len(updates) == 1 and updates[0].final
    assert isinstance(updates[0].error, ScribbleError)
    assert "is not" in str(updates[0].error)
    assert box.done.is_set()


def test_loop_abort_skips_final_prediction(disk_image):
    image, scribbles, _ = disk_image
    box = Mailbox()
    gen = live_training(_segmenter(), image, scribbles, box)
    first = next(gen)
    assert first.train is not None
    box.stop(final_prediction=False)
    rest = list(gen)
    assert rest[-1].final and rest[-1].overlay is None
    assert box.done.is_set()


def test_region_prediction_matches_whole_image(disk_image):
    image, scribbles, _ = disk_image
    seg = _segmenter()
    seg.fit(image, scribbles, steps=5)
    whole = _Predictor(seg, image).run(None, 5, 0).p_is
    predictor = _Predictor(seg, image)
    predictor.run(None, 5, 0)
    predictor.probs[:] = 0.0  # so only the region is fresh
    part = predictor.run((20, 50, 30, 60), 5, 0)
    assert part.region == (20, 50, 30, 60)
    np.testing.assert_allclose(part.p_is[20:50, 30:60], whole[20:50, 30:60], atol=1e-4)
    assert np.all(part.p_is[:20] == 0.0)


@pytest.mark.parametrize("painted", [False, True])
def test_suggest_location_avoids_painted_areas(painted):
    u = np.zeros((100, 100), np.float32)
    u[10:30, 10:30] = 1.0
    u[70:90, 60:80] = 0.8
    scribbles = np.zeros((100, 100), np.uint8)
    if painted:
        scribbles[12:28, 12:28] = 1
    row, col = suggest_location(u, scribbles, window=16)
    expected = (80, 70) if painted else (20, 20)
    assert abs(row - expected[0]) <= 4 and abs(col - expected[1]) <= 4


def test_suggest_location_none_when_certain():
    assert suggest_location(np.zeros((20, 20)), None) is None


def test_large_images_are_predicted_where_the_user_looks(disk_image, monkeypatch):
    import napari_frontier._napari._loop as loop

    monkeypatch.setattr(loop, "MAX_LIVE_PIXELS", 40 * 40)
    image, scribbles, _ = disk_image
    seg = _segmenter()
    seg.fit(image, scribbles, steps=5)
    predictor = _Predictor(seg, image)
    live = predictor.run((0, 96, 0, 96), 5, 0)
    r0, r1, c0, c1 = live.region
    assert (r1 - r0) * (c1 - c0) <= 40 * 40 and not live.complete
    assert abs((r0 + r1) / 2 - 48) <= 1 and abs((c0 + c1) / 2 - 48) <= 1  # around the centre
    outside = np.ones((96, 96), bool)
    outside[r0:r1, c0:c1] = False
    assert np.isnan(live.p_is[outside]).all() and np.isnan(live.uncertainty[outside]).all()
    assert np.isfinite(live.p_is[~outside]).all()
    for c in live.contours():  # no false frontier along the edge of the predicted part
        assert (c[:, 0] >= r0 - 1).all() and (c[:, 0] <= r1).all()
    assert not live.frontier[outside].any()
    whole = predictor.run(None, 5, 0, whole=True)
    assert whole.complete and np.isfinite(whole.p_is).all()
    np.testing.assert_allclose(whole.uncertainty, whole.prediction.uncertainty, atol=1e-6)
