"""The widget under bad input and faults: a notification, the widget still usable, nothing lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_frontier.data.scribbles import ScribbleDelta
from napari_frontier.learning.config import TrainConfig

SMALL_MODEL = dict(width=8, depth=1)
TEST_TRAIN = TrainConfig(threads=1, seed=0, update_interval=0.2)

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


def _since(n: int, severity=NotificationSeverity.ERROR) -> list[str]:
    return [str(r.message) for r in notification_manager.records[n:] if r.severity == severity]


def _scribbles(h=64, w=64, dtype=np.uint8):
    s = np.zeros((h, w), dtype)
    s[8:14, 8:56], s[40:46, 8:56] = 1, 2
    return s


def _image(h=64, w=64):
    return np.random.default_rng(0).random((h, w)).astype(np.float32)


def _viewer_with(make_napari_viewer, image, scribbles):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(scribbles, name="scribbles")
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    widget.session.configure(train_config=TEST_TRAIN, model_config=SMALL_MODEL)
    return viewer, widget


BAD = [
    ("shape-mismatch", _image(), _scribbles(32, 64), "shape"),
    (
        "value-above-k",
        _image(),
        np.where(_scribbles() == 2, 7, _scribbles()).astype(np.uint8),
        "1..2",
    ),
    ("only-is", _image(), np.where(_scribbles() == 1, 1, 0).astype(np.uint8), '"is not"'),
    ("no-strokes", _image(), np.zeros((64, 64), np.uint8), "no painted pixel"),
    ("all-nan", np.full((64, 64), np.nan, np.float32), _scribbles(), "no valid pixel"),
    ("all-constant", np.full((64, 64), 3.0, np.float32), _scribbles(), "same value"),
    ("one-pixel", np.ones((1, 1), np.float32), np.ones((1, 1), np.uint8), "too small"),
    ("int64-scribbles-huge", _image(), _scribbles(dtype=np.int64) * 2**40, "allowed"),
]


@pytest.mark.parametrize(("name", "image", "scribbles", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_notification_and_widget_stays_usable(
    make_napari_viewer, qtbot, name, image, scribbles, needle
):
    viewer, widget = _viewer_with(make_napari_viewer, image, scribbles)
    n = len(notification_manager.records)
    widget._on_train()  # the button's slot
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    errors = _since(n)
    assert errors and needle in errors[-1], errors
    assert widget.train_button.isEnabled() and widget.save_project_button.isEnabled()
    if name == "only-is":
        # Fixed by the user: training works again in the same widget.
        viewer.layers["scribbles"].data = _scribbles()
        widget.start()
        qtbot.waitUntil(lambda: widget.session.overlay_count > 0, timeout=TIMEOUT)
        widget.stop()
        qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


def _train_until_history(qtbot, widget, n=1):
    widget.start()
    qtbot.waitUntil(lambda: len(widget.session.history) >= n, timeout=TIMEOUT)


class _Faulty:
    """Replaces a running model's forward from the main thread (the worker picks it up)."""

    def __init__(self, seg, kind):
        self.seg, self.kind, self.calls = seg, kind, 0
        self.real = seg.model.forward
        self.good_at_failure = None
        seg.model.forward = self

    def __call__(self, x):
        out = self.real(x)
        if not self.seg.model.training:  # let predictions through
            return out
        self.calls += 1  # training steps only
        if self.kind == "oom" and self.calls > 1:
            return out
        state = self.seg._trainer
        if state is not None and self.good_at_failure is None:
            self.good_at_failure = {k: v.clone() for k, v in state.good_weights.items()}
        if self.kind == "exception":
            raise RuntimeError("injected fault in the training step")
        if self.kind == "nan":
            return out * float("nan")
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")


@pytest.mark.parametrize("kind", ["exception", "nan", "oom"])
def test_training_fault_is_reported_and_last_good_weights_kept(trainer, qtbot, kind):
    _, widget = trainer
    _train_until_history(qtbot, widget)
    seg = widget.session.segmenter
    n = len(notification_manager.records)
    fault = _Faulty(seg, kind)
    if kind == "oom":
        # Retried with a smaller batch: training goes on, the user is told.
        qtbot.waitUntil(
            lambda: any("out of memory" in m for m in _since(n, NotificationSeverity.WARNING)),
            timeout=TIMEOUT,
        )
        steps = widget.session.history[-1].step
        qtbot.waitUntil(lambda: widget.session.history[-1].step > steps + 2, timeout=TIMEOUT)
        assert widget.is_training
        widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    del seg.model.forward
    if kind != "oom":
        errors = _since(n)
        needle = {"exception": "injected fault", "nan": "diverged"}[kind]
        assert errors and needle in errors[-1]
        weights = seg.model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in fault.good_at_failure.items())
    assert all(torch.isfinite(v).all() for v in seg.model.state_dict().values())
    # The viewer and widget are still usable: train again.
    assert widget.train_button.isEnabled()
    count = widget.session.overlay_count
    widget.start()
    qtbot.waitUntil(lambda: widget.session.overlay_count > count, timeout=TIMEOUT)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


