"""Patches for training, drawn around painted pixels, with augmentation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..data.scribbles import IGNORE


class Patches(NamedTuple):
    """A batch of training patches."""

    x: np.ndarray  #: ``(B, C + 1, S, S)`` float32 network input (validity last)
    t: np.ndarray  #: ``(B, S, S)`` int64 targets (IGNORE or 0..K-1)
    #: ``(B, F, S / stride, S / stride)`` float32 image features, or None
    features: np.ndarray | None = None


class PatchSampler:
    """Draw augmented training patches from one or more prepared images.

    Each patch is centred (with a random offset) on a painted pixel; the
    class of that pixel is drawn uniformly, so a class painted with a single
    short stroke still appears in every batch; within a class every painted
    pixel is equally likely, on whichever image (or stack slice) it lies.

    Parameters
    ----------
    images
        List of ``(C + 1, H, W)`` float32 inputs (validity last): arrays, or
        objects that give one as ``x[:, rows, cols]`` (e.g.
        :class:`~napari_frontier.data.normalise.NormalisedSlice`, read on demand).
    targets
        List of ``(H, W)`` integer targets (IGNORE or 0..K-1); kept in the
        smallest signed type that holds them.
    n_classes
        K.
    patch_size
        Side of the square region whose painted pixels a patch trains on.
    rng
        Source of randomness (seeded for reproducible runs).
    jitter
        Amplitude of the brightness / contrast jitter of augmented patches,
        the same for every channel (see :func:`_augment`; 0 = none).
    features
        Per image, ``(F, ceil(H / stride), ceil(W / stride))`` features computed
        once for the whole image (or an object sliced as ``f[:, rows, cols]``),
        cut with each patch; patch origins then lie on the stride's grid.
    feature_stride
        Resolution divisor of ``features``.
    """

    def __init__(
        self,
        images,
        targets,
        n_classes: int,
        patch_size: int,
        rng: np.random.Generator,
        jitter: float = 1.0,
        features=None,
        feature_stride: int = 4,
    ):
        self.n_classes = n_classes
        self.feature_stride = int(feature_stride)
        self._features = None if features is None else []
        if jitter < 0:
            raise ValueError(f"intensity jitter needs jitter >= 0, got {jitter}")
        self.jitter = float(jitter)
        # targets of every painted slice stay in memory: one byte per pixel
        self._tdtype = np.int8 if n_classes <= np.iinfo(np.int8).max else np.int16
        # Patches larger than the smallest image would be mostly padding,
        # which skews BatchNorm statistics: shrink them to fit (in steps of
        # 16, the network's default pooling grid).
        sides = [min(t.shape[-2:]) for t in targets]
        if sides and min(sides) < patch_size:
            patch_size = max(16, min(sides) // 16 * 16)
        self.patch_size = patch_size
        self.rng = rng
        self._images = []
        self._targets = []
        self._coords = []  # per image: list (per class) of (n, 2) painted coordinates
        self._shapes = []  # per image: (H, W) before padding
        self._offsets = []  # per image: padding before its first row and column
        for n, (x, t) in enumerate(zip(images, targets, strict=True)):
            self.add(x, t, None if features is None else features[n])

    def add(self, x: np.ndarray, t: np.ndarray, features=None) -> None:
        """Add an image, its targets (and features, if the sampler has them), padded so any patch fits."""
        if (features is None) != (self._features is None):
            raise ValueError("give features for every image of the sampler or for none")
        p = self.patch_size
        t = np.asarray(t).astype(self._tdtype, copy=False)
        h, w = t.shape
        self._shapes.append((h, w))
        py, px = max(0, p - h), max(0, p - w)
        # padding before the image stays on the feature grid
        g = 1 if features is None else self.feature_stride
        oy, ox = py // 2 // g * g, px // 2 // g * g
        if py or px:
            pad = ((oy, py - oy), (ox, px - ox))
            x = np.pad(np.asarray(x, dtype=np.float32), ((0, 0), *pad), mode="constant")
            t = np.pad(t, pad, mode="constant", constant_values=IGNORE)
            if features is not None:
                f = np.asarray(features[:, :, :])
                padded = np.zeros((f.shape[0], -(-(h + py) // g), -(-(w + px) // g)), f.dtype)
                padded[:, oy // g : oy // g + f.shape[1], ox // g : ox // g + f.shape[2]] = f
                features = padded
        self._offsets.append((oy, ox))
        self._images.append(x)
        self._targets.append(t)
        if features is not None:
            self._features.append(features)
        self._coords.append([np.argwhere(t == k) for k in range(self.n_classes)])

    def set_targets(self, index: int, t: np.ndarray) -> None:
        """Replace the targets of image ``index`` (new strokes while training)."""
        h, w = self._targets[index].shape
        t = np.asarray(t).astype(self._tdtype, copy=False)
        th, tw = t.shape
        if (th, tw) != (h, w):
            (oy, ox), py, px = self._offsets[index], h - th, w - tw
            t = np.pad(t, ((oy, py - oy), (ox, px - ox)), constant_values=IGNORE)
        self._targets[index] = t
        self._coords[index] = [np.argwhere(t == k) for k in range(self.n_classes)]

    def targets_of(self, index: int, rows: slice, cols: slice) -> np.ndarray:
        """A view of the targets of image ``index`` in a region (unpadded coordinates)."""
        oy, ox = self._offset(index)
        return self._targets[index][
            rows.start + oy : rows.stop + oy, cols.start + ox : cols.stop + ox
        ]

    def update_region(self, index: int, rows: slice, cols: slice, t: np.ndarray) -> None:
        """Write the targets of a region of image ``index`` (new strokes while training).

        Costs the region plus the painted pixels, not the image: only the
        coordinates inside the region are recomputed.
        """
        oy, ox = self._offset(index)
        r0, r1, c0, c1 = rows.start + oy, rows.stop + oy, cols.start + ox, cols.stop + ox
        self._targets[index][r0:r1, c0:c1] = t
        coords = self._coords[index]
        for k in range(self.n_classes):
            c = coords[k]
            inside = (c[:, 0] >= r0) & (c[:, 0] < r1) & (c[:, 1] >= c0) & (c[:, 1] < c1)
            fresh = np.argwhere(t == k)
            fresh += (r0, c0)
            coords[k] = np.concatenate([c[~inside], fresh]) if inside.any() or len(fresh) else c

    def _offset(self, index: int) -> tuple[int, int]:
        """Padding before the first row and column of image ``index`` (see :meth:`add`)."""
        return self._offsets[index]

    def class_counts(self) -> np.ndarray:
        return np.array(
            [sum(len(c[k]) for c in self._coords) for k in range(self.n_classes)], dtype=np.int64
        )

    def sample(self, batch_size: int, augment: bool = True) -> Patches:
        """A batch of :class:`Patches` of side ``S = patch_size``."""
        p = self.patch_size
        rng = self.rng
        xs = np.empty((batch_size, self._images[0].shape[0], p, p), dtype=np.float32)
        ts = np.empty((batch_size, p, p), dtype=np.int64)
        g = self.feature_stride
        fs = None
        if self._features is not None:
            fs = np.empty((batch_size, self._features[0].shape[0], p // g, p // g), np.float32)
        present = [k for k in range(self.n_classes) if any(len(c[k]) for c in self._coords)]
        for b in range(batch_size):
            k = present[rng.integers(len(present))]
            candidates = [i for i, c in enumerate(self._coords) if len(c[k])]
            if len(candidates) == 1:
                i = candidates[rng.integers(1)]
            else:
                # every painted pixel of class k is equally likely, whichever
                # image (or slice of a stack) it is on
                counts = np.cumsum([len(self._coords[i][k]) for i in candidates])
                i = candidates[int(np.searchsorted(counts, rng.integers(counts[-1]), "right"))]
            cy, cx = self._coords[i][k][rng.integers(len(self._coords[i][k]))]
            t_full = self._targets[i]
            h, w = t_full.shape
            y0 = int(np.clip(cy - rng.integers(p // 8, p - p // 8), 0, h - p))
            x0 = int(np.clip(cx - rng.integers(p // 8, p - p // 8), 0, w - p))
            f = None
            if fs is not None:
                y0, x0 = y0 // g * g, x0 // g * g
                f = self._features[i][:, y0 // g : (y0 + p) // g, x0 // g : (x0 + p) // g]
            t = t_full[y0 : y0 + p, x0 : x0 + p]
            x = self._images[i][:, y0 : y0 + p, x0 : x0 + p]
            if augment:
                x, t, f = _augment(x, t, rng, self.jitter, f)
            xs[b] = x
            ts[b] = t
            if fs is not None:
                fs[b] = f
        return Patches(xs, ts, fs)


def _augment(x: np.ndarray, t: np.ndarray, rng: np.random.Generator, jitter: float = 1.0, f=None):
    """Random rot90 / flip and intensity jitter of a patch: ``(x, t, f)``.

    Features ``f`` (or None) turn and flip with the patch; they are not jittered.

    ``jitter`` scales a brightness / contrast change that is the same for
    every image channel, so colours keep their hue: a gain uniform in
    ``[1.25 ** -jitter, 1.25 ** jitter]`` and a shift uniform in
    ``[-0.1 * jitter, 0.1 * jitter]``.
    """
    k = int(rng.integers(4))
    if k:
        x = np.rot90(x, k, axes=(1, 2))
        t = np.rot90(t, k)
        f = None if f is None else np.rot90(f, k, axes=(1, 2))
    flip = rng.random() < 0.5
    if flip:
        x = x[:, :, ::-1]
        t = t[:, ::-1]
        f = None if f is None else f[:, :, ::-1]
    x = np.array(x, dtype=np.float32)
    # Image channels only, never the validity channel. Measured: the same
    # jitter drawn per channel shifted the hue of colour photos and kept the
    # network from fitting their strokes (85 % of painted pixels right after
    # 1500 steps on a 4-class food photo, IoU 0.86; drawn once, 0.92).
    img = x[:-1]
    r, q = rng.random(2)  # drawn even when off: the patches stay the same
    if jitter:
        lo, hi = 1.25**-jitter, 1.25**jitter
        img *= np.float32(lo + (hi - lo) * r)
        lo, hi = -0.1 * jitter, 0.1 * jitter
        img += np.float32(lo + (hi - lo) * q)
    if rng.random() < 0.3:
        img += rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    return x, np.ascontiguousarray(t), f
