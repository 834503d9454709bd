"""npe2 writer: save a Labels layer (a mask or scribbles) with atomic writes."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.io import write_image


def _smallest_uint(data: np.ndarray) -> np.ndarray:
    """Labels as uint8 or uint16 when they fit (PNG holds nothing wider)."""
    data = np.asarray(data)
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.size and data.dtype.kind in "iu" and data.min() >= 0:
        top = int(data.max())
        for dtype in (np.uint8, np.uint16):
            if top <= np.iinfo(dtype).max:
                return data.astype(dtype, copy=False)
    return data


def write_mask(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer to ``.tif``/``.tiff``/``.png``/``.npy``.

    Returns
    -------
    list of str
        The path written (what napari expects from a writer).
    """
    return [str(write_image(path, _smallest_uint(data)))]
