"""Are BatchNorm statistics the problem? Score one model with two sets of statistics.

Trains the network with running BatchNorm statistics (``bn_recalibration=0``),
scores it, then recomputes the statistics for the same weights over 50 fresh
un-jittered batches and scores it again; prints how far the means moved (in
standard deviations).

    python benchmarks/bn_check.py --image gravel_on_grass --steps 500 --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality

from napari_frontier.data.scribbles import to_targets
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.sampling import PatchSampler
from napari_frontier.segmenter import Segmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image", default="gravel_on_grass")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args()
    torch.set_num_threads(1)
    cases = quality.load_cases(quality.DEVSET, False, True, True)
    img, scr, truth, k = cases[args.image]
    for seed in args.seeds:
        tc = TrainConfig(seed=seed, threads=1, holdout_fraction=0, bn_recalibration=0)
        seg = Segmenter(n_classes=k, train_config=tc)
        seg.fit(img, scr, steps=args.steps)
        before = quality.iou_of(seg.predict(img).labels, truth, k)
        prep = seg.prepare(img)
        s = PatchSampler([prep.x], [to_targets(scr, prep.valid)], k, 96, np.random.default_rng(0))
        bns = [b for b in seg.model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
        saved = [b.running_mean.clone() for b in bns]
        for b in bns:
            b.reset_running_stats()
            b.momentum = None
        seg.model.train()
        with torch.no_grad():
            for _ in range(50):
                x = s.sample(4, augment=False).x
                seg.model(torch.from_numpy(x))
        after = quality.iou_of(seg.predict(img).labels, truth, k)
        shift = [
            float(((m - b.running_mean).abs() / (b.running_var.sqrt() + 1e-3)).max())
            for m, b in zip(saved, bns, strict=True)
        ]
        print(
            f"seed {seed}: IoU with running statistics {before:.3f}, recomputed {after:.3f}; "
            f"largest mean shift per BatchNorm (std): {np.round(shift, 2).tolist()}"
        )


if __name__ == "__main__":
    main()
