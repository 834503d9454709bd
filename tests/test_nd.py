"""Stacks, time series, channels and several images (engine, no GUI)."""

import numpy as np
import pytest

from napari_frontier.data.layout import make_layout
from napari_frontier.data.normalise import prepare
from napari_frontier.errors import ImageError, ShapeMismatchError
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.metrics import score, truth_from_mask
from napari_frontier.learning.sampling import PatchSampler
from napari_frontier.segmenter import Segmenter

FAST = TrainConfig(seed=0, threads=1, device="cpu", update_interval=0.05)
SMALL = dict(width=8, depth=2)


def _disk_slice(r, cy, cx, size=64, radius=14):
    yy, xx = np.mgrid[:size, :size]
    truth = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    image = np.where(truth, 180.0, 60.0) + r.normal(0, 12, truth.shape)
    return image.astype(np.float32), truth


def _scribble(truth, cy, cx):
    s = np.zeros(truth.shape, np.uint8)
    s[cy - 1 : cy + 2, cx - 8 : cx + 8] = 1
    s[2:5, :] = 2
    s[-5:-2, :] = 2
    return s


@pytest.fixture
def stack():
    """(6, 64, 64) stack: a disk moving across the slices; strokes on slices 1 and 4 only."""
    r = np.random.default_rng(3)
    centres = [(24 + 3 * z, 22 + 4 * z) for z in range(6)]
    pairs = [_disk_slice(r, cy, cx) for cy, cx in centres]
    image = np.stack([p[0] for p in pairs])
    truth = np.stack([p[1] for p in pairs])
    scribbles = np.zeros(truth.shape, np.uint8)
    for z in (1, 4):
        scribbles[z] = _scribble(truth[z], *centres[z])
    return image, scribbles, truth


def test_layouts_follow_napari_conventions():
    lay = make_layout(np.zeros((10, 12)))
    assert (lay.lead_shape, lay.yx, lay.n_channels) == ((), (10, 12), 1)
    rgb = make_layout(np.zeros((10, 12, 3)))  # RGB detected, like napari's rgb guess
    assert (rgb.channel_axis, rgb.scribble_shape, rgb.n_channels) == (2, (10, 12), 3)
    stack = make_layout(np.zeros((5, 10, 12)))  # no channel axis: a stack
    assert (stack.lead_shape, stack.scribble_shape) == ((5,), (5, 10, 12))
    tzcyx = make_layout(np.zeros((2, 3, 4, 10, 12)), channel_axis=2)
    assert tzcyx.lead_shape == (2, 3) and tzcyx.n_channels == 4
    a = np.arange(2 * 3 * 4 * 10 * 12).reshape(2, 3, 4, 10, 12)
    np.testing.assert_array_equal(tzcyx.read(a, (1, 2)), a[1, 2])
    sel = make_layout(a, channel_axis=2, channels=[3, 1])
    np.testing.assert_array_equal(
        sel.read(a, (0, 1), (slice(2, 5), slice(None))), a[0, 1][[3, 1], 2:5]
    )
    for bad in [dict(shape=(7,)), dict(shape=(3, 7), channel_axis=0)]:
        with pytest.raises(ImageError, match="two spatial axes"):
            make_layout(np.zeros(bad["shape"]), channel_axis=bad.get("channel_axis"))
    with pytest.raises(ImageError, match="channel axis 5"):
        make_layout(np.zeros((3, 4, 5)), channel_axis=5)
    with pytest.raises(ImageError, match="do not exist"):
        make_layout(np.zeros((4, 5, 3)), channels=[3])


@pytest.mark.parametrize(
    "shape, axis", [((40, 50), None), ((40, 50, 3), None), ((2, 40, 50), 0), ((2300, 2000), None)]
)
def test_slice_normalisation_equals_2d_prepare(shape, axis):
    image = np.random.default_rng(0).gamma(2.0, 30.0, shape).astype(np.float32)
    image.flat[77] = np.nan
    seg = Segmenter(channel_axis=axis)
    np.testing.assert_array_equal(seg.prepare_slice(image).x, prepare(image, axis).x)


