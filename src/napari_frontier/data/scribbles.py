"""Label conventions: void, "is", "is not" and K user classes.

Scribbles are integer images where ``0`` (:data:`VOID`) means *not painted*
and ``1..K`` are the painted classes. With two classes, ``1`` is "is"
(:data:`IS`) and ``2`` is "is not" (:data:`IS_NOT`).

For the network, scribbles become *targets*: class ``k`` becomes index
``k - 1`` and every void or invalid pixel becomes :data:`IGNORE`, so a
prediction is always one of the painted classes and never void.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ScribbleError, ShapeMismatchError

VOID = 0
IS = 1
IS_NOT = 2
IGNORE = -1
DEFAULT_CLASS_NAMES = ("is", "is not")


def validate_scribbles(
    scribbles: np.ndarray,
    n_classes: int = 2,
    shape: tuple[int, ...] | None = None,
    require_all_classes: bool = True,
    *,
    start: tuple[int, ...] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Check scribbles (or a box of them) and return them as an ``int64`` label array.

    Parameters
    ----------
    scribbles
        Integer (or bool) array, 0 = void, 1..K = classes.
    n_classes
        Number of classes K.
    shape
        The shape of the image's scribbles (the image's without channels): the
        scribbles must have it or, with ``start``, lie inside it; otherwise
        :class:`ShapeMismatchError`.
    require_all_classes
        Raise :class:`ScribbleError` unless every class has a painted pixel.
        Not for a box: it may lack a class painted elsewhere (count the
        whole, then :func:`missing_classes`).
    start
        The scribbles are the box of the image's scribbles that starts at this
        index on every axis (the new labels of a :class:`ScribbleDelta`).
    class_names
        The classes' names in messages (default :func:`default_class_names`).

    Returns
    -------
    numpy.ndarray
        The scribbles as ``int64``.
    """
    scribbles = np.asarray(scribbles)
    if start is not None and require_all_classes:
        raise ValueError("a box of the scribbles may lack a class: give require_all_classes=False")
    if shape is not None and not _fits(scribbles.shape, shape, start):
        where = "" if start is None else f" from {tuple(start)}"
        raise ShapeMismatchError(
            f"scribbles have shape {scribbles.shape}{where} but the image is {tuple(shape)}; "
            "paint the scribbles on a layer of the same size as the image"
        )
    if scribbles.dtype == bool:
        scribbles = scribbles.astype(np.int64)
    if scribbles.dtype.kind == "f":
        if not np.all(np.isfinite(scribbles)) or np.any(scribbles != np.round(scribbles)):
            raise ScribbleError("scribbles must hold whole numbers (0 = void, 1..K = classes)")
    elif scribbles.dtype.kind not in "iu":
        raise ScribbleError(f"scribbles must be an integer image, got dtype {scribbles.dtype}")
    if scribbles.size:
        lo, hi = scribbles.min(), scribbles.max()
        if lo < 0 or hi > n_classes:
            raise ScribbleError(
                f"scribbles hold values from {lo} to {hi}, but only 0 (void) and "
                f"1..{n_classes} (classes) are allowed"
            )
    scribbles = scribbles.astype(np.int64, copy=False)
    if require_all_classes:
        problem = missing_classes(class_counts(scribbles, n_classes), class_names)
        if problem:
            raise ScribbleError(problem)
    return scribbles


def _fits(box: tuple[int, ...], shape: tuple[int, ...], start: tuple[int, ...] | None) -> bool:
    if start is None:
        return tuple(box) == tuple(shape)
    return len(start) == len(box) == len(shape) and all(
        s >= 0 and s + n <= m for s, n, m in zip(start, box, shape)
    )


def default_class_names(n_classes: int) -> tuple[str, ...]:
    """ "is" and "is not" for two classes, else the numbers 1..K."""
    if n_classes == 2:
        return DEFAULT_CLASS_NAMES
    return tuple(str(k) for k in range(1, n_classes + 1))


def missing_classes(
    counts, class_names: tuple[str, ...] | None = None, on_valid_pixels: bool = False
) -> str:
    """Why training cannot start: the classes with no painted pixel, or "" if none.

    ``counts``: painted pixels of each class 1..K (:func:`class_counts`);
    ``on_valid_pixels``: they count valid image pixels only.
    """
    missing = [k + 1 for k, n in enumerate(counts) if n <= 0]
    if not missing:
        return ""
    names = class_names or default_class_names(len(counts))
    which = ", ".join(
        str(k) if names[k - 1] == str(k) else f'{k} ("{names[k - 1]}")' for k in missing
    )
    where = " (on valid image pixels)" if on_valid_pixels else ""
    return f"no painted pixel{where} for class {which}; paint at least one stroke of every class"


