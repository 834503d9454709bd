"""Where to paint next: the Qt-free suggestion rules."""

import numpy as np
import pytest

from napari_frontier.suggest import suggest_location, suggest_regions


def _probs(p_is: np.ndarray) -> np.ndarray:
    return np.stack([p_is, 1.0 - p_is]).astype(np.float32)


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


def test_suggest_regions_ranks_uncertain_areas_and_spreads_them():
    p = np.full((120, 120), 0.99, np.float32)
    p[10:30, 10:30] = 0.5  # most uncertain
    p[80:100, 80:100] = 0.7  # less so
    out = suggest_regions(_probs(p), window=16, n=5)
    assert len(out) >= 2
    (r0, c0), (r1, c1) = out[0], out[1]
    assert abs(r0 - 20) <= 4 and abs(c0 - 20) <= 4
    assert abs(r1 - 90) <= 4 and abs(c1 - 90) <= 4
    for i, a in enumerate(out):
        for b in out[i + 1 :]:
            assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) > 16


def test_suggest_regions_prefers_places_far_from_strokes_of_the_predicted_class():
    p = np.full((100, 200), 0.99, np.float32)
    p[40:60, 20:40] = 0.6  # equally uncertain, both predicted "is"
    p[40:60, 160:180] = 0.6
    scribbles = np.zeros(p.shape, np.uint8)
    scribbles[50, 0:5] = 1  # an "is" stroke near the left area only
    scribbles[0, 195:200] = 2
    (row, col), *_ = suggest_regions(_probs(p), scribbles, window=16)
    assert abs(row - 50) <= 4 and abs(col - 170) <= 4


def test_suggest_regions_skips_painted_and_invalid_pixels():
    p = np.full((80, 80), 0.99, np.float32)
    p[10:30, 10:30] = 0.5
    p[50:70, 50:70] = 0.5
    scribbles = np.zeros(p.shape, np.uint8)
    scribbles[15:25, 15:25] = 2
    valid = np.ones(p.shape, bool)
    valid[50:70, 50:70] = False
    for probs, v in [(_probs(p), valid), (_probs(p), None)]:
        if v is None:
            probs[:, 50:70, 50:70] = np.nan  # NaN counts as invalid too
        out = suggest_regions(probs, scribbles, valid=v, window=8, n=50)
        assert out
        for row, col in out:
            assert not (15 <= row < 25 and 15 <= col < 25)
            assert not (50 <= row < 70 and 50 <= col < 70)


def test_suggest_regions_empty_when_certain_and_checks_shape():
    assert suggest_regions(_probs(np.ones((20, 20), np.float32))) == []
    with pytest.raises(ValueError):
        suggest_regions(np.zeros((20, 20)))
