"""Simulated scribbles: strokes a person would paint, derived from a full mask.

Used to make the bundled example scribbles and, in benchmarks, scribbles for
any folder of ground-truth masks. Strokes stay a ``margin`` away from every
boundary, leaving the wide unlabelled band a person leaves where unsure.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import line
from skimage.morphology import disk, skeletonize

from .scribbles import IS, IS_NOT


def _thicken(mask: np.ndarray, width: int) -> np.ndarray:
    r = max(0, width // 2)
    return ndimage.binary_dilation(mask, structure=disk(r)) if r else mask


def simulate_scribbles(
    truth: np.ndarray,
    rng: np.random.Generator | int | None = 0,
    object_fraction: float = 0.3,
    max_objects: int = 12,
    background_strokes: int = 6,
    margin: int = 4,
    width: int = 3,
    stroke_length: int | None = None,
) -> np.ndarray:
    """Scribbles (0 void, 1 "is", 2 "is not") from a binary mask (nonzero = object).

    Parameters
    ----------
    object_fraction, max_objects
        Share (and cap) of connected objects that get a stroke along their middle.
    background_strokes
        Number of straight strokes in the background.
    margin
        Minimum distance in pixels between a stroke and a true boundary.
    width
        Brush width in pixels.
    """
    rng = np.random.default_rng(rng)
    fg = np.asarray(truth) > 0
    h, w = fg.shape
    out = np.zeros(fg.shape, dtype=np.uint8)
    keep = margin + width // 2
    inner_fg = ndimage.distance_transform_edt(fg) > keep
    inner_bg = ndimage.distance_transform_edt(~fg) > keep
    comps, n = ndimage.label(inner_fg)
    if n:
        chosen = rng.permutation(np.arange(1, n + 1))[
            : max(1, min(max_objects, round(n * object_fraction)))
        ]
        for c in chosen:
            region = comps == c
            stroke = skeletonize(region)
            if not stroke.any():
                stroke = region
            out[_thicken(stroke, width) & region] = IS
    length = stroke_length or max(16, min(h, w) // 4)
    pts = np.argwhere(inner_bg)
    for _ in range(background_strokes if len(pts) else 0):
        y0, x0 = pts[rng.integers(len(pts))]
        angle = rng.uniform(0, np.pi)
        y1 = int(np.clip(y0 + length * np.sin(angle), 0, h - 1))
        x1 = int(np.clip(x0 + length * np.cos(angle), 0, w - 1))
        rr, cc = line(int(y0), int(x0), y1, x1)
        # A person stops a stroke where the object starts: keep the piece
        # connected to the starting point that stays inside the background.
        ok = inner_bg[rr, cc]
        stop = np.argmin(ok) if not ok.all() else len(ok)
        seg = np.zeros(fg.shape, dtype=bool)
        seg[rr[:stop], cc[:stop]] = True
        out[_thicken(seg, width) & inner_bg & (out == 0)] = IS_NOT
    return out
