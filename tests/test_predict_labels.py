"""Masks straight from tiles: the same class map as from the whole probabilities."""

import numpy as np
import pytest
import torch

from napari_frontier import cli
from napari_frontier.data.io import read_image, write_image
from napari_frontier.learning.config import TrainConfig
from napari_frontier.prediction.tiling import (
    Prediction,
    decode_mask,
    encode_mask,
    labels_of,
    predict_probabilities,
)
from napari_frontier.segmenter import Segmenter


@pytest.fixture(scope="module")
def seg_image():
    r = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    truth = (yy - 48) ** 2 + (xx - 44) ** 2 < 22**2
    image = (np.where(truth, 180, 60) + r.normal(0, 12, truth.shape)).astype(np.float32)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[44:48, 28:60] = 1
    scribbles[:4] = 2
    seg = Segmenter(train_config=TrainConfig(seed=0, threads=1, device="cpu"))
    seg.fit(image, scribbles, steps=10)
    return seg, image


@pytest.mark.parametrize("k", [2, 3, 5])
def test_labels_of_is_argmax_with_nan_as_zero(rng, k):
    p = rng.random((k, 70, 90)).astype(np.float32)
    p[:, ::7] = 0.5  # ties go to the lower class
    p[0, 3] = np.nan
    p[-1, 5] = np.inf
    p[1, 9] = -np.inf
    p[:, 11] = np.nan
    p[:, 13, ::3] = -0.0
    expected = (np.nan_to_num(p, nan=0.0).argmax(0) + 1).astype(np.uint8)
    np.testing.assert_array_equal(labels_of(p), expected)
    valid = rng.random(p.shape[1:]) > 0.2
    pred = Prediction(p, valid)
    expected[~valid] = 0
    np.testing.assert_array_equal(pred.mask("labels"), expected)
    binary = np.where(expected == 1, 255, 0).astype(np.uint8)
    binary[~valid] = 127
    np.testing.assert_array_equal(pred.mask("binary"), binary)
    # the default keeps every class: binary for two, labels for more
    np.testing.assert_array_equal(pred.mask(), binary if k == 2 else expected)
    # the one encoding and its inverse
    np.testing.assert_array_equal(encode_mask(expected, "binary"), binary)
    np.testing.assert_array_equal(decode_mask(binary, "binary"), np.minimum(expected, 2))
    np.testing.assert_array_equal(decode_mask(pred.mask("labels"), "labels"), expected)
    every = np.arange(256, dtype=np.uint8)  # any byte: 255 "is", 0 "is not", else invalid
    np.testing.assert_array_equal(
        decode_mask(every), np.select([every == 255, every == 0], [1, 2], 0)
    )
    np.testing.assert_array_equal(decode_mask(every.astype(np.int32)), decode_mask(every))
    with pytest.raises(ValueError, match="mask format"):
        pred.mask("rgb")


def test_predict_labels_equals_predict(seg_image):
    seg, image = seg_image
    image = image.copy()
    image[5:9, 10:30] = np.nan
    np.testing.assert_array_equal(
        seg.predict_labels(image, tile=64), seg.predict(image, tile=64).labels
    )
    stack = np.stack([image, image[::-1]])
    np.testing.assert_array_equal(seg.predict_labels(stack), seg.predict(stack).labels)


def test_tiles_side_by_side_keep_the_result_and_the_threads(seg_image):
    seg, image = seg_image
    threads = torch.get_num_threads()
    x = seg.prepare(image).x
    one = predict_probabilities(seg.model, x, tile=32)
    several = predict_probabilities(seg.model, x, tile=32, workers=3)
    np.testing.assert_allclose(several, one, atol=1e-5)  # other threads: float rounding
    assert torch.get_num_threads() == threads


def test_cli_mask_is_the_same_with_or_without_probabilities(tmp_path, seg_image):
    seg, image = seg_image
    seg.save(tmp_path / "m.pt")
    write_image(tmp_path / "img.tif", image)
    args = ["predict", str(tmp_path / "m.pt"), str(tmp_path / "img.tif"), "-q", "--tile", "64"]
    assert cli.main([*args, "-o", str(tmp_path / "a.tif")]) == 0
    probs = ["--probabilities", str(tmp_path / "p.tif")]
    assert cli.main([*args, "-o", str(tmp_path / "b.tif"), *probs]) == 0
    a, b = read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tif")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, seg.predict(image, tile=64).mask())
