"""The live-training loop run by the plugin's worker thread (no Qt in here).

One generator trains *and* predicts, so the model is only ever touched by the
thread that drives it. It receives new scribbles, the visible region and stop
requests through a :class:`Mailbox`, and yields small immutable
:class:`LoopUpdate` objects that the main thread only has to assign to layers.
A plain ``for`` loop drives it in tests; napari's ``thread_worker`` drives it
in the plugin.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from ..inference import (
    Prediction,
    frontier_contours,
    frontier_mask,
    uncertainty,
)
from ..training import TrainUpdate

#: Predict the visible region instead of the whole image when it covers less
#: than this fraction of the image.
REGION_FRACTION = 0.6
#: Live predictions cover at most this many pixels (around the centre of the
#: view); larger images are predicted whole when training stops.
MAX_LIVE_PIXELS = 1024 * 1024
#: :meth:`Overlay.contours` (vector frontier, for export) drops specks with
#: fewer vertices than this and keeps at most ``MAX_CONTOURS`` (the longest).
#: The live frontier layer is a raster: a Shapes layer of hundreds of paths
#: costs the main thread hundreds of milliseconds per refresh.
MIN_CONTOUR_VERTICES = 10
MAX_CONTOURS = 300
#: Between predictions the loop trains TRAIN_SHARE times as long as the last
#: prediction took (prediction gets a third of the worker's time) ...
TRAIN_SHARE = 2.0
#: ... and the main thread should spend at most about 1 / SHOW_SHARE of its
#: time assigning overlays: predictions wait SHOW_SHARE times as long as the
#: last assignment took (the session reports it as ``show_seconds``).
SHOW_SHARE = 4
#: Except that new strokes are shown this soon after they reach the trainer,
#: so painting gets quick feedback.
STROKE_FEEDBACK_SECONDS = 0.5
#: Torch threads for live predictions on the CPU (training keeps its own
#: setting, one thread by default: small steps on two threads beside Qt were
#: erratic; one large forward pass uses two well).
PREVIEW_THREADS = min(2, os.cpu_count() or 1)


class Mailbox:
    """Thread-safe inbox of the loop: the latest value of each key wins.

    A worker's own ``send`` has a single slot, so a viewport update could
    overwrite a pending scribble update; here every kind of message has its
    own slot.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._items: dict = {}
        self._stop = threading.Event()
        self.final_prediction = True
        #: Set by the loop when it has finished (in its own thread).
        self.done = threading.Event()
        #: Set while the loop runs code; clear while it waits at a ``yield``.
        #: A worker that is quit (napari cancels its tasks when the window
        #: closes) leaves the loop waiting at a yield for good.
        self.running = threading.Event()

    def post(self, **items) -> None:
        """Leave messages (``scribbles=(version, array)``, ``view=(r0, r1, c0, c1)``, ``index``)."""
        with self._lock:
            self._items.update(items)

    def take(self) -> dict:
        """Remove and return all pending messages."""
        with self._lock:
            items, self._items = self._items, {}
        return items

    def stop(self, final_prediction: bool = True) -> None:
        """Ask the loop to stop (with or without a last whole-image prediction)."""
        self.final_prediction = self.final_prediction and final_prediction
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the loop has finished or waits at a ``yield``; False on timeout."""
        deadline = time.perf_counter() + timeout
        while self.running.is_set() and not self.done.is_set():
            if time.perf_counter() > deadline:
                return False
            time.sleep(0.01)
        return True


@dataclass(frozen=True)
class Overlay:
    """What the overlay layers show; arrays are private copies of the loop."""

    prediction: Prediction
    uncertainty: np.ndarray
    #: uint8, 1 on the "is" side of the frontier (P("is") = 0.5), else 0.
    frontier: np.ndarray = field(repr=False)
    step: int
    region: tuple[int, int, int, int]
    scribbles_version: int
    seconds: float
    #: Every pixel has been predicted (by this or an earlier, live prediction).
    complete: bool = True
    #: Which slice of a stack this is (``()`` for a 2D image).
    index: tuple[int, ...] = ()

    @property
    def p_is(self) -> np.ndarray:
        """P("is"), NaN at invalid pixels and at pixels not predicted yet."""
        return self.prediction.probabilities[0]

    def contours(self) -> list[np.ndarray]:
        """Sub-pixel frontier contours (the longest ones), as ``(N, 2)`` row/col arrays."""
        p = self.prediction
        done = ~np.isnan(p.probabilities[0])
        return simplify_contours(frontier_contours(p.probabilities, p.valid & done))


@dataclass(frozen=True)
class LoopUpdate:
    """One message from the loop: a training update, an overlay, or both."""

    train: TrainUpdate | None = None
    overlay: Overlay | None = None
    scribbles_version: int = 0
    error: BaseException | None = None
    final: bool = False


def _region(view, shape, max_pixels: int) -> tuple[int, int, int, int]:
    """``view`` clipped to the image and shrunk around its centre to ``max_pixels``."""
    h, w = shape
    r0, r1, c0, c1 = (int(v) for v in view)
    r0, r1 = max(0, min(r0, h - 1)), max(1, min(r1, h))
    c0, c1 = max(0, min(c0, w - 1)), max(1, min(c1, w))
    r1, c1 = max(r1, r0 + 1), max(c1, c0 + 1)
    area = (r1 - r0) * (c1 - c0)
    if area > max_pixels:
        f = (max_pixels / area) ** 0.5
        dr, dc = max(1, int((r1 - r0) * f)), max(1, int((c1 - c0) * f))
        r0, c0 = (r0 + r1 - dr) // 2, (c0 + c1 - dc) // 2
        r1, c1 = r0 + dr, c0 + dc
    return r0, r1, c0, c1


def simplify_contours(contours) -> list[np.ndarray]:
    """The ``MAX_CONTOURS`` longest contours of ``MIN_CONTOUR_VERTICES`` or more vertices."""
    kept = [c for c in contours if len(c) >= MIN_CONTOUR_VERTICES]
    if len(kept) > MAX_CONTOURS:
        kept = sorted(kept, key=len, reverse=True)[:MAX_CONTOURS]
    return [c.astype(np.float32) for c in kept]


_warm = threading.Event()
#: Set when :func:`warm_up` has finished (successfully or not).
warmed_up = threading.Event()


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

    from ..segmenter import Segmenter
    from ..training import TrainConfig

    rng = np.random.default_rng(0)
    image = rng.random((48, 48)).astype(np.float32)
    scribbles = np.zeros((48, 48), np.uint8)
    scribbles[4:12, 4:12], scribbles[30:40, 30:40] = 1, 2
    seg = Segmenter(train_config=TrainConfig(threads=1), model_config=model_config)
    seg.fit(image, scribbles, steps=2)
    big = rng.random((512, 512)).astype(np.float32)  # one full tile, as images get
    _ = seg.predict(big).frontier


class _Predictor:
    """Keeps the latest probabilities of one slice and refreshes parts of it.

    The slice is the whole image for a 2D image, or one slice (``index``) of
    a stack or time series. Live predictions cover the visible region (all of
    a small slice) and at most ``MAX_LIVE_PIXELS``; ``run(whole=True)``
    predicts the whole slice. Pixels not predicted yet are NaN and count as
    neither class. Only the region predicted (and its halo of context) is
    read from the image, with normalisation statistics of the whole image
    computed once, so a lazy (dask, zarr) image is never loaded whole.
    """

    def __init__(self, seg, image, index: tuple[int, ...] = ()):
        self.seg = seg
        self.image = image
        self.layout = seg.layout(image)
        self.stats = seg.stats(image, self.layout)
        self.index: tuple[int, ...] = ()
        self._select(index)

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.yx

    def _select(self, index) -> None:
        """Clear the buffers for another slice (``index`` clipped to the stack)."""
        lead = self.layout.lead_shape
        index = tuple(index or ())
        if len(index) != len(lead):
            index = (0,) * len(lead)
        self.index = tuple(int(min(max(i, 0), n - 1)) for i, n in zip(index, lead, strict=True))
        h, w = self.shape
        self.probs = np.full((self.seg.n_classes, h, w), np.nan, np.float32)
        self.uncertainty = np.full((h, w), np.nan, np.float32)
        self.frontier = np.zeros((h, w), np.uint8)
        self.done = np.zeros((h, w), bool)
        self.valid = np.ones((h, w), bool)

    def _choose(self, view, whole: bool) -> tuple[int, int, int, int]:
        h, w = self.shape
        small = h * w <= MAX_LIVE_PIXELS
        if whole or (small and not self.done.all()):
            return 0, h, 0, w
        r = _region((0, h, 0, w) if view is None else view, (h, w), MAX_LIVE_PIXELS)
        if small and (r[1] - r[0]) * (r[3] - r[2]) >= REGION_FRACTION * h * w:
            return 0, h, 0, w
        return r

    def _predict(self, region) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ..nd import predict_region

        seg = self.seg

        def run():
            return predict_region(
                seg.predict_model, seg.device, self.image, self.layout, self.stats,
                self.index, region, seg.nodata,
            )  # fmt: skip

        if seg.device.type != "cpu" or torch.get_num_threads() == PREVIEW_THREADS:
            return run()
        before = torch.get_num_threads()
        torch.set_num_threads(PREVIEW_THREADS)
        try:
            return run()
        finally:
            torch.set_num_threads(before)

    def run(self, view, step: int, version: int, whole: bool = False, index=None) -> Overlay:
        t0 = time.perf_counter()
        if index is not None and tuple(index) != self.index:
            self._select(index)
        h, w = self.shape
        r0, r1, c0, c1 = self._choose(view, whole)
        core, valid = self._predict((slice(r0, r1), slice(c0, c1)))
        invalid = ~valid
        self.probs[:, r0:r1, c0:c1] = core
        self.valid[r0:r1, c0:c1] = valid
        u = uncertainty(np.nan_to_num(core, nan=1.0 / len(core)))
        u[invalid] = np.nan
        self.uncertainty[r0:r1, c0:c1] = u
        self.done[r0:r1, c0:c1] = True
        # The frontier of the refreshed region, with a 1-pixel rim so that it
        # joins up with what was there before.
        f0, f1, e0, e1 = max(0, r0 - 1), min(h, r1 + 1), max(0, c0 - 1), min(w, c1 + 1)
        self.frontier[f0:f1, e0:e1] = frontier_mask(self.probs[0, f0:f1, e0:e1])
        pred = Prediction(probabilities=self.probs.copy(), valid=self.valid.copy())
        return Overlay(
            prediction=pred,
            uncertainty=self.uncertainty.copy(),
            frontier=self.frontier.copy(),
            step=step,
            region=(r0, r1, c0, c1),
            scribbles_version=version,
            seconds=time.perf_counter() - t0,
            complete=bool(self.done.all()),
            index=self.index,
        )


def live_training(
    seg,
    image: np.ndarray,
    scribbles: np.ndarray,
    mailbox: Mailbox,
    predict_interval: float = 0.3,
    version: int = 0,
    index: tuple[int, ...] = (),
) -> Generator[LoopUpdate, None, None]:
    """Train ``seg`` until ``mailbox.stop()``; yield training updates and overlays.

    Parameters
    ----------
    seg
        A :class:`~napari_frontier.segmenter.Segmenter` (continues from its weights).
    image, scribbles
        Private copies (or a lazy array that nobody changes): the loop owns
        them. ``image`` may be a stack or time series; ``scribbles`` then
        have its shape without channels, and one model learns from the
        strokes on all slices.
    mailbox
        New scribbles (``scribbles=(version, array)``), the visible region
        (``view=(r0, r1, c0, c1)`` in pixels), the slice in view of a stack
        (``index=(z, ...)``), how long the main thread took to show the last
        overlay (``show_seconds``) and the stop request.
    predict_interval
        Least time between predictions. Predictions are also spaced by
        ``TRAIN_SHARE`` times the time the last one took and ``SHOW_SHARE``
        times the time showing it took, except that new scribbles are
        reflected ``STROKE_FEEDBACK_SECONDS`` after they arrive.
    version
        Version number of ``scribbles`` (reported back in overlays).
    index
        The slice of a stack in view at the start (overlays cover that slice).

    Errors are yielded as ``LoopUpdate(error=...)`` instead of raised, so the
    driver decides how to show them (a worker would drop ``RuntimeError``).
    """
    mailbox.running.set()
    try:
        for update in _loop(seg, image, scribbles, mailbox, predict_interval, version, index):
            mailbox.running.clear()
            yield update
            mailbox.running.set()
    finally:
        mailbox.running.clear()
        mailbox.done.set()


def _loop(seg, image, scribbles, mailbox, predict_interval, version, index):
    try:
        predictor = _Predictor(seg, image, index)
        gen = seg.training(image, scribbles)
    except Exception as exc:
        yield LoopUpdate(error=exc, final=True)
        return
    view = None
    next_predict = time.perf_counter() + predict_interval
    show_seconds = 0.0
    try:
        upd = next(gen)
        while not mailbox.stopped:
            items = mailbox.take()
            view = items.get("view", view)
            if "index" in items and tuple(items["index"]) != predictor.index:
                index = tuple(items["index"])
                next_predict = time.perf_counter()  # another slice: show it at once
            show_seconds = items.get("show_seconds", show_seconds)
            if "scribbles" in items:
                new_version, array = items["scribbles"]
                sent = time.perf_counter()
                upd = gen.send(array)
                if upd.message == "scribbles updated":
                    version = new_version
                    next_predict = min(next_predict, sent + STROKE_FEEDBACK_SECONDS)
            else:
                upd = next(gen)
            yield LoopUpdate(train=upd, scribbles_version=version)
            if time.perf_counter() >= next_predict and not mailbox.stopped:
                overlay = predictor.run(view, upd.step, version, index=index)
                wait = max(
                    predict_interval, TRAIN_SHARE * overlay.seconds, SHOW_SHARE * show_seconds
                )
                next_predict = time.perf_counter() + wait
                yield LoopUpdate(overlay=overlay, scribbles_version=version)
        gen.close()
        overlay = None
        if mailbox.final_prediction:
            overlay = predictor.run(None, seg.step, version, whole=True, index=index)
        yield LoopUpdate(overlay=overlay, scribbles_version=version, final=True)
    except Exception as exc:
        yield LoopUpdate(error=exc, scribbles_version=version, final=True)
    finally:
        gen.close()


def predict_overlay(seg, image, index: tuple[int, ...] = ()):
    """Worker job: overlays of a whole image (or one slice), for a model that is not training.

    Returns the :class:`Overlay`, or the exception (a worker would drop a
    ``RuntimeError``; the caller shows it).
    """
    try:
        return _Predictor(seg, image, index).run(None, seg.step, 0, whole=True)
    except Exception as exc:
        return exc


def predict_labels(seg, image):
    """Worker job: class map (uint8, 1..K) of ``image``, or the exception."""
    try:
        return seg.predict(image).labels
    except Exception as exc:
        return exc


def predict_volume(seg, image) -> Generator:
    """Worker job: predict every slice of a stack; yields a ``SliceUpdate`` per slice.

    Normalisation statistics are computed once for the whole stack. An
    error is yielded (not raised) and ends the job. Quitting the worker
    stops it between slices.
    """
    try:
        stats = seg.stats(image)
        yield from seg.predict_slices(image, stats=stats)
    except Exception as exc:
        yield exc
