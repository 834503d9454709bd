"""N-D images: stacks, time series and channels, seen as 2D slices by the network.

An image is any array-like with ``shape``, ``dtype`` and numpy-style slicing
(numpy, dask, zarr, a TIFF opened as zarr). Its axes are, napari-style:

- an optional **channel axis** (given, or detected as a last axis of 3 or 4 =
  RGB(A), like napari's ``rgb`` guess);
- the **last two other axes** are Y and X;
- every other axis (Z, T, ...) is a **slice axis**: the network sees one 2D
  ``(C, Y, X)`` slice at a time, and scribbles have the image's shape without
  the channel axis.

Only slices (or row bands) are ever read, so lazy arrays are never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ImageError


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
