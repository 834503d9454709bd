"""Lazy and large images: block-by-block prediction, Zarr in and out, batches, a dask cluster."""

import os
import time
import tracemalloc

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import read_image, write_image
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.network import ModelConfig
from napari_frontier.outputs.batch import plan_batch
from napari_frontier.prediction import blocks as lazy
from napari_frontier.segmenter import Segmenter

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.05)


def _image(shape=(300, 257), seed=0):
    r = np.random.default_rng(seed)
    img = (r.random(shape) * 100).astype(np.float32)
    img[..., 100:200, 50:150] += 100
    return img


@pytest.fixture(scope="module")
def trained():
    img = _image()
    s = np.zeros(img.shape, np.uint8)
    s[140:150, 60:140] = 1
    s[5:10] = 2
    seg = Segmenter(train_config=FAST, model_config=dict(width=8, depth=2))
    seg.fit(img, s, steps=20)
    return seg


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.pt"
    trained.save(path)
    return path


def _zarr_image(path, image, chunks=(64, 64)):
    z = zarr.create_array(store=str(path), shape=image.shape, chunks=chunks, dtype=image.dtype)
    z[...] = image
    return z


def test_blocks_equal_in_memory_prediction(trained):
    img = _image()
    whole = trained.predict(img).probabilities
    # blocks that line up with nothing (chunks of 50, blocks of 128, tiles of 64)
    for source in (img, da.from_array(img, chunks=50)):
        blocks = lazy.predict_blocks(trained, source, block=128, tile=64)
        np.testing.assert_allclose(blocks.probabilities, whole, atol=1e-5)
    stack = np.stack([img[:150, :150], img[::-1, ::-1][:150, :150]])
    seen = []
    blocks = lazy.predict_blocks(trained, stack, block=80, progress=lambda d, t: seen.append(d))
    np.testing.assert_allclose(
        blocks.probabilities, trained.predict(stack).probabilities, atol=1e-5
    )
    assert seen == list(range(1, 9))


def test_zarr_in_zarr_out(trained, tmp_path):
    img = _image()
    _zarr_image(tmp_path / "in.zarr", img)
    src = lazy.open_lazy(tmp_path / "in.zarr")
    out = lazy.predict_to_zarr(
        trained,
        src.array,
        mask=tmp_path / "mask.zarr",
        probabilities=tmp_path / "probs.ome.zarr",
        block=128,
    )
    pred = trained.predict(img)
    mask = zarr.open_array(str(out["mask"]), mode="r")
    assert mask.chunks == (128, 128)
    np.testing.assert_array_equal(mask[...], pred.mask())
    group = zarr.open_group(str(out["probabilities"]), mode="r")
    axes = [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]]
    assert axes == ["c", "y", "x"]
    np.testing.assert_allclose(group["0"][...], pred.probabilities, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "mask.zarr", "probs.ome.zarr"]
    # an OME-Zarr input is read at full resolution
    again = lazy.open_lazy(out["probabilities"])
    assert again.channel_axis == 0 and again.array.shape == (2, *img.shape)


