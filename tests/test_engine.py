"""Model, tiled inference and training, on small synthetic images."""

import numpy as np
import pytest
import torch

from napari_frontier.data.normalise import prepare
from napari_frontier.errors import ScribbleError, ShapeMismatchError
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.metrics import score, truth_from_mask
from napari_frontier.learning.network import ModelConfig, build_model
from napari_frontier.prediction.tiling import predict_probabilities
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.05)


def test_no_void_output_channel_and_valid_output_shape():
    cfg = ModelConfig(in_channels=3, n_classes=4, width=8, depth=2)
    net = build_model(cfg).eval()
    out = net(torch.zeros(2, 4, 32, 32))
    assert out.shape == (2, 4, 32, 32)  # one channel per painted class, none for void


@pytest.mark.parametrize("shape", [(70, 53), (129, 200), (17, 9)])
@pytest.mark.parametrize(
    "arch",
    [
        dict(width=8, depth=2, context_stride=1, backbone=False),
        dict(width=8),  # the default layout: pyramid filters, U-Net on a coarser grid
    ],
)
def test_tiled_prediction_equals_untiled(shape, arch):
    torch.manual_seed(0)
    net = build_model(ModelConfig(in_channels=1, n_classes=2, **arch))
    torch.nn.init.normal_(net.head.weight)  # the U-Net head starts at zero: make it count
    # train-mode BN statistics would be batch dependent: use eval mode weights
    x = prepare(np.random.default_rng(0).random(shape).astype(np.float32)).x
    whole = predict_probabilities(net, x, tile=512)
    tiled = predict_probabilities(net, x, tile=16, batch_size=3)
    assert whole.shape == (2, *shape)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)


def test_training_learns_disk_and_never_predicts_void(disk_image):
    image, scribbles, truth = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    last = seg.fit(image, scribbles, steps=60)
    assert last.done and last.step == 60
    pred = seg.predict(image)
    assert set(np.unique(pred.labels)) <= {1, 2}
    s = score(pred.labels, truth_from_mask(truth))
    assert s.foreground_iou > 0.8, s


def test_training_is_reproducible_on_cpu(disk_image):
    image, scribbles, _ = disk_image
    probs = []
    for _ in range(2):
        seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
        seg.fit(image, scribbles, steps=5)
        probs.append(seg.predict(image).probabilities)
    np.testing.assert_array_equal(probs[0], probs[1])


def test_generator_accepts_new_scribbles_and_resumes(disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    gen = seg.training(image, scribbles)
    first = next(gen)
    more = scribbles.copy()
    more[60:64, 30:58] = 1
    upd = gen.send(more)
    assert upd.message == "scribbles updated"
    only_is = np.where(scribbles == 1, 1, 0)
    upd = gen.send(only_is)
    assert "kept the previous scribbles" in upd.message
    gen.close()
    step = seg.step
    assert step > first.step - 1
    seg.fit(image, scribbles, steps=3)
    assert seg.step == step + 3  # continued from the current weights


def test_seconds_bound(disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    last = seg.fit(image, scribbles, seconds=0.5)
    assert 0.5 <= last.elapsed < 3.0


def test_bad_scribbles_raise_clear_errors(disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST)
    with pytest.raises(ScribbleError, match="is not"):
        seg.fit(image, np.where(scribbles == 1, 1, 0), steps=1)
    with pytest.raises(ScribbleError):
        seg.fit(image, np.zeros_like(scribbles), steps=1)
    with pytest.raises(ShapeMismatchError):
        seg.fit(image, scribbles[:-1], steps=1)
    with pytest.raises(ValueError):
        seg.fit(image, scribbles)


def test_nan_pixels_are_masked_everywhere(disk_image):
    image, scribbles, truth = disk_image
    image = image.copy()
    image[40:56, 40:50] = np.nan  # inside the disk and on a stroke
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=40)
    pred = seg.predict(image)
    assert np.all(np.isnan(pred.probabilities[:, 40:56, 40:50]))
    assert np.all(pred.labels[40:56, 40:50] == 0)
    assert np.all(pred.mask()[40:56, 40:50] == 127)
    assert set(np.unique(pred.mask())) <= {0, 127, 255}
    assert np.all(np.isfinite(pred.probabilities[:, ~np.isnan(image)]))
    s = score(pred.labels, truth_from_mask(truth), valid=pred.valid)
    assert s.n_scored == truth.size - 16 * 10


def test_nan_only_strokes_of_a_class_are_refused(disk_image):
    image, scribbles, _ = disk_image
    image = image.copy()
    image[scribbles == 1] = np.nan
    with pytest.raises(ScribbleError, match="valid"):
        Segmenter(train_config=FAST).fit(image, scribbles, steps=1)


def test_rgb_and_k_classes():
    r = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :21] = (255, 0, 0)
    image[:, 21:42] = (0, 255, 0)
    image[:, 42:] = (0, 0, 255)
    image = (image + r.integers(0, 30, image.shape)).astype(np.uint8)
    s = np.zeros((64, 64), np.uint8)
    s[10:50, 5:8] = 1
    s[10:50, 30:33] = 2
    s[10:50, 55:58] = 3
    seg = Segmenter(n_classes=3, train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, s, steps=100)
    lab = seg.predict(image).labels
    assert lab.max() <= 3 and lab.min() >= 1
    truth = np.repeat(np.repeat([[1, 2, 3]], 64, 0), [21, 21, 22], axis=1)
    # Every colour band is predicted as the class painted on it (where the
    # bands meet, between the strokes, is void and left to the network).
    for k, (c0, c1) in enumerate([(0, 21), (21, 42), (42, 64)], start=1):
        band = lab[:, c0:c1]
        assert np.bincount(band.ravel(), minlength=4).argmax() == k
    assert (lab == truth).mean() > 0.7
    with pytest.raises(ShapeMismatchError, match="channel"):
        seg.predict(image[..., 0])


