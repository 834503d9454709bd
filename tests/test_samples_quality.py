"""Quality on the bundled samples: a regression bar on foreground IoU."""

import numpy as np
import pytest

from napari_frontier.metrics import score, truth_from_mask
from napari_frontier.samples import load_sample, sample_names
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig

# Measured with `python benchmarks/quality.py`: 10 s on 2 cores gives about
# 0.83 (nuclei) and 0.89 (textures); 150 steps here take ~10 s on one thread.
BARS = {"nuclei": 0.70, "textures": 0.75}


def test_samples_ship_with_scribbles_and_truth():
    assert set(sample_names()) >= {"nuclei", "textures"}
    for name in sample_names():
        s = load_sample(name)
        assert s["scribbles"].shape == s["image"].shape[:2]
        assert set(np.unique(s["scribbles"])) == {0, 1, 2}
        painted = (s["scribbles"] > 0).mean()
        assert painted < 0.05  # a few strokes, not a full annotation


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BARS))
def test_iou_above_bar(name):
    s = load_sample(name)
    seg = Segmenter(train_config=TrainConfig(seed=0, threads=2, holdout_fraction=0))
    seg.fit(s["image"], s["scribbles"], steps=150)
    pred = seg.predict(s["image"])
    iou = score(pred.labels, truth_from_mask(s["truth"])).foreground_iou
    print(f"{name}: IoU {iou:.3f} after 150 steps")
    assert iou > BARS[name]
