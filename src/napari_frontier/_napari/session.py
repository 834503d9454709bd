"""One training session: the worker, the layer events, the overlays.

Threads: the worker owns the :class:`~napari_frontier.segmenter.Segmenter`
while it runs (training and prediction happen in that one thread). The main
thread only copies layer data into the worker's :class:`~._loop.Mailbox` and
assigns what the worker yields to layers. Background jobs that also use the
model (apply to another image, preview after loading) never run at the same
time as training.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..errors import FrontierError
from ..training import TrainConfig
from . import layers as L
from ._loop import (
    LoopUpdate,
    Mailbox,
    live_training,
    predict_labels,
    predict_overlay,
    predict_volume,
    start_warm_up,
)

log = logging.getLogger(__name__)

#: Wait this long after the last paint event before sending the scribbles.
DEBOUNCE_MS = 300
#: Training updates kept in ``TrainingSession.history`` (about 4 a second).
MAX_HISTORY = 10_000
#: After training, moving to another slice of a stack predicts it this soon
#: after the slider stops.
SLICE_PREVIEW_MS = 150


def labels_mask(labels: np.ndarray, format: str = "binary") -> np.ndarray:
    """A class map (1..K, 0 = invalid input) as the mask :meth:`Prediction.mask` writes."""
    from ..inference import Prediction

    if format == "labels":
        return labels
    if format != "binary":
        raise ValueError(f"unknown mask format {format!r}; use 'binary' or 'labels'")
    out = np.where(labels == 1, 255, 0).astype(np.uint8)
    out[labels == Prediction.NODATA_LABELS] = Prediction.NODATA_BINARY
    return out


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FrontierError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class TrainingSession:
    """Drives live training for one viewer (main thread object, no widgets).

    Parameters
    ----------
    viewer
        The napari viewer whose layers are read and written.
    train_config
        Training settings; the GUI default uses one torch thread, which was
        steadier beside Qt than two on small machines.
    model_config
        Overrides for the network (``width``, ``depth``, ...).
    """

    #: A :class:`~napari_frontier.training.TrainUpdate` arrived.
    updated = Signal(object)
    #: An :class:`~._loop.Overlay` was assigned to the layers.
    overlay_shown = Signal(object)
    #: Training started (True) or finished (False).
    state_changed = Signal(bool)
    #: A background job (apply, preview) started (True) or ended (False).
    busy_changed = Signal(bool)
    #: "Predict volume" finished: the Labels layer (complete or not).
    volume_done = Signal(object)

    def __init__(self, viewer, train_config=None, model_config=None):
        self.viewer = viewer
        self.train_config = train_config or TrainConfig(threads=1)
        self.model_config = dict(model_config or {})
        self.segmenter = None
        self.prediction = None
        #: False while only part of a large image has been predicted.
        self.prediction_complete = False
        self.image_layer = None
        self.scribbles_layer = None
        self.worker = None
        self.job = None
        self.mailbox: Mailbox | None = None
        self.history: list = []
        self.overlay_count = 0
        self.scribbles_received = 0
        self.first_overlay_seconds: float | None = None
        self.stroke_latencies: list[float] = []
        self._version = 0
        self._dirty_since: float | None = None
        self._last_sent = None
        self._posted: dict[int, float] = {}
        self._started_at = 0.0
        self._placeholders: list = []
        self._overlays_at_start = 0
        self._ignore = False
        self._closed = False
        self._image_shape: tuple = ()
        self._last_warning = ""
        #: Slice of the stack the overlays show (``()`` for a 2D image).
        self.prediction_index: tuple[int, ...] = ()
        #: "Predict volume": the image layer, its class map (1..K, 0 = invalid),
        #: and whether every slice was predicted.
        self.volume: tuple | None = None
        self.volume_complete = False
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._send_scribbles)
        self._slice_timer = QTimer()
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(SLICE_PREVIEW_MS)
        self._slice_timer.timeout.connect(self._preview_slice)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_dims)
        start_warm_up(self.model_config)

    # -- state ------------------------------------------------------------
    @property
    def is_training(self) -> bool:
        return self.worker is not None

    @property
    def is_busy(self) -> bool:
        """True while a job other than training uses the model."""
        return self.job is not None

    def get_segmenter(self):
        """The segmenter (made on first use)."""
        if self.segmenter is None:
            from ..segmenter import Segmenter

            self.segmenter = Segmenter(
                n_classes=2, train_config=self.train_config, model_config=self.model_config
            )
        return self.segmenter

    def _require_idle(self, what: str) -> None:
        if self.is_training:
            raise FrontierError(f"stop training before you {what}")
        if self.is_busy:
            raise FrontierError(f"wait for the running job to finish before you {what}")

    # -- training -----------------------------------------------------------
    def start(self, image_layer, scribbles_layer) -> None:
        """Start training on copies of the two layers' data.

        Raises
        ------
        FrontierError
            For a missing layer, an unsupported image, or a busy model.
        """
        if self.is_training:
            return
        self._require_idle("train")
        if image_layer is None or scribbles_layer is None:
            raise FrontierError("choose an image layer and a scribbles layer first")
        image = L.image_data(image_layer)
        scribbles = np.array(scribbles_layer.data, copy=True)
        self.image_layer, self.scribbles_layer = image_layer, scribbles_layer
        self.mailbox = Mailbox()
        self._ignore = False
        self._last_warning = ""
        self._posted.clear()
        self._dirty_since = None
        index = L.current_index(self.viewer, image_layer)
        self._placeholders = L.ensure_overlays(self.viewer, image_layer, scribbles_layer, index)
        self._started_at = time.perf_counter()
        self.first_overlay_seconds = None
        self._overlays_at_start = self.overlay_count
        worker = create_worker(
            live_training,
            self.get_segmenter(),
            image,
            scribbles,
            self.mailbox,
            version=self._version,
            index=index,
            _start_thread=False,
        )
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._last_sent = scribbles
        for emitter in self._scribble_events(scribbles_layer):
            emitter.connect(self._on_scribbles_changed)
        self._image_shape = image.shape
        image_layer.events.data.connect(self._on_image_changed)
        worker.start()
        self.state_changed.emit(True)

    def stop(self) -> None:
        """Stop training after one last whole-image prediction (returns at once)."""
        if self.mailbox is not None:
            self.mailbox.stop(final_prediction=True)

    def abort(self) -> None:
        """Stop training now; nothing more is shown."""
        self._ignore = True
        self._timer.stop()
        if self.mailbox is not None:
            self.mailbox.stop(final_prediction=False)

    @staticmethod
    def _scribble_events(layer):
        # paint: a finished brush stroke or fill; data: new array; set_data:
        # a refresh, which is all that undo / redo emit.
        return (layer.events.paint, layer.events.data, layer.events.set_data)

    def _on_scribbles_changed(self, event=None) -> None:
        if self._dirty_since is None:
            self._dirty_since = time.perf_counter()
        self._timer.start()

    def _send_scribbles(self) -> None:
        if self.mailbox is None or self.scribbles_layer is None or self._ignore:
            return
        data = np.array(self.scribbles_layer.data, copy=True)
        dirty_since, self._dirty_since = self._dirty_since, None
        if self._last_sent is not None and np.array_equal(data, self._last_sent):
            return
        self._last_sent = data
        self._version += 1
        self._posted[self._version] = dirty_since or time.perf_counter()
        self.mailbox.post(scribbles=(self._version, data))

    def _post_view(self) -> None:
        layer = self.image_layer
        if self.mailbox is None or layer is None or layer not in self.viewer.layers:
            return
        self.mailbox.post(view=L.view_region(layer), index=L.current_index(self.viewer, layer))

    def _on_dims(self, event=None) -> None:
        """The viewer moved to another slice: the overlays follow it."""
        layer = self.image_layer
        if self._closed or layer is None or not L.lead_shape(layer):
            return
        if self.is_training:
            self._post_view()
        elif self.prediction is not None:
            self._slice_timer.start()

    def _preview_slice(self) -> None:
        layer = self.image_layer
        if self._closed or self.is_training or self.is_busy or layer not in self.viewer.layers:
            return
        seg = self.segmenter
        if seg is None or seg.model is None or self.prediction is None:
            return
        index = L.current_index(self.viewer, layer)
        if index != self.prediction_index:
            self.preview(layer, index, progress=False)

    def _on_yielded(self, update: LoopUpdate) -> None:
        if self._ignore or self._closed:
            return
        if update.error is not None:
            log.debug("training failed", exc_info=update.error)
            show_error(f"napari-frontier: {_describe(update.error)}")
            return
        if update.train is not None:
            self._on_train_update(update.train)
        if update.overlay is not None:
            self._show(update.overlay)

    def _on_train_update(self, upd) -> None:
        self.history.append(upd)
        del self.history[:-MAX_HISTORY]
        if upd.message == "scribbles updated":
            self.scribbles_received += 1
        elif upd.message and upd.message != self._last_warning:
            show_warning(f"napari-frontier: {upd.message}")
        self._last_warning = upd.message or self._last_warning
        self._post_view()
        self.updated.emit(upd)

    def _show(self, overlay) -> None:
        now = time.perf_counter()
        if self.first_overlay_seconds is None:
            self.first_overlay_seconds = now - self._started_at
        for v in [v for v in self._posted if v <= overlay.scribbles_version]:
            self.stroke_latencies.append(now - self._posted.pop(v))
        self.prediction = overlay.prediction
        self.prediction_complete = overlay.complete
        self.prediction_index = overlay.index
        if self.image_layer in self.viewer.layers:
            L.show_overlay(self.viewer, overlay, self.image_layer, self.scribbles_layer)
        if self.mailbox is not None:
            self.mailbox.post(show_seconds=time.perf_counter() - now)
        self.overlay_count += 1
        self.overlay_shown.emit(overlay)

    def _on_finished(self) -> None:
        self._timer.stop()
        if self.overlay_count == self._overlays_at_start and not self._closed:
            # Nothing was shown (e.g. the scribbles were refused): no empty layers left.
            for layer in self._placeholders:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        self._placeholders = []
        if self.scribbles_layer is not None:
            for emitter in self._scribble_events(self.scribbles_layer):
                emitter.disconnect(self._on_scribbles_changed)
        if self.image_layer is not None:
            self.image_layer.events.data.disconnect(self._on_image_changed)
        self._last_sent = None
        self.worker = None
        self.mailbox = None
        if not self._closed:
            self.state_changed.emit(False)

    def _on_image_changed(self, event=None) -> None:
        """The image layer got new data: training on the old copy would mislead."""
        layer = self.image_layer
        if not self.is_training or self._ignore or layer is None:
            return
        if tuple(np.shape(layer.data)) != tuple(self._image_shape):
            self.abort()
            if not self._closed:
                show_info(
                    f'napari-frontier: training stopped because "{layer.name}" changed shape '
                    f"({self._image_shape} to {tuple(np.shape(layer.data))}); "
                    "paint scribbles of the new size and train again"
                )

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if (
            self.is_training
            and not self._ignore
            and layer in (self.image_layer, self.scribbles_layer)
        ):
            self.abort()
            if not self._closed:
                show_info(f'napari-frontier: training stopped because "{layer.name}" was removed')

    # -- model ------------------------------------------------------------
    def reset(self) -> None:
        """Forget the weights and remove the overlay layers."""
        self._require_idle("reset the model")
        if self.segmenter is not None:
            self.segmenter.reset()
        self.prediction = None
        self.volume = None
        self.history.clear()
        for layer in list(self.viewer.layers):
            if layer.metadata.get(L.ROLE_KEY) in L.OVERLAYS:
                self.viewer.layers.remove(layer)

    def configure(self, train_config=None, model_config=None) -> None:
        """New settings; the next training starts from fresh weights."""
        self._require_idle("change settings")
        if train_config is not None:
            self.train_config = train_config
        if model_config is not None:
            self.model_config = dict(model_config)
        self.segmenter = None

    def save(self, path) -> None:
        """Save the model (a checkpoint the CLI reads too)."""
        self._require_idle("save the model")
        if self.segmenter is None or self.segmenter.model is None:
            raise FrontierError("nothing to save yet: train the model first")
        self.segmenter.save(path)

    def load(self, path, preview_layer=None) -> None:
        """Load a checkpoint; predict ``preview_layer`` with it in the background."""
        self._require_idle("load a model")
        from ..segmenter import Segmenter

        seg = Segmenter.load(path, device=self.train_config.device)
        # Keep this session's thread count (the checkpoint has the trainer's).
        seg.train_config = dataclasses.replace(seg.train_config, threads=self.train_config.threads)
        self.segmenter = seg
        self.prediction = None
        if preview_layer is not None:
            self.preview(preview_layer)

    def set_segmenter(self, segmenter, preview_layer=None) -> None:
        """Use a loaded segmenter (e.g. from a project); predict ``preview_layer`` with it."""
        self._require_idle("load a model")
        segmenter.train_config = dataclasses.replace(
            segmenter.train_config, threads=self.train_config.threads
        )
        self.segmenter = segmenter
        self.prediction = None
        if preview_layer is not None:
            self.preview(preview_layer)

    def export_mask(self, path, format: str = "binary"):
        """Write the current prediction as a mask file; returns the path."""
        from ..io import write_image

        if self.image_layer is not None and L.lead_shape(self.image_layer):
            return self._export_volume(path, format)
        if self.prediction is None:
            raise FrontierError("nothing to export yet: train the model (or load one) first")
        if not self.prediction_complete:
            raise FrontierError(
                "only the part of this large image you looked at has been predicted yet; "
                "stop training (the whole image is predicted then) and export again"
            )
        return write_image(path, self.prediction.mask(format))

    def _export_volume(self, path, format: str):
        from ..io import write_image

        layer = self.image_layer
        if Path(path).suffix.lower() not in (".tif", ".tiff", ".npy"):
            raise FrontierError(f"{path}: a volume is written as .tif or .npy")
        if self.volume is None or self.volume[0] is not layer:
            raise FrontierError(
                f'"{layer.name}" is a stack and the live preview covers one slice: '
                'click "Predict volume" first, then export'
            )
        if not self.volume_complete:
            raise FrontierError(
                "the volume prediction was cancelled before every slice was predicted; "
                'click "Predict volume" again'
            )
        return write_image(path, labels_mask(self.volume[1], format), photometric="minisblack")

    # -- background jobs ----------------------------------------------------
    def _run_job(self, func, args, on_result, desc: str, progress: bool = True) -> None:
        self._require_idle(desc)
        job = create_worker(
            func, *args, _start_thread=False, _progress={"desc": desc} if progress else None
        )

        def returned(result):
            if self._closed:
                return
            if isinstance(result, BaseException):
                show_error(f"napari-frontier: {_describe(result)}")
            else:
                on_result(result)

        def finished():
            self.job = None
            if not self._closed:
                self.busy_changed.emit(False)

        job.returned.connect(returned)
        job.finished.connect(finished)
        self.job = job
        job.start()
        self.busy_changed.emit(True)

    def _trained_segmenter(self):
        seg = self.segmenter
        if seg is None or seg.model is None:
            raise FrontierError("train the model (or load one) first")
        return seg

    def preview(self, image_layer, index=None, progress: bool = True) -> None:
        """Predict ``image_layer`` (of a stack: the slice ``index``, default the one in
        view) in the background and show the overlays."""
        seg = self._trained_segmenter()
        image = L.image_data(image_layer)
        if index is None:
            index = L.current_index(self.viewer, image_layer)

        def show(overlay):
            self.image_layer = image_layer
            self.prediction = overlay.prediction
            self.prediction_complete = overlay.complete
            self.prediction_index = overlay.index
            if image_layer in self.viewer.layers:
                L.show_overlay(self.viewer, overlay, image_layer, self.scribbles_layer)
            self.overlay_count += 1
            self.overlay_shown.emit(overlay)

        self._run_job(predict_overlay, (seg, image, index), show, "predict the image", progress)

    def apply_to(self, image_layer) -> None:
        """Predict another image layer in the background; add its mask as a Labels layer."""
        seg = self._trained_segmenter()
        image = L.image_data(image_layer)
        name = f"{image_layer.name} mask"

        def add(labels):
            if image_layer in self.viewer.layers:
                L.add_mask_layer(self.viewer, labels, image_layer, name)

        self._run_job(predict_labels, (seg, image), add, f"apply the model to {image_layer.name}")

    def predict_volume(self, image_layer) -> None:
        """Predict every slice of ``image_layer`` in the background, into a Labels layer.

        The layer (``"<image> prediction"``, the stack's shape) fills slice by
        slice; napari's activity dock shows the progress and can cancel it.
        :meth:`export_mask` then writes the whole volume.
        """
        seg = self._trained_segmenter()
        self._require_idle("predict the volume")
        if image_layer is None:
            raise FrontierError("choose the image to predict")
        image = L.image_data(image_layer)
        lay = seg.layout(image)
        if lay.n_channels != seg.in_channels:
            raise FrontierError(
                f'the model was trained on {seg.in_channels} channel(s) but "{image_layer.name}" '
                f"has {lay.n_channels}"
            )
        labels = np.zeros(lay.scribble_shape, np.uint8)
        name = f"{image_layer.name} prediction"
        layer = L.add_mask_layer(self.viewer, labels, image_layer, name)
        labels = layer.data
        self.volume, self.volume_complete = (image_layer, labels), False
        self.image_layer = image_layer
        state = {"done": 0}
        job = create_worker(
            predict_volume,
            seg,
            image,
            _start_thread=False,
            _progress={"total": lay.n_slices, "desc": f"predict {image_layer.name}"},
        )

        def on_slice(upd):
            if self._closed:
                return
            if isinstance(upd, BaseException):
                show_error(f"napari-frontier: {_describe(upd)}")
                return
            labels[upd.index] = upd.prediction.labels
            state["done"] = upd.done
            if layer in self.viewer.layers:
                layer.refresh()

        def finished():
            self.job = None
            self.volume_complete = state["done"] == lay.n_slices
            if not self._closed:
                self.busy_changed.emit(False)
                self.volume_done.emit(layer)

        job.yielded.connect(on_slice)
        job.finished.connect(finished)
        self.job = job
        job.start()
        self.busy_changed.emit(True)

    # -- teardown -------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop everything and wait (up to ``timeout`` s) for the worker thread."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        self._slice_timer.stop()
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        self.viewer.dims.events.current_step.disconnect(self._on_dims)
        if self.mailbox is not None:
            self.mailbox.wait_idle(timeout)