class Procedural:
    """An 8192 x 8192 image made up on demand: never stored, every read counted."""

    def __init__(self, n=8192, limit=(2048 + 64) ** 2):
        self.shape, self.dtype, self.ndim = (n, n), np.dtype(np.uint8), 2
        self.limit, self.largest, self.read = limit, 0, 0

    def __getitem__(self, key):
        ys, xs = (np.arange(self.shape[i])[k] for i, k in enumerate(key))
        size = ys.size * xs.size
        if size > self.limit:
            raise MemoryError(f"read of {size} pixels: the image must never be read whole")
        self.largest = max(self.largest, size)
        self.read += size
        v = ((ys[:, None] // 97 + xs[None, :] // 89) % 2) * 120 + (ys[:, None] * 7 + xs) % 13
        return v.astype(np.uint8)


class _Pixelwise(torch.nn.Module):
    """A tiny stand-in network (a 3x3 convolution), so 67 Mpx predict in seconds."""

    def __init__(self):
        super().__init__()
        self.config = ModelConfig(
            in_channels=1, n_classes=2, depth=1, use_filters=False, context_stride=1, backbone=False
        )
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.slow
def test_huge_image_is_predicted_with_bounded_memory(tmp_path):
    src = Procedural()
    seg = Segmenter(train_config=FAST)
    torch.manual_seed(0)
    seg.model = _Pixelwise().eval()
    tracemalloc.start()
    try:
        out = lazy.predict_to_zarr(seg, src, mask=tmp_path / "mask.zarr", block=2048, tile=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = src.shape[0] * src.shape[1]
    # the float32 network input alone would be 2 x 4 x 67 Mpx = 512 MiB
    assert peak < 200 * 2**20, peak / 2**20
    assert src.largest <= (2048 + 2 * 16) ** 2
    assert src.read < 1.6 * n  # statistics (a 1/64 sample) + blocks with their halos
    mask = zarr.open_array(str(out["mask"]), mode="r")
    assert mask.shape == src.shape and mask.chunks == (2048, 2048)
    # spot-check a region across a block corner against a direct prediction
    region = (slice(2000, 2100), slice(4050, 4150))
    direct = seg.predict_region(src, (), region, stats=seg.stats(src))
    np.testing.assert_array_equal(mask[region], direct.mask())


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_batch_resume_skip_and_zarr(tmp_path, checkpoint, trained, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    a, b = _image(seed=1), _image((120, 140), seed=2)
    write_image(imgs / "a.tif", a)
    write_image(imgs / "b.tif", b)
    (imgs / "broken.tif").write_bytes(b"not a tiff")
    _zarr_image(imgs / "c.zarr", _image((200, 180), seed=3))
    stack = np.stack([a[:96, :96], b[:96, :96]])
    write_image(tmp_path / "stack.tif", stack)
    out = tmp_path / "out"
    code, err = _cli(["predict", checkpoint, imgs, tmp_path / "stack.tif", "-o", out], capsys)
    assert code == 1 and "skipped" in err and "broken.tif" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif", "c.zarr", "stack.tif"]
    np.testing.assert_array_equal(read_image(out / "a.tif"), trained.predict(a).mask())
    assert read_image(out / "stack.tif").shape == stack.shape
    np.testing.assert_array_equal(
        zarr.open_array(str(out / "c.zarr"), mode="r")[...],
        trained.predict(_image((200, 180), seed=3)).mask(),
    )
    # resume: finished outputs are not redone
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.05)
    code, err = _cli(["predict", checkpoint, imgs, tmp_path / "stack.tif", "-o", out], capsys)
    assert code == 1 and "0 done, 4 skipped (up to date), 1 failed" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    code, err = _cli(["predict", checkpoint, f"{imgs}/[ab].tif", "-o", out, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "a.tif").stat().st_mtime_ns > before["a.tif"]
    assert (out / "c.zarr").stat().st_mtime_ns == before["c.zarr"]
    # a single Zarr input to a tiled TIFF, and an image to Zarr, with probabilities
    code, err = _cli(
        ["predict", checkpoint, imgs / "c.zarr", "-o", tmp_path / "c.tif", "--block", "64"], capsys
    )
    assert code == 0, err
    np.testing.assert_array_equal(
        read_image(tmp_path / "c.tif"), zarr.open_array(str(out / "c.zarr"), mode="r")[...]
    )
    code, err = _cli(
        ["predict", checkpoint, imgs / "a.tif", "-o", tmp_path / "a.zarr", "--probabilities",
         tmp_path / "pa.tif", "--block", "128"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "a.zarr"))[...], read_image(out / "a.tif")
    )
    assert read_image(tmp_path / "pa.tif").shape == (2, *a.shape)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_plan_names_outputs(tmp_path):
    (tmp_path / "x.ome.zarr").mkdir()
    (tmp_path / "x.ome.zarr" / "zarr.json").write_text("{}")
    write_image(tmp_path / "y.png", np.zeros((4, 4), np.uint8))
    items = plan_batch([str(tmp_path / "*")], tmp_path / "out", tmp_path / "p")
    names = [(i.source.name, i.mask.name, i.probabilities.name, i.lazy) for i in items]
    assert names == [
        ("x.ome.zarr", "x.ome.zarr", "x_probabilities.ome.zarr", True),
        ("y.png", "y.tif", "y_probabilities.tif", False),
    ]


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as c,
        distributed.Client(c) as client,
    ):
        yield client


@pytest.mark.slow
def test_local_cluster_gives_the_single_process_result(
    cluster, trained, checkpoint, tmp_path, capsys
):
    img = _image()
    z = _zarr_image(tmp_path / "in.zarr", img)
    local = lazy.predict_to_zarr(trained, z, probabilities=tmp_path / "local.zarr", block=128)
    remote = lazy.predict_to_zarr(
        trained, z, probabilities=tmp_path / "remote.zarr", block=128, scheduler=cluster,
        worker_threads=1,
    )  # fmt: skip
    np.testing.assert_array_equal(
        zarr.open_array(str(local["probabilities"]))[...],
        zarr.open_array(str(remote["probabilities"]))[...],
    )
    # every worker process loaded the model once, not once per block
    loads = cluster.run(lambda: len(lazy._MODELS))
    assert sorted(loads.values()) in ([1, 1], [0, 1])
    # the CLI on that cluster writes what it writes in one process
    write_image(tmp_path / "img.tif", img)
    code, err = _cli(
        ["predict", checkpoint, tmp_path / "img.tif", "-o", tmp_path / "one.tif"], capsys
    )
    assert code == 0, err
    code, err = _cli(
        ["predict", checkpoint, tmp_path / "img.tif", "-o", tmp_path / "many.tif", "--block", "128",
         "--scheduler", cluster.scheduler.address],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(
        read_image(tmp_path / "one.tif"), read_image(tmp_path / "many.tif")
    )
    assert os.path.exists(tmp_path / "many.tif")


def test_model_ref_carries_flip_averaging_to_other_processes(disk_image):
    import pickle

    from napari_frontier.prediction.blocks import ModelRef
    from napari_frontier.prediction.tiling import FlipAverage

    image, scribbles, _ = disk_image
    seg = Segmenter(train_config=TrainConfig(seed=0, threads=1), model_config=dict(width=8))
    seg.fit(image, scribbles, steps=5)
    seg.tta = True
    here = ModelRef(seg).get()
    remote = pickle.loads(pickle.dumps(ModelRef(seg))).get()  # as a dask worker loads it
    for s in (here, remote):
        assert isinstance(s.model, FlipAverage) and not s.tta  # the flips are applied once
