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
