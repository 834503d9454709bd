"""Every stroke trains; a stroke painted during training is scored before it trains."""

import dataclasses

import numpy as np

from napari_frontier.data.scribbles import IGNORE
from napari_frontier.learning.config import TrainConfig
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.0, holdout_interval=0.0)


def test_default_trains_on_every_stroke(disk_image, monkeypatch):
    image, scribbles, _ = disk_image
    assert TrainConfig().holdout_fraction == 0
    seen = {}
    import napari_frontier.learning.training_data as data_module

    real = data_module.PatchSampler

    def spy(images, targets, *a, **k):
        seen.setdefault("targets", []).append([t.copy() for t in targets])
        return real(images, targets, *a, **k)

    monkeypatch.setattr(data_module, "PatchSampler", spy)
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    last = seg.fit(image, scribbles, steps=2)
    train_t = seen["targets"][0][0]
    assert ((train_t != IGNORE) == (scribbles > 0)).all()  # nothing held out
    assert last.holdout_accuracy is None  # no stroke has been scored before training on it


def test_new_stroke_is_scored_by_the_model_before_it_trains(disk_image):
    image, scribbles, _truth = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=60)
    gen = seg.training(image, scribbles)
    upd = next(gen)
    assert upd.holdout_accuracy is None
    # A correct stroke inside the disk: a trained model already gets it right.
    right = scribbles.copy()
    right[36:40, 34:54] = 1
    upd = gen.send(right)
    while upd.holdout_accuracy is None:
        upd = next(gen)
    assert upd.holdout_accuracy > 0.9
    # A deliberately wrong stroke (background painted "is"), scored before training.
    wrong = right.copy()
    wrong[2:6, 2:40] = 1
    upd = gen.send(wrong)
    acc = upd.holdout_accuracy
    gen.close()
    # the window now holds the right stroke (~80 px correct) and the wrong one
    # (~150 px, almost all predicted "is not"): the accuracy falls well below 0.9
    assert acc < 0.6


def test_fixed_holdout_split_is_still_available(disk_image):
    image, scribbles, _ = disk_image
    tc = dataclasses.replace(FAST, holdout_fraction=0.5)
    # more strokes per class so that some can be held out
    many = scribbles.copy()
    many[30:32, 30:40] = 1
    many[56:58, 30:40] = 1
    many[0:3, 0:10] = 2
    many[92:95, 0:10] = 2
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    last = seg.fit(image, many, steps=3)
    assert last.holdout_accuracy is not None
    assert 0.0 <= last.holdout_accuracy <= 1.0
    assert np.isfinite(last.loss)


def test_a_stroke_sent_as_a_box_is_scored_before_it_trains(disk_image):
    from napari_frontier.data.scribbles import ScribbleDelta

    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=60)
    gen = seg.training(image, scribbles)
    next(gen)
    wrong = scribbles.copy()
    wrong[2:6, 2:40] = 1  # background painted "is": the trained model disagrees
    upd = gen.send(ScribbleDelta.of(wrong, (slice(2, 6), slice(2, 40))))
    gen.close()
    assert upd.holdout_accuracy is not None
    assert upd.holdout_accuracy < 0.5
