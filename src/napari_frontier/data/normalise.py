"""Turn a user's image into network input: channels first, normalised, no-data masked.

Invalid input pixels (NaN, +-inf, or a user-given no-data value) are filled
with 0 after normalisation and reported in a validity mask. The network gets
the validity mask as an extra input channel, so it can tell "dark" from
"unknown"; the engine also excludes invalid pixels from loss and metrics and
writes them as a no-data value in exported masks.

One path: :func:`compute_stats` takes the percentiles over a whole N-D
image (all slices, read band by band) and :func:`normalise` applies them, so
every slice of a stack, and every block of a huge image, is normalised alike;
:func:`prepare` is the two for a 2D image in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ImageError
from .layout import Layout

DEFAULT_PERCENTILES = (1.0, 99.8)
#: Channels with values beyond this are divided by their peak before normalising.
_HUGE = 1e150
#: At most this many valid pixels per channel enter the percentile estimate.
MAX_SAMPLES = 1_000_000
#: Rows read at a time when sampling a large slice for statistics.
_BAND_PIXELS = 16_000_000
#: Pixels normalised at a time (float64 temporaries of 2 MiB).
_NORM_BAND_PIXELS = 1 << 18


@dataclass(frozen=True)
class Prepared:
    """Network-ready image: ``x`` is ``(C + 1, H, W)`` float32 with validity last."""

    x: np.ndarray
    valid: np.ndarray

    @property
    def n_channels(self) -> int:
        """Image channels (without the validity channel)."""
        return self.x.shape[0] - 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.valid.shape


def channels_first(image: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Return a ``(C, H, W)`` view of a 2D image.

    ``(H, W)`` is one channel. ``(H, W, 3)`` and ``(H, W, 4)`` are taken as
    RGB(A) when ``channel_axis`` is None. Any other 3D shape needs an
    explicit ``channel_axis``.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3:
        if channel_axis is None:
            if image.shape[-1] in (3, 4):
                channel_axis = -1
            else:
                raise ImageError(
                    f"image of shape {image.shape} is ambiguous: give the channel axis "
                    "(channel_axis / --channel-axis); 3D stacks are predicted slice by slice "
                    "with predict_stack"
                )
        return np.moveaxis(image, channel_axis, 0)
    raise ImageError(
        f"images must be 2D (H, W), RGB (H, W, 3) or multichannel; got shape {image.shape}"
    )


def validity_mask(image_cf: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """True where every channel is finite and differs from ``nodata``."""
    if image_cf.dtype.kind == "f":
        valid = np.isfinite(image_cf).all(axis=0)
    else:
        valid = np.ones(image_cf.shape[1:], dtype=bool)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~(image_cf == nodata).any(axis=0)
    return valid


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

    A 2D numpy image (and a lazy 2D image under ``4 * max_samples`` pixels)
    gives every valid pixel, strided down to ``max_samples``, to the
    percentiles. Larger images are subsampled on a regular grid (at most
    ``max_samples`` pixels per channel, from at most 64 evenly spaced
    slices), so a huge or lazy image is read once, a band at a time.
    """
    _check_dtype(getattr(image, "dtype", np.float32))
    h, w = layout.yx
    indices = list(layout.slice_indices())
    if len(indices) > 64:
        indices = [indices[i] for i in np.linspace(0, len(indices) - 1, 64).round().astype(int)]
    total = len(indices) * h * w
    # grid stride per axis: 1 (every pixel) below 4x the budget, and for a 2D
    # image in memory
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
            # Constant (or nearly constant) channel: centre it, keep it flat.
            lo, scale = float(samples.min()), max(float(samples.max() - samples.min()), 1.0)
        lo_all.append(float(lo))
        scale_all.append(float(scale))
    prescale = tuple(pre_all) if any(p != 1.0 for p in pre_all) else ()
    return NormStats(tuple(lo_all), tuple(scale_all), prescale)


def normalise(cf: np.ndarray, stats: NormStats, nodata: float | None = None) -> Prepared:
    """Normalise a ``(C, h, w)`` slice with given statistics (from :func:`compute_stats`)."""
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
            # Keep huge outliers from dominating; values far outside the
            # percentile range carry no extra information for the network.
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


def prepare(
    image: np.ndarray,
    channel_axis: int | None = None,
    nodata: float | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> Prepared:
    """Normalise each channel of a 2D image to roughly [0, 1] by robust percentiles.

    Percentiles are taken per image over valid pixels, so a model trained on
    one image applies to others with different brightness: :func:`compute_stats`
    then :func:`normalise`, as for every slice of an N-D image.
    """
    cf = channels_first(image, channel_axis)
    if cf.shape[1] == 0 or cf.shape[2] == 0:
        raise ImageError(f"image has no pixels (shape {np.asarray(image).shape})")
    stats = compute_stats(cf, Layout(cf.shape, channel_axis=0), nodata, percentiles)
    return normalise(cf, stats, nodata)


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
