import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_frontier.learning.metrics import (
    accuracy,
    boundary_f1,
    confusion_matrix,
    iou_per_class,
    score,
    truth_from_mask,
)


def test_void_and_invalid_pixels_are_not_scored():
    truth = np.array([[1, 1, 0, 2], [2, 0, 0, 2]])
    pred = np.array([[1, 2, 1, 2], [2, 1, 2, 2]])
    assert accuracy(pred, truth) == pytest.approx(4 / 5)
    valid = np.ones_like(truth, bool)
    valid[0, 1] = False  # the one wrong scored pixel has invalid input
    assert accuracy(pred, truth, valid) == 1.0
    iou = iou_per_class(pred, truth, 2)
    assert iou[0] == pytest.approx(1 / 2)  # tp=1, fn=1, fp=0
    assert iou[1] == pytest.approx(3 / 4)  # tp=3, fp=1
    s = score(pred, truth)
    assert s.n_scored == 5
    assert s.dice[0] == pytest.approx(2 * 1 / (1 + 2))


def test_boundary_f1_tolerance():
    truth = np.full((40, 40), 2)
    truth[10:30, 10:30] = 1
    shifted = np.full((40, 40), 2)
    shifted[12:32, 10:30] = 1
    assert boundary_f1(truth, truth) == 1.0
    assert boundary_f1(shifted, truth, tolerance=2) == 1.0
    assert boundary_f1(shifted, truth, tolerance=1) < 1.0
    empty = np.full((40, 40), 2)
    assert boundary_f1(empty, truth) == 0.0


def test_truth_from_mask_and_prediction_outside_classes():
    t = truth_from_mask(np.array([[0, 255]]))
    assert t.tolist() == [[2, 1]]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[0, 1]]), np.array([[1, 1]]), 2)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 4),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    seed=st.integers(0, 1000),
)
def test_property_metrics_bounded_and_perfect_on_self(k, h, w, seed):
    r = np.random.default_rng(seed)
    truth = r.integers(0, k + 1, size=(h, w))
    pred = r.integers(1, k + 1, size=(h, w))
    s = score(pred, truth, k)
    cm = confusion_matrix(pred, truth, k)
    assert cm.sum() == (truth > 0).sum() == s.n_scored
    for v in (*s.iou, *s.dice, s.accuracy):
        assert np.isnan(v) or 0 <= v <= 1
    perfect = np.where(truth > 0, truth, pred)
    s2 = score(perfect, truth, k)
    if s2.n_scored:
        assert s2.accuracy == 1.0
        assert all(np.isnan(v) or v == 1.0 for v in s2.iou)
