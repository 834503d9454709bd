"""One training session: the worker, the layer events, the overlays.

Threads: while training runs, a :class:`~napari_frontier.live.trainer.LiveTrainer`
in the worker thread owns the model. The main thread sends it typed
messages (a :class:`~napari_frontier.data.scribbles.ScribbleDelta` per edit, the
:class:`~napari_frontier.live.trainer.View`, :class:`~napari_frontier.live.trainer.Stop`)
and writes the :class:`~napari_frontier.live.trainer.OverlayDelta` it yields into
the overlay layers' buffers in place (:class:`~.layers.Overlays`). Background
jobs that also use the model (apply to another image, preview after loading)
never run at the same time as training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import deque
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import QTimer

from ..data.scribbles import ScribbleDelta, changed_box, union_box
from ..errors import FrontierError
from ..learning.config import TrainConfig
from ..live.trainer import Failed, LiveTrainer, OverlayDelta, Stop, Tick, View
from . import layers as L
from ._loop import predict_labels, predict_overlay, predict_volume, start_warm_up

log = logging.getLogger(__name__)

#: After a refresh of the scribbles layer (undo, redo, a script), look for
#: changes this long after the last one (paint events are sent at once).
DEBOUNCE_MS = 300
#: Training updates kept in ``TrainingSession.history`` (about 4 a second).
MAX_HISTORY = 10_000
#: Stroke -> overlay latencies kept in ``TrainingSession.stroke_latencies``.
MAX_LATENCIES = 1000
#: Training settings of the plugin: one torch thread (steadier beside Qt than
#: two on small machines) and updates every 0.1 s, so that a new stroke reaches
#: the samplers, and its overlay the screen, that much sooner; BatchNorm
#: statistics for each live overlay over 4 batches (a quarter of the API's
#: 16, so previews stay cheap; the weights kept at the end get 32).
GUI_TRAIN_CONFIG = TrainConfig(threads=1, update_interval=0.1, bn_recalibration=4)
#: After training, moving to another slice of a stack predicts it this soon
#: after the slider stops.
SLICE_PREVIEW_MS = 150


def labels_mask(labels: np.ndarray, format: str = "binary") -> np.ndarray:
    """A class map (1..K, 0 = invalid input) as the mask :meth:`Prediction.mask` writes."""
    from ..prediction.tiling import Prediction

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


def _paint_box(atoms) -> tuple[slice, ...] | None:
    """Bounding box of the history atoms of one napari paint event."""
    box = None
    for atom in atoms or ():
        key = getattr(atom, "slice_key", None)  # napari's masked paint atom
        if key is not None:
            part = tuple(slice(s.start or 0, s.stop) for s in key)
        else:  # (indices, old values, new values)
            indices = atom[0]
            if not len(indices) or np.size(indices[0]) == 0:
                continue
            part = tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in indices)
        box = union_box(box, part)
    return box


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
    n_classes
        Painted classes of a new model.
    """

    #: A :class:`~napari_frontier.live.trainer.Tick` arrived.
    updated = Signal(object)
    #: An :class:`~napari_frontier.live.trainer.OverlayDelta` was drawn.
    overlay_shown = Signal(object)
    #: Training started (True) or finished (False).
    state_changed = Signal(bool)
    #: A background job (apply, preview) started (True) or ended (False).
    busy_changed = Signal(bool)
    #: "Predict volume" finished: the Labels layer (complete or not).
    volume_done = Signal(object)

    def __init__(self, viewer, train_config=None, model_config=None, n_classes: int = 2):
        self.viewer = viewer
        self.train_config = train_config or GUI_TRAIN_CONFIG
        self.model_config = dict(model_config or {})
        self.n_classes = n_classes
        self.segmenter = None
        self.image_layer = None
        self.scribbles_layer = None
        #: The overlay layers of ``image_layer`` and their buffers.
        self.overlays: L.Overlays | None = None
        self.worker = None
        self.job = None
        self.trainer: LiveTrainer | None = None
        self.history: deque = deque(maxlen=MAX_HISTORY)
        self.overlay_count = 0
        self.scribbles_received = 0
        self.first_overlay_seconds: float | None = None
        self.stroke_latencies: deque[float] = deque(maxlen=MAX_LATENCIES)
        self._version = 0
        self._received_version = 0
        self._mirror: np.ndarray | None = None  # the scribbles as last sent
        self._dirty: tuple[slice, ...] | None = None
        self._posted: dict[int, float] = {}
        self._started_at = 0.0
        self._overlays_at_start = 0
        self._ignore = False
        self._closed = False
        self._image_shape: tuple = ()
        self._last_warning = ""
        self._redraw_pending = False
        self._last_delta: OverlayDelta | None = None
        #: How much the live prediction of the view changes (convergence signal).
        self.stability = None
        self._dirty_since = self._refresh_since = 0.0
        #: "Predict volume": the image layer, its class map (1..K, 0 = invalid),
        #: and whether every slice was predicted.
        self.volume: tuple | None = None
        self.volume_complete = False
        self._send_timer = QTimer()
        self._send_timer.setSingleShot(True)
        self._send_timer.setInterval(0)
        self._send_timer.timeout.connect(self._send_dirty)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._send_changes)
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

    @property
    def prediction(self):
        """The current :class:`~napari_frontier.prediction.tiling.Prediction` of the slice shown.

        Its arrays are the overlay buffers (updated in place), or None.
        """
        o = self.overlays
        if o is None or not o.has_prediction:
            return None
        from ..prediction.tiling import Prediction

        return Prediction(probabilities=o.probabilities, valid=o.valid)

    @property
    def prediction_complete(self) -> bool:
        """False while only part of a large image has been predicted."""
        return self.overlays is not None and self.overlays.complete

    @property
    def prediction_index(self) -> tuple[int, ...]:
        """Slice of the stack the overlays show (``()`` for a 2D image)."""
        o = self.overlays
        return () if o is None or o.index is None else o.index

    def _forget_prediction(self) -> None:
        if self.overlays is not None:
            self.overlays.index = None
            self.overlays.complete = False

    def get_segmenter(self):
        """The segmenter (made on first use)."""
        if self.segmenter is None:
            from ..segmenter import Segmenter

            self.segmenter = Segmenter(
                n_classes=self.n_classes,
                train_config=self.train_config,
                model_config=self.model_config,
            )
        return self.segmenter

    def _require_idle(self, what: str) -> None:
        if self.is_training:
            raise FrontierError(f"stop training before you {what}")
        if self.is_busy:
            raise FrontierError(f"wait for the running job to finish before you {what}")

    # -- overlays -----------------------------------------------------------
    def set_image(self, image_layer, scribbles_layer=None) -> None:
        """Make the overlay layers of ``image_layer`` now, so that Train only starts the worker."""
        if image_layer is None or self._closed or self.is_training:
            return
        self._overlays_for(image_layer, scribbles_layer)

    def _overlays_for(self, image_layer, scribbles_layer=None) -> L.Overlays:
        o = self.overlays
        shape = L.overlay_shape(image_layer)
        if o is None or o.image_layer is not image_layer or o.lead + o.yx != shape:
            o = L.Overlays(self.viewer, image_layer, scribbles_layer, self.n_classes)
            self.overlays = o
        else:
            o.scribbles_layer = scribbles_layer or o.scribbles_layer
            o.attach()
        return o

    def _show(self, delta: OverlayDelta) -> None:
        """Write a delta into the buffers now; redraw once the queued events are handled."""
        o = self.overlays
        if o is None or o.image_layer not in self.viewer.layers:
            return
        o.attach()
        o.write(delta)
        if self.first_overlay_seconds is None:
            self.first_overlay_seconds = time.perf_counter() - self._started_at
        self.overlay_count += 1
        self._last_delta = delta
        if delta.stability is not None:
            self.stability = delta.stability
        if not self._redraw_pending:
            self._redraw_pending = True
            QTimer.singleShot(0, self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        if self._closed or self.overlays is None:
            return
        t0 = time.perf_counter()
        delta = self._last_delta
        self.overlays.redraw(thumbnail=delta.final)
        now = time.perf_counter()
        for v in [v for v in self._posted if v <= delta.scribbles_version]:
            self.stroke_latencies.append(now - self._posted.pop(v))
        if self.trainer is not None:
            self.trainer.shown(now - t0)
        self.overlay_shown.emit(delta)

    # -- training -----------------------------------------------------------
    def start(self, image_layer, scribbles_layer) -> None:
        """Start training on the two layers (their data are copied).

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
        image = L.image_data(image_layer, copy=False)  # copied in the worker
        self.image_layer, self.scribbles_layer = image_layer, scribbles_layer
        self._overlays_for(image_layer, scribbles_layer)
        self._ignore = False
        self._last_warning = ""
        self._posted.clear()
        self._dirty = None
        self._started_at = time.perf_counter()
        self.first_overlay_seconds = None
        self._overlays_at_start = self.overlay_count
        # The one copy made here: the scribbles as last sent. The trainer
        # copies it again in its own thread (deltas sent meanwhile rewrite
        # their boxes of that copy, so a copy taken mid-write is still right).
        self._mirror = np.array(scribbles_layer.data, copy=True)
        trainer = LiveTrainer(
            self.get_segmenter(),
            image,
            self._mirror,
            view=self._view(),
            version=self._version,
            wait_for_shown=True,
            copy_image=True,
        )
        self._received_version = self._version
        worker = create_worker(trainer.run, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        self.worker, self.trainer = worker, trainer
        scribbles_layer.events.paint.connect(self._on_paint)
        scribbles_layer.events.data.connect(self._on_scribbles_data)
        scribbles_layer.events.set_data.connect(self._on_scribbles_refresh)
        self._image_shape = tuple(np.shape(image_layer.data))
        image_layer.events.data.connect(self._on_image_changed)
        worker.start()
        self.state_changed.emit(True)

    def stop(self) -> None:
        """Stop training after one last whole-slice prediction (returns at once)."""
        if self.trainer is not None:
            self._send_dirty()
            self.trainer.send(Stop(final_prediction=True))

    def abort(self) -> None:
        """Stop training now; nothing more is shown."""
        self._ignore = True
        self._timer.stop()
        self._send_timer.stop()
        if self.trainer is not None:
            self.trainer.send(Stop(final_prediction=False))

    # -- scribble edits: only what changed goes to the trainer ------------------------
    def _on_paint(self, event=None) -> None:
        """A finished stroke or fill: its box goes to the trainer as soon as it is applied."""
        box = _paint_box(getattr(event, "value", None))
        if box is None:
            return
        if self._dirty is None:
            self._dirty_since = time.perf_counter()
        self._dirty = union_box(self._dirty, box)
        self._send_timer.start()  # napari writes the data after the event

    def _send_dirty(self) -> None:
        box, self._dirty = self._dirty, None
        layer = self.scribbles_layer
        if box is None or self._ignore or self.trainer is None or layer is None:
            return
        if self._mirror is None or layer.data.shape != self._mirror.shape:
            return
        self._send(ScribbleDelta.of(layer.data, box), self._dirty_since)

    def _send(self, delta: ScribbleDelta, since: float) -> None:
        """Send a delta of the layer's current data (of the mirror's shape) to the trainer."""
        self._version += 1
        delta = dataclasses.replace(delta, version=self._version)
        self._mirror[delta.region] = delta.labels
        self._posted[self._version] = since
        self.trainer.send(delta)

    def _on_scribbles_data(self, event=None) -> None:
        """A new array: one of another shape is refused here (training goes on)."""
        layer = self.scribbles_layer
        if self._ignore or self.trainer is None or layer is None or self._mirror is None:
            return
        if layer.data.shape != self._mirror.shape:
            message = (
                f"kept the previous scribbles: scribbles have shape {layer.data.shape} but the "
                f"image is {self._mirror.shape}; paint the scribbles on a layer of the same size "
                "as the image"
            )
            if message != self._last_warning:
                show_warning(f"napari-frontier: {message}")
            self._last_warning = message
        else:
            self._on_scribbles_refresh()

    def _on_scribbles_refresh(self, event=None) -> None:
        """A refresh (undo, redo, a script): look for changes when they stop."""
        if self.trainer is None or self._ignore:
            return
        self._refresh_since = time.perf_counter()
        self._timer.start()

    def _send_changes(self) -> None:
        layer = self.scribbles_layer
        if self._ignore or self.trainer is None or layer is None or self._mirror is None:
            return
        self._send_dirty()
        data = layer.data
        if data.shape != self._mirror.shape:
            return
        box = changed_box(self._mirror, data)
        if box is not None:
            self._send(ScribbleDelta.of(data, box), self._refresh_since)

    # -- what is in view ----------------------------------------------------------
    def _view(self) -> View:
        layer = self.image_layer
        return View(L.current_index(self.viewer, layer), L.view_region(layer))

    def _post_view(self) -> None:
        layer = self.image_layer
        if self.trainer is None or layer is None or layer not in self.viewer.layers:
            return
        self.trainer.send(self._view())

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

    # -- events from the trainer -------------------------------------------------------
    def _on_yielded(self, event) -> None:
        if self._ignore or self._closed:
            return
        if isinstance(event, Tick):
            self._on_tick(event)
        elif isinstance(event, OverlayDelta):
            self._show(event)
        elif isinstance(event, Failed):
            log.debug("training failed", exc_info=event.error)
            show_error(f"napari-frontier: {_describe(event.error)}")

    def _on_tick(self, tick: Tick) -> None:
        self.history.append(tick)
        if tick.scribbles_version > self._received_version:
            self._received_version = tick.scribbles_version
            self.scribbles_received += 1
        if tick.message and tick.message != self._last_warning:
            show_warning(f"napari-frontier: {tick.message}")
        self._last_warning = tick.message or self._last_warning
        self._post_view()
        self.updated.emit(tick)

    def _on_finished(self) -> None:
        self._timer.stop()
        self._send_timer.stop()
        if self.scribbles_layer is not None:
            layer = self.scribbles_layer
            layer.events.paint.disconnect(self._on_paint)
            layer.events.data.disconnect(self._on_scribbles_data)
            layer.events.set_data.disconnect(self._on_scribbles_refresh)
        if self.image_layer is not None:
            self.image_layer.events.data.disconnect(self._on_image_changed)
        self._mirror = None
        self.worker = None
        self.trainer = None
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
        if self.overlays is not None and layer is self.overlays.image_layer:
            self.overlays = None

    # -- model ------------------------------------------------------------
    def reset(self) -> None:
        """Forget the weights and remove the overlay layers."""
        self._require_idle("reset the model")
        if self.segmenter is not None:
            self.segmenter.reset()
        self._forget_prediction()
        self.volume = None
        self.history.clear()
        for layer in list(self.viewer.layers):
            if layer.metadata.get(L.ROLE_KEY) in L.OVERLAYS:
                self.viewer.layers.remove(layer)
        self.overlays = None

    def configure(self, train_config=None, model_config=None) -> None:
        """New settings; the next training starts from fresh weights."""
        self._require_idle("change settings")
        if train_config is not None:
            self.train_config = train_config
        if model_config is not None:
            self.model_config = dict(model_config)
        self.segmenter = None

    def apply_settings(self, train_config, n_classes: int | None = None) -> None:
        """Settings from the form: a new class count or device starts a new model;
        patch size, learning rate and threads apply to the current one."""
        self._require_idle("change settings")
        seg = self.segmenter
        old = self.train_config
        self.train_config = train_config
        new_model = (n_classes is not None and n_classes != self.n_classes) or (
            train_config.device != old.device
        )
        self.n_classes = n_classes or self.n_classes
        if seg is None or new_model:
            self.segmenter = None
            return
        seg.train_config = train_config
        if seg.optimizer is not None:
            for group in seg.optimizer.param_groups:
                group["lr"] = train_config.learning_rate

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
        self._forget_prediction()
        if preview_layer is not None:
            self.preview(preview_layer)

    def set_segmenter(self, segmenter, preview_layer=None) -> None:
        """Use a loaded segmenter (e.g. from a project); predict ``preview_layer`` with it."""
        self._require_idle("load a model")
        segmenter.train_config = dataclasses.replace(
            segmenter.train_config, threads=self.train_config.threads
        )
        self.segmenter = segmenter
        self._forget_prediction()
        if preview_layer is not None:
            self.preview(preview_layer)

    def export_mask(self, path, format: str = "binary"):
        """Write the current prediction as a mask file; returns the path."""
        from ..data.io import write_image

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

    def _complete_prediction(self, what: str):
        if self.image_layer is not None and L.lead_shape(self.image_layer):
            raise FrontierError(f"{what} of stacks: use `frontier predict --frontier` for now")
        if self.prediction is None:
            raise FrontierError(f"no {what} yet: train the model (or load one) first")
        if not self.prediction_complete:
            raise FrontierError(
                "only the part of this large image you looked at has been predicted yet; "
                "stop training (the whole image is predicted then) and try again"
            )
        return self.prediction

    def frontier_polygons(self) -> list:
        """The P = 0.5 frontier of the current prediction as polygons (with holes)."""
        from ..outputs.vectors import frontier_polygons

        pred = self._complete_prediction("frontier")
        return frontier_polygons(probabilities=np.array(pred.probabilities, copy=True))

    def export_frontier(self, path):
        """Write the frontier as GeoJSON (.geojson/.json), ImageJ ROI set (.zip) or CSV (.csv)."""
        from ..outputs.vectors import read_georeference, write_frontier

        polygons = self.frontier_polygons()
        geo = None
        source = getattr(getattr(self.image_layer, "source", None), "path", None)
        if source:
            with contextlib.suppress(Exception):
                geo = read_georeference(source)
        shape = self.prediction.probabilities.shape[1:]
        names = None
        if self.segmenter is not None:
            names = list(self.segmenter.class_names)
        return write_frontier(
            path, polygons, georeference=geo, class_names=names, image_shape=shape
        )

    def _export_volume(self, path, format: str):
        from ..data.io import write_image

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

        def show(delta):
            if image_layer not in self.viewer.layers:
                return
            self.image_layer = image_layer
            self._overlays_for(image_layer, self.scribbles_layer)
            self._show(delta)

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
        self._timer.stop()
        self._send_timer.stop()
        if self.trainer is not None:
            self.trainer.wait_idle(timeout)
