"""Losses in which void pixels count for exactly nothing.

All losses divide by the number (or weight sum) of *valid* pixels, never by
the number of all pixels, so a few painted pixels in a large patch are not
diluted. A batch without any valid pixel gives a loss of exactly 0 whose
gradient is exactly 0 everywhere (never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labels import IGNORE


def _reduce(per_pixel: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None):
    w = mask.to(per_pixel.dtype)
    if weight is not None:
        w = w * weight.to(per_pixel.dtype)
    # torch.where (not multiplication) so that a non-finite value at a void
    # pixel can never leak into the sum.
    total = torch.where(mask, per_pixel * w, torch.zeros_like(per_pixel)).sum()
    return total / w.sum().clamp_min(1e-12)


def masked_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Cross-entropy over the non-void pixels only.

    Parameters
    ----------
    logits
        ``(N, K, *spatial)`` raw scores, one channel per class (no void channel).
    targets
        ``(N, *spatial)`` integer class indices ``0..K-1``; ``ignore_index``
        marks void / invalid pixels.
    weight
        Optional per-pixel weights ``(N, *spatial)``.
    class_weights
        Optional per-class weights ``(K,)`` (e.g. from :func:`class_balance_weights`).

    Returns
    -------
    torch.Tensor
        Scalar: weighted sum over valid pixels divided by their weight sum.
    """
    if logits.ndim != targets.ndim + 1:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    mask = targets != ignore_index
    safe_targets = torch.where(mask, targets, torch.zeros_like(targets))
    per_pixel = F.cross_entropy(logits.float(), safe_targets, reduction="none")
    w = weight
    if class_weights is not None:
        cw = class_weights.to(per_pixel.dtype)[safe_targets]
        w = cw if w is None else w * cw
    return _reduce(per_pixel, mask, w)


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits over the pixels where ``mask`` is True."""
    mask = mask.bool()
    per_pixel = F.binary_cross_entropy_with_logits(
        logits.float(), targets.to(torch.float32), reduction="none"
    )
    return _reduce(per_pixel, mask, weight)


def masked_mse(
    prediction: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the pixels where ``mask`` is True."""
    mask = mask.bool()
    per_pixel = (prediction.float() - targets.float()) ** 2
    return _reduce(per_pixel, mask, weight)


def class_balance_weights(counts, eps: float = 1.0) -> torch.Tensor:
    """Per-class weights inversely proportional to painted pixel counts.

    Normalised so that the painted pixels' mean weight is 1. A class with no
    painted pixel gets weight 0.
    """
    counts = torch.as_tensor(counts, dtype=torch.float32)
    present = counts > 0
    w = torch.where(present, 1.0 / (counts + eps), torch.zeros_like(counts))
    total = (w * counts).sum()
    if total > 0:
        w = w * counts.sum() / total
    return w


def edge_aware_smoothness(
    probabilities: torch.Tensor, image: torch.Tensor, sigma: float = 0.15, valid=None
) -> torch.Tensor:
    """Potts-style prior: neighbouring pixels of similar colour should agree.

    ``mean(w_ij * ||p_i - p_j||^2)`` over horizontal and vertical neighbour
    pairs, with ``w_ij = exp(-||I_i - I_j||^2 / (2 sigma^2))`` from the
    normalised image. It uses no labels at all, so it never turns void into a
    class; it moves the predicted frontier across the unpainted band to the
    nearest image edge (the relaxed CRF / normalised-cut idea of Tang et al.,
    ECCV 2018). ``valid`` (N, H, W) drops pairs touching invalid pixels.
    """
    total = probabilities.new_zeros(())
    for dy, dx in ((0, 1), (1, 0)):
        h, w = probabilities.shape[-2] - dy, probabilities.shape[-1] - dx
        pa, pb = probabilities[..., :h, :w], probabilities[..., dy:, dx:]
        ia, ib = image[..., :h, :w], image[..., dy:, dx:]
        weight = torch.exp(-((ia - ib) ** 2).sum(1) / (2 * sigma**2))
        if valid is not None:
            weight = weight * (valid[..., :h, :w] & valid[..., dy:, dx:])
        total = total + (weight * ((pa - pb) ** 2).sum(1)).mean()
    return total
