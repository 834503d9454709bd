"""BatchNorm statistics are recomputed for the weights that predict."""

import numpy as np
import torch

from napari_frontier.data.normalise import prepare
from napari_frontier.data.scribbles import to_targets
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.network import ModelConfig, build_model
from napari_frontier.learning.sampling import PatchSampler
from napari_frontier.learning.trainer import recalibrate_batchnorm
from napari_frontier.segmenter import Segmenter


def _sampler(disk_image, seed=0, patch=32):
    image, scribbles, _ = disk_image
    p = prepare(image)
    return PatchSampler(
        [p.x], [to_targets(scribbles, p.valid)], 2, patch, np.random.default_rng(seed)
    )


def _statistics(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


def _assert_recomputed(model, disk_image, batches: int) -> dict:
    """``model``'s BatchNorm statistics equal a recomputation over training's fixed patches."""
    got = _statistics(model)
    sampler = _sampler(disk_image, patch=96)  # TrainConfig's patch size
    recalibrate_batchnorm(model, sampler, torch.device("cpu"), batches, 4, seed=12345)
    for k, v in _statistics(model).items():
        torch.testing.assert_close(v, got[k])
    return got


def _training_at(disk_image, updates: int, steps: int = 50, **train):
    """A training run (an update after every step) paused at its ``updates``-th update."""
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, device="cpu", ema=0.9, update_interval=0.0, **train)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    gen = seg.training(image, scribbles, steps=steps)
    seen = [next(gen) for _ in range(updates)]
    return seg, gen, seen


def test_recalibration_gives_the_statistics_of_the_current_weights(disk_image):
    torch.manual_seed(0)
    net = build_model(ModelConfig(width=8, depth=1))
    sampler = _sampler(disk_image)
    bn = net.stem[1]
    bn.running_mean.fill_(100.0)  # stale statistics, far from anything the weights give
    bn.running_var.fill_(1e-4)
    bn.num_batches_tracked.fill_(7)
    state = sampler.rng.bit_generator.state
    recalibrate_batchnorm(net, sampler, torch.device("cpu"), 3, 4, seed=5)
    # the training stream of patches is untouched, and so are the counters
    assert sampler.rng.bit_generator.state == state
    assert int(bn.num_batches_tracked) == 7 and bn.momentum == 0.1
    # the statistics equal those of the same patches under these weights
    ref = _sampler(disk_image)
    ref.rng = np.random.default_rng(5)
    means = []
    for _ in range(3):
        x = ref.sample(4).x
        feats = net.filters.groups(torch.from_numpy(x)[:, :-1])[0][1]
        z = net.stem[0](torch.cat([feats, torch.from_numpy(x)[:, -1:]], 1))
        means.append(z.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-4)


def test_trained_model_predicts_with_recalibrated_statistics(disk_image):
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, device="cpu")
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=40)
    # training ended with exactly this recalibration (same patches, same weights)
    _assert_recomputed(seg.model, disk_image, 32)


def test_weight_average_predicts_with_its_own_recalibrated_statistics(disk_image):
    """With a weight average, its BatchNorm statistics are recomputed for the averaged weights."""
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, device="cpu", ema=0.9)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=40)
    average = seg.predict_model
    assert average is not seg.model and not average.training  # it predicts, in eval mode
    _assert_recomputed(average, disk_image, 32)
    assert not average.training
    # the averaged weights differ from the raw ones, so their statistics do too
    raw = seg.model.state_dict()
    assert any(not torch.equal(raw[k], v) for k, v in average.state_dict().items() if "weight" in k)
    # and the checkpoint holds the weights that predict
    saved = seg.state_dict()["state_dict"]
    for k, v in average.state_dict().items():
        torch.testing.assert_close(saved[k], v.cpu())


