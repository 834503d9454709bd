"""A convergence signal: "more training changes nothing now".

Successive predictions of one fixed region (class maps, with the time each
was made) go into a :class:`StabilityMonitor`. Between consecutive maps it
measures the fraction of pixels whose class changed and how far the frontier
moved (mean distance in pixels, both ways, from distance transforms). The
prediction is **stable** once, over the last ``window`` seconds, no
consecutive change and no change from the map ``window`` seconds ago to now
exceeds ``threshold`` (a fraction of the region's pixels): so neither a jump
nor a slow drift nor a flicker back and forth passes for stable.

:func:`fit_until_stable` trains until then (or a time / step cap); the
``frontier train --until-stable`` command drives it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Defaults: at most 0.1 % of the pixels changed in the last 20 s, checked every 2 s.
DEFAULT_THRESHOLD = 0.001
DEFAULT_WINDOW = 20.0
DEFAULT_INTERVAL = 2.0
#: Side of the region predicted to measure stability (a central crop).
PROBE_SIDE = 256


@dataclass(frozen=True)
class Stability:
    """One measurement of a :class:`StabilityMonitor`.

    ``changed`` and ``frontier_shift`` compare with the previous map (None for
    the first, ``frontier_shift`` NaN when one of the maps has no frontier);
    ``window_changed`` compares with the map ``window`` seconds ago (None until
    the history is that long); ``stable_for`` is how long the prediction has
    stayed within the threshold.
    """

    time: float
    changed: float | None
    frontier_shift: float | None
    window_changed: float | None
    window: float
    stable_for: float
    stable: bool

    def describe(self) -> str:
        """``"stable: 0.05 % changed in the last 20 s"``, or what is still changing."""
        if self.changed is None:
            return "stability: first prediction"
        if self.stable:
            return (
                f"stable: {100 * self.window_changed:.2f} % changed in the last {self.window:g} s"
            )
        shift = (
            ""
            if self.frontier_shift is None or math.isnan(self.frontier_shift)
            else f", frontier moved {self.frontier_shift:.2f} px"
        )
        return f"changing: {100 * self.changed:.2f} % changed{shift}"


def frontier_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels (bool) on the lower-class side of every boundary between two classes.

    One pixel wide (not two, as an inner boundary of both sides would be), so a
    frontier moved by ``s`` pixels is ``s`` pixels from where it was. Class 0
    (no-data) has no frontier.
    """
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, bool)
    for axis in (-2, -1):
        a = [slice(None)] * lab.ndim
        b = [slice(None)] * lab.ndim
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        lo, hi = lab[a], lab[b]
        differ = (lo != hi) & (lo > 0) & (hi > 0)
        edge[a] |= differ & (lo < hi)
        edge[b] |= differ & (hi < lo)
    return edge


def frontier_shift(old: np.ndarray, new: np.ndarray) -> float:
    """Mean distance (pixels) between the frontiers of two class maps, averaged both ways.

    0 when neither has a frontier, NaN when only one has.
    """
    from scipy.ndimage import distance_transform_edt

    fa, fb = frontier_pixels(old), frontier_pixels(new)
    if not fa.any() and not fb.any():
        return 0.0
    if not fa.any() or not fb.any():
        return float("nan")
    to_a = distance_transform_edt(~fa)[fb].mean()
    to_b = distance_transform_edt(~fb)[fa].mean()
    return float((to_a + to_b) / 2)


def changed_fraction(old: np.ndarray, new: np.ndarray) -> float:
    """Fraction of pixels (valid in both: class > 0) whose class differs."""
    both = (old > 0) & (new > 0)
    n = int(both.sum())
    return float(((old != new) & both).sum() / n) if n else 0.0


