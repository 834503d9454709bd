"""Prediction of one region of an N-D image, read with just the context it needs.

The region is read with a halo of context and a window aligned to the
network's pooling grid, so it is predicted as it would be in the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.layout import Layout
from ..data.normalise import NormStats, normalise
from ..errors import ImageError


def region_window(
    region: tuple[slice, slice], yx: tuple[int, int], multiple: int, halo: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The input window a region needs, and where the region lies inside it.

    The window adds ``halo`` pixels of context on each side (clipped at the
    image border, where the network's own reflection padding applies, as in
    a whole-image prediction) and starts on the network's pooling grid, so
    the region is predicted as it would be in the whole image.
    """
    out_w, inner = [], []
    for sl, n in zip(region, yx, strict=True):
        a, b, _ = sl.indices(n)
        if b <= a:
            raise ImageError(f"empty region {region} in an image of {yx}")
        w0 = max(0, (a - halo) // multiple * multiple)
        w1 = min(n, b + halo)
        out_w.append(slice(w0, w1))
        inner.append(slice(a - w0, b - w0))
    return tuple(out_w), tuple(inner)


def predict_region(
    model,
    device,
    image,
    layout: Layout,
    stats: NormStats,
    index: tuple[int, ...] = (),
    region: tuple[slice, slice] | None = None,
    nodata: float | None = None,
    tile: int = 1024,
    halo: int | None = None,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(K, h, w)`` (NaN at invalid pixels) and validity of one region.

    Reads only the region plus its halo of context; equals the same region of
    a whole-image prediction within float rounding.
    """
    from .tiling import _round_up

    cfg = model.config
    halo = _round_up(cfg.halo if halo is None else halo, cfg.multiple)
    if region is None:
        region = (slice(None), slice(None))
    window, inner = region_window(region, layout.yx, cfg.multiple, halo)
    cf = layout.read(image, index, window)
    return predict_window(model, device, cf, inner, stats, nodata, tile, halo, batch_size)


def predict_window(
    model,
    device,
    cf: np.ndarray,
    inner: tuple[slice, slice],
    stats: NormStats,
    nodata: float | None = None,
    tile: int = 1024,
    halo: int = 0,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict the ``inner`` part of a window read by :func:`region_window`."""
    from .tiling import predict_probabilities, tile_side

    p = normalise(cf, stats, nodata)
    # spread the window over whole tiles (it is a little larger than the region)
    m = model.config.multiple
    h, w = p.shape
    n = max(1, round(max(h, w) / tile))
    tile = tile_side(-(-max(h, w) // n), m)
    probs = predict_probabilities(model, p.x, device, tile=tile, halo=halo, batch_size=batch_size)
    probs = np.ascontiguousarray(probs[(slice(None), *inner)])
    valid = np.ascontiguousarray(p.valid[inner])
    probs[:, ~valid] = np.nan
    return probs, valid


def choose_level(
    shapes: Sequence[tuple[int, ...]],
    region: tuple[slice, slice],
    max_pixels: int = 1024 * 1024,
) -> tuple[int, tuple[slice, slice]]:
    """Pick the finest level of a multiscale pyramid at which ``region`` has few pixels.

    For a live preview "at screen resolution": ``shapes`` are the levels'
    ``(..., Y, X)`` shapes (level 0 the finest), ``region`` is the visible
    part in level-0 pixels. Returns the level and the region in its pixels.
    """
    h0, w0 = shapes[0][-2], shapes[0][-1]
    for level, shape in enumerate(shapes):
        fy, fx = shape[-2] / h0, shape[-1] / w0
        (a, b, _), (c, d, _) = region[0].indices(h0), region[1].indices(w0)
        scaled = (
            slice(int(a * fy), max(int(a * fy) + 1, int(np.ceil(b * fy)))),
            slice(int(c * fx), max(int(c * fx) + 1, int(np.ceil(d * fx)))),
        )
        n = (scaled[0].stop - scaled[0].start) * (scaled[1].stop - scaled[1].start)
        if n <= max_pixels or level == len(shapes) - 1:
            return level, scaled
    raise ValueError("no levels given")
