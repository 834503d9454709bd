import numpy as np
import pytest

from napari_frontier.data.normalise import prepare
from napari_frontier.data.scribbles import (
    IGNORE,
    missing_classes,
    split_strokes,
    to_targets,
    validate_scribbles,
)
from napari_frontier.errors import ImageError, ScribbleError, ShapeMismatchError


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


def test_a_box_of_the_scribbles_may_lack_a_class():
    box = np.ones((2, 3), np.uint8)  # an edit's new labels: class 1 only
    out = validate_scribbles(box, 2, (5, 6), require_all_classes=False, start=(3, 3))
    assert out.dtype == np.int64 and out.shape == (2, 3)
    for start in ((4, 4), (-1, 0), (0,)):
        with pytest.raises(ShapeMismatchError, match="scribbles have shape"):
            validate_scribbles(box, 2, (5, 6), require_all_classes=False, start=start)
    with pytest.raises(ScribbleError, match="only 0"):
        validate_scribbles(box * 3, 2, (5, 6), require_all_classes=False, start=(0, 0))
    with pytest.raises(ValueError, match="require_all_classes"):
        validate_scribbles(box, 2, (5, 6), start=(0, 0))


def test_one_message_for_a_missing_class():
    assert missing_classes([4, 1]) == ""
    assert missing_classes([4, 0]) == (
        'no painted pixel for class 2 ("is not"); paint at least one stroke of every class'
    )
    assert missing_classes([0, 1, 0]).startswith("no painted pixel for class 1, 3;")
    assert missing_classes([0, 2], ("cell", "rest"), on_valid_pixels=True).startswith(
        'no painted pixel (on valid image pixels) for class 1 ("cell");'
    )


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


@pytest.mark.parametrize("jitter", [0.0, 1.0])
def test_intensity_jitter_keeps_the_colour_that_tells_classes_apart(jitter):
    """Two classes of the same brightness that differ only in hue: whatever the
    brightness / contrast jitter does to a patch, channel 0 stays above channel 1
    on "is" and below it on "is not" (drawn per channel, a shift of 0.1 could
    swap them); without jitter the patch keeps its values (up to mild noise)."""
    from napari_frontier.data.scribbles import IGNORE
    from napari_frontier.learning.sampling import PatchSampler

    h, w = 64, 64
    t = np.zeros((h, w), np.int64)
    t[:, w // 2 :] = 1
    colours = np.array([[0.6, 0.4, 0.5], [0.4, 0.6, 0.5]], np.float32)  # class -> RGB
    x = np.concatenate([colours[t].transpose(2, 0, 1), np.ones((1, h, w), np.float32)])
    s = PatchSampler([x], [t], 2, 16, np.random.default_rng(0), jitter=jitter)
    xs, ts, _ = s.sample(200)
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
