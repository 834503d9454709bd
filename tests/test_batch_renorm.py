"""Batch renormalisation: training-mode output is what eval mode will compute."""

import numpy as np
import pytest
import torch

from napari_frontier.model import BatchRenorm2d, ModelConfig, build_model
from napari_frontier.preprocess import prepare
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig


def _batch(seed=0, shift=1.0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 8, 8, generator=g) * scale + shift


def test_first_batch_is_plain_batchnorm():
    torch.manual_seed(0)
    renorm, plain = BatchRenorm2d(3), torch.nn.BatchNorm2d(3)
    x = _batch()
    torch.testing.assert_close(renorm(x), plain(x))
    torch.testing.assert_close(renorm.running_mean, plain.running_mean)
    torch.testing.assert_close(renorm.running_var, plain.running_var)


def _settled(momentum=0.0) -> BatchRenorm2d:
    """A layer past its ramp, with running statistics near those of ``_batch``."""
    bn = BatchRenorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn.num_batches_tracked.fill_(10 * bn.ramp)
    bn.running_mean.copy_(torch.tensor([0.7, 1.2, 1.0]))
    bn.running_var.copy_(torch.tensor([3.0, 5.0, 4.5]))
    bn.momentum = momentum
    return bn


def test_training_output_equals_eval_output_within_the_clipping():
    bn = _settled()
    x = _batch()
    trained = bn(x)  # momentum 0: the running statistics stay where they are
    expected = bn.eval()(x)
    torch.testing.assert_close(trained, expected, atol=1e-5, rtol=1e-5)
    # plain BatchNorm normalises by the batch instead: visibly different
    plain = torch.nn.BatchNorm2d(3).train()
    plain.load_state_dict(bn.state_dict())
    assert (plain(x) - expected).abs().max() > 0.05


def test_corrections_are_clipped_and_carry_no_gradient():
    bn = _settled()
    bn.running_var.fill_(1e-4)  # batch spread 200x the running one: r clipped at r_max
    x = _batch().requires_grad_()
    y = bn(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()

    # the explicit formula, with r and d as constants
    x2 = x.detach().clone().requires_grad_()
    var, mean = torch.var_mean(x2, dim=(0, 2, 3), unbiased=False)
    std = torch.sqrt(var + bn.eps)
    run_std = torch.sqrt(bn.running_var + bn.eps)
    r = (std / run_std).detach().clamp(1 / bn.r_max, bn.r_max)
    d = ((mean - bn.running_mean) / run_std).detach().clamp(-bn.d_max, bn.d_max)
    assert torch.all(r == bn.r_max)
    c = (slice(None), None, None)
    ref = bn.weight[c] * (r[c] * (x2 - mean[c]) / std[c] + d[c]) + bn.bias[c]
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)


def test_the_clipping_opens_over_the_ramp():
    """Early in training (running statistics still noisy) it is almost plain BatchNorm."""
    x = _batch()
    outputs = {}
    for n in (1, 1000):
        bn = _settled()
        bn.running_var.fill_(1e-2)  # far from the batch: the corrections hit the clipping
        bn.num_batches_tracked.fill_(n)
        plain = torch.nn.BatchNorm2d(3, momentum=0.0)
        plain.load_state_dict(bn.state_dict())
        outputs[n] = (bn(x) - plain(x)).abs().max().item()
    assert outputs[1] < 0.1  # r within 1 +- 1 %, d within +-0.025
    assert outputs[1000] > 1.0


def test_plain_batchnorm_until_the_start_then_the_ramp_from_there():
    x = _batch()
    gaps = {}
    for n in (1, 499, 500, 501, 500 + 1000):
        bn = _settled()
        bn.start = 500
        bn.running_var.fill_(1e-2)
        bn.num_batches_tracked.fill_(n)
        plain = torch.nn.BatchNorm2d(3, momentum=0.0)
        plain.load_state_dict(bn.state_dict())
        gaps[n] = (bn(x) - plain(x)).abs().max().item()
    assert gaps[1] == gaps[499] == gaps[500] == 0.0  # exactly BatchNorm before the start
    assert 0.0 < gaps[501] < 0.1  # the clipping opens gradually from the start
    assert gaps[1500] > 1.0


def test_renorm_start_reaches_every_layer_and_old_configs_load():
    net = build_model(ModelConfig(width=8, depth=1, norm="renorm", renorm_start=300))
    starts = {m.start for m in net.modules() if isinstance(m, BatchRenorm2d)}
    assert starts == {300}
    old = ModelConfig(width=8, depth=1, norm="renorm").as_dict()
    del old["renorm_start"]  # written before the setting existed
    assert ModelConfig.from_dict(old).renorm_start == 0
    with pytest.raises(ValueError, match="renorm_start"):
        ModelConfig(norm="batch", renorm_start=500)  # would be silently ignored
    with pytest.raises(ValueError, match="renorm_start"):
        ModelConfig(norm="renorm", renorm_start=-1)


def test_running_statistics_follow_the_momentum_like_batchnorm():
    renorm, plain = _settled(momentum=0.1), torch.nn.BatchNorm2d(3, momentum=0.1)
    plain.load_state_dict(renorm.state_dict())
    for seed in range(3):
        x = _batch(seed)
        renorm(x)
        plain(x)
    torch.testing.assert_close(renorm.running_mean, plain.running_mean)
    torch.testing.assert_close(renorm.running_var, plain.running_var)


def test_renorm_network_predicts_the_same_tiled_and_after_a_checkpoint(disk_image, tmp_path):
    from napari_frontier.inference import predict_probabilities

    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.0)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=2, norm="renorm"))
    seg.fit(image, scribbles, steps=30)
    assert any(isinstance(m, BatchRenorm2d) for m in seg.model.modules())
    probs = seg.predict(image).probabilities
    # eval mode folds the layer like a BatchNorm: tiles agree with the whole image
    x = prepare(image).x
    whole = predict_probabilities(seg.model, x, tile=512)
    tiled = predict_probabilities(seg.model, x, tile=32, batch_size=3)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    path = tmp_path / "m.pt"
    seg.save(path)
    again = Segmenter.load(path)
    assert again.model.config.norm == "renorm"
    np.testing.assert_array_equal(again.predict(image).probabilities, probs)


@pytest.mark.parametrize("norm", ["batch", "renorm"])
def test_renorm_has_the_state_of_a_batchnorm(norm):
    """Checkpoints of either kind hold the same tensors (a renorm layer is a BatchNorm)."""
    net = build_model(ModelConfig(width=8, depth=1, norm=norm))
    ref = build_model(ModelConfig(width=8, depth=1)).state_dict()
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.items()}
