"""The live trainer driven by a plain loop: no Qt, no napari."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

import napari_frontier.live.trainer as live
from napari_frontier.data.scribbles import IGNORE, ScribbleDelta, changed_box, union_box
from napari_frontier.learning import training_data
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.sampling import PatchSampler
from napari_frontier.live.trainer import (
    Failed,
    LiveTrainer,
    OverlayDelta,
    SlicePredictor,
    Stop,
    Stopped,
    Tick,
    View,
)
from napari_frontier.segmenter import Segmenter

SMALL = dict(width=8, depth=1)


def _segmenter(**train):
    return Segmenter(
        train_config=TrainConfig(threads=1, seed=0, update_interval=0.05, **train),
        model_config=SMALL,
    )


def _drive(trainer, on_event, limit=2000):
    """Run the trainer; ``on_event(event, events)`` may send messages. Returns all events."""
    events = []
    for event in trainer.run():
        events.append(event)
        on_event(event, events)
        assert len(events) < limit, "the trainer did not stop"
    return events


class _SpySampler(PatchSampler):
    made: ClassVar[list] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _SpySampler.made.append(self)


@pytest.fixture
def spy(monkeypatch):
    _SpySampler.made = []
    monkeypatch.setattr(training_data, "PatchSampler", _SpySampler)
    return _SpySampler.made


# -- small pieces -------------------------------------------------------------------
def test_changed_box_and_union():
    a = np.zeros((3, 50, 60), np.uint8)
    b = a.copy()
    assert changed_box(a, b) is None
    b[1, 10:12, 20:25] = 1
    b[2, 30, 5] = 2
    assert changed_box(a, b, chunk=100) == (slice(1, 3), slice(10, 31), slice(5, 25))
    assert changed_box(a, b) == changed_box(a, b, chunk=10**9)
    box = union_box((slice(0, 2), slice(5, 9)), (slice(1, 4), slice(0, 6)))
    assert box == (slice(0, 4), slice(0, 9)) and union_box(None, box) == box
    d = ScribbleDelta.of(b, (slice(1, 2), slice(10, 12), slice(20, 25)), version=3)
    assert d.start == (1, 10, 20) and d.region == (slice(1, 2), slice(10, 12), slice(20, 25))
    assert not np.shares_memory(d.labels, b) and (d.labels == 1).all()


def test_sampler_region_update_equals_whole_update():
    rng = np.random.default_rng(0)
    x = rng.random((2, 40, 50)).astype(np.float32)
    t = np.full((40, 50), IGNORE, np.int64)
    t[5:8, 5:40] = 0
    t[30:33, 5:40] = 1
    a = PatchSampler([x], [t.copy()], 2, 64, np.random.default_rng(1))  # padded: 64 > 40
    b = PatchSampler([x], [t.copy()], 2, 64, np.random.default_rng(1))
    new = t.copy()
    new[10:20, 10:20] = 1
    new[5:8, 5:12] = IGNORE  # part of a stroke erased
    a.update_region(0, slice(5, 20), slice(5, 20), new[5:20, 5:20])
    b.set_targets(0, new)
    np.testing.assert_array_equal(a._targets[0], b._targets[0])
    for ca, cb in zip(a._coords[0], b._coords[0], strict=True):
        assert sorted(map(tuple, ca)) == sorted(map(tuple, cb))
    np.testing.assert_array_equal(a.class_counts(), b.class_counts())
    np.testing.assert_array_equal(a.targets_of(0, slice(10, 20), slice(10, 20)), 1)


# -- the trainer ------------------------------------------------------------------
def test_a_stroke_sent_as_a_delta_is_trained_on(disk_image, spy):
    image, scribbles, _ = disk_image
    seg = _segmenter(holdout_fraction=0.0)
    trainer = LiveTrainer(seg, image, scribbles, predict_interval=0.05)
    stroke = np.full((3, 12), 2, np.uint8)  # "is not" in the top left corner
    state = {}

    def on_event(event, events):
        if isinstance(event, Tick) and "sent" not in state:
            trainer.send(ScribbleDelta((5, 5), stroke, version=7))
            state["sent"] = True
        if isinstance(event, Tick) and event.scribbles_version == 7 and "seen" not in state:
            state["seen"] = event.step
            sampler = spy[0]
            # the training sampler has the stroke, as targets and as coordinates
            np.testing.assert_array_equal(sampler.targets_of(0, slice(5, 8), slice(5, 17)), 1)
            coords = {tuple(c) for c in sampler._coords[0][1]}
            oy, ox = sampler._offset(0)
            assert (5 + oy, 5 + ox) in coords and (7 + oy, 16 + ox) in coords
        if isinstance(event, OverlayDelta) and event.scribbles_version == 7:
            state["overlay"] = True
        if "overlay" in state and isinstance(event, Tick) and event.step >= state["seen"] + 3:
            trainer.send(Stop())

    events = _drive(trainer, on_event)
    assert "seen" in state
    assert isinstance(events[-1], Stopped) and not any(isinstance(e, Failed) for e in events)
    assert (trainer.scribbles[5:8, 5:17] == 2).all()  # the trainer's own copy follows
    assert seg.step > state["seen"]  # and it went on training with the stroke


def test_the_first_overlay_after_a_stroke_shows_where_it_was_painted(disk_image, monkeypatch):
    """New strokes: the place painted is predicted first, then the whole view again."""
    monkeypatch.setattr(live, "FOCUS_MARGIN", 6)
    image, scribbles, _ = disk_image
    trainer = LiveTrainer(_segmenter(), image, scribbles, predict_interval=0.02)
    stroke = np.full((3, 12), 2, np.uint8)
    after = []

    def on_event(event, events):
        if not isinstance(event, OverlayDelta) or event.final:
            return
        if event.complete and not trainer._deltas and not after and trainer.version == 0:
            trainer.send(ScribbleDelta((70, 60), stroke, version=1))
        elif event.scribbles_version == 1:
            after.append(event.region)
            if len(after) == 2:
                trainer.send(Stop(final_prediction=False))

    _drive(trainer, on_event)
    # the stroke's box (70..73, 60..72) grown by 6 pixels, and the frontier's rim
    assert after[0] == (63, 80, 53, 79)
    assert after[1] == (0, 96, 0, 96)  # then the whole (small) slice again


def test_erasing_a_whole_class_keeps_the_previous_scribbles(disk_image, spy):
    image, scribbles, _ = disk_image
    seg = _segmenter()
    trainer = LiveTrainer(seg, image, scribbles)
    no_is_not = np.where(scribbles == 2, 0, scribbles).astype(np.uint8)
    state = {"n": 0}
    messages = []

    def on_event(event, events):
        if not isinstance(event, Tick):
            return
        state["n"] += 1
        messages.append(event.message)
        if state["n"] == 1:  # whole-array delta without any "is not"
            trainer.send(ScribbleDelta((0, 0), no_is_not, version=1))
        elif state["n"] == 3:  # wrong shape: refused with a message
            trainer.send(ScribbleDelta((0, 0), np.zeros((10, 200), np.uint8), version=2))
        elif state["n"] == 5:  # the class is painted again: everything pending goes in
            trainer.send(ScribbleDelta((0, 0), np.full((2, 2), 2, np.uint8), version=3))
        elif event.scribbles_version == 3:
            trainer.send(Stop(final_prediction=False))

    events = _drive(trainer, on_event)
    assert any("is not" in m and "kept the previous" in m for m in messages)
    assert any("shape" in m for m in messages)
    ticks = [e for e in events if isinstance(e, Tick)]
    assert ticks[-1].scribbles_version == 3 and all(t.scribbles_version != 1 for t in ticks)
    # After the pending erase went in, only the new corner is "is not".
    t = spy[0]._targets[0]
    oy, ox = spy[0]._offset(0)
    assert set(map(tuple, spy[0]._coords[0][1] - (oy, ox))) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert t.shape[0] >= 96
    assert not any(isinstance(e, OverlayDelta) and e.final for e in events)


def test_view_changes_what_is_predicted(disk_image, monkeypatch):
    monkeypatch.setattr(live, "MAX_LIVE_PIXELS", 40 * 40)
    image, scribbles, _ = disk_image
    trainer = LiveTrainer(
        _segmenter(), image, scribbles, view=View((), (0, 30, 0, 30)), predict_interval=0.02
    )
    regions = []

    def on_event(event, events):
        if isinstance(event, OverlayDelta) and not event.final:
            regions.append(event.region)
            assert event.probabilities.shape[1:] == event.valid.shape == event.frontier.shape
            r0, r1, c0, c1 = event.region
            assert event.uncertainty.shape == (r1 - r0, c1 - c0)
            if len(regions) == 1:
                trainer.send(View((), (60, 90, 50, 80)))
            elif r0 >= 59:
                trainer.send(Stop())

    events = _drive(trainer, on_event)
    assert regions[0] == (0, 31, 0, 31)  # the view, and its 1-pixel rim
    assert regions[-1] == (59, 91, 49, 81)
    final = events[-2]
    assert isinstance(final, OverlayDelta) and final.final and final.complete
    assert final.region == (0, 96, 0, 96) and np.isfinite(final.p_is).all()


def test_view_of_another_slice_of_a_stack():
    rng = np.random.default_rng(0)
    image = rng.normal(50, 10, (4, 48, 48)).astype(np.float32)
    image[:, 10:30, 10:30] += 100
    scribbles = np.zeros((4, 48, 48), np.uint8)
    scribbles[1, 18:21, 12:28] = 1
    scribbles[1, 40:43, 5:45] = 2
    trainer = LiveTrainer(_segmenter(), image, scribbles, view=View((0,)), predict_interval=0.02)
    seen = []

    def on_event(event, events):
        if isinstance(event, OverlayDelta):
            seen.append(event.index)
            if len(seen) == 1:
                trainer.send(View((3,)))
            elif event.index == (3,) and not trainer.stopping:
                trainer.send(Stop(final_prediction=False))

    _drive(trainer, on_event)
    assert seen[0] == (0,) and seen[-1] == (3,)


def test_stop_ends_cleanly_and_keeps_the_weights(disk_image):
    image, scribbles, _ = disk_image
    seg = _segmenter()
    trainer = LiveTrainer(seg, image, scribbles)

    def on_event(event, events):
        if isinstance(event, Tick) and event.step >= 5:
            trainer.stop(final_prediction=False)

    events = _drive(trainer, on_event)
    assert isinstance(events[-1], Stopped) and events[-1].step == seg.step >= 5
    assert trainer.done.is_set() and not trainer.running.is_set()
    weights = {k: v.clone() for k, v in seg.model.state_dict().items()}
    # The weights stay (and are finite); the next trainer continues from them.
    assert all(torch.isfinite(v).all() for v in weights.values())
    again = LiveTrainer(seg, image, scribbles)
    first = next(iter(again))
    assert isinstance(first, Tick) and first.step > events[-1].step
    again.stop()
    rest = list(again)
    assert isinstance(rest[-1], Stopped)


def test_bad_scribbles_fail_instead_of_raising(disk_image):
    image, scribbles, _ = disk_image
    trainer = LiveTrainer(_segmenter(), image, np.where(scribbles == 2, 0, scribbles))
    events = list(trainer)
    assert [type(e) for e in events] == [Failed, Stopped]
    assert "is not" in str(events[0].error)
    with pytest.raises(TypeError):
        trainer.send("stop")


def test_wait_for_shown_holds_overlays_back(disk_image, monkeypatch):
    monkeypatch.setattr(live, "TRAIN_SHARE", 0.0)  # else overlays may come every tick
    image, scribbles, _ = disk_image
    trainer = LiveTrainer(_segmenter(), image, scribbles, predict_interval=0.0, wait_for_shown=True)
    overlays = []

    def on_event(event, events):
        if isinstance(event, OverlayDelta):
            overlays.append(sum(isinstance(e, Tick) for e in events))
        ticks = sum(isinstance(e, Tick) for e in events)
        if ticks == 15 and isinstance(event, Tick):
            trainer.shown(0.0)  # one overlay shown: one more may come
        if len(overlays) == 2 or ticks >= 60:
            trainer.stop(final_prediction=False)

    _drive(trainer, on_event)
    assert len(overlays) == 2 and overlays[0] < 15 < overlays[1] <= 17


def test_region_prediction_matches_whole_slice(disk_image):
    image, scribbles, _ = disk_image
    seg = _segmenter()
    seg.fit(image, scribbles, steps=5)
    whole = SlicePredictor(seg, image).run(final=True)
    predictor = SlicePredictor(seg, image)
    predictor.run()
    part = predictor.run(View((), (20, 50, 30, 60)))
    assert part.region == (19, 51, 29, 61)  # with the frontier's rim
    np.testing.assert_allclose(part.p_is, whole.p_is[19:51, 29:61], atol=1e-4)


def test_large_slices_are_predicted_where_the_user_looks(disk_image, monkeypatch):
    monkeypatch.setattr(live, "MAX_LIVE_PIXELS", 40 * 40)
    image, scribbles, _ = disk_image
    seg = _segmenter()
    seg.fit(image, scribbles, steps=5)
    predictor = SlicePredictor(seg, image)
    delta = predictor.run(View((), (0, 96, 0, 96)))
    r0, r1, c0, c1 = delta.region
    assert (r1 - r0 - 2) * (c1 - c0 - 2) <= 40 * 40 and not delta.complete
    assert abs((r0 + r1) / 2 - 48) <= 1 and abs((c0 + c1) / 2 - 48) <= 1  # around the centre
    outside = np.ones((96, 96), bool)
    outside[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1] = False
    assert np.isnan(predictor.probs[0][outside]).all()
    beyond = np.ones((96, 96), bool)
    beyond[r0:r1, c0:c1] = False  # no false frontier along the edge of the predicted part
    assert not predictor.frontier[beyond].any()
    whole = predictor.run(final=True)
    assert whole.complete and np.isfinite(whole.p_is).all()


def test_overlays_carry_a_convergence_signal(disk_image):
    image, scribbles, _ = disk_image
    trainer = LiveTrainer(
        _segmenter(), image, scribbles, view=View((), (0, 96, 0, 96)), predict_interval=0.02
    )
    seen = []

    def on_event(event, events):
        if isinstance(event, OverlayDelta) and not event.final:
            seen.append(event.stability)
            if len(seen) == 4:
                trainer.send(Stop())

    _drive(trainer, on_event)
    assert seen[0].changed is None  # a new region: nothing to compare with yet
    for s in seen[1:]:
        assert 0.0 <= s.changed <= 1.0
        assert "changed" in s.describe()


def test_views_of_many_sizes_reuse_a_few_input_shapes(disk_image):
    """The CPU backend keeps compiled kernels per input shape: a session of
    pans and zooms (every view a different size) must not feed it a new
    shape each time, or memory grows with every new view."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (700, 700)).astype(np.float32)
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[100:103, 50:300] = 1
    scribbles[500:503, 50:300] = 2
    seg = _segmenter()
    seg.fit(image, scribbles, steps=2)
    shapes = set()
    hook = seg.predict_model.register_forward_pre_hook(
        lambda module, args: shapes.add(tuple(args[0].shape))
    )
    predictor = SlicePredictor(seg, image)
    predictor.run(final=True)
    try:
        for _ in range(60):
            r0, c0 = rng.integers(0, 300, 2)
            h, w = rng.integers(40, 400, 2)
            delta = predictor.run(View((), (r0, r0 + h, c0, c0 + w)))
            assert np.isfinite(delta.p_is).all()
    finally:
        hook.remove()
    assert len(shapes) <= 8, sorted(shapes)
