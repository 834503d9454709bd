import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_frontier.data.scribbles import IGNORE
from napari_frontier.learning.losses import (
    class_balance_weights,
    masked_bce_with_logits,
    masked_cross_entropy,
    masked_mse,
)


def _case(seed=0, k=3, shape=(2, 5, 6), void_fraction=0.5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g, requires_grad=True)
    targets = torch.randint(0, k, shape, generator=g)
    void = torch.rand(shape, generator=g) < void_fraction
    targets[void] = IGNORE
    return logits, targets, void


def test_gradient_is_exactly_zero_at_void_pixels():
    logits, targets, void = _case()
    masked_cross_entropy(logits, targets).backward()
    grad = logits.grad.permute(1, 0, 2, 3)  # (K, N, H, W)
    assert void.any()
    assert torch.all(grad[:, void] == 0)
    assert torch.any(grad[:, ~void] != 0)


def test_loss_ignores_logits_at_void_pixels():
    logits, targets, void = _case(seed=1)
    before = masked_cross_entropy(logits, targets).item()
    changed = logits.detach().clone()
    changed.permute(1, 0, 2, 3)[:, void] = 1e4 * torch.randn_like(
        changed.permute(1, 0, 2, 3)[:, void]
    )
    assert masked_cross_entropy(changed, targets).item() == pytest.approx(before, rel=1e-6)


def test_loss_matches_hand_computation_and_is_not_diluted():
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    targets = torch.tensor([[[0, 1, IGNORE]]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.exp(1) / (math.exp(1) + 1)
    expected = (-math.log(p0) - math.log(p1)) / 2  # divided by 2 valid pixels, not 3
    assert masked_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_all_void_batch_gives_zero_loss_and_zero_gradient():
    logits = torch.randn(2, 2, 4, 4, requires_grad=True)
    targets = torch.full((2, 4, 4), IGNORE)
    loss = masked_cross_entropy(logits, targets)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(logits.grad == 0)
    for fn in (masked_bce_with_logits, masked_mse):
        x = torch.randn(3, 4, requires_grad=True)
        out = fn(x, torch.ones(3, 4), torch.zeros(3, 4, dtype=torch.bool))
        out.backward()
        assert out.item() == 0.0 and torch.all(x.grad == 0) and not torch.isnan(out)


def test_masked_bce_and_mse_weights_and_reduction():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([True, True, False, False])
    w = torch.tensor([1.0, 3.0, 1.0, 1.0])
    mse = masked_mse(x, t, mask, w)
    assert mse.item() == pytest.approx((1 * 1 + 3 * 1) / 4)
    bce = masked_bce_with_logits(x, t, mask)
    expected = (math.log(2) + math.log(1 + math.e)) / 2
    assert bce.item() == pytest.approx(expected, rel=1e-6)
    bce.backward()
    assert x.grad[2] == 0 and x.grad[3] == 0


def test_class_balance_weights():
    w = class_balance_weights([100, 900, 0])
    assert w[2] == 0
    assert w[0] / w[1] == pytest.approx(9.0, rel=0.02)
    assert (w[0] * 100 + w[1] * 900) / 1000 == pytest.approx(1.0)
    logits, targets, _void = _case(seed=3, k=3)
    loss = masked_cross_entropy(logits, targets, class_weights=w)
    assert torch.isfinite(loss)


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(2, 5),
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    void_fraction=st.floats(0, 1),
    seed=st.integers(0, 10_000),
)
def test_property_void_never_matters(k, n, h, w, void_fraction, seed):
    logits, targets, void = _case(seed, k, (n, h, w), void_fraction)
    loss = masked_cross_entropy(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(logits.grad.permute(1, 0, 2, 3)[:, void] == 0)
    if (~void).any():
        # equals the mean over valid pixels of the plain per-pixel cross-entropy
        valid_t = targets[~void]
        per = torch.nn.functional.cross_entropy(
            logits.detach().permute(0, 2, 3, 1)[~void], valid_t, reduction="mean"
        )
        assert loss.item() == pytest.approx(per.item(), rel=1e-5, abs=1e-6)
    else:
        assert loss.item() == 0.0


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        masked_cross_entropy(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3, dtype=torch.long))


def test_numpy_free():
    # the loss module is torch-only; class weights accept numpy counts too
    assert class_balance_weights(np.array([1, 1])).tolist() == [1.0, 1.0]
