"""Patches for training, drawn around painted pixels, with augmentation."""

from __future__ import annotations

import numpy as np

from .labels import IGNORE

#: Side of the cells over which :class:`PatchSampler` keeps its running error.
CELL = 8


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
        :class:`~napari_frontier.nd.NormalisedSlice`, read on demand).
    targets
        List of ``(H, W)`` integer targets (IGNORE or 0..K-1); kept in the
        smallest signed type that holds them.
    n_classes
        K.
    patch_size
        Side of the square region whose painted pixels a patch trains on.
    rng
        Source of randomness (seeded for reproducible runs).
    margin
        Pixels of image context around that region: patches are
        ``patch_size + 2 * margin`` wide and their targets outside the
        centre are void, so the loss only sees pixels whose surroundings
        the network saw (as when it predicts), not the patch's zero padding.
    scale
        Scale augmentation (with ``margin == 0`` only): a patch is cut
        ``2 ** u`` times its side (u uniform in ``[-scale, scale]``, at most
        the image) and resized to the patch side, bilinear for the image
        and nearest for targets, so objects are seen at other sizes.
    jitter
        Amplitude of the brightness / contrast jitter of augmented patches,
        the same for every channel (see :func:`_augment`; 0 = none).
    """

    def __init__(
        self,
        images,
        targets,
        n_classes: int,
        patch_size: int,
        rng: np.random.Generator,
        margin: int = 0,
        scale: float = 0.0,
        focus: float = 0.0,
        jitter: float = 1.0,
    ):
        self.n_classes = n_classes
        if not 0.0 <= focus <= 1.0:
            raise ValueError(f"focus must be in [0, 1], got {focus}")
        self.focus = float(focus)
        # per image, only with focus: (H / CELL, W / CELL) running error of painted pixels
        self._difficulty = []
        self.last_origins = []  # per patch of the last focused batch: where it came from
        self.margin = int(margin)
        if scale < 0 or (scale and margin):
            raise ValueError("scale augmentation needs scale >= 0 and no context margin")
        self.scale = float(scale)
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
        for x, t in zip(images, targets, strict=True):
            self.add(x, t)

    def add(self, x: np.ndarray, t: np.ndarray) -> None:
        """Add an image and its targets, padded so any patch fits."""
        p = self.patch_size + 2 * self.margin
        t = np.asarray(t).astype(self._tdtype, copy=False)
        h, w = t.shape
        self._shapes.append((h, w))
        py, px = max(0, p - h), max(0, p - w)
        if py or px:
            pad = ((py // 2, py - py // 2), (px // 2, px - px // 2))
            x = np.pad(np.asarray(x, dtype=np.float32), ((0, 0), *pad), mode="constant")
            t = np.pad(t, pad, mode="constant", constant_values=IGNORE)
        self._images.append(x)
        self._targets.append(t)
        if self.focus > 0:
            hp, wp = t.shape
            self._difficulty.append(np.ones((-(-hp // CELL), -(-wp // CELL)), dtype=np.float32))
        self._coords.append([np.argwhere(t == k) for k in range(self.n_classes)])

    def set_targets(self, index: int, t: np.ndarray) -> None:
        """Replace the targets of image ``index`` (new strokes while training)."""
        h, w = self._targets[index].shape
        t = np.asarray(t).astype(self._tdtype, copy=False)
        th, tw = t.shape
        if (th, tw) != (h, w):
            py, px = h - th, w - tw
            t = np.pad(
                t, ((py // 2, py - py // 2), (px // 2, px - px // 2)), constant_values=IGNORE
            )
        self._targets[index] = t
        self._coords[index] = [np.argwhere(t == k) for k in range(self.n_classes)]
        if self._difficulty:
            self._difficulty[index][:] = 1.0  # new strokes: not yet known to be fitted

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
        if self._difficulty:
            cells = self._difficulty[index]
            cells[r0 // CELL : -(-r1 // CELL), c0 // CELL : -(-c1 // CELL)] = 1.0
        coords = self._coords[index]
        for k in range(self.n_classes):
            c = coords[k]
            inside = (c[:, 0] >= r0) & (c[:, 0] < r1) & (c[:, 1] >= c0) & (c[:, 1] < c1)
            fresh = np.argwhere(t == k)
            fresh += (r0, c0)
            coords[k] = np.concatenate([c[~inside], fresh]) if inside.any() or len(fresh) else c

    def _offset(self, index: int) -> tuple[int, int]:
        """Padding before the first row and column of image ``index`` (see :meth:`add`)."""
        h, w = self._targets[index].shape
        th, tw = self._shapes[index]
        return (h - th) // 2, (w - tw) // 2

    def class_counts(self) -> np.ndarray:
        return np.array(
            [sum(len(c[k]) for c in self._coords) for k in range(self.n_classes)], dtype=np.int64
        )

    def sample(
        self, batch_size: int, augment: bool = True, focus: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(x, t)``: ``(B, C + 1, S, S)`` float32 and ``(B, S, S)`` int64.

        ``S = patch_size + 2 * margin``; targets beyond the centre
        ``patch_size`` are void. With ``focus``, a ``self.focus`` share of
        the centres is drawn in proportion to the running error of their
        painted pixels (:meth:`feedback`), and where every patch came from
        is kept for that feedback.
        """
        p = self.patch_size
        m = self.margin
        s = p + 2 * m
        rng = self.rng
        xs = np.empty((batch_size, self._images[0].shape[0], s, s), dtype=np.float32)
        ts = np.empty((batch_size, s, s), dtype=np.int64)
        present = [k for k in range(self.n_classes) if any(len(c[k]) for c in self._coords)]
        focus = focus and self.focus > 0
        origins = []
        weights = {}  # (class, image) -> difficulty of its painted pixels, for this batch
        for b in range(batch_size):
            k = present[rng.integers(len(present))]
            candidates = [i for i, c in enumerate(self._coords) if len(c[k])]
            hard = focus and rng.random() < self.focus
            if hard:
                ws = []
                for i in candidates:
                    if (k, i) not in weights:
                        c = self._coords[i][k]
                        weights[k, i] = np.cumsum(
                            self._difficulty[i][c[:, 0] // CELL, c[:, 1] // CELL], dtype=np.float64
                        )
                    ws.append(weights[k, i][-1])
                total = float(sum(ws))
                hard = total > 1e-6
            if hard:
                u = rng.random() * total
                acc = np.cumsum(ws)
                j = min(int(np.searchsorted(acc, u, "right")), len(candidates) - 1)
                i = candidates[j]
                u -= acc[j] - ws[j]
                cum = weights[k, i]
                n = min(int(np.searchsorted(cum, u, "right")), len(cum) - 1)
                cy, cx = self._coords[i][k][n]
            elif len(candidates) == 1:
                i = candidates[rng.integers(1)]
            else:
                # every painted pixel of class k is equally likely, whichever
                # image (or slice of a stack) it is on
                counts = np.cumsum([len(self._coords[i][k]) for i in candidates])
                i = candidates[int(np.searchsorted(counts, rng.integers(counts[-1]), "right"))]
            if not hard:
                cy, cx = self._coords[i][k][rng.integers(len(self._coords[i][k]))]
            t_full = self._targets[i]
            h, w = t_full.shape
            side = p  # of the scored window; another side is resized to p (scale augmentation)
            if augment and self.scale:
                side = round(p * 2 ** rng.uniform(-self.scale, self.scale))
                side = max(8, min(side, h, w))
            y0 = int(np.clip(cy - rng.integers(side // 8, side - side // 8), 0, h - side))
            x0 = int(np.clip(cx - rng.integers(side // 8, side - side // 8), 0, w - side))
            if m:
                # the scored window (y0, x0, p) inside a patch of side s
                # with as much real context around it as the image has
                wy, wx = y0, x0
                y0 = int(np.clip(wy - m, 0, h - s))
                x0 = int(np.clip(wx - m, 0, w - s))
                t = np.full((s, s), IGNORE, dtype=np.int64)
                t[wy - y0 : wy - y0 + p, wx - x0 : wx - x0 + p] = t_full[wy : wy + p, wx : wx + p]
            else:
                t = t_full[y0 : y0 + side, x0 : x0 + side]
            x = self._images[i][:, y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]]
            window = t.shape[0]  # its side in image pixels (before any resizing)
            if side != p:
                x, t = _resized(x, t, p)
            turns, flip = 0, False
            if augment:
                x, t, turns, flip = _augment(x, t, rng, self.jitter)
            xs[b] = x
            ts[b] = t
            if focus:
                origins.append((i, y0, x0, window, turns, flip))
        if focus:
            self.last_origins = origins
        return xs, ts

    def feedback(self, error: np.ndarray, painted: np.ndarray, rate: float = 0.5) -> None:
        """Update the running error of the cells the last focused batch covered.

        ``error`` ``(B, S, S)``: how wrong the model was at each pixel of the
        patches :meth:`sample` returned (e.g. ``1 - p(true class)``);
        ``painted``: where that is measured. Each cell's error moves
        ``rate`` of the way to the mean error of its painted pixels in the patch.
        """
        for (i, y0, x0, window, turns, flip), e, m in zip(
            self.last_origins, error, painted, strict=False
        ):
            if window != e.shape[-1]:
                continue  # resized by scale augmentation: no pixel-exact way back
            if flip:
                e, m = e[:, ::-1], m[:, ::-1]
            if turns:
                e, m = np.rot90(e, -turns), np.rot90(m, -turns)
            d = self._difficulty[i]
            rows = (y0 + np.arange(e.shape[0])) // CELL
            cols = (x0 + np.arange(e.shape[1])) // CELL
            r0, c0 = rows[0], cols[0]
            nr, nc = rows[-1] - r0 + 1, cols[-1] - c0 + 1
            cell = ((rows - r0)[:, None] * nc + (cols - c0)[None, :]).ravel()
            mm = np.asarray(m, dtype=bool).ravel()
            count = np.bincount(cell[mm], minlength=nr * nc).reshape(nr, nc)
            total = np.bincount(cell[mm], weights=np.asarray(e).ravel()[mm], minlength=nr * nc)
            seen = count > 0
            block = d[r0 : r0 + nr, c0 : c0 + nc]
            mean = total.reshape(nr, nc)[seen] / count[seen]
            block[seen] += rate * (mean - block[seen])
        self.last_origins = []


def _resized(x: np.ndarray, t: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A square window resized to ``size``: image bilinear (antialiased), targets nearest."""
    side = t.shape[0]
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    xr = F.interpolate(
        xt, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
    )[0].numpy()
    xr[-1] = xr[-1] > 0.999  # validity stays a mask: valid only where fully valid
    idx = np.minimum(((np.arange(size) + 0.5) * side / size).astype(np.intp), side - 1)
    tr = np.asarray(t)[np.ix_(idx, idx)]
    tr[xr[-1] == 0] = IGNORE  # no target where the resized input is not valid
    return xr, tr


def _augment(x: np.ndarray, t: np.ndarray, rng: np.random.Generator, jitter: float = 1.0):
    """Random rot90 / flip and intensity jitter: ``(x, t, quarter turns, flipped)``.

    ``jitter`` scales a brightness / contrast change that is the same for
    every image channel, so colours keep their hue: a gain uniform in
    ``[1.25 ** -jitter, 1.25 ** jitter]`` and a shift uniform in
    ``[-0.1 * jitter, 0.1 * jitter]``.
    """
    k = int(rng.integers(4))
    if k:
        x = np.rot90(x, k, axes=(1, 2))
        t = np.rot90(t, k)
    flip = rng.random() < 0.5
    if flip:
        x = x[:, :, ::-1]
        t = t[:, ::-1]
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
    return x, np.ascontiguousarray(t), k, flip
