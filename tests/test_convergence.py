"""The convergence signal and stop: frontier displacement between step-spaced checkpoints."""

import math

import numpy as np
import pytest

from napari_frontier import cli, fit_until_stable
from napari_frontier.data.io import write_image
from napari_frontier.learning.config import TrainConfig
from napari_frontier.live.convergence import (
    StabilityMonitor,
    changed_fraction,
    frontier_moved,
    frontier_pixels,
    frontier_shift,
    probe_of,
    probe_region,
)
from napari_frontier.segmenter import Segmenter


def _edge(col, shape=(40, 60)):
    lab = np.full(shape, 2, np.uint8)
    lab[:, :col] = 1
    return lab


def _disk(r, shape=(80, 80)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.where((yy - 40) ** 2 + (xx - 40) ** 2 < r**2, 1, 2).astype(np.uint8)


def _feed(mon, maps, every=10, start=0):
    return [mon.update(m, start + i * every) for i, m in enumerate(maps)]


def test_identical_maps_are_stable_after_the_window_and_the_minimum():
    mon = StabilityMonitor(level=1.0, every=10, window=3, min_steps=50)
    states = _feed(mon, [_disk(20)] * 8)
    assert states[0].changed is None and not states[0].stable
    assert all(s.changed == 0 and s.moved == 0 for s in states[1:])
    assert [s.window_moved for s in states[:3]] == [None] * 3
    # the window is full at step 30, the minimum reached at step 50
    assert [s.stable for s in states] == [False] * 5 + [True] * 3
    assert states[-1].window_steps == 30
    assert states[-1].describe().startswith("stable — more training changes little")


@pytest.mark.parametrize("shift", [1, 3, 7])
def test_displacement_equals_the_shift(shift):
    a, b = _edge(20), _edge(20 + shift)
    assert frontier_pixels(a).sum() == 40  # one pixel wide
    assert frontier_shift(a, b) == pytest.approx(shift)
    assert frontier_moved(a, b) == pytest.approx(shift)
    assert changed_fraction(a, b) == pytest.approx(shift / 60)
    # a grown disk: its outline moved by the growth (a diagonal frontier counts
    # fewer pixels than its length: up to ~11 % more)
    assert frontier_shift(_disk(15), _disk(15 + shift)) == pytest.approx(shift, abs=0.5)
    assert frontier_moved(_disk(15), _disk(15 + shift)) == pytest.approx(1.06 * shift, rel=0.06)
    # independent of the frontier's length: two copies one above the other move the same
    two = lambda m: np.concatenate([m, m], axis=0)  # noqa: E731
    assert frontier_moved(two(a), two(b)) == pytest.approx(shift)
    mon = StabilityMonitor(every=10)
    mon.update(a, 0)
    st = mon.update(b, 10)
    assert not st.stable and st.moved == pytest.approx(shift) and st.steps == 10
    assert st.describe().startswith(f"changing: {100 * shift / 60:.2f} % changed")
    # a map of every second pixel: displacements in image pixels
    mon.update(a[::2, ::2], 20, key="sub", scale=2)
    assert mon.update(_edge(20 + 2 * shift)[::2, ::2], 30, key="sub", scale=2).moved == (
        pytest.approx(2 * shift)
    )


def test_a_sequence_that_keeps_changing_is_never_stable():
    # a drift: one pixel per checkpoint, under the 1.5-px level, but it adds up over the window
    mon = StabilityMonitor(ratio=1.25, level=1.5, every=10, window=4, min_steps=0)
    states = _feed(mon, [_edge(10 + i) for i in range(40)])
    assert not any(s.stable for s in states)
    assert states[-1].window_moved == pytest.approx(4) and states[-1].wobble == pytest.approx(1)
    assert "frontier moved 4.0 px in the last 40 steps" in states[-1].describe()
    # the same drift under a wobble of 2 px back and forth: still not stable
    mon = StabilityMonitor(ratio=1.25, level=1.5, every=10, window=4, min_steps=0)
    states = _feed(mon, [_edge(10 + i + 2 * (i % 2)) for i in range(40)])
    assert not any(s.stable for s in states) and states[-1].wobble == pytest.approx(2)
    # a wobble alone does not add up: stable, though every map differs from the last
    mon = StabilityMonitor(ratio=1.25, level=1.5, every=10, window=4, min_steps=0)
    states = _feed(mon, [_edge(20 + 3 * (i % 2)) for i in range(12)])
    assert all(s.moved == 3 for s in states[1:]) and states[-1].stable
    # settled, then an object is found: not stable until the window has passed it
    found = _edge(20)
    found[12:28, 36:52] = 1  # 256 pixels: 3.6 px averaged over the frontier
    mon = StabilityMonitor(ratio=1.25, level=1.5, every=10, window=4, min_steps=0)
    states = _feed(mon, [_edge(20)] * 6 + [found] * 6)
    assert [s.stable for s in states] == [False] * 4 + [True] * 2 + [False] * 4 + [True] * 2
    assert states[6].moved > 1.5


def test_checkpoints_are_spaced_by_steps_and_some_changes_start_over():
    mon = StabilityMonitor(level=1.0, every=100, window=2, min_steps=0)
    # many maps between checkpoints: measured against the last checkpoint, not kept
    for step in range(0, 1000, 7):
        st = mon.update(_edge(20), step)
    assert len(mon._history) == 3 and [h[0] for h in mon._history] == [700, 805, 903]
    assert st.stable and st.steps == step - 903
    # a jump between checkpoints is not stable, though the last checkpoint was
    assert not mon.update(_edge(25), 1000 - 1).stable
    # another region (key), shape, or an earlier step starts over
    mon = StabilityMonitor(every=1, window=1, min_steps=0)
    for step in range(4):
        mon.update(_edge(20), step, key="a")
    assert mon.last.stable
    assert mon.update(_edge(20), 4, key="b").changed is None
    assert mon.update(_edge(20, (30, 30)), 5, key="b").changed is None
    assert mon.update(_edge(20, (30, 30)), 2, key="b").changed is None
    # no-data (0) is neither counted nor a frontier
    lab = _edge(20)
    lab[:, 40:] = 0
    assert changed_fraction(lab, _edge(20)) == 0 and frontier_moved(lab, _edge(20)) == 0
    # a change where neither map has a frontier cannot be called small
    one, other = np.full((10, 10), 1, np.uint8), np.full((10, 10), 1, np.uint8)
    other[0, 0] = 2
    assert frontier_moved(one, one) == 0
    assert math.isinf(frontier_moved(np.full((10, 10), 2, np.uint8), one))
    with pytest.raises(ValueError):
        StabilityMonitor(every=0)


def test_the_probe_is_the_slice_or_a_crop_around_the_strokes():
    assert probe_region((1000, 1000)) == (slice(0, 1000), slice(0, 1000))
    assert probe_region((2000, 2000)) == (slice(488, 1512), slice(488, 1512))
    marks = np.zeros((2000, 2000), np.uint8)
    marks[1900:1950, 30:60] = 1
    assert probe_region((2000, 2000), marks) == (slice(976, 2000), slice(0, 1024))
    assert probe_region((100, 20000), None, 100 * 100) == (slice(0, 100), slice(9950, 10050))
    seg = Segmenter()
    stack = np.zeros((3, 50, 60), np.float32)
    strokes = np.zeros((3, 50, 60), np.uint8)
    strokes[2, 10, 10] = 1
    assert probe_of(seg, stack, strokes) == ((2,), (slice(0, 50), slice(0, 60)))


def _toy(update_interval=0.0):
    tc = TrainConfig(seed=0, threads=1, device="cpu", update_interval=update_interval)
    return Segmenter(train_config=tc, model_config=dict(width=8, depth=2))


def test_fit_until_stable_stops_on_a_toy_problem_that_converges(disk_image):
    image, scribbles, _ = disk_image
    seg = _toy()
    seen = []
    out = fit_until_stable(
        seg, image, scribbles, max_seconds=None, max_steps=3000, every=25, window=4,
        min_steps=100, callback=lambda u, s: seen.append(s),
    )  # fmt: skip
    assert out.reason == "stable" and out.stability.stable
    assert 100 <= out.update.step < 3000 and seg.step == out.update.step
    st = out.stability
    assert st.window_moved <= max(1.5, 1.5 * st.wobble) and st.window_steps == 100
    assert out.checks == 1 + out.update.step // 25 and seen[-1] is out.stability


def test_fit_until_stable_respects_its_caps_and_says_how_it_ended(disk_image):
    image, scribbles, _ = disk_image
    # a minimum never reached: the step cap ends it
    seg = _toy()
    out = fit_until_stable(seg, image, scribbles, max_seconds=None, max_steps=60, every=10,
                           min_steps=10**9)  # fmt: skip
    assert out.reason == "step limit" and seg.step == 60 and not out.stability.stable
    # the time cap (how long is up to the machine; that it ended on it is not)
    out = fit_until_stable(_toy(0.02), image, scribbles, max_seconds=0.5, min_steps=10**9)
    assert out.reason == "time limit" and out.update.elapsed >= 0.5
    with pytest.raises(ValueError):
        fit_until_stable(seg, image, scribbles, max_seconds=None)


def test_fit_until_stable_on_a_stack_probes_a_painted_slice(disk_image):
    image, scribbles, _ = disk_image
    stack = np.stack([image[::-1], image])
    marks = np.stack([np.zeros_like(scribbles), scribbles])
    out = fit_until_stable(_toy(), stack, marks, max_seconds=None, max_steps=30, every=10,
                           min_steps=10**9)  # fmt: skip
    assert out.reason == "step limit" and out.checks == 4  # steps 1, 10, 20, 30


def test_cli_train_until_stable(tmp_path, disk_image, capsys):
    image, scribbles, _ = disk_image
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "s.png", scribbles)
    argv = ["train", tmp_path / "img.tif", "-s", tmp_path / "s.png", "-o", tmp_path / "m.pt",
            "--until-stable", "--stable-window", "200", "--stable-min-steps", "100",
            "--steps", "3000", "--threads", "1", "--width", "8"]  # fmt: skip
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frontier: stopped: the prediction is stable (the frontier moved" in err, err
    assert "stop when you like" not in err  # the GUI's words
    assert (tmp_path / "m.pt").exists()
