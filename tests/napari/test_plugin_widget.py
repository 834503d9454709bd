"""The dock widget end to end, its timing, and how it fails."""

from __future__ import annotations

import time

import numpy as np
import pytest
from napari.layers import Image, Labels
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_frontier.data.io import read_image

pytestmark = pytest.mark.gui

TIMEOUT = 30_000  # ms; generous for slow CI machines


def _errors_since(n: int) -> list[str]:
    return [
        str(r.message)
        for r in notification_manager.records[n:]
        if r.severity == NotificationSeverity.ERROR
    ]


def _wait_overlays(qtbot, widget, n: int) -> None:
    target = widget.session.overlay_count + n
    qtbot.waitUntil(lambda: widget.session.overlay_count >= target, timeout=TIMEOUT)


def _stop(qtbot, widget) -> None:
    widget.stop_button.click()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


def _answer_file_dialogs(monkeypatch, path) -> None:
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), ""))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))


def test_end_to_end(trainer, qtbot, tmp_path, monkeypatch):
    viewer, widget = trainer
    scribbles = viewer.layers["scribbles"]
    assert isinstance(viewer.layers["nuclei"], Image) and isinstance(scribbles, Labels)
    assert widget.image_picker.layer() is viewer.layers["nuclei"]
    assert widget.scribbles_picker.layer() is scribbles
    viewer.layers.selection.active = scribbles

    t0 = time.perf_counter()
    widget.train_button.click()
    assert widget.is_training and not widget.train_button.isEnabled()
    _wait_overlays(qtbot, widget, 1)
    first = time.perf_counter() - t0
    frontier = viewer.layers["frontier"]
    _wait_overlays(qtbot, widget, 1)
    print(f"\nTrain -> first overlay: {first:.2f} s")

    prediction, uncertainty = viewer.layers["prediction"], viewer.layers["uncertainty"]
    assert isinstance(prediction, Image) and isinstance(frontier, Image)
    assert prediction.data.shape == scribbles.data.shape == frontier.data.shape
    assert not uncertainty.visible and prediction.visible
    assert frontier.data.sum() > 0
    # The frontier raster marks where P("is") crosses 0.5 (on the "is" side);
    # the layers show uint8 (P("is") x 255).
    assert prediction.data.dtype == np.uint8 and tuple(prediction.contrast_limits) == (0, 255)
    assert (prediction.data[frontier.data > 0] >= 128).all()
    p_is = widget.session.prediction.probabilities[0]
    np.testing.assert_allclose(prediction.data, np.nan_to_num(p_is) * 255, atol=0.51)
    np.testing.assert_allclose(frontier.colormap.colors[-1], [1.0, 0.9, 0.0, 1.0], atol=0.01)
    # Overlays sit below the strokes and painting stays on the scribbles layer.
    assert viewer.layers.index(prediction) < viewer.layers.index(scribbles)
    assert viewer.layers.selection.active is scribbles

    # A new "is not" stroke, painted the way napari's brush does it.
    received = widget.session.scribbles_received
    scribbles.brush_size = 6
    for x in range(20, 60, 2):
        scribbles.paint((500, x), 2, refresh=False)
    scribbles.refresh()
    qtbot.waitUntil(lambda: widget.session.scribbles_received > received, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: bool(widget.session.stroke_latencies), timeout=TIMEOUT)
    print(f"new stroke -> overlay reflecting it: {widget.session.stroke_latencies[0]:.2f} s")
    # Undo emits no paint event, only a refresh: the trainer gets it too.
    received = widget.session.scribbles_received
    before_undo = scribbles.data.copy()
    scribbles.undo()  # the last dab of the stroke
    assert not np.array_equal(before_undo, scribbles.data)
    qtbot.waitUntil(lambda: widget.session.scribbles_received > received, timeout=TIMEOUT)

    _stop(qtbot, widget)
    assert widget.train_button.isEnabled() and not widget.stop_button.isEnabled()
    steps = widget.session.history[-1].step
    assert steps > 0

    # Export: the mask of the current prediction, read back.
    mask_path = widget.export_mask(tmp_path / "mask.tif", "binary")
    mask = read_image(mask_path)
    np.testing.assert_array_equal(mask, widget.session.prediction.mask("binary"))
    assert set(np.unique(mask)) <= {0, 127, 255} and (mask == 255).any()
    labels = read_image(widget.export_mask(tmp_path / "labels.png", "labels"))
    assert set(np.unique(labels)) <= {0, 1, 2}

    # The buttons, with their file dialogs answered.
    _answer_file_dialogs(monkeypatch, tmp_path / "button.npy")
    widget.export_button.click()
    np.testing.assert_array_equal(np.load(tmp_path / "button.npy"), mask)

    # The frontier as vectors: GeoJSON read back and rasterised gives the mask;
    # "Frontier as shapes" adds an editable Shapes layer of the same rings.
    import json

    from skimage.draw import polygon as fill

    _answer_file_dialogs(monkeypatch, tmp_path / "frontier.geojson")
    widget.frontier_button.click()
    doc = json.loads((tmp_path / "frontier.geojson").read_text())
    # A two-class model exports its "is" objects only (no "is not" background).
    assert doc["features"] and {f["properties"]["class"] for f in doc["features"]} == {1}
    raster = np.zeros(mask.shape, bool)
    for feature in doc["features"]:
        if feature["properties"]["class"] != 1:
            continue
        for i, ring in enumerate(feature["geometry"]["coordinates"]):
            xy = np.asarray(ring) - 0.5  # pixel corners -> pixel centres
            rr, cc = fill(xy[:, 1], xy[:, 0], mask.shape)
            raster[rr, cc] = i == 0  # exterior fills, holes empty
    is_mask = mask == 255
    iou = (raster & is_mask).sum() / (raster | is_mask).sum()
    assert iou > 0.97, iou
    n = len(viewer.layers)
    widget.shapes_button.click()
    assert len(viewer.layers) == n + 1
    shapes = viewer.layers[-1]
    assert shapes._type_string == "shapes" and len(shapes.data) >= len(doc["features"])
    assert set(shapes.features["class"]) == {1}

    # Save, reset, load: the same prediction comes back.
    before = widget.session.prediction.probabilities.copy()
    _answer_file_dialogs(monkeypatch, tmp_path / "model.pt")
    widget.save_button.click()
    widget.reset_button.click()
    assert "prediction" not in viewer.layers
    widget.load_button.click()
    qtbot.waitUntil(lambda: widget.session.prediction is not None, timeout=TIMEOUT)
    np.testing.assert_allclose(widget.session.prediction.probabilities, before, atol=1e-5)
    qtbot.waitUntil(lambda: not widget.session.is_busy, timeout=TIMEOUT)
    assert "prediction" in viewer.layers

    # Apply to another image layer: a mask layer appears.
    viewer.add_image(viewer.layers["nuclei"].data[:200, :300], name="other")
    widget.apply_to("other")
    qtbot.waitUntil(lambda: "other mask" in viewer.layers, timeout=TIMEOUT)
    assert viewer.layers["other mask"].data.shape == (200, 300)
    qtbot.waitUntil(lambda: not widget.session.is_busy, timeout=TIMEOUT)

    # Suggest where to paint: the camera moves to an unpainted uncertain spot.
    where = widget.suggest()
    assert where is not None
    assert scribbles.data[where] == 0
    from napari_frontier._napari.overlays import camera as _camera

    np.testing.assert_allclose(_camera(viewer).center[-2:], where, atol=1)


