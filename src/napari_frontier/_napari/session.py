"""One training session: the worker's lifecycle and the model, for one viewer.

Threads: while training runs, a :class:`~napari_frontier.live.trainer.LiveTrainer`
in the worker thread owns the model. The main thread sends it typed
messages (a :class:`~napari_frontier.data.scribbles.ScribbleDelta` per edit, the
:class:`~napari_frontier.live.trainer.View`, :class:`~napari_frontier.live.trainer.Stop`)
and writes the :class:`~napari_frontier.live.trainer.OverlayDelta` it yields into
the overlay layers' buffers in place. Background jobs that also use the model
(apply to another image, preview after loading) never run at the same time
as training.

The session composes three satellites, as napari gives a large class
modules beside it:

- :mod:`.edits` (``session.edits``): paint and data events, the mirror, debounce;
- :mod:`.overlays` (``session.overlays``): redraws, latencies, following the view, *Suggest*;
- :mod:`.jobs` (``session.jobs``): background jobs and the exports.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from ..errors import FrontierError
from ..learning.config import TrainConfig
from ..live.trainer import Failed, LiveTrainer, OverlayDelta, Stop, Tick
from . import layers as L
from .edits import EditsTracker
from .jobs import Jobs, describe, start_warm_up
from .overlays import OverlayDisplay

log = logging.getLogger(__name__)

#: Training updates kept in ``TrainingSession.history`` (about 4 a second).
MAX_HISTORY = 10_000
#: Training settings of the plugin: one torch thread (steadier beside Qt than
#: two on small machines) and updates every 0.1 s, so that a new stroke reaches
#: the samplers, and its overlay the screen, that much sooner; BatchNorm
#: statistics for each live overlay over 4 batches (a quarter of the API's
#: 16, so previews stay cheap; the weights kept at the end get 32).
GUI_TRAIN_CONFIG = TrainConfig(threads=1, update_interval=0.1, bn_recalibration=4)


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
        self.worker = None
        self.trainer: LiveTrainer | None = None
        self.history: deque = deque(maxlen=MAX_HISTORY)
        #: True once :meth:`close` has run.
        self.closed = False
        self._ignore = False
        self._image_shape: tuple = ()
        self._last_warning = ""
        self.edits = EditsTracker(self.warn_once)
        self.overlays = OverlayDisplay(self)
        self.jobs = Jobs(self)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        start_warm_up(self.model_config)

    # -- state ------------------------------------------------------------
    @property
    def is_training(self) -> bool:
        return self.worker is not None

    @property
    def is_busy(self) -> bool:
        """True while a job other than training uses the model."""
        return self.jobs.running

    @property
    def prediction(self):
        """The current :class:`~napari_frontier.prediction.tiling.Prediction` of the slice shown.

        Its arrays are the overlay buffers (updated in place), or None.
        """
        return self.overlays.prediction

    @property
    def prediction_complete(self) -> bool:
        """False while only part of a large image has been predicted."""
        return self.overlays.complete

    @property
    def prediction_index(self) -> tuple[int, ...]:
        """Slice of the stack the overlays show (``()`` for a 2D image)."""
        return self.overlays.index

    @property
    def overlay_count(self) -> int:
        """Overlays drawn so far."""
        return self.overlays.count

    @property
    def first_overlay_seconds(self) -> float | None:
        """Seconds from the last start of training to its first overlay."""
        return self.overlays.first_seconds

    @property
    def stroke_latencies(self) -> deque:
        """Seconds from an edit to the overlay that includes it (the last 1000)."""
        return self.overlays.latencies

    @property
    def stability(self):
        """How much the live prediction of the view changes (convergence signal), or None."""
        return self.overlays.stability

    @property
    def scribbles_received(self) -> int:
        """Updates in which the trainer reported newer scribbles."""
        return self.edits.received

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

    def require_idle(self, what: str) -> None:
        """Raise :class:`FrontierError` ("stop training before you ``what``") unless idle."""
        if self.is_training:
            raise FrontierError(f"stop training before you {what}")
        if self.is_busy:
            raise FrontierError(f"wait for the running job to finish before you {what}")

    def warn_once(self, message: str) -> None:
        """Show a warning, unless it is the one shown last."""
        if message and message != self._last_warning:
            show_warning(f"napari-frontier: {message}")
        self._last_warning = message or self._last_warning

    def set_image(self, image_layer, scribbles_layer=None) -> None:
        """Make the overlay layers of ``image_layer`` now, so that Train only starts the worker."""
        if image_layer is None or self.closed or self.is_training:
            return
        self.overlays.for_image(image_layer, scribbles_layer)

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
        self.require_idle("train")
        if image_layer is None or scribbles_layer is None:
            raise FrontierError("choose an image layer and a scribbles layer first")
        image = L.image_data(image_layer, copy=False)  # copied in the worker
        self.image_layer, self.scribbles_layer = image_layer, scribbles_layer
        self.overlays.for_image(image_layer, scribbles_layer)
        self._ignore = False
        self._last_warning = ""
        self.overlays.start_clock()
        mirror = self.edits.begin(scribbles_layer)
        trainer = LiveTrainer(
            self.get_segmenter(),
            image,
            mirror,
            view=self.overlays.view(),
            version=self.edits.version,
            wait_for_shown=True,
            copy_image=True,
        )
        worker = create_worker(trainer.run, _start_thread=False)
        worker.yielded.connect(self._on_yielded)
        worker.finished.connect(self._on_finished)
        self.worker, self.trainer = worker, trainer
        self.edits.connect(trainer)
        self._image_shape = tuple(np.shape(image_layer.data))
        image_layer.events.data.connect(self._on_image_changed)
        worker.start()
        self.state_changed.emit(True)

    def stop(self) -> None:
        """Stop training after one last whole-slice prediction (returns at once)."""
        if self.trainer is not None:
            self.edits.flush()
            self.trainer.send(Stop(final_prediction=True))

    def abort(self) -> None:
        """Stop training now; nothing more is shown."""
        self._ignore = True
        self.edits.cancel()
        if self.trainer is not None:
            self.trainer.send(Stop(final_prediction=False))

    # -- events from the trainer -------------------------------------------------------
    def _on_yielded(self, event) -> None:
        if self._ignore or self.closed:
            return
        if isinstance(event, Tick):
            self._on_tick(event)
        elif isinstance(event, OverlayDelta):
            self.overlays.show(event)
        elif isinstance(event, Failed):
            log.debug("training failed", exc_info=event.error)
            show_error(f"napari-frontier: {describe(event.error)}")

    def _on_tick(self, tick: Tick) -> None:
        self.history.append(tick)
        self.edits.acknowledge(tick.scribbles_version)
        self.warn_once(tick.message)
        self.overlays.post_view()
        self.updated.emit(tick)

    def _on_finished(self) -> None:
        self.edits.end()
        if self.image_layer is not None:
            self.image_layer.events.data.disconnect(self._on_image_changed)
        self.worker = None
        self.trainer = None
        if not self.closed:
            self.state_changed.emit(False)

    def _on_image_changed(self, event=None) -> None:
        """The image layer got new data: training on the old copy would mislead."""
        layer = self.image_layer
        if not self.is_training or self._ignore or layer is None:
            return
        if tuple(np.shape(layer.data)) != tuple(self._image_shape):
            self.abort()
            if not self.closed:
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
            if not self.closed:
                show_info(f'napari-frontier: training stopped because "{layer.name}" was removed')
        self.overlays.on_layer_removed(layer)

    # -- model and settings -------------------------------------------------------
    def reset(self) -> None:
        """Forget the weights and remove the overlay layers."""
        self.require_idle("reset the model")
        if self.segmenter is not None:
            self.segmenter.reset()
        self.overlays.forget()
        self.jobs.volume = None
        self.history.clear()
        self.overlays.remove_layers()

    def configure(self, train_config=None, model_config=None) -> None:
        """New settings; the next training starts from fresh weights."""
        self.require_idle("change settings")
        if train_config is not None:
            self.train_config = train_config
        if model_config is not None:
            self.model_config = dict(model_config)
        self.segmenter = None

    def apply_settings(self, train_config, n_classes: int | None = None) -> None:
        """Settings from the form: a new class count or device starts a new model;
        patch size, learning rate and threads apply to the current one."""
        self.require_idle("change settings")
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
        self._set_train_config(seg, train_config)

    @staticmethod
    def _set_train_config(seg, train_config) -> None:
        """The one place a model takes new training settings (the engine has no method
        for it): its config, and the learning rate of the optimiser it has, if any."""
        seg.train_config = train_config
        if seg.optimizer is not None:
            for group in seg.optimizer.param_groups:
                group["lr"] = train_config.learning_rate

    def save(self, path) -> None:
        """Save the model (a checkpoint the CLI reads too)."""
        self.require_idle("save the model")
        if self.segmenter is None or self.segmenter.model is None:
            raise FrontierError("nothing to save yet: train the model first")
        self.segmenter.save(path)

    def load(self, path, preview_layer=None) -> None:
        """Load a checkpoint; predict ``preview_layer`` with it in the background."""
        self.require_idle("load a model")
        from ..segmenter import Segmenter

        self.set_segmenter(
            Segmenter.load(path, device=self.train_config.device), preview_layer=preview_layer
        )

    def set_segmenter(self, segmenter, preview_layer=None) -> None:
        """Use a loaded segmenter (e.g. from a project); predict ``preview_layer`` with it."""
        self.require_idle("load a model")
        # Keep this session's thread count (the checkpoint has the trainer's).
        threads = self.train_config.threads
        self._set_train_config(
            segmenter, dataclasses.replace(segmenter.train_config, threads=threads)
        )
        self.segmenter = segmenter
        self.overlays.forget()
        if preview_layer is not None:
            self.jobs.preview(preview_layer)

    # -- teardown -------------------------------------------------------------
    def close(self, timeout: float = 5.0) -> None:
        """Stop everything and wait (up to ``timeout`` s) for the worker thread."""
        if self.closed:
            return
        self.closed = True
        self.abort()
        self.overlays.close()
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if self.trainer is not None:
            self.trainer.wait_idle(timeout)
