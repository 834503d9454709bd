"""Turn a user's image into network input: channels first, normalised, no-data masked.

Invalid input pixels (NaN, +-inf, or a user-given no-data value) are filled
with 0 after normalisation and reported in a validity mask. The network gets
the validity mask as an extra input channel, so it can tell "dark" from
"unknown"; the engine also excludes invalid pixels from loss and metrics and
writes them as a no-data value in exported masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ImageError

DEFAULT_PERCENTILES = (1.0, 99.8)
_MAX_SAMPLES = 1_000_000
#: Channels with values beyond this are divided by their peak before normalising.
_HUGE = 1e150


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


def prepare(
    image: np.ndarray,
    channel_axis: int | None = None,
    nodata: float | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> Prepared:
    """Normalise each channel to roughly [0, 1] by robust percentiles.

    Percentiles are taken per image over valid pixels, so a model trained on
    one image applies to others with different brightness.
    """
    cf = channels_first(image, channel_axis)
    if cf.shape[1] == 0 or cf.shape[2] == 0:
        raise ImageError(f"image has no pixels (shape {np.asarray(image).shape})")
    if cf.dtype.kind not in "biuf":
        raise ImageError(f"unsupported image dtype {cf.dtype}")
    valid = validity_mask(cf, nodata)
    if not valid.any():
        raise ImageError("the image has no valid pixel (all NaN, infinite or no-data)")
    x = np.empty(cf.shape, dtype=np.float32)
    flat_valid = valid.ravel()
    stride = max(1, int(flat_valid.sum()) // _MAX_SAMPLES)
    for c in range(cf.shape[0]):
        channel = cf[c].astype(np.float64)
        samples = channel.ravel()[flat_valid][::stride]
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > _HUGE:
            # Differences of values near the float64 limit overflow to inf:
            # bring the channel into range first (normalisation is scale-free).
            channel /= peak
            samples = samples / peak
        lo, hi = np.percentile(samples, percentiles)
        scale = hi - lo
        if not np.isfinite(scale) or scale <= 0:
            # Constant (or nearly constant) channel: centre it, keep it flat.
            lo, scale = float(samples.min()), max(float(samples.max() - samples.min()), 1.0)
        out = (channel - lo) / scale
        # Keep huge outliers from dominating; values far outside the
        # percentile range carry no extra information for the network.
        np.clip(out, -4.0, 5.0, out=out)
        out[~valid] = 0.0
        x[c] = out
    return Prepared(x=np.concatenate([x, valid[None].astype(np.float32)]), valid=valid)
