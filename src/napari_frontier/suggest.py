"""Where a new stroke would teach the network most (numpy/scipy only, no Qt).

:func:`suggest_location` is the plugin's original rule (the most uncertain
unpainted window). ``benchmarks/suggest.py`` measures it against random
strokes and an oracle that paints where the prediction is wrong.
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


def suggest_regions(
    probabilities: np.ndarray,
    scribbles: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    window: int = 32,
    n: int = 5,
    reach: float | None = None,
) -> list[tuple[int, int]]:
    """Up to ``n`` places ``(row, col)`` to paint next, best first, at least ``window`` apart.

    Ranks pixels by the expected error of the prediction (``1 - max_k p_k``,
    the chance the predicted class is wrong if the probabilities are honest),
    averaged over a ``window``-sized neighbourhood, times how far the place is
    from any stroke of the class predicted there (``1 + distance / reach``):
    an uncertain area the network extrapolated to, far from every example of
    what it says is there, is worth a stroke more than the rim of one it was
    shown.

    Parameters
    ----------
    probabilities
        ``(K, H, W)`` class probabilities (NaN: invalid pixel).
    scribbles
        ``(H, W)`` strokes, 0 = void, 1..K = class. Painted pixels and their
        surroundings (``window // 2``) are never suggested.
    valid
        ``(H, W)`` bool, False where the input is invalid.
    window
        Size of the area scored (pixels) and the smallest distance between two
        suggestions.
    n
        Most suggestions returned.
    reach
        Distance (pixels) at which being far from the strokes doubles the
        score; default: a quarter of the image diagonal.

    Returns
    -------
    list of tuple
        Empty when nothing unpainted is uncertain.
    """
    from scipy import ndimage

    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"probabilities must be (K, H, W), got shape {p.shape}")
    k, h, w = p.shape
    ok = np.isfinite(p).all(0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    p = np.nan_to_num(p, nan=1.0 / k)
    err = np.where(ok, 1.0 - p.max(0), 0.0).astype(np.float32)
    err = ndimage.uniform_filter(err, size=max(1, window), mode="constant")
    if reach is None:
        reach = 0.25 * float(np.hypot(h, w))
    near = _painted_near(scribbles, (h, w), window // 2)
    if near is not None:
        s = np.asarray(scribbles)
        predicted = p.argmax(0) + 1
        far = np.zeros((h, w), np.float32)
        for c in range(1, k + 1):
            strokes = s == c
            if strokes.any():
                d = ndimage.distance_transform_edt(~strokes).astype(np.float32)
            else:
                d = np.full((h, w), reach, np.float32)  # no example of c at all
            far = np.where(predicted == c, d, far)
        err = err * (1.0 + far / max(reach, 1e-6))
        err[near] = 0.0
    err[~ok] = 0.0
    out: list[tuple[int, int]] = []
    floor = 1e-3
    for _ in range(max(0, n)):
        i = int(np.argmax(err))
        if err.flat[i] <= floor:
            break
        row, col = divmod(i, w)
        out.append((int(row), int(col)))
        err[max(0, row - window) : row + window + 1, max(0, col - window) : col + window + 1] = 0.0
    return out