def test_event_loop_stays_responsive(trainer, qtbot):
    """A 10 ms timer keeps ticking while training and overlays run (figure printed)."""
    from qtpy.QtCore import QTimer

    _, widget = trainer
    ticks = [time.perf_counter()]
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    qtbot.wait(100)
    t_click = time.perf_counter()
    widget.start()  # creates the overlay layers, then starts the worker
    t_started = time.perf_counter()
    _wait_overlays(qtbot, widget, 4)
    timer.stop()
    _stop(qtbot, widget)
    gaps = np.diff(ticks)
    after = gaps[np.asarray(ticks[:-1]) >= t_started]
    print(
        f"\nevent loop while training: longest stall {gaps.max() * 1000:.0f} ms "
        f"(Train click itself {1000 * (t_started - t_click):.0f} ms; longest after it "
        f"{after.max() * 1000:.0f} ms; median tick {np.median(gaps) * 1000:.0f} ms; "
        f"{len(gaps)} ticks)"
    )
    assert gaps.max() < 1.0


def test_missing_is_not_stroke_shows_error_and_recovers(trainer, qtbot):
    viewer, widget = trainer
    scribbles = viewer.layers["scribbles"]
    scribbles.data = np.where(scribbles.data == 2, 0, scribbles.data).astype(scribbles.data.dtype)
    n = len(notification_manager.records)
    widget._on_train()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    errors = _errors_since(n)
    assert errors and "is not" in errors[-1]
    assert widget.train_button.isEnabled()
    # Painting the missing class makes training possible again.
    scribbles.paint((500, 30), 2)
    widget.start()
    _wait_overlays(qtbot, widget, 1)
    _stop(qtbot, widget)


