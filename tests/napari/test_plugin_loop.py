"""The plugin's suggestion logic, without Qt (the live loop: tests/test_live.py)."""

from __future__ import annotations

import numpy as np
import pytest

# Only numpy/torch modules of the plugin package: importable without a display.
from napari_frontier._napari._suggest import suggest_location


@pytest.mark.parametrize("painted", [False, True])
def test_suggest_location_avoids_painted_areas(painted):
    u = np.zeros((100, 100), np.float32)
    u[10:30, 10:30] = 1.0
    u[70:90, 60:80] = 0.8
    scribbles = np.zeros((100, 100), np.uint8)
    if painted:
        scribbles[12:28, 12:28] = 1
    row, col = suggest_location(u, scribbles, window=16)
    expected = (80, 70) if painted else (20, 20)
    assert abs(row - expected[0]) <= 4 and abs(col - expected[1]) <= 4


def test_suggest_location_none_when_certain():
    assert suggest_location(np.zeros((20, 20)), None) is None
