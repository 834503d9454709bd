"""The CRF loss: it pulls the frontier to image edges, and waits for the strokes to be fitted."""

import torch

from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.losses import dense_crf_loss
from napari_frontier.segmenter import Segmenter


def _split(width: int, at: int) -> torch.Tensor:
    """One-hot probabilities (1, 2, 24, width): class 0 left of column ``at``, class 1 from it."""
    p = torch.zeros(1, 2, 24, width)
    p[:, 0, :, :at] = 1
    p[:, 1, :, at:] = 1
    return p


def test_a_frontier_on_the_image_edge_costs_less_than_one_across_a_uniform_region():
    image = torch.zeros(1, 1, 24, 32)
    image[..., 16:] = 1.0  # an edge between columns 15 and 16
    on_edge = dense_crf_loss(_split(32, 16), image)
    off_edge = dense_crf_loss(_split(32, 8), image)
    assert float(on_edge) < 0.01 * float(off_edge)
    # one class everywhere costs nothing: the prior never invents a frontier
    assert float(dense_crf_loss(_split(32, 0), image)) == 0.0


def test_invalid_pixels_take_no_part():
    image = torch.zeros(1, 1, 24, 32)
    valid = torch.ones(1, 24, 32, dtype=torch.bool)
    valid[..., 4:12] = False  # the frontier at column 8 lies among invalid pixels
    assert float(dense_crf_loss(_split(32, 8), image, valid=valid)) == 0.0
    assert float(dense_crf_loss(_split(32, 8), image)) > 0.0


def _weights_after(disk_image, **train) -> dict:
    image, scribbles, _ = disk_image
    tc = TrainConfig(seed=0, threads=1, patch_size=32, batch_size=2, ema=0.0, **train)
    seg = Segmenter(train_config=tc, model_config=dict(width=8, depth=1))
    seg.fit(image, scribbles, steps=6)
    return {k: v.clone() for k, v in seg.model.state_dict().items()}


def test_smoothness_after_leaves_the_prior_off_until_the_strokes_are_fitted(disk_image):
    assert TrainConfig().smoothness > 0 and TrainConfig().smoothness_after > 0  # the defaults
    plain = _weights_after(disk_image, smoothness=0.0)
    crf = dict(smoothness=1.0)
    # a bar the training accuracy cannot reach: the run is the plain one, step for step
    waiting = _weights_after(disk_image, smoothness_after=1.01, **crf)
    for k, v in plain.items():
        torch.testing.assert_close(waiting[k], v, rtol=0, atol=0)
    # without the bar the prior changes the training
    always = _weights_after(disk_image, smoothness_after=0.0, **crf)
    assert any(not torch.equal(always[k], v) for k, v in plain.items() if v.is_floating_point())
