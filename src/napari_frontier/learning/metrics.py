"""Segmentation metrics that ignore void and no-data pixels.

``prediction`` holds classes ``1..K``; ``truth`` holds ``0`` (void: not
scored) or ``1..K``. ``valid`` (optional) marks pixels whose input was valid;
pixels outside it are not scored either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ..data.scribbles import VOID


@dataclass(frozen=True)
class Scores:
    """Scores of one prediction against (partial) truth."""

    accuracy: float
    iou: tuple[float, ...]
    dice: tuple[float, ...]
    boundary_f1: float
    n_scored: int

    @property
    def foreground_iou(self) -> float:
        """IoU of class 1 ("is")."""
        return self.iou[0]

    @property
    def foreground_dice(self) -> float:
        """Dice of class 1 ("is")."""
        return self.dice[0]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["iou"] = list(self.iou)
        d["dice"] = list(self.dice)
        return d


def _scored(truth: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    scored = truth != VOID
    if valid is not None:
        scored &= np.asarray(valid, dtype=bool)
    return scored


def confusion_matrix(prediction, truth, n_classes: int, valid=None) -> np.ndarray:
    """``(K, K)`` counts: rows = true class, columns = predicted class."""
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    scored = _scored(truth, valid)
    t = truth[scored].astype(np.int64) - 1
    p = prediction[scored].astype(np.int64) - 1
    if p.size and (p.min() < 0 or p.max() >= n_classes):
        raise ValueError("prediction holds a value outside 1..K at a scored pixel")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def accuracy(prediction, truth, valid=None) -> float:
    """Fraction of scored pixels predicted right (NaN if none is scored)."""
    scored = _scored(np.asarray(truth), valid)
    n = int(scored.sum())
    if n == 0:
        return float("nan")
    return float((np.asarray(prediction)[scored] == np.asarray(truth)[scored]).sum() / n)


def iou_per_class(prediction, truth, n_classes: int, valid=None) -> np.ndarray:
    """Intersection over union of each class over scored pixels (NaN if absent)."""
    cm = confusion_matrix(prediction, truth, n_classes, valid).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def dice_per_class(prediction, truth, n_classes: int, valid=None) -> np.ndarray:
    """Dice coefficient of each class over scored pixels (NaN if absent)."""
    cm = confusion_matrix(prediction, truth, n_classes, valid).astype(np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def _boundary(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=np.ones((3,) * mask.ndim), border_value=1)
    return mask & ~eroded


def boundary_f1(prediction, truth, tolerance: float = 2.0, valid=None, label: int = 1) -> float:
    """Boundary F1 score of class ``label`` with a distance tolerance in pixels.

    A predicted boundary pixel is correct when a true boundary pixel lies
    within ``tolerance``, and vice versa. Only boundary pixels at scored
    (non-void, valid) positions count. Returns 1.0 when neither has a
    boundary and 0.0 when only one of them has.
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    scored = _scored(truth, valid)
    pb = _boundary(prediction == label) & scored
    tb = _boundary(truth == label) & scored
    if not pb.any() and not tb.any():
        return 1.0
    if not pb.any() or not tb.any():
        return 0.0
    dist_to_t = ndimage.distance_transform_edt(~tb)
    dist_to_p = ndimage.distance_transform_edt(~pb)
    precision = float((dist_to_t[pb] <= tolerance).mean())
    recall = float((dist_to_p[tb] <= tolerance).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score(prediction, truth, n_classes: int = 2, valid=None, tolerance: float = 2.0) -> Scores:
    """All metrics at once; see the module docstring for conventions."""
    return Scores(
        accuracy=accuracy(prediction, truth, valid),
        iou=tuple(float(v) for v in iou_per_class(prediction, truth, n_classes, valid)),
        dice=tuple(float(v) for v in dice_per_class(prediction, truth, n_classes, valid)),
        boundary_f1=boundary_f1(prediction, truth, tolerance, valid),
        n_scored=int(_scored(np.asarray(truth), valid).sum()),
    )


def truth_from_mask(mask: np.ndarray) -> np.ndarray:
    """A binary ground-truth mask (nonzero = object) as classes 1 ("is") / 2 ("is not")."""
    return np.where(np.asarray(mask) > 0, 1, 2).astype(np.uint8)
