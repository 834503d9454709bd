import numpy as np
import pytest

from napari_frontier.errors import ImageError, ScribbleError, ShapeMismatchError
from napari_frontier.labels import IGNORE, split_strokes, to_targets, validate_scribbles
from napari_frontier.preprocess import prepare


def test_validate_scribbles_errors():
    s = np.zeros((4, 4), np.uint8)
    with pytest.raises(ScribbleError, match="is"):
        validate_scribbles(s)
    s[0, 0] = 1
    with pytest.raises(ScribbleError, match="is not"):
        validate_scribbles(s)
    s[1, 1] = 2
    assert validate_scribbles(s).dtype == np.int64
    s[2, 2] = 3
    with pytest.raises(ScribbleError, match="only 0"):
        validate_scribbles(s)
    assert validate_scribbles(s, n_classes=3).max() == 3
    with pytest.raises(ShapeMismatchError):
        validate_scribbles(s, 3, shape=(5, 4))
    with pytest.raises(ScribbleError):
        validate_scribbles(np.full((2, 2), 0.5))


def test_targets_ignore_void_and_invalid():
    s = np.array([[0, 1], [2, 1]])
    valid = np.array([[True, True], [True, False]])
    assert to_targets(s, valid).tolist() == [[IGNORE, 0], [1, IGNORE]]


def test_split_strokes_keeps_training_pixels_for_every_class(rng):
    s = np.zeros((40, 40), np.uint8)
    for i in range(5):
        s[i * 8, 2:10] = 1
    s[20:22, 20:30] = 2  # a single stroke: never held out
    train, hold = split_strokes(s, 2, 0.2, rng)
    assert (hold == 1).sum() == 8  # one of five strokes
    assert (train == 1).sum() == 32
    assert (hold == 2).sum() == 0 and (train == 2).sum() == 20
    assert np.array_equal(np.where(hold > 0, hold, train), s)


def test_prepare_normalises_and_masks_nan():
    img = np.linspace(0, 1000, 100 * 100, dtype=np.float64).reshape(100, 100)
    img[0, :10] = np.nan
    img[1, 0] = np.inf
    p = prepare(img)
    assert p.x.shape == (2, 100, 100) and p.x.dtype == np.float32
    assert not p.valid[0, :10].any() and not p.valid[1, 0]
    assert np.all(np.isfinite(p.x))
    assert np.all(p.x[0][~p.valid] == 0) and np.all(p.x[1][~p.valid] == 0)
    assert np.all(p.x[1][p.valid] == 1)
    assert -0.1 < np.median(p.x[0][p.valid]) < 1.1


def test_prepare_nodata_value_and_dtypes():
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    img[5, 5] = 9999
    p = prepare(img, nodata=9999)
    assert not p.valid[5, 5] and p.valid.sum() == 64 * 64 - 1
    for dtype in (np.uint8, np.uint32, np.int64, bool, np.float16):
        q = prepare((img % 2).astype(dtype))
        assert np.all(np.isfinite(q.x))
    huge = np.random.default_rng(0).normal(0, 1e30, (32, 32))
    assert np.all(np.isfinite(prepare(huge).x))
    assert np.all(prepare(np.full((8, 8), 7.0)).x[0] == 0)


def test_prepare_shapes():
    assert prepare(np.zeros((10, 12, 3), np.uint8)).x.shape == (4, 10, 12)
    assert prepare(np.zeros((5, 10, 12)), channel_axis=0).x.shape == (6, 10, 12)
    with pytest.raises(ImageError, match="channel"):
        prepare(np.zeros((5, 10, 12)))
    with pytest.raises(ImageError):
        prepare(np.zeros((0, 10)))
    with pytest.raises(ImageError, match="no valid"):
        prepare(np.full((4, 4), np.nan))
    with pytest.raises(ImageError):
        prepare(np.zeros((2, 3, 4, 5)))


