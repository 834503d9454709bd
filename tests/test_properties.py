"""Property-based tests (hypothesis): losses, metrics and tiling on random cases.

Example counts are small so the file runs in seconds; ``deadline=None``
because the first torch call in a process is slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_frontier.data.scribbles import IGNORE
from napari_frontier.learning.losses import masked_bce_with_logits, masked_cross_entropy, masked_mse
from napari_frontier.learning.metrics import boundary_f1, confusion_matrix, score
from napari_frontier.learning.network import ModelConfig, build_model
from napari_frontier.prediction.tiling import predict_probabilities

FEW = settings(max_examples=20, deadline=None)

shapes = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12))


def _case(seed, k, shape, void_fraction):
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    logits = torch.randn(n, k, h, w, generator=g) * 3
    targets = torch.randint(0, k, (n, h, w), generator=g)
    void = torch.rand(n, h, w, generator=g) < void_fraction
    return logits, targets.masked_fill(void, IGNORE), void


# -- losses -----------------------------------------------------------------------------
@FEW
@given(k=st.integers(2, 5), shape=shapes, void=st.floats(0, 1), seed=st.integers(0, 9999))
def test_cross_entropy_ignores_void_content(k, shape, void, seed):
    logits, targets, mask = _case(seed, k, shape, void)
    weight = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) + 0.1
    cw = torch.rand(k, generator=torch.Generator().manual_seed(seed + 2)) + 0.1
    base = masked_cross_entropy(logits, targets, weight=weight, class_weights=cw)
    # Anything at void pixels (logits, weights) changes nothing.
    other = logits.clone()
    other.permute(0, 2, 3, 1)[mask] = torch.randn(int(mask.sum()), k) * 100
    w2 = weight.clone()
    w2[mask] = 1000.0
    again = masked_cross_entropy(other, targets, weight=w2, class_weights=cw)
    assert torch.isfinite(base) and torch.allclose(base, again, rtol=1e-5, atol=1e-6)
    # ... and void pixels get exactly zero gradient, also with weights.
    x = other.clone().requires_grad_(True)
    masked_cross_entropy(x, targets, weight=w2, class_weights=cw).backward()
    assert torch.all(x.grad.permute(0, 2, 3, 1)[mask] == 0)
    if mask.all():
        assert base.item() == 0.0


@FEW
@given(k=st.integers(2, 5), shape=shapes, seed=st.integers(0, 9999))
def test_cross_entropy_without_void_is_the_plain_loss(k, shape, seed):
    logits, targets, _ = _case(seed, k, shape, 0.0)
    assert (targets != IGNORE).all()
    ours = masked_cross_entropy(logits, targets)
    plain = F.cross_entropy(logits, targets)
    assert ours.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
    cw = torch.rand(k, generator=torch.Generator().manual_seed(seed)) + 0.1
    weighted = masked_cross_entropy(logits, targets, class_weights=cw)
    # torch's weighted mean divides by the weights of the targets: the same definition
    plain_w = F.cross_entropy(logits, targets, weight=cw)
    assert weighted.item() == pytest.approx(plain_w.item(), rel=1e-4, abs=1e-6)


@FEW
@given(shape=shapes, void=st.floats(0, 1), seed=st.integers(0, 9999))
def test_bce_and_mse_ignore_masked_pixels(shape, void, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    targets = torch.rand(shape, generator=g)
    keep = torch.rand(shape, generator=g) >= void
    for loss_fn in (masked_bce_with_logits, masked_mse):
        x = logits.clone().requires_grad_(True)
        loss = loss_fn(x, targets, keep)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.all(x.grad[~keep] == 0)
        other_t = targets.clone()
        other_t[~keep] = 0.5 + 0.5 * other_t[~keep]
        other_x = logits.clone()
        other_x[~keep] = 50.0
        assert torch.allclose(loss_fn(other_x, other_t, keep), loss.detach(), atol=1e-6)
        if keep.all():
            plain = (
                F.binary_cross_entropy_with_logits(logits, targets)
                if loss_fn is masked_bce_with_logits
                else F.mse_loss(logits, targets)
            )
            assert loss.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-6)
        if not keep.any():
            assert loss.item() == 0.0


# -- metrics ---------------------------------------------------------------------------
@FEW
@given(
    k=st.integers(2, 4),
    h=st.integers(1, 16),
    w=st.integers(1, 16),
    seed=st.integers(0, 9999),
    tolerance=st.floats(0.5, 4),
)
def test_metrics_bounded_void_excluded_perfect_is_one(k, h, w, seed, tolerance):
    r = np.random.default_rng(seed)
    truth = r.integers(0, k + 1, size=(h, w))  # 0 = not scored
    pred = r.integers(1, k + 1, size=(h, w))
    valid = r.random((h, w)) > 0.2
    s = score(pred, truth, k, valid=valid, tolerance=tolerance)
    for v in (s.accuracy, *s.iou, *s.dice, s.boundary_f1):
        assert np.isnan(v) or 0.0 <= v <= 1.0
    assert s.n_scored == int(((truth > 0) & valid).sum())
    # Whatever is predicted at void or invalid pixels changes no score.
    other = np.where((truth > 0) & valid, pred, r.integers(1, k + 1, size=(h, w)))
    s2 = score(other, truth, k, valid=valid, tolerance=tolerance)
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, k, valid=valid),
        confusion_matrix(other, truth, k, valid=valid),
    )
    assert s2.accuracy == s.accuracy or (np.isnan(s2.accuracy) and np.isnan(s.accuracy))
    np.testing.assert_array_equal(s2.iou, s.iou)
    # A perfect prediction scores 1 wherever there is something to score.
    perfect = np.where(truth > 0, truth, pred)
    s3 = score(perfect, truth, k, valid=valid, tolerance=tolerance)
    if s3.n_scored:
        assert s3.accuracy == 1.0
        assert all(np.isnan(v) or v == 1.0 for v in (*s3.iou, *s3.dice))
    # Boundary F1 of a perfect prediction of a dense truth (no void: next to
    # void pixels the truth's "boundary" is not a real one) is 1.
    dense = np.where(truth > 0, truth, 1)
    assert boundary_f1(dense, dense, tolerance=tolerance, valid=valid) == pytest.approx(1.0)


# -- tiling ----------------------------------------------------------------------------
@settings(max_examples=8, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    tile=st.integers(1, 64),
    depth=st.integers(1, 2),
    channels=st.integers(1, 3),
    k=st.integers(2, 3),
    batch=st.integers(1, 4),
    seed=st.integers(0, 999),
)
def test_tiled_prediction_equals_untiled(h, w, tile, depth, channels, k, batch, seed):
    torch.manual_seed(seed)
    net = build_model(ModelConfig(in_channels=channels, n_classes=k, width=4, depth=depth))
    r = np.random.default_rng(seed)
    x = r.random((channels + 1, h, w)).astype(np.float32)
    x[-1] = 1.0  # validity channel
    whole = predict_probabilities(net, x, tile=4096)
    tiled = predict_probabilities(net, x, tile=tile, batch_size=batch)
    assert tiled.shape == whole.shape == (k, h, w)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
