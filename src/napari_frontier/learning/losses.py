"""Losses in which void pixels count for exactly nothing.

All losses divide by the number (or weight sum) of *valid* pixels, never by
the number of all pixels, so a few painted pixels in a large patch are not
diluted. A batch without any valid pixel gives a loss of exactly 0 whose
gradient is exactly 0 everywhere (never NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.scribbles import IGNORE


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

    Every class then weighs the same in the loss. Normalised so that the
    painted pixels' mean weight is 1. A class with no painted pixel gets weight 0.
    """
    counts = torch.as_tensor(counts, dtype=torch.float32)
    present = counts > 0
    w = torch.where(present, (counts + eps) ** -1.0, torch.zeros_like(counts))
    total = (w * counts).sum()
    if total > 0:
        w = w * counts.sum() / total
    return w


#: Neighbour offsets of :func:`dense_crf_loss`: every (dy, dx) with
#: 0 < dy^2 + dx^2 <= radius^2 in one half-plane (each pair counted once).
def _offsets(radius: int, dilation: int) -> list[tuple[int, int]]:
    out = []
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy, dx) <= (0, 0) or dy * dy + dx * dx > radius * radius:
                continue
            out.append((dy * dilation, dx * dilation))
    return out


def dense_crf_loss(
    probabilities: torch.Tensor,
    image: torch.Tensor,
    sigma: float = 0.15,
    radius: int = 2,
    dilation: int = 2,
    sigma_xy: float = 3.0,
    valid=None,
) -> torch.Tensor:
    """Relaxed Potts / CRF loss over a window of neighbours (Tang et al., ECCV 2018).

    ``sum_k sum_ij w_ij p_i^k (1 - p_j^k)`` over pixel pairs at the offsets
    of a disc of ``radius`` steps of ``dilation`` px, with the bilateral
    weight ``w_ij = exp(-||I_i - I_j||^2 / 2 sigma^2 - d_ij^2 / 2 sigma_xy^2)``,
    divided by the number of pairs. Labels play no part: it is minimal when
    every similar-looking neighbourhood has one class, so it pulls the
    frontier across the unpainted band to where the image changes.
    """
    total = probabilities.new_zeros(())
    h0, w0 = probabilities.shape[-2:]
    n_pairs = 0
    for dy, dx in _offsets(radius, dilation):
        h, w = h0 - dy, w0 - abs(dx)
        if h <= 0 or w <= 0:
            continue
        xa, xb = (slice(0, w), slice(dx, dx + w)) if dx >= 0 else (slice(-dx, -dx + w), slice(0, w))
        pa, pb = probabilities[..., :h, xa], probabilities[..., dy : dy + h, xb]
        ia, ib = image[..., :h, xa], image[..., dy : dy + h, xb]
        weight = torch.exp(
            -((ia - ib) ** 2).sum(1) / (2 * sigma**2) - (dy * dy + dx * dx) / (2 * sigma_xy**2)
        )
        if valid is not None:
            weight = weight * (valid[..., :h, xa] & valid[..., dy : dy + h, xb])
        total = total + (weight * (pa * (1 - pb) + pb * (1 - pa)).sum(1)).sum()
        n_pairs += weight.numel()
    return total / max(n_pairs, 1)
