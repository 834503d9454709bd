"""Does `--until-stable` stop at the right time? IoU at the automatic stop vs at a fixed budget.

For each image (seed by seed): train with :func:`fit_until_stable` (capped at
``--cap`` seconds), score; then keep training the same model up to
``--budget`` seconds in all and score again. Prints the stop time, the
reason, both IoUs and the time saved.

    python benchmarks/until_stable.py --images nuclei food_rice hela_nuclei mri_brain_tumour
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality

from napari_frontier.convergence import fit_until_stable
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", nargs="+", default=["nuclei", "food_rice", "hela_nuclei"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cap", type=float, default=60.0)
    p.add_argument("--budget", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    cases = quality.load_cases(quality.DEVSET, False, True, True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cap {args.cap:g} s, budget {args.budget:g} s")
    for name in args.images:
        img, scr, truth, k = cases[name]
        for seed in args.seeds:
            seg = Segmenter(n_classes=k, train_config=TrainConfig(seed=seed, threads=1))
            t0 = time.perf_counter()
            res = fit_until_stable(seg, img, scr, max_seconds=args.cap)
            t_stop = time.perf_counter() - t0
            iou_stop = quality.iou_of(seg.predict(img).labels, truth, k)
            left = args.budget - res.update.elapsed
            if left > 0.5:
                seg.fit(img, scr, seconds=left)
            iou_budget = quality.iou_of(seg.predict(img).labels, truth, k)
            print(
                f"{name:18s} seed {seed}: stopped ({res.reason}) after {res.update.elapsed:5.1f} s "
                f"of training ({t_stop:5.1f} s with checks), IoU {iou_stop:.3f}; "
                f"at {args.budget:g} s {iou_budget:.3f}; saved "
                f"{max(0.0, args.budget - res.update.elapsed):4.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
