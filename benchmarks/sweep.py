"""Choose defaults by measurement: IoU after a fixed number of training steps.

Each variant (model and training settings, as JSON) is trained on every
sample and held-out set for the given step counts, with one torch thread per
process and several processes at once; the table gives the mean IoU over the
sets at each step count and the CPU time per training step and per
megapixel of prediction, so quality per second follows as IoU at
``steps = seconds / step time``.

    python benchmarks/sweep.py --steps 50 150 400 --seeds 0 1 --jobs 8 \\
        --variants '[{}, {"model": {"context_stride": 1}}, {"train": {"patch_size": 96}}]'
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def datasets() -> dict:
    from quality import extra_sets

    from napari_frontier.data.samples import load_sample, sample_names

    sets = {}
    for n in sample_names():
        s = load_sample(n)
        sets[n] = (s["image"], s["scribbles"], s["truth"] > 0)
    sets.update(extra_sets())
    return sets


def run_one(job) -> dict:
    variant, seed, steps, name = job
    import torch

    torch.set_num_threads(1)
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.learning.metrics import score, truth_from_mask
    from napari_frontier.segmenter import Segmenter

    image, scribbles, truth = datasets()[name]
    tc = TrainConfig(
        seed=seed, threads=1, device="cpu", holdout_fraction=0, **variant.get("train", {})
    )
    seg = Segmenter(train_config=tc, model_config=variant.get("model", {}))
    done, ious, step_cpu, inf_cpu = 0, [], [], []
    for st in steps:
        t0 = time.process_time()
        seg.fit(image, scribbles, steps=st - done)
        step_cpu.append((time.process_time() - t0) / (st - done))
        done = st
        t0 = time.process_time()
        pred = seg.predict(image)
        inf_cpu.append((time.process_time() - t0) / (truth.size / 1e6))
        ious.append(score(pred.labels, truth_from_mask(truth)).foreground_iou)
    return {
        "variant": json.dumps(variant),
        "seed": seed,
        "set": name,
        "ious": ious,
        "ms_per_step": 1000 * statistics.median(step_cpu),
        "s_per_mp": statistics.median(inf_cpu),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--variants", default="[{}]", help="JSON list of {model: {...}, train: {...}}")
    p.add_argument("--steps", type=int, nargs="+", default=[50, 150, 400])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    variants = json.loads(args.variants)
    names = list(datasets())
    jobs = [(v, s, args.steps, n) for v in variants for s in args.seeds for n in names]
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {os.cpu_count()} cores, {args.jobs} jobs x 1 thread, "
        f"sets {names}, seeds {args.seeds}, steps {args.steps}",
        flush=True,
    )
    results = []
    per_variant = len(args.seeds) * len(names)
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_one, j) for j in jobs]
        for fut in as_completed(futures):
            r = fut.result()
            results.append(r)
            rs = [x for x in results if x["variant"] == r["variant"]]
            if len(rs) == per_variant:
                report(r["variant"], rs, names)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(key: str, rs: list[dict], names: list[str]) -> None:
    mean = np.mean([r["ious"] for r in rs], axis=0)
    worst = np.min([r["ious"] for r in rs], axis=0)
    per_set = {n: np.mean([r["ious"][-1] for r in rs if r["set"] == n]) for n in names}
    print(
        f"{key:70s} mean IoU "
        + "/".join(f"{m:.3f}" for m in mean)
        + " min "
        + "/".join(f"{m:.2f}" for m in worst)
        + f" | {statistics.median(r['ms_per_step'] for r in rs):.0f} ms/step, "
        f"{statistics.median(r['s_per_mp'] for r in rs):.2f} s/MP (1 thread) | last: "
        + " ".join(f"{n[:6]} {i:.2f}" for n, i in per_set.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