def test_removing_scribbles_layer_stops_training(trainer, qtbot):
    viewer, widget = trainer
    _train_until_history(qtbot, widget)
    n = len(notification_manager.records)
    viewer.layers.remove("scribbles")
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    assert not _since(n)
    assert any("removed" in m for m in _since(n, NotificationSeverity.INFO))
    assert widget.train_button.isEnabled() and widget.session.trainer is None


def test_changing_image_shape_stops_training(trainer, qtbot):
    viewer, widget = trainer
    _train_until_history(qtbot, widget)
    n = len(notification_manager.records)
    image = viewer.layers["nuclei"]
    image.data = image.data[:200, :300].copy()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    assert not _since(n)
    assert any("changed shape" in m for m in _since(n, NotificationSeverity.INFO))
    assert widget.train_button.isEnabled()


def test_scribbles_replaced_by_other_shape_keeps_previous(trainer, qtbot):
    viewer, widget = trainer
    _train_until_history(qtbot, widget)
    n = len(notification_manager.records)
    viewer.layers["scribbles"].data = np.zeros((10, 10), np.uint8)
    qtbot.waitUntil(
        lambda: any(
            "kept the previous scribbles" in m for m in _since(n, NotificationSeverity.WARNING)
        ),
        timeout=TIMEOUT,
    )
    assert widget.is_training and not _since(n)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)


def test_continuous_painting_worker_sees_only_consistent_copies(trainer, qtbot):
    viewer, widget = trainer
    layer = viewer.layers["scribbles"]
    _train_until_history(qtbot, widget)
    trainer = widget.session.trainer
    sent = []  # (delta, copy of the layer's box at that moment)
    real_send = trainer.send

    def send(message):
        if isinstance(message, ScribbleDelta):
            assert not np.shares_memory(message.labels, layer.data)  # a copy, never the layer
            np.testing.assert_array_equal(message.labels, layer.data[message.region])
            assert message.labels.size < layer.data.size  # only the box of what changed
            sent.append((message, message.labels.copy()))
        real_send(message)

    trainer.send = send
    layer.brush_size = 3
    rng = np.random.default_rng(0)
    for i in range(200):
        y, x = rng.integers(20, 1000, size=2)
        layer.paint((int(y), int(x)), 1 + i % 2, refresh=False)
        layer.refresh()  # a refresh per dab too, as undo/redo give
        qtbot.wait(400 if i % 40 == 39 else 5)
    session = widget.session

    # nothing left to send, and the trainer took the newest delta
    qtbot.waitUntil(lambda: session.edits.all_received, timeout=TIMEOUT)
    assert session.scribbles_received > 0
    assert widget.is_training and len(sent) >= 5
    versions = [d.version for d, _ in sent]
    assert versions == sorted(set(versions))
    for delta, snapshot in sent:  # painting on never changed what was sent
        np.testing.assert_array_equal(delta.labels, snapshot)
    # The trainer's own copy, built from the deltas alone, is the layer's data.
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    np.testing.assert_array_equal(trainer.scribbles, layer.data)


# -- autosave and projects --------------------------------------------------------------
def test_autosave_and_restore_after_crash(trainer, make_napari_viewer, qtbot, tmp_path):
    viewer, widget = trainer
    widget.autosaver.folder = tmp_path
    widget.autosaver.set_interval(200)
    layer = viewer.layers["scribbles"]
    layer.paint((600, 600), 2)
    _train_until_history(qtbot, widget)
    qtbot.waitUntil(lambda: widget.autosaver.count >= 1, timeout=TIMEOUT)  # during training
    path = widget.autosaver.last_path
    assert path.parent == tmp_path and path.suffix == ".frontier"
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    saved_step = widget.session.segmenter.step
    widget.autosave()  # as on stop; nothing new → the same file
    scribbles = layer.data.copy()

    # "After a crash": a new viewer with the same image; the widget offers to restore.
    viewer2 = make_napari_viewer()
    viewer2.add_image(viewer.layers["nuclei"].data, name="nuclei")
    n = len(notification_manager.records)
    _, w2 = viewer2.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    w2.autosaver.folder = tmp_path
    w2._offer_restore()
    assert w2.restore_button.isEnabled()
    assert any("Restore autosave" in m for m in _since(n, NotificationSeverity.INFO))
    restored = w2.restore_autosave()
    np.testing.assert_array_equal(restored.data, scribbles)
    assert w2.scribbles_picker.layer().name == restored.name
    qtbot.waitUntil(lambda: w2.session.prediction is not None, timeout=TIMEOUT)
    assert w2.session.segmenter.step == saved_step
    qtbot.waitUntil(lambda: not w2.session.is_busy, timeout=TIMEOUT)