def test_uncertainty_and_frontier(disk_image):
    image, scribbles, truth = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=60)
    pred = seg.predict(image)
    u = pred.uncertainty
    assert u.shape == truth.shape and np.nanmin(u) >= 0 and np.nanmax(u) <= 1
    contours = pred.frontier
    assert contours, "a disk must have a frontier"
    longest = max(contours, key=len)
    radius = np.hypot(longest[:, 0] - 48, longest[:, 1] - 44)
    assert abs(np.median(radius) - 22) < 4
    assert pred.frontier_raster.dtype == bool and pred.frontier_raster.any()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_class_argmax_is_argmax_with_first_of_ties(k):
    from napari_frontier.learning.trainer import class_argmax

    g = torch.Generator().manual_seed(k)
    # coarse values so that many pixels tie between classes
    logits = torch.randint(-2, 3, (3, k, 17, 19), generator=g).float()
    assert torch.equal(class_argmax(logits), logits.argmax(1))
    assert torch.equal(class_argmax(logits.bfloat16()), logits.bfloat16().argmax(1))


def test_multi_tensor_updates_equal_the_per_tensor_ones(disk_image):
    """AdamW's multi-tensor step and the weight average give exactly the per-tensor weights."""
    from napari_frontier.learning.trainer import WeightAverage

    image, scribbles, _ = disk_image
    runs = []
    for foreach in (True, False):
        seg = Segmenter(train_config=TrainConfig(seed=0, threads=1, update_interval=0.0))
        seg._ensure_model(1)
        seg._ensure_optimizer()
        if not foreach:
            for group in seg.optimizer.param_groups:
                group["foreach"] = False
        for _ in seg.training(image, scribbles, steps=5):
            pass
        runs.append(seg.model.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key

    # the weight average against a per-tensor lerp of parameters and float buffers
    model = seg.model
    avg = WeightAverage(model, 0.9)
    before = {k: v.clone() for k, v in avg.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        for b in model.buffers():
            if b.is_floating_point():
                b.mul_(2.0)
    avg.update(model)
    d = min(0.9, 1 / 10)
    current = model.state_dict()
    for key, value in avg.module.state_dict().items():
        if value.is_floating_point():
            expected = before[key].lerp(current[key], 1.0 - d)
        else:
            expected = current[key]
        assert torch.equal(value, expected), key


def test_filter_bank_shifted_sums_equal_the_grouped_convolution():
    import torch.nn.functional as F

    from napari_frontier.learning.network import FilterBank

    bank = FilterBank(2, (1.0, 2.0, 4.0), max_stride=4)
    x = torch.randn(3, 2, 70, 61)
    for i in range(len(bank.sigmas)):
        taps = bank.taps(i, torch.float32)
        k = torch.tensor(taps)
        ref = F.conv2d(x, k.view(1, 1, -1, 1).expand(2, 1, -1, 1), groups=2)
        ref = F.conv2d(ref, k.view(1, 1, 1, -1).expand(2, 1, 1, -1), groups=2)
        torch.testing.assert_close(FilterBank._sep(x, taps), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "cfg",
    [
        dict(in_channels=1),
        dict(in_channels=3, n_classes=4),
        dict(in_channels=2, pixel_branch=False),
        dict(in_channels=1, context_stride=1, backbone=False),
    ],
)
def test_prediction_in_strips_equals_the_whole_stem(cfg, monkeypatch):
    """Without gradients the stem runs strip by strip: the same logits as with them."""
    from napari_frontier.learning.network import FrontierNet

    torch.manual_seed(0)
    model = build_model(ModelConfig(**cfg))
    c = cfg["in_channels"] + 1
    for _ in range(3):  # BatchNorm statistics that are not the initial ones
        model(torch.randn(2, c, 96, 96))
    model.eval()
    x = torch.randn(1, c, 320, 256)
    x[:, -1] = (torch.rand(320, 256) > 0.1).float()
    whole = model(x)  # with gradients: the whole stem at once
    monkeypatch.setattr(FrontierNet, "strip_rows", 16)
    with torch.no_grad():
        strips = model(x)
    torch.testing.assert_close(strips, whole.detach(), rtol=1e-6, atol=1e-6)
    # in training mode (statistics recomputed from the batch) nothing is split
    model.train()
    with torch.no_grad():
        batch_stats = model(x)
    torch.testing.assert_close(batch_stats, model(x).detach(), rtol=1e-6, atol=1e-6)


def test_flip_averaged_prediction_is_flip_equivariant_and_the_mean_of_flips(disk_image):
    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(image, scribbles, steps=20)
    flips = [(), (1,), (0,), (0, 1)]
    plain = [
        np.flip(
            seg.predict(np.ascontiguousarray(np.flip(image, d))).probabilities, [a + 1 for a in d]
        )
        for d in flips
    ]
    seg.tta = True
    tta = seg.predict(image).probabilities
    np.testing.assert_allclose(tta, np.mean(plain, axis=0), atol=1e-5)
    assert np.abs(tta - plain[0]).max() > 1e-3  # the flips do differ for this model
    # a flipped image gets the flipped prediction
    flipped = seg.predict(np.ascontiguousarray(image[::-1])).probabilities
    np.testing.assert_allclose(flipped[:, ::-1], tta, atol=1e-5)
    # the model that predicts is left as it was, and checkpoints hold its own weights
    assert not seg.predict_model.model.training
    assert set(seg.state_dict()["state_dict"]) == set(seg.model.state_dict())
