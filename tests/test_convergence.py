"""The convergence signal: changed pixels, frontier displacement, stable for a while."""

import itertools
import math

import numpy as np
import pytest

from napari_frontier import cli, fit_until_stable
from napari_frontier.convergence import (
    StabilityMonitor,
    changed_fraction,
    frontier_pixels,
    frontier_shift,
    probe_region,
)
from napari_frontier.io import write_image
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig


def _edge(col, shape=(40, 60)):
    lab = np.full(shape, 2, np.uint8)
    lab[:, :col] = 1
    return lab


def _disk(r, shape=(80, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where((yy - 40) ** 2 + (xx - 40) ** 2 < r**2, 1, 2).astype(np.uint8)


def test_identical_maps_are_stable_after_the_window():
    mon = StabilityMonitor(threshold=0.001, window=5)
    lab = _disk(20)
    states = [mon.update(lab, t) for t in range(8)]
    assert states[0].changed is None and not states[0].stable
    assert all(s.changed == 0 and s.frontier_shift == 0 for s in states[1:])
    assert [s.stable for s in states] == [False] * 5 + [True] * 3
    assert states[-1].describe() == "stable: 0.00 % changed in the last 5 s"


@pytest.mark.parametrize("shift", [1, 3, 7])
def test_frontier_displacement_equals_the_shift(shift):
    a, b = _edge(20), _edge(20 + shift)
    assert frontier_pixels(a).sum() == 40  # one pixel wide
    assert frontier_shift(a, b) == pytest.approx(shift)
    assert changed_fraction(a, b) == pytest.approx(shift / 60)
    mon = StabilityMonitor()
    mon.update(a, 0)
    st = mon.update(b, 2)
    assert not st.stable and st.frontier_shift == pytest.approx(shift)
    assert st.describe().startswith(f"changing: {100 * shift / 60:.2f} % changed")
    # a grown disk: its outline moved by the growth, within a pixel's rounding
    assert frontier_shift(_disk(15), _disk(15 + shift)) == pytest.approx(shift, abs=0.5)


def test_drift_flicker_and_new_regions_are_not_stable():
    # each step changes 1 column of 60 (1.7 %): under a 2 % threshold, but it adds up
    mon = StabilityMonitor(threshold=0.02, window=3)
    states = [mon.update(_edge(10 + t), t) for t in range(10)]
    assert not any(s.stable for s in states)
    assert states[-1].window_changed == pytest.approx(3 / 60)
    # flicker: the same maps come back, but every change breaks the calm
    mon = StabilityMonitor(threshold=0.01, window=3)
    states = [mon.update(_edge(20 + t % 2), t) for t in range(10)]
    assert not any(s.stable for s in states)
    # another region (key) or shape starts over
    mon = StabilityMonitor(window=2)
    for t in range(4):
        mon.update(_edge(20), t, key="a")
    assert mon.last.stable
    assert mon.update(_edge(20), 4, key="b").changed is None
    assert mon.update(_edge(20, (30, 30)), 5, key="b").changed is None
    # no-data (0) is neither counted nor a frontier; a frontier that vanishes: NaN
    lab = _edge(20)
    lab[:, 40:] = 0
    assert changed_fraction(lab, _edge(20)) == 0
    assert math.isnan(frontier_shift(_edge(20), np.full((40, 60), 2, np.uint8)))
    assert probe_region((1000, 100)) == (slice(372, 628), slice(0, 100))


def _fake_clock(step=1.0):
    counter = itertools.count()
    return lambda: next(counter) * step


def test_fit_until_stable_stops_on_stability_or_the_cap(disk_image):
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.02)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    seen = []
    out = fit_until_stable(
        seg, image, scribbles, max_seconds=None, max_steps=3000, threshold=0.01, window=4,
        interval=1, clock=_fake_clock(), callback=lambda u, s: seen.append(s),
    )  # fmt: skip
    assert out.reason == "stable" and out.stability.stable
    assert out.update.step < 3000 and seg.step == out.update.step
    assert out.checks >= 5 and seen[-1] is out.stability
    # a window that is never reached: the cap ends it
    seg2 = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    out = fit_until_stable(seg2, image, scribbles, max_seconds=None, max_steps=15, window=1e9,
                           clock=_fake_clock())  # fmt: skip
    assert out.reason == "step limit" and seg2.step == 15
    with pytest.raises(ValueError):
        fit_until_stable(seg2, image, scribbles, max_seconds=None)


def test_fit_until_stable_on_a_stack_probes_a_painted_slice(disk_image):
    image, scribbles, _ = disk_image
    stack = np.stack([image[::-1], image])
    marks = np.stack([np.zeros_like(scribbles), scribbles])
    tc = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.02)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    out = fit_until_stable(seg, stack, marks, max_seconds=None, max_steps=10, window=1e9,
                           clock=_fake_clock())  # fmt: skip
    assert out.reason == "step limit" and out.checks >= 1


def test_cli_train_until_stable(tmp_path, disk_image, capsys):
    image, scribbles, _ = disk_image
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "s.png", scribbles)
    argv = ["train", tmp_path / "img.tif", "-s", tmp_path / "s.png", "-o", tmp_path / "m.pt",
            "--until-stable", "--stable-seconds", "1", "--stable-interval", "0.25",
            "--stable-threshold", "0.01", "--seconds", "120", "--threads", "1", "--width", "8"]  # fmt: skip
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frontier: stopped: prediction stable:" in err, err
    assert (tmp_path / "m.pt").exists()