def test_save_and_open_project_gives_same_scribbles_and_predictions(
    trainer, make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = trainer
    _train_until_history(qtbot, widget, 3)
    widget.stop()
    qtbot.waitUntil(lambda: not widget.is_training, timeout=TIMEOUT)
    before = widget.session.prediction.probabilities.copy()
    scribbles = viewer.layers["scribbles"].data.copy()
    path = tmp_path / "nuclei.frontier"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(path), ""))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    widget.save_project_button.click()
    assert path.is_file()

    viewer2 = make_napari_viewer()
    _, w2 = viewer2.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    w2.open_project_button.click()
    qtbot.waitUntil(lambda: w2.session.prediction is not None, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not w2.session.is_busy, timeout=TIMEOUT)
    np.testing.assert_array_equal(viewer2.layers["scribbles"].data, scribbles)
    np.testing.assert_array_equal(viewer2.layers["nuclei"].data, viewer.layers["nuclei"].data)
    np.testing.assert_allclose(w2.session.prediction.probabilities, before, atol=1e-6)
    assert w2.image_picker.layer().name == "nuclei"
    # ... and training continues from the project's model.
    count = w2.session.overlay_count
    w2.start()
    qtbot.waitUntil(lambda: w2.session.overlay_count > count, timeout=TIMEOUT)
    w2.stop()
    qtbot.waitUntil(lambda: not w2.is_training, timeout=TIMEOUT)


def test_open_broken_project_is_a_notification(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    (tmp_path / "bad.frontier").write_bytes(b"not a zip")
    monkeypatch.setattr(
        QFileDialog, "getOpenFileName", lambda *a, **k: (str(tmp_path / "bad.frontier"), "")
    )
    n = len(notification_manager.records)
    widget.open_project_button.click()
    assert any("not a readable" in m for m in _since(n))
    assert len(viewer.layers) == 0 and widget.open_project_button.isEnabled()


def test_failed_background_job_is_one_notification_and_widget_stays_usable(
    make_napari_viewer, qtbot, monkeypatch
):
    """A job's error comes back through the worker's ``errored`` signal: one notification.

    A RuntimeError raised in a generator job (predict volume) too, which
    superqt would otherwise drop without a signal.
    """
    from napari_frontier._napari.jobs import warmed_up

    viewer, widget = _viewer_with(make_napari_viewer, _image(), _scribbles())
    assert warmed_up.wait(60)  # no torch thread left running at exit
    seg = widget.session.get_segmenter()
    seg.fit(_image(), _scribbles(), steps=2)

    def fails(*args, **kwargs):
        raise RuntimeError("injected fault in a job")

    def fails_later(*args, **kwargs):
        yield from ()
        raise RuntimeError("injected fault in a job")

    monkeypatch.setattr(seg, "predict", fails)
    n = len(notification_manager.records)
    widget.apply_to("img")
    qtbot.waitUntil(lambda: not widget.session.is_busy, timeout=TIMEOUT)
    assert _since(n) == ["napari-frontier: RuntimeError: injected fault in a job"]
    assert "img mask" not in viewer.layers
    assert widget.apply_button.isEnabled() and widget.train_button.isEnabled()

    viewer.add_image(np.stack([_image()] * 4), name="stack")
    widget.set_layers(image="stack")
    monkeypatch.setattr(seg, "predict_slices", fails_later)
    n = len(notification_manager.records)
    with qtbot.waitSignal(widget.session.volume_done, timeout=TIMEOUT):
        widget.predict_volume()
    qtbot.waitUntil(lambda: not widget.session.is_busy, timeout=TIMEOUT)
    assert _since(n) == ["napari-frontier: RuntimeError: injected fault in a job"]
    assert not widget.session.jobs.volume_complete
    assert widget.volume_button.isEnabled() and widget.train_button.isEnabled()