def test_stack_trained_on_two_slices_predicts_every_slice(stack):
    image, scribbles, truth = stack
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit(image, scribbles, steps=60)
    seen = []
    pred = seg.predict(image, progress=lambda d, t: seen.append((d, t)))
    assert pred.probabilities.shape == (2, *image.shape)
    assert seen == [(z, 6) for z in range(1, 7)]
    for z in range(6):  # slices 0, 2, 3, 5 carry no stroke at all
        s = score(pred.labels[z], truth_from_mask(truth[z]))
        assert s.foreground_iou > 0.6, (z, s)
    updates = list(seg.predict_slices(image, indices=[(2,), (5,)]))
    assert [(u.index, u.done, u.total) for u in updates] == [((2,), 1, 2), ((5,), 2, 2)]
    np.testing.assert_allclose(
        updates[1].prediction.probabilities, pred.probabilities[:, 5], atol=1e-4
    )
    # live preview of a region of one slice = that part of the whole prediction
    region = (slice(10, 37), slice(21, 60))
    part = seg.predict_region(image, (3,), region, tile=16)
    np.testing.assert_allclose(
        part.probabilities, pred.probabilities[(slice(None), 3, *region)], atol=1e-4
    )


def test_new_strokes_on_another_slice_reach_the_trainer(stack):
    image, scribbles, _ = stack
    first = scribbles.copy()
    first[4] = 0
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    gen = seg.training(image, first, steps=30)
    next(gen)
    upd = gen.send(scribbles)  # strokes appear on slice 4
    messages = [upd.message] + [u.message for u in gen]
    assert any("scribbles updated" in m for m in messages), messages
    with pytest.raises(ShapeMismatchError):
        seg.fit(image, scribbles[:, :10], steps=1)


def test_channel_axis_position_does_not_matter(disk_image):
    image, scribbles, _ = disk_image
    second = 255.0 - image[::-1]  # a different second channel
    yxc = np.stack([image, second], axis=-1)
    cyx = np.moveaxis(yxc, -1, 0)
    probs = []
    for img, axis in [(yxc, -1), (cyx, 0), (yxc, 2)]:
        seg = Segmenter(channel_axis=axis, train_config=FAST, model_config=SMALL)
        seg.fit(img, scribbles, steps=8)
        probs.append(seg.predict(img).probabilities)
    np.testing.assert_array_equal(probs[0], probs[1])
    np.testing.assert_array_equal(probs[0], probs[2])
    # a stack of multichannel slices: (Z, C, Y, X) == (Z, Y, X, C)
    zcyx = np.stack([cyx, cyx[:, ::-1]])
    seg = Segmenter(channel_axis=1, train_config=FAST, model_config=SMALL)
    seg.fit(zcyx, np.stack([scribbles, np.zeros_like(scribbles)]), steps=8)
    a = seg.predict(zcyx).probabilities
    seg.channel_axis = -1
    b = seg.predict(np.moveaxis(zcyx, 1, -1)).probabilities
    np.testing.assert_array_equal(a, b)


def test_channel_selection_equals_single_channel_image(disk_image, tmp_path):
    image, scribbles, _ = disk_image
    noise = np.random.default_rng(5).normal(0, 50, image.shape).astype(np.float32)
    three = np.stack([noise, image, -noise])
    sel = Segmenter(channel_axis=0, channels=[1], train_config=FAST, model_config=SMALL)
    sel.fit(three, scribbles, steps=8)
    one = Segmenter(train_config=FAST, model_config=SMALL)
    one.fit(image, scribbles, steps=8)
    np.testing.assert_array_equal(
        sel.predict(three).probabilities, one.predict(image).probabilities
    )
    sel.save(tmp_path / "m.pt")
    back = Segmenter.load(tmp_path / "m.pt", device="cpu")
    assert (back.channel_axis, back.channels) == (0, (1,))
    one.channel_axis = 0
    with pytest.raises(ShapeMismatchError, match="1 channel"):
        one.predict(three)


def test_rgb_uint8_is_detected_and_learned(disk_image):
    image, scribbles, truth = disk_image
    grey = np.clip(image, 0, 255).astype(np.uint8)
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit(rgb, scribbles, steps=60)
    assert seg.in_channels == 3
    pred = seg.predict(rgb)
    assert pred.labels.shape == image.shape
    assert score(pred.labels, truth_from_mask(truth)).foreground_iou > 0.8


def test_several_images_train_one_model(stack):
    image, _, truth = stack
    r = np.random.default_rng(0)
    a, ta = _disk_slice(r, 30, 30)
    b, tb = _disk_slice(r, 34, 26, size=80, radius=18)
    sa = np.zeros(a.shape, np.uint8)
    sa[29:32, 22:38] = 1  # only "is" here
    sb = np.zeros(b.shape, np.uint8)
    sb[2:5, :] = 2  # only "is not" there
    seg = Segmenter(train_config=FAST, model_config=SMALL)
    seg.fit([a, b], [sa, sb], steps=60)
    for img, t in [(a, ta), (b, tb), (image[0], truth[0])]:
        assert score(seg.predict(img).labels, truth_from_mask(t)).foreground_iou > 0.6


