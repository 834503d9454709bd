"""The learning-rate decay: it falls while the strokes stay the same, and a new stroke restarts it."""

import math

import pytest

from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig


def test_the_decay_restarts_when_the_strokes_change(disk_image):
    image, scribbles, _ = disk_image
    base, half_life = 3e-3, 4.0
    tc = TrainConfig(
        seed=0, threads=1, patch_size=32, batch_size=2, update_interval=0.0,
        learning_rate=base, lr_decay_steps=half_life,
    )  # fmt: skip
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=1))
    gen = seg.training(image, scribbles)
    lr = lambda: seg.optimizer.param_groups[0]["lr"]  # noqa: E731
    upd = next(gen)
    while upd.step < 12:
        upd = gen.send(None)
    # the rate of step 12 (n = 11 steps after the first)
    assert lr() == pytest.approx(base / math.sqrt(1 + 11 / half_life))
    more = scribbles.copy()
    more[10:14, 10:30] = 2  # a new "is not" stroke
    upd = gen.send(more)  # the next step is the first on the new strokes
    assert upd.step == 13
    assert lr() == pytest.approx(base)
    upd = gen.send(None)
    assert lr() == pytest.approx(base / math.sqrt(1 + 1 / half_life))
    gen.close()


def test_a_constant_rate_by_default_stays_constant(disk_image):
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, patch_size=32, batch_size=2, lr_decay_steps=0)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=1))
    seg.fit(image, scribbles, steps=8)
    assert seg.optimizer.param_groups[0]["lr"] == pytest.approx(tc.learning_rate)


def test_a_delayed_decay_keeps_the_full_rate_until_it_starts(disk_image):
    image, scribbles, _ = disk_image
    base, half_life, start = 3e-3, 4.0, 6
    tc = TrainConfig(
        seed=0, threads=1, patch_size=32, batch_size=2, update_interval=0.0,
        learning_rate=base, lr_decay_steps=half_life, lr_decay_start=start,
    )  # fmt: skip
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=1))
    gen = seg.training(image, scribbles)
    lr = lambda: seg.optimizer.param_groups[0]["lr"]  # noqa: E731
    upd = next(gen)
    rates = {upd.step: lr()}
    while upd.step < 12:
        upd = gen.send(None)
        rates[upd.step] = lr()
    # step s trains at n = s - 1 steps after the first; the decay counts n - start
    for step, rate in rates.items():
        n = max(0, step - 1 - start)
        assert rate == pytest.approx(base / math.sqrt(1 + n / half_life)), step
    assert rates[start + 1] == pytest.approx(base) and rates[12] < base
    more = scribbles.copy()
    more[10:14, 10:30] = 2  # a new stroke: the full rate again, for ``start`` steps
    gen.send(more)
    for _ in range(start):
        gen.send(None)
        assert lr() == pytest.approx(base)
    gen.send(None)
    assert lr() == pytest.approx(base / math.sqrt(1 + 1 / half_life))
    gen.close()


def test_a_delay_without_a_decay_or_below_zero_is_refused():
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(lr_decay_start=100)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(lr_decay_steps=300, lr_decay_start=-1)
