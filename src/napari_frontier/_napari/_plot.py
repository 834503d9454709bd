"""A tiny live plot of the training curves (QPainter, no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: (attribute of TrainUpdate, colour, legend)
CURVES = (
    ("loss", "#ff9f40", "loss"),
    ("train_accuracy", "#4fc3f7", "train acc."),
    ("holdout_accuracy", "#9ccc65", "new-stroke acc."),
)
MAX_POINTS = 600


class CurvePlot(QWidget):
    """Loss (scaled to its maximum) and accuracies (0..1) against step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.points: list[tuple[int, float, float, float | None]] = []

    def clear(self) -> None:
        self.points.clear()
        self.update()

    def add(self, upd) -> None:
        """Append one TrainUpdate (keeps the last ``MAX_POINTS``)."""
        self.points.append((upd.step, upd.loss, upd.train_accuracy, upd.holdout_accuracy))
        del self.points[:-MAX_POINTS]
        self.update()

    def paintEvent(self, event):
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(4, 16, -4, -4)
        p.setPen(QPen(QColor(128, 128, 128, 120)))
        p.drawRect(rect)
        x = 6
        for _, color, name in CURVES:
            p.setPen(QColor(color))
            p.drawText(x, 12, name)
            x += p.fontMetrics().horizontalAdvance(name) + 10
        pts = self.points
        if len(pts) >= 2:
            s0, s1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
            losses = [v[1] for v in pts if v[1] is not None and math.isfinite(v[1])]
            top = max(losses, default=1.0) or 1.0
            for i, (_, color, _) in enumerate(CURVES):
                scale = top if i == 0 else 1.0
                poly = QPolygonF()
                for v in pts:
                    y = v[i + 1]
                    if y is None or not math.isfinite(y):
                        continue
                    fx = (v[0] - s0) / (s1 - s0)
                    fy = min(max(y / scale, 0.0), 1.0)
                    poly.append(
                        QPointF(rect.left() + fx * rect.width(), rect.bottom() - fy * rect.height())
                    )
                p.setPen(QPen(QColor(color), 1.5, Qt.PenStyle.SolidLine))
                p.drawPolyline(poly)
        p.end()