def test_sampler_weights_images_by_painted_pixels():
    few = np.zeros((2, 64, 64), np.float32)
    many = np.ones((2, 64, 64), np.float32)
    t_few = np.full((64, 64), -1)
    t_few[30, 30:34] = 0  # 4 painted pixels
    t_many = np.full((64, 64), -1)
    t_many[10:30, 10:30] = 0  # 400 painted pixels
    s = PatchSampler([few, many], [t_few, t_many], 2, 16, np.random.default_rng(0))
    x = s.sample(300, augment=False).x
    from_few = int((x[:, 0].mean(axis=(1, 2)) < 0.5).sum())
    assert from_few < 15  # about 1 %, not the 50 % of a uniform choice of image


def test_choose_level_for_screen_resolution():
    from napari_frontier.prediction.regions import choose_level

    shapes = [(3, 8000, 6000), (3, 4000, 3000), (3, 2000, 1500)]
    assert choose_level(shapes, (slice(0, 500), slice(0, 500)), 10**6) == (
        0,
        (slice(0, 500), slice(0, 500)),
    )
    level, region = choose_level(shapes, (slice(1000, 5000), slice(0, 6000)), 2 * 10**6)
    assert level == 2 and region == (slice(250, 1250), slice(0, 1500))


def test_cli_trains_on_a_multichannel_stack(tmp_path, stack, capsys):
    import json

    from napari_frontier import cli
    from napari_frontier.data.io import write_image

    image, scribbles, truth = stack
    zcyx = np.stack([image, 255 - image], axis=1)  # (Z, C, Y, X)
    write_image(tmp_path / "s.tif", zcyx)
    write_image(tmp_path / "scr.tif", scribbles)
    argv = ["train", tmp_path / "s.tif", "-s", tmp_path / "scr.tif", "-o", tmp_path / "m.pt"]
    argv += ["--steps", "100", "--threads", "1", "--channel-axis", "1", "--channels", "1"]
    argv += ["--width", "8", "-q"]
    assert cli.main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert cli.main(["info", str(tmp_path / "m.pt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["channel_axis"], info["channel_selection"], info["channels"]) == (1, [1], 1)
    argv = ["predict", tmp_path / "m.pt", tmp_path / "s.tif", "-o", tmp_path / "mask.tif", "-q"]
    assert cli.main([str(a) for a in argv]) == 0
    from napari_frontier.data.io import read_image

    mask = read_image(tmp_path / "mask.tif")
    assert mask.shape == truth.shape
    assert ((mask == 255) == truth).mean() > 0.85


def _traced_numpy_bytes() -> int:
    import tracemalloc

    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    )
    return sum(t.size for t in snap.traces)


def test_stack_training_memory_does_not_grow_with_painted_slices():
    """Patches of an in-memory stack are normalised on demand: same training, less memory.

    A lazy (dask) stack keeps each painted slice normalised; an in-memory
    one keeps none, and both train on exactly the same patches.
    """
    import tracemalloc

    da = pytest.importorskip("dask.array")
    r = np.random.default_rng(5)
    pairs = [_disk_slice(r, 120, 100 + 2 * z, size=256, radius=40) for z in range(24)]
    image = np.stack([p[0] for p in pairs])
    scribbles = np.zeros(image.shape, np.uint8)
    for z in range(24):  # every slice painted
        scribbles[z] = _scribble(pairs[z][1], 120, 100 + 2 * z)

    held, weights = {}, {}
    for name, img in (("numpy", image), ("dask", da.from_array(image, chunks=(1, 256, 256)))):
        seg = Segmenter(train_config=FAST, model_config=SMALL)
        tracemalloc.start()
        try:
            gen = seg.training(img, scribbles, steps=12)
            next(gen)
            held[name] = _traced_numpy_bytes()
            for _ in gen:
                pass
        finally:
            tracemalloc.stop()
        weights[name] = [p.detach().clone() for p in seg.model.parameters()]

    for a, b in zip(weights["numpy"], weights["dask"], strict=True):
        assert np.array_equal(a.numpy(), b.numpy())
    slices = 24 * 2 * 256 * 256 * 4  # every painted slice normalised: 12 MiB
    assert held["dask"] > slices
    assert held["numpy"] < held["dask"] - 0.75 * slices, held
