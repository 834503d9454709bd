"""A convergence signal and stop: "more training changes little now".

Successive class maps of one fixed region, each with the training step it was
predicted at, go into a :class:`StabilityMonitor`. It keeps a **checkpoint**
every ``every`` steps (steps, not seconds: the same on any machine and load)
and measures how far the frontier moved between two maps: the pixels whose
class changed over the frontier's length in pixels, i.e. the mean
displacement of the frontier, whatever the image size or number of objects.

The predicted labels never stop changing: the learning rate stays constant,
so the weights (and their average) keep moving and the frontier wobbles by
0.2 px (nuclei) to 3 px (texture boundaries) between checkpoints, as much
after 7500 steps as after 2500 (``benchmarks/until_stable.py noise``). So the
rule asks whether the changes still **add up**: the prediction is stable
once, after ``min_steps``, the frontier moved over the last ``window``
checkpoints (oldest to newest) at most ``ratio`` times the mean move between
consecutive ones (a steady drift moves ``window`` times as far; a wobble
about as far as one step), or at most ``level`` pixels however it got there.
What more training would change is then below what the prediction wobbles
by anyway. Defaults chosen on half of the benchmark cases, checked on the
other half (benchmarks/RESULTS.md).

:func:`fit_until_stable` trains until then (or a time / step cap); the
``frontier train --until-stable`` command drives it, and the live widget's
status line shows :meth:`Stability.describe`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Steps between the checkpoints compared.
DEFAULT_EVERY = 250
#: Checkpoints looked back: the window spans ``window * every`` steps (a
#: drift half as fast as one of 1000 steps is still seen).
DEFAULT_WINDOW = 8
#: The window's move may be this many times the mean consecutive move.
DEFAULT_RATIO = 1.5
#: ... or this many pixels (a frontier that hardly wobbles).
DEFAULT_LEVEL = 1.5
#: No stop before this training step: the default budget of ``frontier train``
#: (60 s at 25 steps/s), which is long enough to fit the strokes.
DEFAULT_MIN_STEPS = 1500
#: The probe is the whole slice up to this many pixels, else a crop of this
#: size around the painted pixels.
PROBE_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Stability:
    """One measurement of a :class:`StabilityMonitor`.

    ``changed`` (fraction of the valid pixels) and ``moved`` (mean frontier
    displacement, pixels) compare with the last checkpoint, ``steps`` before
    (None for the first map); ``window_moved`` compares with the checkpoint
    ``window_steps`` before and ``wobble`` is the mean move between
    consecutive checkpoints in between (None until the history is that long).
    """

    step: int
    changed: float | None
    moved: float | None
    steps: int
    window_moved: float | None
    window_steps: int
    wobble: float | None
    stable: bool

    def describe(self) -> str:
        """What the status line says: stable (stop when you like) or what is still changing."""
        if self.changed is None:
            return "stability: first prediction"
        if self.stable:
            return (
                "stable — more training changes little; stop when you like (frontier moved "
                f"{self.window_moved:.1f} px in {self.window_steps} steps, "
                f"wobbles {self.wobble:.1f} px)"
            )
        if self.window_moved is not None:
            return (
                f"changing: frontier moved {self.window_moved:.1f} px in the last "
                f"{self.window_steps} steps (wobbles {self.wobble:.1f} px)"
            )
        return (
            f"changing: {100 * self.changed:.2f} % changed, frontier moved "
            f"{self.moved:.1f} px in the last {self.steps} steps"
        )


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

    0 when neither has a frontier, NaN when only one has. (Exact but needs
    distance transforms; :func:`frontier_moved` is the cheap estimate the
    monitor uses.)
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


def frontier_moved(old: np.ndarray, new: np.ndarray, lengths=None) -> float:
    """Mean displacement (pixels) of the frontier from ``old`` to ``new``.

    The pixels (valid in both) whose class changed over the mean frontier
    length of the two maps: a frontier shifted by ``s`` pixels gives ``s``,
    a flicker of a fraction ``f`` of its pixels gives ``f``. 0 when nothing
    changed, infinite when something changed and neither map has a frontier.
    ``lengths``: the two frontier lengths, if known.
    """
    both = (old > 0) & (new > 0)
    n = int(((old != new) & both).sum())
    if n == 0:
        return 0.0
    la, lb = (
        lengths
        if lengths is not None
        else (int(frontier_pixels(old).sum()), int(frontier_pixels(new).sum()))
    )
    length = (la + lb) / 2
    return n / length if length > 0 else math.inf


class StabilityMonitor:
    """Feed it successive class maps of one region with their step; it says when they settle.

    Parameters
    ----------
    ratio
        Largest move over the window, in mean consecutive moves, that is stable.
    level
        Largest move over the window (pixels) that is stable whatever the wobble.
    every
        Steps between checkpoints.
    window
        Checkpoints looked back.
    min_steps
        No stable verdict before this training step.

    Maps between checkpoints are measured against the last checkpoint (a live
    signal) but not kept. A map of another shape, another ``key`` (e.g. the
    region in view, the strokes' version) or an earlier step starts over.
    """

    def __init__(
        self,
        ratio: float = DEFAULT_RATIO,
        level: float = DEFAULT_LEVEL,
        every: int = DEFAULT_EVERY,
        window: int = DEFAULT_WINDOW,
        min_steps: int = DEFAULT_MIN_STEPS,
    ):
        if ratio < 0 or level < 0 or every < 1 or window < 1 or min_steps < 0:
            raise ValueError("ratio, level, min_steps must not be negative; every, window >= 1")
        self.ratio = float(ratio)
        self.level = float(level)
        self.every = int(every)
        self.window = int(window)
        self.min_steps = int(min_steps)
        self.reset()

    def reset(self) -> None:
        # checkpoints: (step, labels, frontier length); consecutive moves between them
        self._history: deque[tuple[int, np.ndarray, int]] = deque(maxlen=self.window + 1)
        self._moves: deque[float] = deque(maxlen=self.window)
        self._key = None
        self._allowed = -1.0  # the largest move that was stable at the last checkpoint
        self.last: Stability | None = None

    def update(self, labels: np.ndarray, step: int, key=None, scale: float = 1.0) -> Stability:
        """Add the class map predicted at training step ``step`` and measure.

        ``scale``: image pixels per map pixel (2 for a map of every second
        pixel), so displacements are in image pixels.
        """
        step = int(step)
        if self._history and (
            key != self._key
            or labels.shape != self._history[-1][1].shape
            or step < self._history[-1][0]
        ):
            self.reset()
        self._key = key
        length = int(frontier_pixels(labels).sum())
        if not self._history:
            self._history.append((step, np.array(labels, copy=True), length))
            self.last = Stability(step, None, None, 0, None, 0, None, False)
            return self.last
        ref_step, ref, ref_len = self._history[-1]
        changed = changed_fraction(ref, labels)
        moved = scale * frontier_moved(ref, labels, (ref_len, length))
        last = self.last
        if step < (ref_step // self.every + 1) * self.every:
            # between checkpoints: measured, not kept; stable while still as near the last one
            self.last = Stability(
                step, changed, moved, step - ref_step, last.window_moved, last.window_steps,
                last.wobble, last.stable and moved <= self._allowed,
            )  # fmt: skip
            return self.last
        self._history.append((step, np.array(labels, copy=True), length))
        self._moves.append(moved)
        win, win_steps, wobble, stable = None, 0, None, False
        if len(self._history) == self.window + 1:
            first_step, first, first_len = self._history[0]
            win = scale * frontier_moved(first, labels, (first_len, length))
            win_steps = step - first_step
            wobble = float(np.mean(self._moves))
            self._allowed = max(self.level, self.ratio * wobble)
            # (an infinite move: something changed where there was no frontier)
            stable = step >= self.min_steps and math.isfinite(wobble) and win <= self._allowed
        self.last = Stability(
            step, changed, moved, step - ref_step, win, win_steps, wobble, stable
        )  # fmt: skip
        return self.last


def probe_region(
    shape: tuple[int, int], scribbles: np.ndarray | None = None, pixels: int = PROBE_PIXELS
) -> tuple[slice, slice]:
    """The region of a (Y, X) ``shape`` the stop is measured on.

    The whole slice if it has at most ``pixels``; else a square crop of that
    many pixels (clipped to the slice) centred on the painted pixels' box
    (on the slice's centre without ``scribbles`` or strokes).
    """
    h, w = shape
    if h * w <= pixels:
        return slice(0, h), slice(0, w)
    side = math.isqrt(pixels)
    sh, sw = min(side, h), min(side, w)
    if sh < side:  # a thin slice: use the length the height leaves
        sw = min(w, pixels // sh)
    elif sw < side:
        sh = min(h, pixels // sw)
    cy, cx = h // 2, w // 2
    if scribbles is not None:
        ys, xs = np.nonzero(np.asarray(scribbles) > 0)
        if ys.size:
            cy, cx = (int(ys.min()) + int(ys.max())) // 2, (int(xs.min()) + int(xs.max())) // 2
    y0 = min(max(cy - sh // 2, 0), h - sh)
    x0 = min(max(cx - sw // 2, 0), w - sw)
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


def probe_of(segmenter, image, scribbles) -> tuple[tuple[int, ...], tuple[slice, slice]]:
    """The slice index and region :func:`fit_until_stable` predicts: the first painted
    slice of the (first) image and :func:`probe_region` of it."""
    first = image[0] if isinstance(image, (list, tuple)) else image
    marks = np.asarray(scribbles[0] if isinstance(scribbles, (list, tuple)) else scribbles)
    layout = segmenter.layout(first)
    index: tuple[int, ...] = ()
    if layout.lead_shape:
        painted = (marks.reshape(layout.n_slices, -1) > 0).any(1)
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(painted)), layout.lead_shape))
    plane = marks[index] if index else marks
    return index, probe_region(tuple(layout.yx), plane)


@dataclass(frozen=True)
class StableFit:
    """How :func:`fit_until_stable` ended: ``reason`` is ``"stable"``, ``"time limit"``,
    ``"step limit"`` or ``"ended"`` (the training generator finished for another reason)."""

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
    ratio: float = DEFAULT_RATIO,
    level: float = DEFAULT_LEVEL,
    every: int = DEFAULT_EVERY,
    window: int = DEFAULT_WINDOW,
    min_steps: int = DEFAULT_MIN_STEPS,
    callback: Callable[[object, Stability | None], None] | None = None,
) -> StableFit:
    """Train until the prediction is stable (see :class:`StabilityMonitor`), or a cap.

    At the first training update every ``every`` steps the probe (the whole
    first painted slice of the first image, or a crop of it of
    :data:`PROBE_PIXELS` around the strokes: :func:`probe_of`) is predicted
    and fed to a :class:`StabilityMonitor`. ``min_steps`` counts the
    segmenter's steps (a model trained further starts over the window but
    not the minimum). ``callback(update, stability)`` is called on every
    training update (``stability``: the latest measurement, or None).

    Returns
    -------
    StableFit
        Why it stopped, the last training update and the last measurement.
    """
    if max_seconds is None and max_steps is None:
        raise ValueError("give max_seconds or max_steps (or both) to cap training")
    first = image[0] if isinstance(image, (list, tuple)) else image
    index, region = probe_of(segmenter, image, scribbles)
    monitor = StabilityMonitor(ratio, level, every, window, min_steps)
    gen = segmenter.training(image, scribbles, seconds=max_seconds, steps=max_steps)
    stats = None
    last, st, checks, next_check = None, None, 0, -1
    start_step = segmenter.step
    reason = None
    try:
        for upd in gen:
            last = upd
            if upd.step >= next_check:
                if stats is None:
                    stats = segmenter.stats(first)
                pred = segmenter.predict_region(first, index, region, stats=stats)
                st = monitor.update(pred.labels, upd.step)
                checks += 1
                next_check = (upd.step // every + 1) * every
            if callback is not None:
                callback(upd, st)
            if st is not None and st.stable:
                reason = "stable"
                break
    finally:
        gen.close()
    if reason is None:
        steps_done = segmenter.step - start_step
        if max_steps is not None and steps_done >= max_steps:
            reason = "step limit"
        elif max_seconds is not None and last is not None and last.elapsed >= max_seconds:
            reason = "time limit"
        else:
            reason = "ended"
    return StableFit(reason, last, st, checks)