def test_patches_with_a_context_margin_score_only_their_centre():
    """With ``margin``, a patch carries real image context around the scored
    region and every target outside that region is void."""
    from napari_frontier.labels import IGNORE
    from napari_frontier.sampling import PatchSampler

    rng = np.random.default_rng(0)
    h, w = 120, 140
    x = np.stack([np.arange(h * w, dtype=np.float32).reshape(h, w), np.ones((h, w), np.float32)])
    t = np.zeros((h, w), np.int64)  # every pixel painted (class 0 or 1)
    t[:, w // 2 :] = 1
    p, m = 32, 16
    s = PatchSampler([x], [t], 2, p, rng, margin=m)
    xs, ts = s.sample(64, augment=False)
    assert xs.shape == (64, 2, p + 2 * m, p + 2 * m) and ts.shape == xs[:, 0].shape
    for xi, ti in zip(xs, ts, strict=True):
        scored = ti != IGNORE
        rows, cols = np.nonzero(scored)
        # exactly one p x p window is scored, and it holds the image's own targets
        assert scored.sum() == p * p
        assert rows.max() - rows.min() + 1 == p and cols.max() - cols.min() + 1 == p
        y0, x0 = divmod(int(xi[0, 0, 0]), w)  # the image value gives its position
        assert np.array_equal(xi[0], x[0, y0 : y0 + p + 2 * m, x0 : x0 + p + 2 * m])
        assert np.array_equal(ti[scored], t[y0 : y0 + p + 2 * m, x0 : x0 + p + 2 * m][scored])
    # away from the image border the scored window sits in the middle
    mid = [ti for ti in ts if (ti[m] != IGNORE).any() and (ti[m - 1] == IGNORE).all()]
    assert mid, "no patch had context on all sides"


def test_scale_augmentation_resizes_image_and_targets_together():
    """Scaled patches keep labels on the pixels they belong to, at the patch size."""
    import numpy as np

    from napari_frontier.labels import IGNORE
    from napari_frontier.sampling import PatchSampler

    h = w = 200
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - 100) ** 2 + (xx - 100) ** 2 < 40**2
    x = np.stack([inside.astype(np.float32), np.ones((h, w), np.float32)])
    t = np.full((h, w), IGNORE, np.int64)
    t[inside] = 0  # "is": the whole disk
    t[~inside & ((yy < 30) | (xx < 30))] = 1  # "is not": a band far from it
    s = PatchSampler([x], [t], 2, 48, np.random.default_rng(0), scale=1.0)
    xs, ts = s.sample(64)
    assert xs.shape == (64, 2, 48, 48) and ts.shape == (64, 48, 48)
    # each label sits on the image value it was painted on, whatever the scale
    assert (xs[:, 0][ts == 0] > 0.5).mean() > 0.97
    assert (xs[:, 0][ts == 1] < 0.5).mean() > 0.97
    # a window twice the patch side shows the disk at half its radius (a quarter the area)
    from napari_frontier.sampling import _resized

    xr, tr = _resized(x[:, 20:180, 20:180], t[20:180, 20:180], 80)
    assert xr.shape == (2, 80, 80) and tr.shape == (80, 80)
    assert abs((xr[0] > 0.5).sum() / inside.sum() - 0.25) < 0.02
    assert abs((tr == 0).sum() / inside.sum() - 0.25) < 0.02
    with pytest.raises(ValueError, match="scale"):
        PatchSampler([x], [t], 2, 48, np.random.default_rng(0), margin=8, scale=0.5)


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_intensity_jitter_keeps_the_colour_that_tells_classes_apart(jitter):
    """Two classes of the same brightness that differ only in hue: whatever the
    brightness / contrast jitter does to a patch, channel 0 stays above channel 1
    on "is" and below it on "is not" (drawn per channel, a shift of 0.1 could
    swap them); without jitter the patch keeps its values (up to mild noise)."""
    from napari_frontier.labels import IGNORE
    from napari_frontier.sampling import PatchSampler

    h, w = 64, 64
    t = np.zeros((h, w), np.int64)
    t[:, w // 2 :] = 1
    colours = np.array([[0.6, 0.4, 0.5], [0.4, 0.6, 0.5]], np.float32)  # class -> RGB
    x = np.concatenate([colours[t].transpose(2, 0, 1), np.ones((1, h, w), np.float32)])
    s = PatchSampler([x], [t], 2, 16, np.random.default_rng(0), jitter=jitter)
    xs, ts = s.sample(200)
    assert np.all(xs[:, -1] == 1.0), "the validity channel is never jittered"
    scored = ts != IGNORE
    diff = (xs[:, 0] - xs[:, 1])[scored]
    assert np.all((diff > 0) == (ts[scored] == 0))
    means = xs[:, 2].mean(axis=(1, 2))  # the neutral channel: 0.5 before jitter
    if jitter:
        assert means.std() > 0.03 and means.max() - means.min() > 0.1
    else:
        assert np.abs(xs[:, :3] - colours[ts.clip(0)].transpose(0, 3, 1, 2)).max() < 0.15
    with pytest.raises(ValueError, match="jitter"):
        PatchSampler([x], [t], 2, 16, np.random.default_rng(0), jitter=-1.0)


@pytest.mark.parametrize("margin", [0, 8])
def test_focus_feedback_lands_on_the_cells_the_patch_came_from(margin):
    """The running error of each patch is mapped back through its rotation and
    flip: errors measured on one corner's class raise that corner's cells only."""
    from napari_frontier.sampling import CELL, PatchSampler

    h = w = 96
    x = np.stack([np.zeros((h, w), np.float32), np.ones((h, w), np.float32)])
    t = np.zeros((h, w), np.int64)  # every pixel painted
    t[:40, :40] = 1  # class 1: the top-left corner only (not symmetric under rot90 / flip)
    s = PatchSampler([x], [t], 2, 32, np.random.default_rng(0), margin=margin, focus=1.0)
    d = s._difficulty[0]
    d[:] = 0.5
    for _ in range(50):
        _, ts = s.sample(8, focus=True)
        # the model is wrong on every class-1 pixel and right on every class-0 pixel
        s.feedback((ts == 1).astype(np.float32), ts >= 0)
    corner = d[: 40 // CELL, : 40 // CELL]  # cells wholly inside the class-1 corner
    rest = d.copy()
    rest[: -(-40 // CELL), : -(-40 // CELL)] = np.nan  # cells outside it
    assert (corner > 0.9).all(), corner
    assert np.nanmax(rest) < 0.5 and np.nanmin(rest) < 0.05


def test_focused_patches_are_centred_where_the_model_is_wrong():
    """With ``focus=1`` every centre of a class lies in its cells that are still
    wrong; with ``focus=0`` the patches are exactly those drawn before."""
    from napari_frontier.labels import IGNORE
    from napari_frontier.sampling import CELL, PatchSampler

    h = w = 128
    x = np.stack([np.arange(h * w, dtype=np.float32).reshape(h, w), np.ones((h, w), np.float32)])
    t = np.full((h, w), IGNORE, np.int64)
    t[10:14, 8:120] = 0  # one long "is" stroke
    t[100:104, 8:120] = 1  # one long "is not" stroke
    s = PatchSampler([x], [t], 2, 16, np.random.default_rng(0), focus=1.0)
    s._difficulty[0][:] = 0.0
    hard = (10 // CELL, 96 // CELL)  # one cell of the "is" stroke is still wrong
    s._difficulty[0][hard] = 1.0
    centres = []
    for _ in range(200):
        s.sample(1, focus=True)
        y0, x0 = s.last_origins[0][1:3]
        centres.append((y0, x0))
    ys, xs = np.array(centres).T
    # patches of the "is" class cover the hard cell; the "is not" stroke has
    # no error anywhere, so its patches fall back to uniform draws
    # (the painted pixels of the hard cell: rows 10-13, columns 96-103)
    near = (ys <= 13) & (ys + 16 > 10) & (xs <= 96 + CELL - 1) & (xs + 16 > 96)
    top = ys < 64
    assert near[top].all() and top.sum() > 50
    assert np.ptp(xs[~top]) > 60
    # focus 0: identical to a sampler without the setting
    a = PatchSampler([x], [t], 2, 16, np.random.default_rng(3))
    b = PatchSampler([x], [t], 2, 16, np.random.default_rng(3), focus=0.0)
    xa, ta = a.sample(16)
    xb, tb = b.sample(16, focus=True)
    assert np.array_equal(xa, xb) and np.array_equal(ta, tb)
