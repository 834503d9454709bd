"""Tiled prediction, test-time flips, frontier and uncertainty; the mask encoding.

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
from torch import nn

from ..data.scribbles import IS
from .device import autocast, autocast_dtype, channels_last


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


def _grid(model: torch.nn.Module, shape: tuple[int, int], tile: int, halo: int | None):
    """``(halo, step, ny, nx)``: the tiling of an image of ``shape`` (rounded to the pooling grid)."""
    m = model.config.multiple
    halo = _round_up(model.config.halo if halo is None else halo, m)
    h, w = shape
    step = min(tile_side(min(tile, max(h, w)), m), _round_up(max(m, tile), m))
    return halo, step, math.ceil(h / step), math.ceil(w / step)


def _as_slice(index: np.ndarray):
    """``index`` as a slice when it counts up by one (a view), else itself (a copy)."""
    if np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


#: Most tiles predicted at once by ``workers`` (each holds a tile's activations).
MAX_TILE_WORKERS = 4


def _tiles(model, x, device, tile, halo, batch_size, amp, progress, workers=1, per_tile=None):
    """Yield ``(origins, results)`` per batch of tiles, in order: ``(n, K, step, step)`` numpy
    float32 probabilities of the cores of the tiles at those ``(y, x)`` origins, or
    ``per_tile`` of each tile's probabilities.

    ``workers > 1`` on a CPU: that many batches at once, in threads that share
    torch's threads out (one each on 2 threads). Each operation then runs on
    fewer threads, so they wait less for one another (on 2 busy cores, 16
    tiles of 1312 px took a fifth of the time). Like another thread count,
    this changes probabilities by float rounding (up to ~2e-7).
    """
    device = torch.device(device)
    if batch_size is None:
        batch_size = 1 if device.type == "cpu" else 4
    _, h, w = x.shape
    halo, step, ny, nx = _grid(model, (h, w), tile, halo)
    hp, wp = ny * step, nx * step
    # Where each row / column of the reflect-padded image comes from: tiles
    # are cut from ``x`` itself, the padded copy of the whole image is never made.
    rows = np.pad(np.arange(h), (halo, halo + hp - h), mode="reflect")
    cols = np.pad(np.arange(w), (halo, halo + wp - w), mode="reflect")
    side = step + 2 * halo
    origins = [(ty * step, tx * step) for ty in range(ny) for tx in range(nx)]
    batches = [origins[i : i + batch_size] for i in range(0, len(origins), batch_size)]
    amp_dtype = autocast_dtype(device) if amp else None
    threads = torch.get_num_threads()
    workers = min(workers or 1, MAX_TILE_WORKERS, len(batches), threads)
    if device.type != "cpu":
        workers = 1

    def run(chunk, n_threads=None):
        if n_threads is not None:  # this thread's share (grad mode is per thread too)
            torch.set_num_threads(n_threads)
        with torch.no_grad():
            batch = np.stack(
                [
                    x[:, _as_slice(rows[y : y + side])][:, :, _as_slice(cols[x0 : x0 + side])]
                    for y, x0 in chunk
                ]
            )
            xb = channels_last(torch.from_numpy(batch).to(device))
            with autocast(device, amp_dtype):
                logits = model(xb)
            probs = torch.softmax(logits.float(), dim=1)[
                :, :, halo : halo + step, halo : halo + step
            ]
            probs = probs.cpu().numpy()
        return probs if per_tile is None else [per_tile(p) for p in probs]

    was_training = model.training
    model.eval()
    try:
        if workers <= 1:
            for n, chunk in enumerate(batches, 1):
                yield chunk, run(chunk)
                if progress is not None:
                    progress(min(n * batch_size, len(origins)), len(origins))
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        share = max(1, threads // workers)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="frontier-tile") as pool:
                pending = deque()
                for n, chunk in enumerate(batches, 1):
                    pending.append((n, chunk, pool.submit(run, chunk, share)))
                    # a few batches ahead at most: results are taken in order
                    while len(pending) > workers or (n == len(batches) and pending):
                        done, ready, future = pending.popleft()
                        yield ready, future.result()
                        if progress is not None:
                            progress(min(done * batch_size, len(origins)), len(origins))
        finally:
            torch.set_num_threads(threads)  # the workers' setting is process-wide for MKL
    finally:
        model.train(was_training)


def predict_probabilities(
    model: torch.nn.Module,
    x: np.ndarray,
    device: torch.device | str = "cpu",
    tile: int = 1024,
    halo: int | None = None,
    batch_size: int | None = None,
    amp: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
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
    workers
        Batches of tiles predicted at once on a CPU, torch's threads shared
        among them (at most :data:`MAX_TILE_WORKERS`); for whole images.
    """
    _, h, w = x.shape
    _, step, ny, nx = _grid(model, (h, w), tile, halo)
    out = np.empty((model.config.n_classes, ny * step, nx * step), dtype=np.float32)
    for chunk, probs in _tiles(model, x, device, tile, halo, batch_size, amp, progress, workers):
        for (y, x0), p in zip(chunk, probs, strict=True):
            out[:, y : y + step, x0 : x0 + step] = p
    return out[:, :h, :w]