def test_removing_image_layer_stops_training(trainer, qtbot):
    viewer, widget = trainer
    widget.start()
    qtbot.waitUntil(lambda: bool(widget.session.history), timeout=TIMEOUT)
    viewer.layers.remove("nuclei")
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    assert widget.train_button.isEnabled()
    assert widget.session.trainer is None


def test_closing_viewer_stops_training(trainer, qtbot):
    viewer, widget = trainer
    widget.start()
    qtbot.waitUntil(lambda: bool(widget.session.history), timeout=TIMEOUT)
    from qtpy.QtCore import QThreadPool

    trainer = widget.session.trainer
    viewer.close()  # napari also cancels (quits) running workers here
    assert trainer.stopping
    assert QThreadPool.globalInstance().waitForDone(10_000)
    assert not trainer.running.is_set()
    qtbot.waitUntil(lambda: widget.session.closed, timeout=5000)  # widget destroyed


def test_unsupported_image_gives_clear_message(make_napari_viewer, qtbot, monkeypatch):
    from napari_frontier._napari import layers as L

    monkeypatch.setattr(L, "MAX_LEVEL0_PIXELS", 16 * 16)  # stacks are fine; huge pyramids not
    viewer = make_napari_viewer()
    base = np.zeros((32, 32), np.float32)
    viewer.add_image([base, base[::2, ::2]], name="pyramid", multiscale=True)
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="scribbles")
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    n = len(notification_manager.records)
    widget._on_train()
    assert not widget.is_training
    errors = _errors_since(n)
    assert errors and "multiscale" in errors[-1] and "too large" in errors[-1]


