"""What a training run learns from: the painted slices of its images, as patch samplers.

:class:`TrainingData` checks images and scribbles, reads and normalises
only the slices of a stack that carry strokes (so a Zarr or dask stack is
never loaded whole), splits the strokes into training and held-out ones,
and takes new scribbles (whole, or the box of a
:class:`~napari_frontier.data.scribbles.ScribbleDelta`) while training runs.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ..data.layout import Layout
from ..data.normalise import NormalisedSlice, Prepared, compute_stats, prepare_slice
from ..data.scribbles import (
    IGNORE,
    ScribbleDelta,
    class_counts,
    missing_classes,
    split_strokes,
    to_targets,
    validate_scribbles,
)
from ..errors import ImageError, ScribbleError
from .config import TrainConfig
from .sampling import PatchSampler

#: Normalised slices of an in-memory stack kept while training (the rest are
#: normalised again when painted: patches are read on demand).
_KEEP_SLICES = 2

#: Bytes of image features kept while training; slices beyond it are computed again when drawn.
FEATURE_BUDGET = 1 << 30


class FreshTargets(NamedTuple):
    """Targets that new scribbles gave a region, before they train (test-then-train)."""

    x: np.ndarray  #: the slice's network input ``(C + 1, H, W)``
    old: np.ndarray  #: the region's training targets before
    new: np.ndarray  #: ... and after
    origin: tuple[int, int]  #: the region's first row and column


class TrainingData:
    """The painted slices of one or more images and their training / held-out samplers.

    Parameters
    ----------
    images
        2D images or stacks (slice axes before Y, X), numpy or lazy arrays.
    scribbles
        One label array per image, of its shape without channels.
    layouts
        How each image's axes are read (:func:`~napari_frontier.data.layout.make_layout`).
    n_classes, class_names
        The painted classes.
    nodata, percentiles
        Normalisation, as the segmenter does it.
    config
        The training settings (patch size, held-out share, seed, jitter).
    features
        ``(features of a slice's network input, channels, stride)`` when the
        network reads image features computed once per slice (None: it does not).
    """

    def __init__(
        self,
        images: list,
        scribbles: list,
        layouts: list[Layout],
        *,
        n_classes: int,
        class_names: tuple[str, ...],
        nodata: float | None,
        percentiles: tuple[float, float],
        config: TrainConfig,
        features: tuple[Callable[[np.ndarray], np.ndarray], int, int] | None = None,
    ):
        self._features = None if features is None else _FeatureCache(*features, self)
        for lay in layouts:
            n = int(np.prod(lay.scribble_shape[-2:]))
            if n < 2:
                raise ImageError(f"the image has only {n} pixel: too small to learn anything from")
        checked = [
            validate_scribbles(s, n_classes, shape=lay.scribble_shape, require_all_classes=False)
            for lay, s in zip(layouts, scribbles, strict=True)
        ]
        self.images = images
        self.layouts = layouts
        self.n_classes = n_classes
        self.class_names = class_names
        self.nodata = nodata
        self.config = config
        self.stats = [
            compute_stats(im, lay, nodata, percentiles)
            for im, lay in zip(images, layouts, strict=True)
        ]
        self._cache: dict[tuple, Prepared] = {}
        tc = config
        self.rng = np.random.default_rng(tc.seed)
        units = self._units(checked, self.rng)
        #: ``(image index, slice index)`` of every painted slice, in sampler order.
        self.keys = [u[0] for u in units]
        for key in self.keys:
            _check_not_constant(self.prepared(key))
        xs = [self.source(k) for k in self.keys]
        fs = None if self._features is None else [self.features(k) for k in self.keys]
        stride = 4 if features is None else features[2]
        # training and held-out strokes: the same images, other targets
        self.sampler, self.holdout = (
            PatchSampler(xs, [u[j] for u in units], n_classes, tc.patch_size, self.rng,
                         jitter=tc.intensity_jitter, features=fs, feature_stride=stride)
            for j in (1, 2)
        )  # fmt: skip

    # -- slices ---------------------------------------------------------------
    def _on_demand(self, i: int) -> bool:
        # Patches of an in-memory stack are normalised as they are drawn
        # (cheap), so memory does not grow with the number of slices
        # painted; a lazy stack (dask, zarr) keeps each painted slice
        # normalised instead of reading from storage at every step.
        return bool(self.layouts[i].lead_shape) and isinstance(self.images[i], np.ndarray)

    def prepared(self, key) -> Prepared:
        """The normalised slice ``key`` (only painted slices of a stack are ever normalised)."""
        cache = self._cache
        if key in cache:
            cache[key] = cache.pop(key)  # the most recently used last
            return cache[key]
        i, idx = key
        cache[key] = prepare_slice(
            self.images[i], self.layouts[i], self.stats[i], idx, None, self.nodata
        )
        transient = [k for k in cache if self._on_demand(k[0])]
        for k in transient[:-_KEEP_SLICES]:
            del cache[k]
        return cache[key]

    def source(self, key):
        """What the samplers draw patches from for ``key``."""
        i, idx = key
        if self._on_demand(i):
            return NormalisedSlice(self.images[i], self.layouts[i], self.stats[i], idx, self.nodata)
        return self.prepared(key).x

    def features(self, key):
        """The image features of slice ``key`` as the samplers slice them (None without)."""
        return None if self._features is None else self._features.of(key)

    def _units(self, checked, rng) -> list:
        """``(key, train_targets, holdout_targets)`` of every painted slice.

        Strokes are split into training and held-out strokes over the whole
        image (or stack).
        """
        units = []
        counts = np.zeros(self.n_classes, dtype=np.int64)
        for i, (s, lay) in enumerate(zip(checked, self.layouts, strict=True)):
            tr, ho = split_strokes(s, self.n_classes, self.config.holdout_fraction, rng)
            painted = (s.reshape(lay.n_slices, -1) > 0).any(axis=1)
            for n, idx in enumerate(lay.slice_indices()):
                if not painted[n] and lay.lead_shape:
                    continue
                p = self.prepared((i, idx))
                counts += class_counts(np.where(p.valid, s[idx], 0), self.n_classes)
                units.append(((i, idx), to_targets(tr[idx], p.valid), to_targets(ho[idx], p.valid)))
        problem = missing_classes(counts, self.class_names, on_valid_pixels=True)
        if problem:
            raise ScribbleError(problem)
        return units

    # -- new scribbles while training runs ---------------------------------------------
    def apply(self, new) -> tuple[str, list[FreshTargets]]:
        """Take new scribbles: whole (same form as at the start) or a :class:`ScribbleDelta`.

        Returns a message for the user ("" if none) and, per changed region,
        the targets it had and has now, for scoring the fresh strokes.
        """
        if isinstance(new, ScribbleDelta):
            return self._apply_delta(new)
        new_list = new if isinstance(new, (list, tuple)) else [new]
        if len(new_list) != len(self.images):
            return "ignored new scribbles: wrong number of images", []
        try:
            checked = [
                validate_scribbles(
                    s, self.n_classes, shape=lay.scribble_shape, require_all_classes=False
                )
                for lay, s in zip(self.layouts, new_list, strict=True)
            ]
            units = self._units(checked, np.random.default_rng(self.config.seed))
        except Exception as exc:
            return f"kept the previous scribbles: {exc}", []
        keys, sampler, holdout = self.keys, self.sampler, self.holdout
        fresh = []
        seen = set()
        for key, t, h in units:
            seen.add(key)
            if key in keys:
                j = keys.index(key)
                everything = (slice(0, t.shape[0]), slice(0, t.shape[1]))
                old = sampler.targets_of(j, *everything)  # replaced below, not overwritten
                fresh.append(FreshTargets(self.prepared(key).x, old, t, (0, 0)))
                sampler.set_targets(j, t)
                holdout.set_targets(j, h)
            else:  # strokes on a slice that had none
                keys.append(key)
                sampler.add(self.source(key), t, self.features(key))
                holdout.add(self.source(key), h, self.features(key))
        for j, key in enumerate(keys):
            if key not in seen:  # all strokes of that slice were erased
                none = np.full(self.layouts[key[0]].yx, IGNORE, dtype=np.int8)
                sampler.set_targets(j, none)
                holdout.set_targets(j, none)
        return "scribbles updated", fresh

    def _apply_delta(self, delta: ScribbleDelta) -> tuple[str, list[FreshTargets]]:
        # A box of new labels on the first image: only that box is re-read.
        # Painted pixels that were held out and kept their class stay held
        # out; every other painted pixel trains.
        lay = self.layouts[0]
        region = delta.region
        if len(region) != len(lay.scribble_shape):
            return f"kept the previous scribbles: a box of {len(region)} axes", []
        keys, sampler, holdout = self.keys, self.sampler, self.holdout
        lead, (rows, cols) = region[:-2], region[-2:]
        labels = np.asarray(delta.labels)
        fresh = []
        for idx in itertools.product(*(range(s.start, s.stop) for s in lead)):
            sub = labels[tuple(i - s.start for i, s in zip(idx, lead, strict=True))]
            key = (0, idx)
            if key not in keys and not sub.any():
                continue  # an unpainted slice stays unread
            p = self.prepared(key)
            if key not in keys:  # strokes on a slice that had none
                keys.append(key)
                none = np.full(p.shape, IGNORE, dtype=np.int8)
                sampler.add(self.source(key), none, self.features(key))
                holdout.add(self.source(key), none.copy(), self.features(key))
            j = keys.index(key)
            valid = p.valid[rows, cols]
            held = holdout.targets_of(j, rows, cols)
            keep = (held != IGNORE) & (held == sub.astype(np.int64) - 1) & valid
            train = np.where((sub > 0) & valid & ~keep, sub.astype(np.int64) - 1, IGNORE)
            old = sampler.targets_of(j, rows, cols).copy()  # a view, written below
            fresh.append(FreshTargets(p.x, old, train, (rows.start, cols.start)))
            holdout.update_region(j, rows, cols, np.where(keep, held, IGNORE))
            sampler.update_region(j, rows, cols, train)
        return "", fresh


class _FeatureCache:
    """Image features of painted slices, computed once each and kept within :data:`FEATURE_BUDGET`.

    The least recently drawn slices are dropped beyond the budget and
    computed again (from the same normalised slice, so the same numbers) when
    a patch is next drawn from them.
    """

    def __init__(self, compute, channels: int, stride: int, data: TrainingData):
        self.compute, self.channels, self.stride, self.data = compute, channels, stride, data
        self._kept: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def get(self, key) -> np.ndarray:
        kept = self._kept
        if key in kept:
            kept.move_to_end(key)
            return kept[key]
        kept[key] = f = self.compute(self.data.prepared(key).x)
        while len(kept) > 1 and sum(a.nbytes for a in kept.values()) > FEATURE_BUDGET:
            kept.popitem(last=False)
        return f

    def of(self, key) -> _SliceFeatures:
        h, w = self.data.layouts[key[0]].yx
        g = self.stride
        return _SliceFeatures(self, key, (self.channels, -(-h // g), -(-w // g)))


class _SliceFeatures:
    """One slice's features, fetched from the cache when sliced (``f[:, rows, cols]``)."""

    def __init__(self, cache: _FeatureCache, key, shape: tuple[int, int, int]):
        self.cache, self.key, self.shape = cache, key, shape

    def __getitem__(self, index):
        return self.cache.get(self.key)[index]


def _check_not_constant(p: Prepared) -> None:
    """Training needs some contrast: every channel constant over valid pixels is refused."""
    if p.valid.size < 2:
        raise ImageError(
            f"the image has only {p.valid.size} pixel: too small to learn anything from"
        )
    x = p.x[:-1][:, p.valid]
    if x.size and np.all(x.max(axis=1) == x.min(axis=1)):
        raise ImageError(
            "every valid pixel of the image has the same value: there is nothing to learn "
            "from; check that the right image (or channel) is chosen"
        )
