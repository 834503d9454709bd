"""Live training: one object that trains, takes edits and predicts what is in view.

:class:`LiveTrainer` alone owns the model, the optimiser and the samplers
while it runs; one thread drives its :meth:`~LiveTrainer.run` generator and
every other thread only :meth:`~LiveTrainer.send` s it typed messages:

- :class:`~napari_frontier.data.scribbles.ScribbleDelta`: the box an edit changed
  and its new labels (never the whole scribbles);
- :class:`View`: the slice of a stack and the region of it on screen;
- :class:`Stop`: stop, with or without a last whole-slice prediction.

It yields typed events: :class:`Tick` (a training update),
:class:`OverlayDelta` (the predicted region and the arrays of that region
only), and at the end :class:`Failed` (an error) and/or :class:`Stopped`.
A plain ``for`` loop drives it in tests and scripts; napari's
``thread_worker`` drives it in the plugin. No Qt, no napari.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import numpy as np

from ..data.scribbles import (
    ScribbleDelta,
    class_counts,
    missing_classes,
    union_box,
    validate_scribbles,
)
from ..errors import ScribbleError, ShapeMismatchError
from ..prediction.tiling import frontier_mask, uncertainty
from .convergence import StabilityMonitor

__all__ = [
    "Failed",
    "LiveTrainer",
    "OverlayDelta",
    "ScribbleDelta",
    "SlicePredictor",
    "Stop",
    "Stopped",
    "Tick",
    "View",
]

#: Predict the visible region instead of the whole slice when it covers less
#: than this fraction of the slice.
REGION_FRACTION = 0.6
#: Live predictions cover at most this many pixels (around the centre of the
#: view); larger slices are predicted whole when training stops.
MAX_LIVE_PIXELS = 1024 * 1024
#: The first prediction after new strokes covers the strokes' box grown by
#: FOCUS_MARGIN pixels (within the view), at most FOCUS_PIXELS: the painted
#: place updates in a fraction of the time of the whole view, which follows.
FOCUS_MARGIN = 96
FOCUS_PIXELS = 512 * 512
#: Between predictions the trainer trains TRAIN_SHARE times as long as the
#: last prediction took (prediction gets a third of the worker's time) ...
TRAIN_SHARE = 2.0
#: ... and the viewer should spend at most about 1 / SHOW_SHARE of its time
#: showing overlays: predictions wait SHOW_SHARE times as long as the last
#: one took to show (reported with :meth:`LiveTrainer.shown`).
SHOW_SHARE = 4
#: Torch threads for live predictions on the CPU (training keeps its own
#: setting, one thread by default: small steps on two threads beside Qt were
#: erratic; one large forward pass uses two well).
PREVIEW_THREADS = min(2, os.cpu_count() or 1)


# -- messages in ------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """What is on screen: the slice of a stack (``()`` for 2D) and ``(r0, r1, c0, c1)``.

    ``region`` None means the whole slice. Only the newest view counts.
    """

    index: tuple[int, ...] = ()
    region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Stop:
    """Stop training; ``final_prediction``: predict the whole slice in view once more."""

    final_prediction: bool = True


# -- events out ---------------------------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """A training update (a few a second)."""

    step: int
    loss: float
    train_accuracy: float
    holdout_accuracy: float | None
    elapsed: float
    steps_per_second: float
    #: Version of the newest :class:`ScribbleDelta` the trainer has taken in.
    scribbles_version: int = 0
    #: A warning for the user ("kept the previous scribbles: ..."), or "".
    message: str = ""

    @classmethod
    def of(cls, upd, version: int, message: str = "") -> Tick:
        return cls(
            step=upd.step,
            loss=upd.loss,
            train_accuracy=upd.train_accuracy,
            holdout_accuracy=upd.holdout_accuracy,
            elapsed=upd.elapsed,
            steps_per_second=upd.steps_per_second,
            scribbles_version=version,
            message=message,
        )


@dataclass(frozen=True)
class OverlayDelta:
    """A freshly predicted region of one slice: the arrays of that region only.

    ``region`` is ``(r0, r1, c0, c1)`` in the slice (of shape ``shape``);
    every array covers just that box. Pixels of the slice outside it keep
    what an earlier delta of the same slice (``index``) gave them.
    """

    index: tuple[int, ...]
    region: tuple[int, int, int, int]
    shape: tuple[int, int]
    #: ``(K, h, w)`` float32, NaN at invalid pixels.
    probabilities: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    #: float32, NaN at invalid pixels.
    uncertainty: np.ndarray = field(repr=False)
    #: uint8, 1 on the "is" side of the frontier (P("is") = 0.5), else 0.
    frontier: np.ndarray = field(repr=False)
    step: int = 0
    scribbles_version: int = 0
    seconds: float = 0.0
    #: Every pixel of the slice has now been predicted (by this or earlier deltas).
    complete: bool = False
    #: How much the prediction of this region changed since the last one
    #: (:class:`~napari_frontier.live.convergence.Stability`), None for a new region.
    stability: object = None
    #: The whole-slice prediction made when training stopped (or by a job).
    final: bool = False

    @property
    def p_is(self) -> np.ndarray:
        """P("is") of the region."""
        return self.probabilities[0]

    @property
    def slices(self) -> tuple[slice, slice]:
        r0, r1, c0, c1 = self.region
        return slice(r0, r1), slice(c0, c1)


@dataclass(frozen=True)
class Failed:
    """Training failed; the model keeps the last good weights."""

    error: BaseException


@dataclass(frozen=True)
class Stopped:
    """The last event: training has ended at ``step``; the model keeps its weights."""

    step: int


Event = Tick | OverlayDelta | Failed | Stopped


# -- prediction of the slice in view ----------------------------------------------------------
def clip_region(view, shape, max_pixels: int) -> tuple[int, int, int, int]:
    """``view`` clipped to the slice and shrunk around its centre to ``max_pixels``."""
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


class SlicePredictor:
    """Keeps the latest probabilities of one slice and refreshes the part in view.

    The slice is the whole image for a 2D image, or one slice (``index``) of
    a stack or time series. Live predictions cover the visible region (all of
    a small slice) and at most ``MAX_LIVE_PIXELS``; ``run(whole=True)``
    predicts the whole slice. Pixels not predicted yet are NaN. Only the
    region predicted (and its halo of context) is read from the image, with
    normalisation statistics of the whole image computed once, so a lazy
    (dask, zarr) image is never loaded whole. The buffers are allocated once
    and reused for every slice.
    """

    def __init__(self, seg, image, index: tuple[int, ...] = ()):
        self.seg = seg
        self.image = image
        self.layout = seg.layout(image)
        self.stats = seg.stats(image, self.layout)
        h, w = self.shape
        self.probs = np.empty((seg.n_classes, h, w), np.float32)
        self.uncertainty = np.empty((h, w), np.float32)
        self.frontier = np.empty((h, w), np.uint8)
        self.done = np.empty((h, w), bool)
        self.valid = np.empty((h, w), bool)
        self.index: tuple[int, ...] = ()
        self.monitor = StabilityMonitor()
        self.select(index, force=True)

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.yx

    def clip_index(self, index) -> tuple[int, ...]:
        lead = self.layout.lead_shape
        index = tuple(index or ())
        if len(index) != len(lead):
            index = (0,) * len(lead)
        return tuple(int(min(max(i, 0), n - 1)) for i, n in zip(index, lead, strict=True))

    def select(self, index, force: bool = False) -> None:
        """Show another slice (``index`` clipped to the stack): forget the predictions."""
        index = self.clip_index(index)
        if index == self.index and not force:
            return
        self.index = index
        self.probs.fill(np.nan)
        self.uncertainty.fill(np.nan)
        self.frontier.fill(0)
        self.done.fill(False)
        self.valid.fill(True)

    def _choose(self, region, whole: bool, focus=None) -> tuple[int, int, int, int]:
        h, w = self.shape
        small = h * w <= MAX_LIVE_PIXELS
        if whole or (small and not self.done.all()):
            return 0, h, 0, w
        r = clip_region((0, h, 0, w) if region is None else region, (h, w), MAX_LIVE_PIXELS)
        if focus is not None:
            m = FOCUS_MARGIN
            box = (
                max(r[0], focus[0] - m),
                min(r[1], focus[1] + m),
                max(r[2], focus[2] - m),
                min(r[3], focus[3] + m),
            )
            if box[0] < box[1] and box[2] < box[3]:  # the strokes are in view
                return clip_region(box, (h, w), FOCUS_PIXELS)
        if small and (r[1] - r[0]) * (r[3] - r[2]) >= REGION_FRACTION * h * w:
            return 0, h, 0, w
        return r

    def _predict(self, region) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from ..prediction.regions import predict_region

        seg = self.seg

        def run():
            return predict_region(
                seg.model_for_prediction(), seg.device, self.image, self.layout, self.stats,
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

    def run(
        self,
        view: View | None = None,
        step: int = 0,
        version: int = 0,
        whole: bool = False,
        final: bool = False,
        focus: tuple[int, int, int, int] | None = None,
    ) -> OverlayDelta:
        """Predict the part of the slice in ``view`` (or all of it); return that region.

        ``focus`` ``(r0, r1, c0, c1)``: new strokes there; once the slice has
        been predicted whole, predict only around them (within the view).
        """
        t0 = time.perf_counter()
        if view is not None:
            self.select(view.index)
        region = None if view is None else view.region
        h, w = self.shape
        r0, r1, c0, c1 = self._choose(region, whole or final, focus)
        core, valid = self._predict((slice(r0, r1), slice(c0, c1)))
        self.probs[:, r0:r1, c0:c1] = core
        self.valid[r0:r1, c0:c1] = valid
        u = uncertainty(np.nan_to_num(core, nan=1.0 / len(core)))
        u[~valid] = np.nan
        self.uncertainty[r0:r1, c0:c1] = u
        self.done[r0:r1, c0:c1] = True
        # The frontier of the refreshed region, with a 1-pixel rim so that it
        # joins up with what was there before: the delta covers the rim too.
        f0, f1, e0, e1 = max(0, r0 - 1), min(h, r1 + 1), max(0, c0 - 1), min(w, c1 + 1)
        box = (slice(f0, f1), slice(e0, e1))
        self.frontier[box] = frontier_mask(self.probs[(0, *box)])
        # Convergence signal: how much the class map of this region changed
        # (every second pixel of big regions: the same fraction, 4x cheaper).
        sub = 2 if core[0].size > 512 * 512 else 1
        labels = np.nan_to_num(core[:, ::sub, ::sub], nan=-1.0).argmax(0).astype(np.uint8) + 1
        labels[~valid[::sub, ::sub]] = 0
        stability = self.monitor.update(
            labels, step, key=(self.index, (r0, r1, c0, c1), version), scale=sub
        )
        return OverlayDelta(
            index=self.index,
            region=(f0, f1, e0, e1),
            shape=(h, w),
            probabilities=self.probs[(slice(None), *box)].copy(),
            valid=self.valid[box].copy(),
            uncertainty=self.uncertainty[box].copy(),
            frontier=self.frontier[box].copy(),
            step=step,
            scribbles_version=version,
            seconds=time.perf_counter() - t0,
            complete=bool(self.done.all()),
            final=final,
            stability=stability,
        )


# -- the trainer ---------------------------------------------------------------------
class LiveTrainer:
    """Trains a segmenter on one image while scribbles change; predicts what is in view.

    Parameters
    ----------
    segmenter
        A :class:`~napari_frontier.segmenter.Segmenter` (continues from its
        weights; keeps them when training stops or fails).
    image
        A 2D image, stack or time series (numpy, or a lazy array nobody
        changes while training runs).
    scribbles
        The scribbles at the start, copied when :meth:`run` starts; later
        changes reach the trainer only as :class:`ScribbleDelta` messages.
    view
        What is on screen at the start (default: the first slice, all of it).
    predict_interval
        Least time between live predictions.
    version
        Version of ``scribbles`` (reported back in events).
    copy_image
        Copy a numpy ``image`` when :meth:`run` starts (in its thread), for a
        caller whose array may change later (a viewer layer).
    wait_for_shown
        Predict again only after the driver called :meth:`shown` for the
        last :class:`OverlayDelta` (a viewer that draws in another thread
        then never has more than one overlay waiting).
    """

    def __init__(
        self,
        segmenter,
        image,
        scribbles,
        *,
        view: View | None = None,
        predict_interval: float = 0.3,
        version: int = 0,
        wait_for_shown: bool = False,
        copy_image: bool = False,
    ):
        self.segmenter = segmenter
        self.copy_image = copy_image
        self.image = image
        #: The trainer's own scribbles: a copy of ``scribbles`` made when
        #: :meth:`run` starts (in the thread that drives it), then updated by
        #: every delta. Deltas sent before then are applied on top: writing
        #: a box twice gives the same labels.
        self.scribbles = scribbles
        self.predict_interval = predict_interval
        self.wait_for_shown = wait_for_shown
        #: Version of the newest delta taken into training.
        self.version = version
        self._view = view or View()
        self._lock = threading.Lock()
        self._deltas: list[ScribbleDelta] = []
        self._new_view: View | None = None
        self._stop: Stop | None = None
        self._unshown = 0
        self._show_seconds = 0.0
        self._pending: tuple[slice, ...] | None = None
        self._pending_version = version
        self._counts: np.ndarray | None = None
        self._blocked = False
        #: Set while :meth:`run` executes code; clear while it waits at a
        #: ``yield`` (a worker that is quit leaves it waiting there for good).
        self.running = threading.Event()
        #: Set when :meth:`run` has finished.
        self.done = threading.Event()

    # -- messages (any thread) -----------------------------------------------------
    def send(self, message: ScribbleDelta | View | Stop) -> None:
        """Leave a message for the trainer (thread-safe; returns at once).

        Deltas are applied in the order sent; of views only the newest counts;
        a :class:`Stop` ends training at the next step.
        """
        with self._lock:
            if isinstance(message, ScribbleDelta):
                self._deltas.append(message)
            elif isinstance(message, View):
                self._new_view = message
            elif isinstance(message, Stop):
                final = message.final_prediction
                if self._stop is not None:
                    final = final and self._stop.final_prediction
                self._stop = Stop(final)
            else:
                raise TypeError(f"LiveTrainer cannot take {type(message).__name__}")

    def stop(self, final_prediction: bool = True) -> None:
        """Same as ``send(Stop(final_prediction))``."""
        self.send(Stop(final_prediction))

    def shown(self, seconds: float = 0.0) -> None:
        """The driver has shown an :class:`OverlayDelta`, which took ``seconds``."""
        with self._lock:
            self._unshown = max(0, self._unshown - 1)
            self._show_seconds = float(seconds)

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until :meth:`run` has finished or waits at a ``yield``; False on timeout."""
        deadline = time.perf_counter() + timeout
        while self.running.is_set() and not self.done.is_set():
            if time.perf_counter() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _take(self):
        with self._lock:
            deltas, self._deltas = self._deltas, []
            view, self._new_view = self._new_view, None
            return self._stop, view, deltas, self._unshown, self._show_seconds

    # -- the loop (one thread) ---------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        return self.run()

    def run(self) -> Generator[Event, None, None]:
        """Train until :class:`Stop`; yield :class:`Tick` and :class:`OverlayDelta` events.

        Errors end the run with :class:`Failed` (then :class:`Stopped`)
        instead of being raised, so the driver decides how to show them.
        """
        self.running.set()
        try:
            for event in self._run():
                self.running.clear()
                yield event
                self.running.set()
        finally:
            self.running.clear()
            self.done.set()

    def _run(self):
        seg = self.segmenter
        try:
            self.scribbles = np.array(self.scribbles, copy=True)
            if self.copy_image and isinstance(self.image, np.ndarray):
                self.image = np.array(self.image, copy=True)
            predictor = SlicePredictor(seg, self.image, self._view.index)
            gen = seg.training(self.image, self.scribbles)
            upd = next(gen)
        except Exception as exc:
            yield Failed(exc)
            yield Stopped(seg.step)
            return
        try:
            from ..data.scribbles import class_counts

            self._counts = class_counts(self.scribbles, seg.n_classes)
            yield Tick.of(upd, self.version)
            next_predict = time.perf_counter() + self.predict_interval
            focus = None  # where the strokes just trained on are (index, yx box)
            while True:
                stop, view, deltas, unshown, show_seconds = self._take()
                message = self._apply(deltas) if deltas else ""
                if stop is not None:
                    break
                if view is not None:
                    if predictor.clip_index(view.index) != predictor.index:
                        next_predict = time.perf_counter()  # another slice: show it at once
                    self._view = view
                if deltas and not self._blocked and self._pending is not None:
                    change = ScribbleDelta.of(self.scribbles, self._pending, self._pending_version)
                    self._pending = None
                    upd = gen.send(change)  # trains on it until the next update
                    self.version = change.version
                    box = change.region
                    focus = (
                        tuple(s.start for s in box[:-2]),
                        (box[-2].start, box[-2].stop, box[-1].start, box[-1].stop),
                    )
                    next_predict = time.perf_counter()  # show its effect now
                else:
                    upd = next(gen)
                yield Tick.of(upd, self.version, message or upd.message)
                ready = not self.wait_for_shown or unshown == 0
                if ready and time.perf_counter() >= next_predict and not self.stopping:
                    here = focus is not None and focus[0] == predictor.clip_index(self._view.index)
                    overlay = predictor.run(
                        self._view, upd.step, self.version, focus=focus[1] if here else None
                    )
                    focus = None
                    with self._lock:
                        self._unshown += 1
                    wait = max(
                        self.predict_interval,
                        TRAIN_SHARE * overlay.seconds,
                        SHOW_SHARE * show_seconds,
                    )
                    next_predict = time.perf_counter() + wait
                    yield overlay
            gen.close()
            if self._stop.final_prediction:
                yield predictor.run(self._view, seg.step, self.version, final=True)
        except Exception as exc:
            yield Failed(exc)
        finally:
            gen.close()
        yield Stopped(seg.step)

    def _apply(self, deltas: list[ScribbleDelta]) -> str:
        """Write deltas into the trainer's scribbles; "" or why they are not trained on yet."""
        k = self.segmenter.n_classes
        shape = self.scribbles.shape
        problem = ""
        for delta in deltas:
            start = tuple(int(s) for s in delta.start)
            try:
                labels = validate_scribbles(
                    delta.labels, k, shape, require_all_classes=False, start=start
                )
            except (ScribbleError, ShapeMismatchError) as exc:
                problem = str(exc)
                continue
            region = tuple(slice(s, s + n) for s, n in zip(start, labels.shape, strict=True))
            self._counts += class_counts(labels, k) - class_counts(self.scribbles[region], k)
            self.scribbles[region] = labels
            self._pending = union_box(self._pending, region)
            self._pending_version = max(self._pending_version, delta.version)
        missing = missing_classes(self._counts, self.segmenter.class_names)
        #: The trainer's scribbles lack a class: they wait (in ``_pending``)
        #: until it is painted again; training goes on with the last good ones.
        self._blocked = bool(missing)
        problem = problem or missing
        return f"kept the previous scribbles: {problem}" if problem else ""