def class_counts(scribbles: np.ndarray, n_classes: int) -> np.ndarray:
    """Painted pixel count of each class 1..K (index 0 is class 1)."""
    counts = np.bincount(np.asarray(scribbles).ravel().astype(np.int64), minlength=n_classes + 1)
    return counts[1 : n_classes + 1]


def to_targets(scribbles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Scribbles (0 void, 1..K) to network targets (IGNORE, 0..K-1).

    Pixels where ``valid`` is False (no-data input) are IGNORE even if painted.
    """
    targets = np.asarray(scribbles).astype(np.int64) - 1
    if valid is not None:
        targets[~valid] = IGNORE
    return targets


def split_strokes(
    scribbles: np.ndarray,
    n_classes: int,
    holdout_fraction: float,
    rng: np.random.Generator,
    min_strokes: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Split scribbles into training and held-out strokes.

    A stroke is a connected component of one class. A class with fewer than
    ``min_strokes`` strokes gives none away, so every class always keeps
    training pixels.

    Returns
    -------
    (train, holdout)
        Two scribble arrays of the input's shape.
    """
    from scipy import ndimage

    scribbles = np.asarray(scribbles)
    train = scribbles.copy()
    holdout = np.zeros_like(scribbles)
    if holdout_fraction <= 0:
        return train, holdout
    structure = ndimage.generate_binary_structure(scribbles.ndim, scribbles.ndim)
    for k in range(1, n_classes + 1):
        components, n = ndimage.label(scribbles == k, structure=structure)
        if n < min_strokes:
            continue
        n_out = min(n - 1, max(1, round(n * holdout_fraction)))
        chosen = rng.choice(np.arange(1, n + 1), size=n_out, replace=False)
        out = np.isin(components, chosen)
        holdout[out] = k
        train[out] = VOID
    return train, holdout


@dataclass(frozen=True)
class ScribbleDelta:
    """New labels of a box of the scribbles: what one edit (a stroke, a fill) changed.

    ``start`` is the box's first index on every axis of the scribbles (slice
    axes, then Y, X) and ``labels`` its new content, so the box is
    ``labels.shape`` from ``start``. A running trainer applies it without
    re-reading the rest of the scribbles.
    """

    start: tuple[int, ...]
    labels: np.ndarray = field(repr=False)
    #: Counts up with every edit the sender makes (reported back in overlays).
    version: int = 0

    @property
    def region(self) -> tuple[slice, ...]:
        """The box as one slice per axis."""
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.labels.shape, strict=True))

    @classmethod
    def of(cls, scribbles, region: tuple[slice, ...], version: int = 0) -> ScribbleDelta:
        """A private copy of ``scribbles[region]`` (``region``: one slice per axis)."""
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, np.shape(scribbles)))
        labels = np.array(scribbles[region], copy=True)
        return cls(tuple(s.start for s in region), labels, version)


def union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box (one slice per axis, steps of 1) holding both boxes; None is empty."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(
        slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
    )


def changed_box(old: np.ndarray, new: np.ndarray, chunk: int = 1 << 22) -> tuple[slice, ...] | None:
    """Bounding box of the elements that differ between two arrays of one shape (None: none).

    Compares ``chunk`` elements at a time along the first axis, so the
    temporary arrays stay small even for a large stack.
    """
    if old.shape != new.shape:
        raise ValueError(f"shapes differ: {old.shape} and {new.shape}")
    if old.ndim == 0:
        return () if old != new else None
    n0 = old.shape[0]
    per = max(1, chunk // max(1, int(np.prod(old.shape[1:]))))
    lo = [None] * old.ndim
    hi = [None] * old.ndim
    for i in range(0, n0, per):
        diff = old[i : i + per] != new[i : i + per]
        if not diff.any():
            continue
        for axis in range(old.ndim):
            other = tuple(a for a in range(old.ndim) if a != axis)
            hit = np.flatnonzero(diff.any(axis=other) if other else diff)
            a, b = int(hit[0]), int(hit[-1]) + 1
            if axis == 0:
                a, b = a + i, b + i
            lo[axis] = a if lo[axis] is None else min(lo[axis], a)
            hi[axis] = b if hi[axis] is None else max(hi[axis], b)
    if lo[0] is None:
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
