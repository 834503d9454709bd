"""N-D images: stacks, time series and channels, seen as 2D slices by the network.

An image is any array-like with ``shape``, ``dtype`` and numpy-style slicing
(numpy, dask, zarr, a TIFF opened as zarr). Its axes are, napari-style:

- an optional **channel axis** (given, or detected as a last axis of 3 or 4 =
  RGB(A), like napari's ``rgb`` guess);
- the **last two other axes** are Y and X;
- every other axis (Z, T, ...) is a **slice axis**: the network sees one 2D
  ``(C, Y, X)`` slice at a time, and scribbles have the image's shape without
  the channel axis.

Normalisation statistics (per-channel percentiles) are taken over the whole
image (all slices), so every slice of a stack is normalised alike, and a
block of a huge image is normalised as it would be in the whole image. Only
slices (or row bands) are ever read, so lazy arrays are never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ImageError
from .preprocess import _HUGE, DEFAULT_PERCENTILES, Prepared, validity_mask

#: At most this many valid pixels per channel enter the percentile estimate
#: (the same rule as :func:`napari_frontier.preprocess.prepare`).
MAX_SAMPLES = 1_000_000
#: Rows read at a time when sampling a large slice for statistics.
_BAND_PIXELS = 16_000_000
#: Pixels normalised at a time (float64 temporaries of 2 MiB).
_NORM_BAND_PIXELS = 1 << 18


@dataclass(frozen=True)
class Layout:
    """How an image's axes map to (slices..., channels, Y, X).

    ``channel_axis`` is non-negative or None; ``channels`` selects channels
    (None: all).
    """

    shape: tuple[int, ...]
    channel_axis: int | None = None
    channels: tuple[int, ...] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def scribble_shape(self) -> tuple[int, ...]:
        """Shape of the scribbles (and of masks): the image's without channels."""
        return tuple(s for a, s in enumerate(self.shape) if a != self.channel_axis)

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Shape of the slice axes (``()`` for a 2D image)."""
        return self.scribble_shape[:-2]

    @property
    def yx(self) -> tuple[int, int]:
        h, w = self.scribble_shape[-2:]
        return int(h), int(w)

    @property
    def n_channels(self) -> int:
        if self.channels is not None:
            return len(self.channels)
        return 1 if self.channel_axis is None else int(self.shape[self.channel_axis])

    @property
    def n_slices(self) -> int:
        return int(np.prod(self.lead_shape, dtype=np.int64))

    def slice_indices(self) -> Iterator[tuple[int, ...]]:
        """Indices of all 2D slices, in C order (``[()]`` for a 2D image)."""
        return iter(np.ndindex(*self.lead_shape))

    def key(self, index: tuple[int, ...] = (), region=None) -> tuple:
        """The indexing key of one slice (or region of it), all channels included."""
        index = tuple(int(i) for i in index)
        if len(index) != len(self.lead_shape):
            raise ImageError(
                f"slice index {index} does not fit an image with slice axes {self.lead_shape}"
            )
        ry, rx = region if region is not None else (slice(None), slice(None))
        spatial = [*index, ry, rx]
        return tuple(
            slice(None) if a == self.channel_axis else spatial.pop(0) for a in range(self.ndim)
        )

    def arrange(self, data) -> np.ndarray:
        """``image[key]`` as ``(C, h, w)``: channels first, selected channels only."""
        data = np.asarray(data)
        if self.channel_axis is None:
            data = data[None]
        else:
            # integer indexing drops the slice axes; find the channel axis among the rest
            kept = [a for a in range(self.ndim) if a not in self._lead_axes()]
            data = np.moveaxis(data, kept.index(self.channel_axis), 0)
        if self.channels is not None:
            data = data[list(self.channels)]
        return data

    def read(self, image, index: tuple[int, ...] = (), region=None) -> np.ndarray:
        """Read one slice (or a ``(slice_y, slice_x)`` region of it) as ``(C, h, w)``.

        Only that part of the image is read from a lazy array.
        """
        return self.arrange(image[self.key(index, region)])

    def _lead_axes(self) -> list[int]:
        axes = [a for a in range(self.ndim) if a != self.channel_axis]
        return axes[:-2]


def make_layout(
    image_or_shape,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
) -> Layout:
    """Work out the :class:`Layout` of an image (or of a shape).

    Raises
    ------
    ImageError
        Fewer than two spatial axes, a bad channel axis or channel selection.
    """
    shape = tuple(
        int(s)
        for s in (image_or_shape if isinstance(image_or_shape, tuple) else np.shape(image_or_shape))
    )
    ndim = len(shape)
    if channel_axis is None and ndim >= 3 and shape[-1] in (3, 4):
        channel_axis = ndim - 1  # RGB(A), as napari guesses
    if channel_axis is not None:
        if not -ndim <= channel_axis < ndim:
            raise ImageError(f"channel axis {channel_axis} is outside an image of shape {shape}")
        channel_axis %= ndim
    spatial = ndim - (channel_axis is not None)
    if spatial < 2:
        raise ImageError(
            f"an image needs at least two spatial axes (Y, X); got shape {shape}"
            + (f" with channel axis {channel_axis}" if channel_axis is not None else "")
        )
    if any(s == 0 for s in shape):
        raise ImageError(f"image has no pixels (shape {shape})")
    if channels is not None:
        n = 1 if channel_axis is None else shape[channel_axis]
        channels = tuple(int(c) for c in channels)
        bad = [c for c in channels if not 0 <= c < n]
        if bad or not channels:
            raise ImageError(
                f"channels {list(channels)} do not exist: the image has {n} channel(s)"
            )
    return Layout(shape, channel_axis, channels)


@dataclass(frozen=True)
class NormStats:
    """Per-channel normalisation ``(x - lo) / scale``, from whole-image percentiles."""

    lo: tuple[float, ...]
    scale: tuple[float, ...]
    #: Per-channel divisor applied first, for values near the float64 limit
    #: (whose differences would overflow); empty = none.
    prescale: tuple[float, ...] = ()


def _check_dtype(dtype) -> None:
    if np.dtype(dtype).kind not in "biuf":
        raise ImageError(f"unsupported image dtype {np.dtype(dtype)}")


def _bands(layout: Layout, step: int = 1):
    """Row bands of about ``_BAND_PIXELS`` pixels (a multiple of ``step`` rows)."""
    h, w = layout.yx
    rows = max(step, (_BAND_PIXELS // max(1, w)) // step * step)
    for y0 in range(0, h, rows):
        yield slice(y0, min(h, y0 + rows))


def compute_stats(
    image,
    layout: Layout,
    nodata: float | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_samples: int = MAX_SAMPLES,
) -> NormStats:
    """Percentile normalisation statistics over the whole image, read band by band.

    For a 2D numpy image this gives exactly what
    :func:`~napari_frontier.preprocess.prepare` uses (so do lazy 2D images
    under ``4 * max_samples`` pixels). Larger images are subsampled on a regular grid (at
    most ``max_samples`` pixels per channel, from at most 64 evenly spaced
    slices), so a huge or lazy image is read once, a band at a time.
    """
    _check_dtype(getattr(image, "dtype", np.float32))
    h, w = layout.yx
    indices = list(layout.slice_indices())
    if len(indices) > 64:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, 64).round().astype(int)]
    total = len(indices) * h * w
    # grid stride per axis: 1 (every pixel) below 4x the budget, and for a 2D
    # image in memory (then exactly the samples of ``prepare``)
    s = max(1, int(np.sqrt(total / max_samples)))
    if isinstance(image, np.ndarray) and not layout.lead_shape:
        s = 1
    chunks = []
    for idx in indices:
        for band in _bands(layout, s):
            cf = layout.read(image, idx, (slice(band.start, band.stop, s), slice(None, None, s)))
            _check_dtype(cf.dtype)
            valid = validity_mask(cf, nodata)
            # one channel at a time: a 2D mask on a 3D array gathers ~15x slower
            chunks.append([ch.ravel() if valid.all() else ch[valid] for ch in cf])
    n_valid = sum(chunk[0].size for chunk in chunks)
    if n_valid == 0:
        raise ImageError("the image has no valid pixel (all NaN, infinite or no-data)")
    stride = max(1, n_valid // max_samples)
    lo_all, scale_all, pre_all = [], [], []
    for c in range(layout.n_channels):
        column = chunks[0][c] if len(chunks) == 1 else np.concatenate([ch[c] for ch in chunks])
        # the strided samples first, then float64 (not the other way round): the same values
        samples = column[::stride].astype(np.float64)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        pre = peak if peak > _HUGE else 1.0
        pre_all.append(pre)
        samples = samples / pre
        lo, hi = np.percentile(samples, percentiles)
        scale = hi - lo
        if not np.isfinite(scale) or scale <= 0:
            lo, scale = float(samples.min()), max(float(samples.max() - samples.min()), 1.0)
        lo_all.append(float(lo))
        scale_all.append(float(scale))
    prescale = tuple(pre_all) if any(p != 1.0 for p in pre_all) else ()
    return NormStats(tuple(lo_all), tuple(scale_all), prescale)


def normalise(cf: np.ndarray, stats: NormStats, nodata: float | None = None) -> Prepared:
    """Normalise a ``(C, h, w)`` slice with given statistics (same formula as ``prepare``)."""
    _check_dtype(cf.dtype)
    if cf.shape[0] != len(stats.lo):
        raise ImageError(
            f"the slice has {cf.shape[0]} channel(s) but the statistics {len(stats.lo)}"
        )
    valid = validity_mask(cf, nodata)
    x = np.empty((cf.shape[0] + 1, *cf.shape[1:]), dtype=np.float32)
    all_valid = bool(valid.all())
    # Row bands of ~256 K pixels: the float64 temporaries stay in cache; the
    # same operations on each pixel as on the whole slice at once.
    rows = max(1, _NORM_BAND_PIXELS // max(1, cf.shape[-1]))
    for c in range(cf.shape[0]):
        for r0 in range(0, cf.shape[1], rows):
            band = slice(r0, r0 + rows)
            chan = cf[c, band].astype(np.float64)
            if stats.prescale:
                chan /= stats.prescale[c]
            chan -= stats.lo[c]
            chan /= stats.scale[c]
            np.clip(chan, -4.0, 5.0, out=chan)
            if not all_valid:
                chan[~valid[band]] = 0.0
            x[c, band] = chan
    x[-1] = valid
    return Prepared(x=x, valid=valid)


def prepare_slice(
    image,
    layout: Layout,
    stats: NormStats,
    index: tuple[int, ...] = (),
    region=None,
    nodata: float | None = None,
) -> Prepared:
    """Read and normalise one slice (or a region of it)."""
    return normalise(layout.read(image, index, region), stats, nodata)


class NormalisedSlice:
    """One slice of an in-memory stack, read and normalised region by region on demand.

    Looks like the ``(C + 1, H, W)`` float32 input :func:`prepare_slice` gives
    (channels, then validity) but keeps nothing: ``x[:, rows, cols]``
    normalises just that region. Normalisation is per pixel with
    whole-image statistics, so a region equals the same region of the
    whole prepared slice. Training on a stack keeps these instead of every
    painted slice, so memory does not grow with the number of slices painted.
    """

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(self, image, layout: Layout, stats: NormStats, index, nodata=None):
        self.image, self.layout, self.stats = image, layout, stats
        self.index = tuple(int(i) for i in index)
        self.nodata = nodata
        self.shape = (layout.n_channels + 1, *layout.yx)

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple) or len(key) != 3 or key[0] != slice(None):
            raise IndexError("index a NormalisedSlice as x[:, rows, cols] with slices")
        h, w = self.shape[1:]
        rows = slice(*key[1].indices(h)[:2])
        cols = slice(*key[2].indices(w)[:2])
        return prepare_slice(
            self.image, self.layout, self.stats, self.index, (rows, cols), self.nodata
        ).x

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        x = self[:, :, :]
        return x if dtype is None else x.astype(dtype)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


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
    from .inference import predict_probabilities, tile_side

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
