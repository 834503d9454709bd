"""Where a new stroke would teach the network most (numpy/scipy only, no Qt).

:func:`suggest_location` is the plugin's original rule (the most uncertain
unpainted window). ``benchmarks/suggest.py`` measures it against random
strokes and an oracle that paints where the prediction is wrong
(``benchmarks/RESULTS.md``, issue #14).
"""

from __future__ import annotations

import numpy as np


def _painted_near(scribbles, shape, size: int) -> np.ndarray | None:
    from scipy import ndimage

    if scribbles is None:
        return None
    painted = np.asarray(scribbles) > 0
    if painted.shape != tuple(shape) or not painted.any():
        return None
    return ndimage.maximum_filter(painted, size=max(3, size))


def suggest_location(
    uncertainty: np.ndarray, scribbles: np.ndarray | None = None, window: int = 32
) -> tuple[int, int] | None:
    """Centre ``(row, col)`` of the most uncertain unpainted ``window`` x ``window`` area.

    Parameters
    ----------
    uncertainty
        ``(H, W)`` values in [0, 1]; NaN (invalid input) counts as certain.
    scribbles
        Painted pixels (non-zero) and their surroundings are skipped: the user
        already told the network what is there.
    window
        Side of the area averaged, in pixels.

    Returns
    -------
    tuple or None
        None when nothing unpainted is uncertain.
    """
    from scipy import ndimage

    u = np.nan_to_num(np.asarray(uncertainty, dtype=np.float32), nan=0.0)
    near = _painted_near(scribbles, u.shape, window // 2)
    if near is not None:
        u = np.where(near, 0.0, u)
    score = ndimage.uniform_filter(u, size=max(1, window), mode="constant")
    if not np.isfinite(score).any() or score.max() <= 1e-3:
        return None
    row, col = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(row), int(col)