def test_rgb_image_and_new_scribbles_layer(make_napari_viewer, qtbot, disk_image):
    from napari_frontier._napari.widget import KEY_SWAP, KEY_TRAIN

    image, scribbles, _ = disk_image
    viewer = make_napari_viewer()
    rgb = np.stack([image, image * 0.5, 255 - image], axis=-1).clip(0, 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget.session.configure(model_config=dict(width=8, depth=1))
    widget._on_new_scribbles()
    layer = widget.scribbles_picker.layer()
    assert layer.data.shape == (96, 96) and layer.mode == "paint" and layer.selected_label == 1
    assert viewer.layers.selection.active is layer
    from napari.utils.key_bindings import coerce_keybinding

    bound = set(viewer.keymap)
    assert coerce_keybinding(KEY_TRAIN) in bound and coerce_keybinding(KEY_SWAP) in bound
    widget._key_swap()
    assert layer.selected_label == 2
    layer.data = scribbles
    widget._key_toggle()
    assert widget.is_training
    _wait_overlays(qtbot, widget, 1)
    assert viewer.layers["prediction"].data.shape == (96, 96)
    widget._key_toggle()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


def test_open_viewer_with_files(qtbot, tmp_path, disk_image):
    from napari_frontier._napari.app import open_viewer
    from napari_frontier.data.io import write_image

    image, scribbles, _ = disk_image
    write_image(tmp_path / "image.tif", image)
    write_image(tmp_path / "marks.png", scribbles)
    viewer, widget = open_viewer(tmp_path / "image.tif", tmp_path / "marks.png", show=False)
    try:
        assert widget.image_picker.layer() is viewer.layers["image"]
        marks = widget.scribbles_picker.layer()
        np.testing.assert_array_equal(marks.data, scribbles)
        assert viewer.layers.selection.active is marks and marks.mode == "paint"
    finally:
        viewer.close()


def test_overlays_never_overwrite_a_users_layer_of_the_same_name(make_napari_viewer, disk_image):
    from napari_frontier._napari import layers as L

    image, _, _ = disk_image
    viewer = make_napari_viewer()
    img = viewer.add_image(image, name="img")
    mine = viewer.add_image(np.ones((5, 5)), name="prediction")
    created = L.ensure_overlays(viewer, img)
    assert len(created) == 3 and mine not in created
    assert L.find_layer(viewer, L.PREDICTION, Image) is not mine
    assert mine.data.shape == (5, 5)


def test_pickers_follow_the_layer_list_and_settings_apply(make_napari_viewer, qtbot, disk_image):
    from napari_frontier._napari import layers as L

    image, scribbles, _ = disk_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="flat")
    viewer.add_labels(scribbles, name="scribbles")
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    # Overlays exist as soon as an image is chosen; no volume button for 2D.
    assert all(L.find_layer(viewer, role, Image) is not None for role in L.OVERLAYS)
    assert widget.volume_button.isHidden()
    # A stack: chosen, its overlays hold one slice, the volume button shows.
    viewer.add_image(np.zeros((3, 40, 50), np.float32), name="stack")
    widget.set_layers(image="stack")
    assert not widget.volume_button.isHidden()
    assert L.find_layer(viewer, L.PREDICTION, Image).data.shape == (1, 40, 50)
    # Renamed and removed layers show in the picker at once.
    viewer.layers["flat"].name = "renamed"
    assert "renamed" in [ly.name for ly in widget.image_picker.widget.choices]
    widget.image_picker.choose("renamed")
    viewer.layers.remove("stack")
    assert widget.image_picker.layer() is viewer.layers["renamed"]
    with pytest.raises(KeyError):
        widget.image_picker.choose("stack")
    # The settings form: tooltips, and its values reach the session at Train.
    form = widget.settings
    for w in (form.classes, form.patch_size, form.learning_rate, form.device, form.threads):
        assert w.tooltip
    form.patch_size.value = 64
    form.learning_rate.value = 0.001
    assert form.apply(widget.session)
    tc = widget.session.train_config
    assert tc.patch_size == 64 and abs(tc.learning_rate - 0.001) < 1e-9
    form.classes.value = 3
    form.apply(widget.session)
    assert widget.session.n_classes == 3 and widget.session.get_segmenter().n_classes == 3
    assert not form.apply(widget.session)  # nothing changed since
    # The mask format follows the class count (a binary mask would merge classes 2..K).
    widget._sync()
    assert widget.format_box.currentText() == "labels"
    # The Train click only starts the worker: no layer is made then.
    widget.session.configure(model_config=dict(width=8, depth=1))
    form.classes.value = 2
    n = len(viewer.layers)
    widget.start()
    assert widget.is_training and len(viewer.layers) == n
    assert widget.format_box.currentText() == "binary"
    qtbot.waitUntil(lambda: bool(widget.session.history), timeout=TIMEOUT)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
