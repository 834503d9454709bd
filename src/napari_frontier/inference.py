"""Tiled prediction, frontier and uncertainty.

Images of any size are predicted in tiles. Each tile carries a halo of
context on every side that is cut away again, and tile origins are aligned to
the network's pooling grid, so the stitched result matches a prediction of the
whole image at once within float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .labels import IS


def _round_up(v: int, m: int) -> int:
    return int(math.ceil(v / m) * m)


#: Tile sides are multiples of this (twice this above 8 times it).
TILE_GRID = 64


def tile_side(v: int, multiple: int) -> int:
    """``v`` rounded up to a tile side: a multiple of ``multiple`` on a coarse grid.

    Few distinct tile sizes: the CPU backend (oneDNN) keeps compiled kernels
    for every input shape it sees, hundreds of MiB over a live session whose
    views all differ in size, unless the sizes repeat.
    """
    v = _round_up(max(multiple, v), multiple)
    return _round_up(v, max(multiple, TILE_GRID if v <= 8 * TILE_GRID else 2 * TILE_GRID))


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    x: np.ndarray,
    device: torch.device | str = "cpu",
    tile: int = 1024,
    halo: int | None = None,
    batch_size: int | None = None,
    amp: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` float32 for a prepared input ``(C + 1, H, W)``.

    Parameters
    ----------
    tile
        Side of the core region predicted per tile (rounded to the pooling grid).
        Large tiles waste less on the halo: at 1024 the halo adds ~60 %.
    halo
        Context on each side of a tile; defaults to the model's own need.
    batch_size
        Tiles per forward pass (default: 1 on CPU, where batching gains
        nothing and multiplies peak memory, 4 elsewhere).
    progress
        Called as ``progress(done, total)`` after each batch of tiles.
    """
    device = torch.device(device)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 4
    cfg = model.config
    m = cfg.multiple
    halo = _round_up(cfg.halo if halo is None else halo, m)
    _, h, w = x.shape
    step = min(tile_side(min(tile, max(h, w)), m), _round_up(max(m, tile), m))
    ny, nx = math.ceil(h / step), math.ceil(w / step)
    hp, wp = ny * step, nx * step
    xp = np.pad(x, ((0, 0), (halo, halo + hp - h), (halo, halo + wp - w)), mode="reflect")
    out = np.empty((cfg.n_classes, hp, wp), dtype=np.float32)
    origins = [(ty * step, tx * step) for ty in range(ny) for tx in range(nx)]
    amp_dtype = None
    if amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(origins), batch_size):
            chunk = origins[i : i + batch_size]
            batch = np.stack(
                [xp[:, y : y + step + 2 * halo, x0 : x0 + step + 2 * halo] for y, x0 in chunk]
            )
            xb = torch.from_numpy(batch).to(device)
            if device.type != "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xb)
            probs = torch.softmax(logits.float(), dim=1)[
                :, :, halo : halo + step, halo : halo + step
            ]
            probs = probs.cpu().numpy()
            for (y, x0), p in zip(chunk, probs, strict=True):
                out[:, y : y + step, x0 : x0 + step] = p
            if progress is not None:
                progress(min(i + batch_size, len(origins)), len(origins))
    finally:
        model.train(was_training)
    return out[:, :h, :w]


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy in [0, 1]: 0 = certain, 1 = all classes equally likely."""
    p = np.clip(probabilities, 1e-7, 1.0)
    k = probabilities.shape[0]
    return (-(p * np.log(p)).sum(0) / np.log(k)).astype(np.float32)


def frontier_contours(probabilities: np.ndarray, valid: np.ndarray | None = None, label: int = IS):
    """Sub-pixel contours (list of ``(N, 2)`` row/col arrays) where P(label) = 0.5."""
    from skimage.measure import find_contours

    p = np.nan_to_num(probabilities[label - 1], nan=0.0)
    return find_contours(p, 0.5, mask=valid)


def frontier_mask(p_is: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Pixels (bool) on the "is" side of every place where ``p_is`` crosses ``threshold``.

    NaN (not predicted, or invalid input) counts as neither side, so no
    frontier is drawn along the edge of a partly predicted image. About a
    hundred times cheaper than sub-pixel contours, for live overlays.
    """
    known = ~np.isnan(p_is)
    b = np.zeros(p_is.shape, bool)
    np.greater_equal(p_is, threshold, out=b, where=known)
    edge = np.zeros(p_is.shape, bool)
    for axis in (0, 1):
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        change = (b[lo] != b[hi]) & known[lo] & known[hi]
        edge[lo] |= change & b[lo]
        edge[hi] |= change & b[hi]
    return edge


def frontier_raster(labels: np.ndarray) -> np.ndarray:
    """One-pixel boundary (bool) between predicted classes."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="inner", background=-1)


@dataclass(frozen=True)
class Prediction:
    """Result of predicting one image.

    ``probabilities`` is ``(K, H, W)`` float32 (NaN at invalid pixels);
    ``valid`` marks pixels whose input was valid.
    """

    probabilities: np.ndarray
    valid: np.ndarray

    #: Value of invalid (no-data) input pixels in :meth:`mask` ("binary").
    NODATA_BINARY = 127
    #: Value of invalid (no-data) input pixels in :attr:`labels`.
    NODATA_LABELS = 0

    @property
    def n_classes(self) -> int:
        return self.probabilities.shape[0]

    @property
    def labels(self) -> np.ndarray:
        """uint8 class map 1..K; 0 only where the input was invalid."""
        lab = (np.nan_to_num(self.probabilities, nan=0.0).argmax(0) + 1).astype(np.uint8)
        lab[~self.valid] = self.NODATA_LABELS
        return lab

    def mask(self, format: str = "binary") -> np.ndarray:
        """Exportable mask.

        ``"binary"``: uint8, 255 = "is", 0 = anything else, 127 = invalid input.
        ``"labels"``: uint8 class indices 1..K, 0 = invalid input.
        """
        if format == "labels":
            return self.labels
        if format != "binary":
            raise ValueError(f"unknown mask format {format!r}; use 'binary' or 'labels'")
        lab = self.labels
        out = np.where(lab == IS, 255, 0).astype(np.uint8)
        out[~self.valid] = self.NODATA_BINARY
        return out

    @property
    def uncertainty(self) -> np.ndarray:
        u = uncertainty(np.nan_to_num(self.probabilities, nan=1.0 / self.n_classes))
        u[~self.valid] = np.nan
        return u

    @property
    def frontier(self) -> list[np.ndarray]:
        """Sub-pixel contours where P("is") = 0.5."""
        return frontier_contours(self.probabilities, self.valid)

    @property
    def frontier_raster(self) -> np.ndarray:
        """1-pixel boundary between predicted classes (bool)."""
        return frontier_raster(self.labels)