def predict_labels(
    model: torch.nn.Module,
    x: np.ndarray,
    device: torch.device | str = "cpu",
    tile: int = 1024,
    halo: int | None = None,
    batch_size: int | None = None,
    amp: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Class map ``(H, W)`` uint8 1..K: :func:`labels_of` of :func:`predict_probabilities`.

    Each tile's probabilities become labels as they come: the ``(K, H, W)``
    float32 probabilities of the whole image (4 bytes a pixel per class) are
    never held, only the labels (1 byte a pixel).
    """
    _, h, w = x.shape
    _, step, ny, nx = _grid(model, (h, w), tile, halo)
    out = np.empty((ny * step, nx * step), dtype=np.uint8)
    tiles = _tiles(model, x, device, tile, halo, batch_size, amp, progress, workers, labels_of)
    for chunk, labels in tiles:
        for (y, x0), lab in zip(chunk, labels, strict=True):
            out[y : y + step, x0 : x0 + step] = lab
    return out[:h, :w]


#: Rows of a class map computed at once by :func:`labels_of` (for cache).
_LABEL_ROWS = 64


class FlipAverage(nn.Module):
    """Test-time augmentation: a network's class probabilities averaged over the four flips.

    Each input is predicted as it is, flipped left-right, flipped
    up-down and both; the probabilities are flipped back and averaged. The
    output is their logarithm, so a softmax of it gives the averaged
    probabilities exactly. The result is flip-equivariant: a flipped image
    gets the flipped prediction. Four times the work of one prediction.
    """

    FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.train(model.training)  # restoring the mode after a prediction keeps the model's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in self.FLIPS:
            logits = self.model(x.flip(dims) if dims else x)
            p = torch.softmax(logits.float(), dim=1)
            p = p.flip(dims) if dims else p
            total = p if total is None else total.add_(p)
        return torch.log(total / len(self.FLIPS))


def labels_of(probabilities: np.ndarray) -> np.ndarray:
    """uint8 class map 1..K of ``(K, H, W)`` probabilities: the first most likely class.

    Exactly ``(np.nan_to_num(p, nan=0.0).argmax(0) + 1).astype(np.uint8)``
    (NaN counts as 0, ties go to the lower class), computed band by band and
    class by class (``argmax`` over the first axis strides through memory).
    """
    k, h, w = probabilities.shape
    out = np.empty((h, w), dtype=np.uint8)
    for r0 in range(0, h, _LABEL_ROWS):
        p = np.nan_to_num(probabilities[:, r0 : r0 + _LABEL_ROWS], nan=0.0)
        lab = out[r0 : r0 + _LABEL_ROWS]
        if k == 2:  # class 2 where strictly more likely, else 1
            np.less(p[0], p[1], out=lab.view(np.bool_))
            lab += 1
            continue
        lab.fill(1)
        best = p[0]
        for c in range(1, k):
            lab[p[c] > best] = (c + 1) % 256
            best = np.maximum(best, p[c])
    return out


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
        p = self.probabilities
        lab = labels_of(p.reshape(p.shape[0], -1, p.shape[-1])).reshape(p.shape[1:])
        lab[~self.valid] = self.NODATA_LABELS
        return lab

    def mask(self, format: str | None = None) -> np.ndarray:
        """Exportable mask (:func:`encode_mask` of :attr:`labels`).

        ``"binary"``: uint8, 255 = "is", 0 = anything else, 127 = invalid input.
        ``"labels"``: uint8 class indices 1..K, 0 = invalid input.
        Default (None): :func:`default_mask_format`, binary for two classes,
        labels for more (so that no class is merged with another).
        """
        if format is None:
            format = default_mask_format(self.n_classes)
        _check_format(format)
        return encode_mask(self.labels, format)

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


# -- the one mask encoding: class map <-> mask file ----------------------------
#: The mask formats: ``binary`` (255 / 0 / 127) and ``labels`` (1..K / 0).
MASK_FORMATS = ("binary", "labels")


def _check_format(format: str) -> None:
    if format not in MASK_FORMATS:
        raise ValueError(f"unknown mask format {format!r}; use 'binary' or 'labels'")


def default_mask_format(n_classes: int) -> str:
    """``"binary"`` for a two-class model, ``"labels"`` for K > 2 (binary would merge 2..K)."""
    return "binary" if n_classes <= 2 else "labels"


def encode_mask(labels: np.ndarray, format: str = "binary") -> np.ndarray:
    """The mask of a class map (uint8 1..K, 0 = invalid input), as :meth:`Prediction.mask` writes it.

    ``"labels"``: the class map itself. ``"binary"``: 255 = "is", 0 = any
    other class, :attr:`Prediction.NODATA_BINARY` (127) = invalid input.
    :func:`decode_mask` is the inverse.
    """
    _check_format(format)
    if format == "labels":
        return labels
    lut = np.zeros(256, dtype=np.uint8)
    lut[IS] = 255
    lut[Prediction.NODATA_LABELS] = Prediction.NODATA_BINARY
    return lut[labels]


def decode_mask(mask: np.ndarray, format: str = "binary") -> np.ndarray:
    """The class map (uint8 1..K, 0 = invalid input) of a mask written by :func:`encode_mask`.

    A binary mask gives 1 ("is"), 2 (every other class) and 0 (invalid input).
    """
    _check_format(format)
    mask = np.asarray(mask)
    if format == "labels":
        return mask
    if mask.dtype != np.uint8:  # not one of ours: anything but 255 and 0 is invalid
        return np.select([mask == 255, mask == 0], [IS, IS + 1], 0).astype(np.uint8)
    lut = np.zeros(256, dtype=np.uint8)
    lut[255] = IS
    lut[0] = IS + 1
    lut[Prediction.NODATA_BINARY] = Prediction.NODATA_LABELS
    return lut[mask]
