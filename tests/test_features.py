"""Pretrained features: training, checkpoints, tiling, the feature cache, the sampler, the CLI."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import socket

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import read_image, save_checkpoint, write_image
from napari_frontier.data.scribbles import IGNORE
from napari_frontier.learning import backbone as bb
from napari_frontier.learning import training_data
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.network import FEATURES
from napari_frontier.learning.sampling import PatchSampler
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, patch_size=64, batch_size=2, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _disk(h: int = 96, w: int = 96, seed: int = 1):
    """A bright disk on a dark noisy background and two strokes."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    truth = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 < (min(h, w) // 4) ** 2
    image = (np.where(truth, 180, 60) + r.normal(0, 12, truth.shape)).astype(np.float32)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[h // 2 - 2 : h // 2 + 2, w // 2 - 10 : w // 2 + 10] = 1
    scribbles[:4] = 2
    return image, scribbles


@functools.cache
def _trained(features: str) -> Segmenter:
    image, scribbles = _disk()
    seg = Segmenter(features=features, train_config=FAST, model_config={"width": 8})
    seg.fit(image, scribbles, steps=3)
    return seg


@pytest.mark.parametrize("features", ["both", "pretrained"])
def test_train_save_reload_predicts_identically(tmp_path, features):
    seg = _trained(features)
    assert seg.model.config.features == features
    assert seg.model.config.as_dict() | FEATURES[features] == seg.model.config.as_dict()
    seg.save(tmp_path / "m.pt")
    back = Segmenter.load(tmp_path / "m.pt", device="cpu")
    assert back.model.config.features == features
    image, _ = _disk()
    np.testing.assert_array_equal(
        back.predict(image).probabilities, seg.predict(image).probabilities
    )


def test_checkpoint_without_backbone_key_reads_filters(tmp_path):
    image, scribbles = _disk(64, 64)
    seg = Segmenter(features="filters", train_config=FAST, model_config={"width": 4})
    seg.fit(image, scribbles, steps=1)
    payload = seg.state_dict()
    del payload["model_config"]["backbone"]  # as written before pretrained features existed
    save_checkpoint(tmp_path / "old.pt", payload)
    back = Segmenter.load(tmp_path / "old.pt", device="cpu")
    assert back.model.config.features == "filters" and back.model.pretrained is None
    assert cli.main(["info", str(tmp_path / "old.pt")]) == 0


def _mosaic() -> np.ndarray:
    """700 x 600 grey: a photograph and a texture, in four blocks."""
    from skimage import data

    cam, grav = data.camera() / 255.0, data.gravel() / 255.0
    top = np.hstack([cam[:350, :300], grav[:350, :300]])
    bottom = np.hstack([grav[150:500, 200:500], cam[150:500, 212:512]])
    return np.vstack([top, bottom]).astype(np.float32)


def test_tiled_image_features_equal_one_pass():
    img = _mosaic()
    x = np.stack([img, np.ones_like(img)])
    tiled = bb.image_features(x, stride=4, tile=256)  # 3 x 3 tiles
    # One pass over the whole image, with the same reflected margin as the tiles'.
    r = bb.reach
    whole = bb.network_features(
        torch.from_numpy(np.pad(x, ((0, 0), (r, r), (r, r)), "reflect"))[None]
    )
    whole = whole[0, :, r // 4 : r // 4 + tiled.shape[1], r // 4 : r // 4 + tiled.shape[2]].numpy()
    assert tiled.shape == whole.shape == (bb.FEATURE_CHANNELS, 175, 150)
    # relative to each channel's spread over the image, plus the rounding of
    # the float16 result (2 ** -11 of the value)
    std = whole.std(axis=(1, 2))[:, None, None]
    excess = np.abs(tiled.astype(np.float32) - whole) - np.abs(whole) * 2.0**-11
    assert float((excess / std).max()) <= bb.REACH_TOLERANCE


def test_feature_cache_stays_within_budget(monkeypatch):
    per_slice = bb.FEATURE_CHANNELS * 16 * 16 * 2  # a 64 x 64 slice's float16 features
    monkeypatch.setattr(training_data, "FEATURE_BUDGET", per_slice)
    caches, computed = [], []

    class Cache(training_data._FeatureCache):
        def __init__(self, *args):
            super().__init__(*args)
            caches.append(self)

    real = bb.image_features

    def spy(x, *args, **kwargs):
        f = real(x, *args, **kwargs, tile=64)  # one tile per slice: less context to compute
        computed.append((hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(), f.copy()))
        return f

    monkeypatch.setattr(training_data, "_FeatureCache", Cache)
    monkeypatch.setattr(bb, "image_features", spy)
    stack = np.stack([_disk(64, 64, seed=s)[0] for s in range(3)])
    scribbles = np.stack([_disk(64, 64)[1]] * 3)  # all three slices painted
    few = dataclasses.replace(FAST, bn_recalibration=1, bn_recalibration_final=1)
    seg = Segmenter(features="pretrained", train_config=few, model_config={"width": 4})
    upd = seg.fit(stack, scribbles, steps=4)
    assert upd.step == 4 and np.isfinite(upd.loss)
    kept = caches[-1]._kept
    assert 1 <= len(kept) < 3
    assert sum(a.nbytes for a in kept.values()) <= training_data.FEATURE_BUDGET
    first = {}
    for key, f in computed:
        np.testing.assert_array_equal(first.setdefault(key, f), f)
    assert len(computed) > len(first)  # some slice was dropped and computed again


def test_region_equals_whole_prediction():
    """A region of a backbone model's prediction equals the same part of the whole one.

    The window around the region carries the model's halo of context (the
    backbone's reach and more), so only float rounding differs: measured
    max |dp| 8e-7 for the region, 4e-6 for 128 px tiles (bound 1e-3).
    """
    seg = _trained("both")
    image, _ = _disk(448, 448, seed=2)
    whole = seg.predict(image).probabilities
    region = (slice(192, 256), slice(176, 272))  # the window's edges lie inside the image
    part = seg.predict_region(image, region=region).probabilities
    assert part.shape == (2, 64, 96)
    dp = np.abs(part - whole[(slice(None), *region)])
    assert float(dp.max()) <= 1e-3
    # tiles of the same image, each with that halo: the same within the bound
    tiled = seg.predict(image, tile=128).probabilities
    assert float(np.abs(tiled - whole).max()) <= 1e-3


def _positions(h: int, w: int, g: int):
    """An image, targets and features that encode position: image channels row and column,
    target = index of the g x g block (the feature pixel), features (that index, its first
    row and column)."""
    rows, cols = np.mgrid[:h, :w]
    nb = -(-w // g)
    x = np.stack([rows, cols, np.ones((h, w))]).astype(np.float32)
    u, v = np.mgrid[: -(-h // g), :nb]
    f = np.stack([u * nb + v, u * g, v * g]).astype(np.float32)
    return x, ((rows // g) * nb + cols // g).astype(np.int16), f


@pytest.mark.parametrize("shape", [(96, 80), (8, 12)])  # the second is padded to the patch
def test_sampler_feature_patches_line_up_with_image_and_targets(shape):
    g = 4
    x, t, f = _positions(*shape, g)
    sampler = PatchSampler(
        [x], [t], int(t.max()) + 1, 32, np.random.default_rng(0), jitter=0, features=[f],
        feature_stride=g,
    )  # fmt: skip
    p, q = sampler.patch_size, sampler.patch_size // g
    batch = sampler.sample(32)  # turned and flipped at random
    assert batch.features.shape == (32, 3, q, q)
    for x, t, f in zip(batch.x, batch.t, batch.features, strict=True):
        tb = t.reshape(q, g, q, g).transpose(0, 2, 1, 3).reshape(q, q, g * g)
        painted = (tb != IGNORE).all(-1)
        assert painted.any() and (painted | (tb == IGNORE).all(-1)).all()
        # every painted block holds the class of its feature pixel only ...
        assert (tb[painted] == f[0][painted][:, None]).all()
        # ... and the image pixels of that block (their positions, to the noise of augmentation)
        xb = x[:2].reshape(2, q, g, q, g).min(axis=(2, 4))
        np.testing.assert_allclose(xb[:, painted], f[1:, painted], atol=0.5)
        assert (f[:, ~painted] == 0).all()  # padding has no features
        assert (~painted).any() == (min(shape) < p)


def test_training_with_the_backbone_needs_no_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(bb, "_CACHE", {})  # weights read again, under the patch
    image, scribbles = _disk(64, 64)
    seg = Segmenter(features="both", train_config=FAST, model_config={"width": 4})
    assert seg.fit(image, scribbles, steps=2).step == 2
    assert np.isfinite(seg.predict(image).probabilities).all()


def test_cli_features(tmp_path, capsys):
    """--features trains what it names; info shows it; --from refuses another; predict
    (tiles, blocks, flips) works with the backbone."""
    assert tuple(FEATURES) == cli.train.FEATURE_CHOICES
    image, scribbles = _disk()
    write_image(tmp_path / "img.tif", image)
    write_image(tmp_path / "scr.png", scribbles)
    m = str(tmp_path / "m.pt")
    train = ["train", str(tmp_path / "img.tif"), "-s", str(tmp_path / "scr.png"), "-q"]
    assert cli.main([*train, "-o", m, "--steps", "2", "--width", "8", "--features", "both"]) == 0
    seg = Segmenter.load(m, device="cpu")
    assert seg.model.config.features == "both"
    capsys.readouterr()
    assert cli.main(["info", m]) == 0
    assert json.loads(capsys.readouterr().out)["features"] == "both"
    # continuing from the model: another --features is refused in one line
    rc = cli.main([*train, "-o", str(tmp_path / "x.pt"), "--from", m, "--features", "filters"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--features filters" in err and "reads both" in err
    assert not (tmp_path / "x.pt").exists()
    # prediction: tiles, with flips; blocks of a Zarr store (the dask path)
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(
        store=str(tmp_path / "img.zarr"), shape=image.shape, chunks=(32, 32), dtype=image.dtype
    )
    z[...] = image
    for source, out, probs, extra in [
        ("img.tif", "a.tif", "pa.tif", []),
        ("img.zarr", "b.zarr", "pb.zarr", ["--block", "64"]),
    ]:
        paths = [str(tmp_path / name) for name in (source, out, probs)]
        args = ["predict", m, paths[0], "-o", paths[1], "--probabilities", paths[2], "--tta"]
        assert cli.main([*args, "-q", *extra]) == 0
    seg.tta = True
    expected = seg.predict(image).probabilities
    np.testing.assert_allclose(read_image(tmp_path / "pa.tif"), expected, atol=1e-5)
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "pb.zarr"), mode="r")[...], expected, atol=1e-4
    )


def test_cli_export_holds_the_backbone(tmp_path, monkeypatch):
    seg = _trained("both")
    seg.save(tmp_path / "m.pt")
    assert cli.main(["export", str(tmp_path / "m.pt"), "-o", str(tmp_path / "m.pt2")]) == 0
    image, _ = _disk()
    x = torch.from_numpy(seg.prepare(np.tile(image, (2, 2))[:128, :176]).x[None])  # any multiple
    with torch.no_grad():
        expected = seg.predict_model.eval()(x).numpy()
    monkeypatch.setattr(bb, "_CACHE", {})  # the program needs neither the backbone's cache ...
    monkeypatch.setattr(bb, "weights_path", lambda: tmp_path / "missing.pth")  # ... nor its file
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    with torch.no_grad():
        np.testing.assert_allclose(program(x).numpy(), expected, atol=1e-4)