def test_statistics_are_recomputed_when_something_predicts_not_at_every_update(
    disk_image, monkeypatch
):
    """Updates without a prediction cost no recalibration; a prediction gets fresh statistics."""
    import napari_frontier.learning.trainer as trainer_module

    calls = []
    real = trainer_module.recalibrate_batchnorm

    def counted(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "recalibrate_batchnorm", counted)
    # updates after every step (update_interval=0): many updates, nothing predicts
    seg, gen, updates = _training_at(disk_image, 20, steps=30)
    assert [u.step for u in updates] == list(range(1, 21))
    assert calls == []  # twenty updates, no prediction: no recalibration yet
    assert seg.predict_model is not None and calls == []  # reading the property does no work
    # a prediction at this update recomputes the statistics once, for these weights
    average = seg.model_for_prediction()
    assert calls == [average]
    assert seg.model_for_prediction() is average and len(calls) == 1  # not again at the same update
    got = _assert_recomputed(average, disk_image, 16)
    # a checkpoint written now holds these statistics
    saved = seg.state_dict()["state_dict"]
    for k, v in got.items():
        torch.testing.assert_close(saved[k], v)
    gen.close()


def test_stopping_at_an_update_leaves_recalibrated_statistics(disk_image):
    """A run closed mid-way (Stop, Ctrl-C) predicts with statistics of its final weights."""
    seg, gen, _ = _training_at(disk_image, 12)
    gen.close()
    average = seg.model_for_prediction()
    _assert_recomputed(average, disk_image, 32)


def test_statistics_move_only_with_the_weights(disk_image):
    """Recomputed twice for the same weights, the statistics are the same (same patches)."""
    seg, gen, _ = _training_at(disk_image, 10)
    first = _statistics(seg.model_for_prediction())
    seg._trainer.recalibrate()  # again, for the same weights
    again = _statistics(seg.model_for_prediction())
    for k in first:
        torch.testing.assert_close(first[k], again[k])
    gen.close()


def test_a_weight_average_that_misses_its_strokes_never_predicts(disk_image, monkeypatch):
    import napari_frontier.learning.trainer as trainer_module

    def params(module) -> dict:
        return {k: v.clone() for k, v in module.state_dict().items()}

    guarded, gen, _ = _training_at(disk_image, 4)
    plain, gen_plain, _ = _training_at(disk_image, 4, prediction_guard=0.0)
    passed = params(
        guarded.model_for_prediction()
    )  # statistics recomputed; the guard lets it through
    plain.model_for_prediction()  # the same calibrations in both runs
    # from now on the average gets no painted pixel right in eval mode
    monkeypatch.setattr(trainer_module, "stroke_accuracy", lambda *a, **k: 0.0)
    for _ in range(3):
        upd, _ = next(gen), next(gen_plain)
        assert upd.message == "" or "previous prediction" in upd.message
        held = params(guarded.model_for_prediction())
        plain.model_for_prediction()
        for k, v in passed.items():  # the weights that passed keep predicting
            assert torch.equal(held[k], v), k
    assert guarded._trainer.held_back == 3 and plain._trainer.held_back == 0
    # ... and checkpoints are written from them
    for k, v in guarded.state_dict()["state_dict"].items():
        assert torch.equal(v, passed[k]), k
    # the next update says so (once per hold), and training and the true
    # average go on as if nothing were held back
    upd, upd_plain = next(gen), next(gen_plain)
    assert "kept the previous prediction" in upd.message and upd_plain.message == ""
    for k, v in params(plain.model).items():
        assert torch.equal(params(guarded.model)[k], v), k
    average, reference = params(guarded._ema.module), params(plain._ema.module)
    for name, _ in plain._ema.module.named_parameters():
        assert torch.equal(average[name], reference[name]), name
    gen.close(), gen_plain.close()


def test_a_trained_average_passes_the_guard(disk_image):
    seg, gen, seen = _training_at(disk_image, 40)
    assert seen[-1].train_accuracy > 0.9
    seg.model_for_prediction()
    assert seg._trainer.held_back == 0
    gen.close()
