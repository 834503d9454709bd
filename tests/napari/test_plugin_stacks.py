"""Stacks, time series, RGB stacks, lazy and multiscale images in the plugin."""

from __future__ import annotations

import numpy as np
import pytest

from napari_frontier.learning.config import TrainConfig
from napari_frontier.live.trainer import LiveTrainer, OverlayDelta, SlicePredictor, Stop, View
from napari_frontier.segmenter import Segmenter

TIMEOUT = 30_000  # ms
SMALL_MODEL = dict(width=8, depth=1)
TEST_TRAIN = TrainConfig(threads=1, seed=0, update_interval=0.2)


def _stack(n=4, size=64, seed=0):
    """Bright disks on a dark noisy background, one disk per slice at another place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(40, 8, (n, size, size))
    truth = np.zeros((n, size, size), bool)
    for z in range(n):
        cy, cx = 20 + 6 * z, 40 - 5 * z
        truth[z] = (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
    image[truth] += 120
    return image.clip(0, 255).astype(np.uint8), truth


def _strokes(truth, slices=(0, 2)):
    """ "is" strokes inside the disk and "is not" strokes in the background of some slices."""
    s = np.zeros(truth.shape, np.uint8)
    for z in slices:
        ys, xs = np.nonzero(truth[z])
        cy, cx = int(ys.mean()), int(xs.mean())
        s[z, cy - 1 : cy + 2, cx - 6 : cx + 6] = 1
        s[z, 2:5, 2:60] = 2
        s[z, 58:61, 2:60] = 2
    return s


# -- the loop, without Qt -------------------------------------------------------


def test_loop_on_a_stack_predicts_the_slice_it_is_told():
    image, truth = _stack()
    seg = Segmenter(train_config=TrainConfig(threads=1, seed=0), model_config=SMALL_MODEL)
    trainer = LiveTrainer(seg, image, _strokes(truth), view=View((1,)), predict_interval=0.05)
    seen = []
    for event in trainer:
        if isinstance(event, OverlayDelta):
            seen.append(event.index)
            assert event.shape == (64, 64)
            if len(seen) == 1:
                trainer.send(View((3,)))
            elif event.index == (3,) and not trainer.stopping:
                trainer.send(Stop())
            last = event
    assert seen[0] == (1,) and seen[-1] == (3,) and last.final and last.complete


def test_predictor_reads_only_the_slice_of_a_lazy_stack():
    da = pytest.importorskip("dask.array")
    image, truth = _stack()
    seg = Segmenter(train_config=TrainConfig(threads=1, seed=0), model_config=SMALL_MODEL)
    seg.fit(image, _strokes(truth), steps=3)
    eager = SlicePredictor(seg, image, (2,)).run(final=True)
    lazy = SlicePredictor(seg, da.from_array(image, chunks=(1, 32, 32)), (2,)).run()
    assert lazy.index == (2,)
    np.testing.assert_allclose(lazy.p_is, eager.p_is, atol=1e-5)


# -- the widget -------------------------------------------------------------------


def _trainer(make_napari_viewer, image, scribbles, **kwargs):
    from napari_frontier._napari.jobs import warmed_up

    viewer = make_napari_viewer()
    viewer.add_image(image, name="stack", **kwargs)
    viewer.add_labels(scribbles, name="scribbles")
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget.session.configure(train_config=TEST_TRAIN, model_config=SMALL_MODEL)
    widget.set_layers(image="stack", scribbles="scribbles")
    assert warmed_up.wait(60)
    return viewer, widget


def _overlay_of(qtbot, widget, index):
    qtbot.waitUntil(
        lambda: widget.session.overlay_count > 0 and widget.session.prediction_index == index,
        timeout=TIMEOUT,
    )


def _stop(qtbot, widget):
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


@pytest.mark.gui
def test_stack_trains_follows_the_slider_and_predicts_the_volume(
    make_napari_viewer, qtbot, tmp_path
):
    from napari.layers import Image, Labels

    from napari_frontier._napari import layers as L
    from napari_frontier.data.io import read_image

    image, truth = _stack()
    viewer, widget = _trainer(make_napari_viewer, image, _strokes(truth))
    viewer.dims.set_current_step(0, 2)
    widget.train_button.click()
    assert widget.is_training
    _overlay_of(qtbot, widget, (2,))
    prediction = L.find_layer(viewer, L.PREDICTION, Image)
    frontier = L.find_layer(viewer, L.FRONTIER, Image)
    # Overlays hold the slice in view and sit on it.
    assert prediction.data.shape == frontier.data.shape == (1, 64, 64)
    assert prediction.translate[0] == 2

    viewer.dims.set_current_step(0, 1)  # an unpainted slice
    _overlay_of(qtbot, widget, (1,))
    assert prediction.translate[0] == 1 and prediction.data.shape == (1, 64, 64)
    qtbot.waitUntil(lambda: widget.session.history[-1].step >= 30, timeout=TIMEOUT)
    _stop(qtbot, widget)
    assert widget.session.prediction_index == (1,) and widget.session.prediction_complete

    # The live preview covers one slice: exporting a stack needs the volume.
    n = widget.session.overlay_count
    viewer.dims.set_current_step(0, 3)  # after training: the overlays still follow
    qtbot.waitUntil(lambda: widget.session.prediction_index == (3,), timeout=TIMEOUT)
    assert widget.session.overlay_count > n and prediction.translate[0] == 3
    qtbot.waitUntil(lambda: not widget.session.is_busy, timeout=TIMEOUT)
    with pytest.raises(Exception, match="Predict volume"):
        widget.export_mask(tmp_path / "early.tif")

    with qtbot.waitSignal(widget.session.volume_done, timeout=TIMEOUT):
        widget.volume_button.click()
    volume = viewer.layers["stack prediction"]
    assert isinstance(volume, Labels) and volume.data.shape == (4, 64, 64)
    for z in (1, 3):  # unpainted slices: both classes, mostly right
        assert set(np.unique(volume.data[z])) == {1, 2}
    assert ((volume.data == 1) == truth).mean() > 0.8
    assert widget.train_button.isEnabled()

    mask = read_image(widget.export_mask(tmp_path / "volume.tif", "binary"))
    assert mask.shape == (4, 64, 64)
    np.testing.assert_array_equal(mask == 255, volume.data == 1)
    assert widget.autosave() is not None  # stack scribbles autosave too


@pytest.mark.gui
def test_rgb_stack_trains(make_napari_viewer, qtbot):
    image, truth = _stack(n=3, size=48)
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)
    strokes = _strokes(truth, slices=(0,))[:, :48, :48]
    strokes[0, 44:47, 2:46] = 2
    viewer, widget = _trainer(make_napari_viewer, rgb, np.zeros((3, 48, 48), np.uint8), rgb=True)
    viewer.layers["scribbles"].data = strokes
    viewer.dims.set_current_step(0, 0)
    widget.start()
    _overlay_of(qtbot, widget, (0,))
    assert viewer.layers["prediction"].data.shape == (1, 48, 48)
    _stop(qtbot, widget)
    assert widget.session.segmenter.in_channels == 3


@pytest.mark.gui
def test_new_scribbles_layer_of_a_stack(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 32, 40, 3), np.uint8), name="rgb", rgb=True, scale=(2, 1, 1))
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget._on_new_scribbles()
    layer = widget.scribbles_picker.layer()
    assert layer.data.shape == (5, 32, 40)
    np.testing.assert_array_equal(layer.scale, (2, 1, 1))


@pytest.mark.gui
def test_lazy_image_is_not_copied(make_napari_viewer, qtbot):
    da = pytest.importorskip("dask.array")
    from napari_frontier._napari import layers as L

    image, _ = _stack()
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(image, chunks=(1, 64, 64)), name="lazy")
    assert L.image_data(layer) is layer.data
    numpy_layer = viewer.add_image(image, name="eager")
    data = L.image_data(numpy_layer)
    assert isinstance(data, np.ndarray) and data is not image


@pytest.mark.gui
def test_multiscale_uses_level_0_or_says_why_not(make_napari_viewer, qtbot, monkeypatch):
    from napari_frontier._napari import layers as L
    from napari_frontier.errors import ImageError

    base = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    viewer = make_napari_viewer()
    layer = viewer.add_image([base, base[::2, ::2]], name="pyramid", multiscale=True)
    np.testing.assert_array_equal(L.image_data(layer), base)
    assert L.scribble_shape(layer) == (128, 128)
    monkeypatch.setattr(L, "MAX_LEVEL0_PIXELS", 64 * 64)
    with pytest.raises(ImageError, match="multiscale"):
        L.image_data(layer)
