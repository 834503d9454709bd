"""Background jobs and exports of a :class:`~.session.TrainingSession`.

Live training itself is :class:`napari_frontier.live.trainer.LiveTrainer`; the
jobs here are the others that use the model (a whole-slice preview, applying
the model to another image, predicting a volume), never beside training, and
the once-per-process warm-up. The worker functions touch no layer: a failure
is raised as :class:`JobFailed`, and the worker's ``errored`` signal turns it
into a notification. :class:`Jobs` runs them and writes the exports (mask,
frontier) on the main thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import notification_manager, show_error

from ..errors import FrontierError
from ..live.trainer import SlicePredictor
from . import layers as L

_warm = threading.Event()
#: Set when :func:`warm_up` has finished (successfully or not).
warmed_up = threading.Event()


def describe(exc: BaseException) -> str:
    """An error as a user reads it: our own errors by their message, others with their type."""
    if isinstance(exc, FrontierError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobFailed(Exception):
    """A background job failed; napari's error notification shows :attr:`message`.

    Raised from the job's own error (its ``__cause__``), which also keeps a
    ``RuntimeError`` from a generator job from being dropped without a
    signal by superqt.
    """

    def __init__(self, error: BaseException):
        self.error = error
        self.message = f"napari-frontier: {describe(error)}"
        super().__init__(self.message)


def start_warm_up(model_config: dict | None = None) -> None:
    """Run :func:`warm_up` in a background thread (once per process)."""
    if not _warm.is_set():
        threading.Thread(
            target=warm_up, args=(model_config,), name="napari-frontier warm-up", daemon=True
        ).start()


def warm_up(model_config: dict | None = None) -> None:
    """Run two tiny training steps and one whole-tile prediction, once per process.

    Torch's first training step and first large prediction in a process cost
    a second or more each (kernel selection, allocator set-up); paying that
    while the user is still painting brings the first overlay after "Train"
    that much sooner. Uses its own throw-away model, so it can run beside
    anything else.
    """
    if _warm.is_set():
        return
    _warm.set()
    try:
        _warm_up(model_config)
    except Exception:  # only an optimisation: never disturb the user
        pass
    finally:
        warmed_up.set()


def _warm_up(model_config):
    import scipy.ndimage  # noqa: F401 (first imports cost a second in the worker)
    import skimage.measure
    import skimage.segmentation  # noqa: F401

    from ..learning.config import TrainConfig
    from ..segmenter import Segmenter

    rng = np.random.default_rng(0)
    image = rng.random((48, 48)).astype(np.float32)
    scribbles = np.zeros((48, 48), np.uint8)
    scribbles[4:12, 4:12], scribbles[30:40, 30:40] = 1, 2
    seg = Segmenter(train_config=TrainConfig(threads=1), model_config=model_config)
    seg.fit(image, scribbles, steps=2)
    big = rng.random((512, 512)).astype(np.float32)  # one full tile, as images get
    _ = seg.predict(big).frontier


# -- worker functions (no Qt, no layers) -------------------------------------------
def predict_overlay(seg, image, index: tuple[int, ...] = ()):
    """Worker job: overlays of a whole image (or one slice), for a model that is not training.

    Returns a whole-slice :class:`~napari_frontier.live.trainer.OverlayDelta`;
    raises :class:`JobFailed`.
    """
    try:
        predictor = SlicePredictor(seg, image, index)
        return predictor.run(step=seg.step, final=True)
    except Exception as exc:
        raise JobFailed(exc) from exc


def predict_labels(seg, image):
    """Worker job: class map (uint8, 1..K) of ``image``; raises :class:`JobFailed`."""
    try:
        return seg.predict(image).labels
    except Exception as exc:
        raise JobFailed(exc) from exc


def predict_volume(seg, image) -> Generator:
    """Worker job: predict every slice of a stack; yields a ``SliceUpdate`` per slice.

    Normalisation statistics are computed once for the whole stack. An error
    ends the job as :class:`JobFailed`. Quitting the worker stops it between
    slices.
    """
    try:
        stats = seg.stats(image)
        yield from seg.predict_slices(image, stats=stats)
    except Exception as exc:
        raise JobFailed(exc) from exc


# -- on the main thread -------------------------------------------------------------
class Jobs:
    """The session's background jobs and exports (main thread object).

    Parameters
    ----------
    session
        The :class:`~.session.TrainingSession` whose model the jobs use; its
        ``busy_changed`` and ``volume_done`` signals report them.
    """

    def __init__(self, session):
        self._session = session
        self.viewer = session.viewer
        #: The running job's worker, or None.
        self.worker = None
        #: "Predict volume": the image layer and its class map (1..K, 0 = invalid).
        self.volume: tuple | None = None
        #: Every slice of :attr:`volume` was predicted.
        self.volume_complete = False

    @property
    def running(self) -> bool:
        return self.worker is not None

    @staticmethod
    def _worker(func, args, progress):
        """A worker of ``func(*args)``, not started; its errors come through ``errored``."""
        return create_worker(
            func, *args, _start_thread=False, _ignore_errors=True, _progress=progress
        )

    def _start(self, job, on_end=None) -> None:
        s = self._session

        def finished():
            self.worker = None
            if not s.closed:
                s.busy_changed.emit(False)
            if on_end is not None:
                on_end()

        job.errored.connect(self._failed)
        job.finished.connect(finished)
        self.worker = job
        job.start()
        s.busy_changed.emit(True)

    def _failed(self, exc: BaseException) -> None:
        """A job's ``errored`` signal: the error as a notification, once."""
        if self._session.closed:
            return
        # napari's workers relay errors to notifications themselves where their
        # mixin's __init__ runs (it does not under PyQt): never show one twice
        last = notification_manager.records[-1:]
        if last and getattr(last[0], "exception", None) is exc:
            return
        show_error(getattr(exc, "message", None) or f"napari-frontier: {describe(exc)}")

    def _run(self, func, args, on_result, desc: str, progress: bool = True) -> None:
        """Run ``func(*args)`` in a worker; ``on_result`` gets what it returns."""
        s = self._session
        s.require_idle(desc)
        job = self._worker(func, args, {"desc": desc} if progress else None)

        def returned(result):
            if not s.closed:
                on_result(result)

        job.returned.connect(returned)
        self._start(job)

    def _trained_segmenter(self):
        seg = self._session.segmenter
        if seg is None or seg.model is None:
            raise FrontierError("train the model (or load one) first")
        return seg

    # -- jobs ---------------------------------------------------------------------
    def preview(self, image_layer, index=None, progress: bool = True) -> None:
        """Predict ``image_layer`` (of a stack: the slice ``index``, default the one in
        view) in the background and show the overlays."""
        s = self._session
        seg = self._trained_segmenter()
        image = L.image_data(image_layer)
        if index is None:
            index = L.current_index(self.viewer, image_layer)

        def show(delta):
            if image_layer not in self.viewer.layers:
                return
            s.image_layer = image_layer
            s.overlays.for_image(image_layer, s.scribbles_layer)
            s.overlays.show(delta)

        self._run(predict_overlay, (seg, image, index), show, "predict the image", progress)

    def apply_to(self, image_layer) -> None:
        """Predict another image layer in the background; add its mask as a Labels layer."""
        seg = self._trained_segmenter()
        image = L.image_data(image_layer)
        name = f"{image_layer.name} mask"

        def add(labels):
            if image_layer in self.viewer.layers:
                L.add_mask_layer(self.viewer, labels, image_layer, name)

        self._run(predict_labels, (seg, image), add, f"apply the model to {image_layer.name}")

    def predict_volume(self, image_layer) -> None:
        """Predict every slice of ``image_layer`` in the background, into a Labels layer.

        The layer (``"<image> prediction"``, the stack's shape) fills slice by
        slice; napari's activity dock shows the progress and can cancel it.
        :meth:`export_mask` then writes the whole volume.
        """
        s = self._session
        seg = self._trained_segmenter()
        s.require_idle("predict the volume")
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
        s.image_layer = image_layer
        state = {"done": 0}
        job = self._worker(
            predict_volume,
            (seg, image),
            {"total": lay.n_slices, "desc": f"predict {image_layer.name}"},
        )

        def on_slice(upd):
            if s.closed:
                return
            labels[upd.index] = upd.prediction.labels
            state["done"] = upd.done
            if layer in self.viewer.layers:
                layer.refresh()

        def done():
            self.volume_complete = state["done"] == lay.n_slices
            if not s.closed:
                s.volume_done.emit(layer)

        job.yielded.connect(on_slice)
        self._start(job, on_end=done)

    # -- exports ------------------------------------------------------------------
    def export_mask(self, path, format: str = "binary"):
        """Write the current prediction as a mask file; returns the path."""
        from ..data.io import write_image

        s = self._session
        if s.image_layer is not None and L.lead_shape(s.image_layer):
            return self._export_volume(path, format)
        pred = self._whole_prediction("nothing to export yet", "export again")
        return write_image(path, pred.mask(format))

    def _export_volume(self, path, format: str):
        from ..data.io import write_image
        from ..prediction.tiling import encode_mask

        layer = self._session.image_layer
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
        return write_image(path, encode_mask(self.volume[1], format), photometric="minisblack")

    def _whole_prediction(self, missing: str, again: str):
        """The prediction of the whole 2D image, or a FrontierError (``missing``: none yet;
        ``again``: what to do once the whole image is predicted)."""
        s = self._session
        if s.prediction is None:
            raise FrontierError(f"{missing}: train the model (or load one) first")
        if not s.prediction_complete:
            raise FrontierError(
                "only the part of this large image you looked at has been predicted yet; "
                f"stop training (the whole image is predicted then) and {again}"
            )
        return s.prediction

    def _complete_prediction(self, what: str):
        s = self._session
        if s.image_layer is not None and L.lead_shape(s.image_layer):
            raise FrontierError(f"{what} of stacks: use `frontier predict --frontier` for now")
        return self._whole_prediction(f"no {what} yet", "try again")

    def frontier_polygons(self) -> list:
        """The P = 0.5 frontier of the current prediction as polygons (with holes).

        The engine's default classes: for a two-class model the "is" objects
        only, for K > 2 every class.
        """
        from ..outputs.vectors import frontier_polygons

        pred = self._complete_prediction("frontier")
        return frontier_polygons(probabilities=np.array(pred.probabilities, copy=True))

    def frontier_shapes(self):
        """Add the frontier of the current prediction as a Shapes layer and return it."""
        from ..outputs.vectors import frontier_shapes

        pred = self._complete_prediction("frontier")
        rings, classes = frontier_shapes(probabilities=np.array(pred.probabilities, copy=True))
        if not rings:
            raise FrontierError("the prediction has no frontier: a single class everywhere")
        return L.add_frontier_shapes(self.viewer, rings, classes)

    def export_frontier(self, path):
        """Write the frontier as GeoJSON (.geojson/.json), ImageJ ROI set (.zip) or CSV (.csv)."""
        from ..outputs.vectors import read_georeference, write_frontier

        s = self._session
        polygons = self.frontier_polygons()
        geo = None
        source = getattr(getattr(s.image_layer, "source", None), "path", None)
        if source:
            with contextlib.suppress(Exception):
                geo = read_georeference(source)
        shape = s.prediction.probabilities.shape[1:]
        names = None
        if s.segmenter is not None:
            names = list(s.segmenter.class_names)
        return write_frontier(
            path, polygons, georeference=geo, class_names=names, image_shape=shape
        )