class StabilityMonitor:
    """Feed it successive class maps of one region; it says when they stop changing.

    Parameters
    ----------
    threshold
        Largest fraction of pixels allowed to change (0.001 = 0.1 %).
    window
        Seconds the prediction must stay within ``threshold``.
    max_shift
        Optionally also require the frontier to move at most this many pixels
        between consecutive maps.

    A map of another shape, or another ``key`` (e.g. the region in view),
    starts over.
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        window: float = DEFAULT_WINDOW,
        max_shift: float | None = None,
    ):
        if threshold < 0 or window < 0:
            raise ValueError("threshold and window must not be negative")
        self.threshold = float(threshold)
        self.window = float(window)
        self.max_shift = max_shift
        self.reset()

    def reset(self) -> None:
        self._history: deque[tuple[float, np.ndarray]] = deque()
        self._calm_since: float | None = None
        self._key = None
        self.last: Stability | None = None

    def update(self, labels: np.ndarray, t: float | None = None, key=None) -> Stability:
        """Add the class map predicted at time ``t`` (default: now) and measure."""
        t = time.monotonic() if t is None else float(t)
        labels = np.array(labels, copy=True)
        if self._history and (key != self._key or labels.shape != self._history[-1][1].shape):
            self.reset()
        self._key = key
        if not self._history:
            self._history.append((t, labels))
            self._calm_since = t
            self.last = Stability(t, None, None, None, self.window, 0.0, False)
            return self.last
        prev = self._history[-1][1]
        changed = changed_fraction(prev, labels)
        shift = frontier_shift(prev, labels)
        calm = changed <= self.threshold and (
            self.max_shift is None or (not math.isnan(shift) and shift <= self.max_shift)
        )
        if not calm:
            self._calm_since = t
        self._history.append((t, labels))
        # keep one map at least `window` old: the reference for the window's change
        while len(self._history) > 2 and self._history[1][0] <= t - self.window:
            self._history.popleft()
        ref_t, ref = self._history[0]
        window_changed = changed_fraction(ref, labels) if ref_t <= t - self.window else None
        stable_for = t - self._calm_since
        stable = (
            window_changed is not None
            and window_changed <= self.threshold
            and stable_for >= self.window
        )
        self.last = Stability(t, changed, shift, window_changed, self.window, stable_for, stable)
        return self.last


def probe_region(shape: tuple[int, int], side: int = PROBE_SIDE) -> tuple[slice, slice]:
    """A central crop of at most ``side`` × ``side`` of an image of (Y, X) ``shape``."""
    h, w = shape
    sh, sw = min(side, h), min(side, w)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


@dataclass(frozen=True)
class StableFit:
    """How :func:`fit_until_stable` ended: ``reason`` is ``"stable"``, ``"time limit"``
    or ``"step limit"``."""

    reason: str
    update: object  # the last TrainUpdate
    stability: Stability | None
    checks: int


def fit_until_stable(
    segmenter,
    image,
    scribbles,
    max_seconds: float | None = 300.0,
    max_steps: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    window: float = DEFAULT_WINDOW,
    interval: float = DEFAULT_INTERVAL,
    callback: Callable[[object, Stability | None], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> StableFit:
    """Train until the prediction has been stable for ``window`` seconds, or a cap.

    Every ``interval`` seconds (at the next training update) a fixed region is
    predicted (a central crop of up to 256 × 256 of the first image, on its
    first painted slice for a stack) and fed to a :class:`StabilityMonitor`.
    ``callback(update, stability)`` is called on every training update
    (``stability``: the latest measurement, or None). ``clock`` gives the
    monitor's time (seconds).

    Returns
    -------
    StableFit
        Why it stopped, the last training update and the last measurement.
    """
    if max_seconds is None and max_steps is None:
        raise ValueError("give max_seconds or max_steps (or both) to cap training")
    images = image if isinstance(image, (list, tuple)) else [image]
    marks = scribbles if isinstance(scribbles, (list, tuple)) else [scribbles]
    first, first_marks = images[0], np.asarray(marks[0])
    layout = segmenter.layout(first)
    index: tuple[int, ...] = ()
    if layout.lead_shape:
        painted = (first_marks.reshape(layout.n_slices, -1) > 0).any(1)
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(painted)), layout.lead_shape))
    region = probe_region(tuple(layout.scribble_shape[-2:]))
    monitor = StabilityMonitor(threshold, window)
    gen = segmenter.training(image, scribbles, seconds=max_seconds, steps=max_steps)
    stats = None
    last, st, checks, next_check = None, None, 0, -math.inf
    start_step = segmenter.step
    reason = None
    try:
        for upd in gen:
            last = upd
            now = clock()
            if now >= next_check:
                if stats is None:
                    stats = segmenter.stats(first, layout)
                pred = segmenter.predict_region(first, index, region, stats=stats)
                st = monitor.update(pred.labels, now)
                checks += 1
                next_check = now + interval
            if callback is not None:
                callback(upd, st)
            if st is not None and st.stable:
                reason = "stable"
                break
    finally:
        gen.close()
    if reason is None:
        steps_done = segmenter.step - start_step
        reason = "step limit" if max_steps is not None and steps_done >= max_steps else "time limit"
    return StableFit(reason, last, st, checks)
