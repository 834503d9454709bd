"""Test-time augmentation, paired: the same weights predict plainly and with ``tta=True``.

For every image and seed the network trains step-exact (every default,
one torch thread); at each step budget the same weights predict twice,
plainly and averaging the four flips of each tile
(:class:`napari_frontier.prediction.tiling.FlipAverage`), so the difference is the
flips alone, free of seed and timing noise. Prints per run, then per
budget the mean and worst seed median and the number of images whose
seed spread is at most 0.05.

    python benchmarks/tta.py --budgets 300 1500 --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODES = ("plain", "flips")


def task(args):
    name, seed, case, budgets = args
    import torch

    torch.set_num_threads(1)
    from quality import iou_of

    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    image, scribbles, truth, k = case
    tc = TrainConfig(seed=seed, threads=1, update_interval=0.0)
    seg = Segmenter(n_classes=k, train_config=tc)
    todo, out = sorted(budgets), {}
    gen = seg.training(image, scribbles)
    try:
        for upd in gen:
            if not (todo and upd.step >= todo[0]):
                continue
            scores = {}
            for mode in MODES:
                seg.tta = mode == "flips"
                scores[mode] = iou_of(seg.predict(image).labels, truth, k)
            seg.tta = False
            out[todo.pop(0)] = scores
            if not todo:
                break
    finally:
        gen.close()
    return name, seed, out


def main() -> None:
    from quality import DEVSET, load_cases

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=int, nargs="+", default=[300, 1500])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", nargs="+", default=None)
    args = p.parse_args()
    cases = load_cases(DEVSET, False, True, True)
    if args.only:
        cases = {n: c for n, c in cases.items() if n in args.only}
    jobs = [(n, s, c, args.budgets) for n, c in cases.items() for s in args.seeds]
    res: dict = {}
    with ProcessPoolExecutor(args.jobs) as ex:
        for name, seed, out in ex.map(task, jobs):
            cells = " ".join(
                f"{b}:" + "/".join(f"{out[b][m]:.3f}" for m in MODES) for b in args.budgets
            )
            print(f"{name} seed {seed} ({'/'.join(MODES)}) {cells}", flush=True)
            res.setdefault(name, {})[seed] = out
    for b in args.budgets:
        for m in MODES:
            runs = {n: [res[n][s][b][m] for s in res[n]] for n in res}
            med = {n: statistics.median(v) for n, v in runs.items()}
            spread = {n: max(v) - min(v) for n, v in runs.items()}
            print(
                f"{b} steps, {m}: mean {statistics.mean(med.values()):.3f}, "
                f"worst {min(med.values()):.3f}, spread <= 0.05 on "
                f"{sum(v <= 0.05 for v in spread.values())} / {len(res)}, "
                f"largest spread {max(spread.values()):.3f}"
            )


if __name__ == "__main__":
    main()
