"""Where to paint next: the Qt-free suggestion rules."""

import numpy as np
import pytest

from napari_frontier.live.suggest import suggest_location


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


def test_suggest_location_treats_nan_as_certain_and_ignores_mismatched_scribbles():
    u = np.full((60, 60), np.nan, np.float32)
    u[40:56, 40:56] = 0.9
    row, col = suggest_location(u, np.ones((10, 10), np.uint8), window=16)
    assert abs(row - 48) <= 4 and abs(col - 48) <= 4
