"""Quality per second: napari-frontier against scikit-image's random-forest pixel classifier.

Runs side by side in one process on the same images and scribbles:

* baseline: ``skimage.feature.multiscale_basic_features`` + ``RandomForestClassifier
  (n_estimators=50, max_depth=10, n_jobs=-1)`` via ``skimage.future.fit_segmenter``
  (timed as features + fit + predict);
* napari-frontier at several training budgets (seconds);
* a full-supervision ceiling: the same network trained on the complete ground truth.

Data: the bundled samples, extra held-out sets made from other images of the
source packages (``--extra``), or any folder of ``NAME_image.*``,
``NAME_scribbles.*``, ``NAME_truth.*`` files (``--folder``).

    python benchmarks/quality.py --budgets 2 5 10 30 60 --seeds 0 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from napari_frontier.io import read_image
from napari_frontier.metrics import score, truth_from_mask
from napari_frontier.samples import load_sample, sample_names
from napari_frontier.scribbles import simulate_scribbles
from napari_frontier.segmenter import Segmenter
from napari_frontier.training import TrainConfig


def extra_sets() -> dict:
    """Held-out images from other domains, never used to choose defaults' bars."""
    from skimage import data as skdata
    from skimage.data import binary_blobs

    out = {}
    gravel, grass, brick = skdata.gravel(), skdata.grass(), skdata.brick()
    for name, (a, b), seed in [
        ("gravel_on_grass", (gravel, grass), 11),
        ("brick_on_gravel", (brick, gravel), 12),
    ]:
        n = min(a.shape[0], b.shape[0], 512)
        truth = binary_blobs(length=n, blob_size_fraction=0.3, volume_fraction=0.45, rng=seed)
        image = np.where(truth, a[:n, :n], b[:n, :n]).astype(np.uint8)
        out[name] = (
            image,
            simulate_scribbles(
                truth, rng=seed, object_fraction=0.5, max_objects=4, margin=8, width=5
            ),
            truth,
        )
    # Colour photo: coins-like objects are not available with truth, so use the
    # horse silhouette filled with a colour texture (chelsea) over coffee.
    horse = ~skdata.horse()  # True = horse
    h, w = horse.shape
    fg = skdata.chelsea()[:h, :w] if skdata.chelsea().shape[0] >= h else None
    bg = skdata.coffee()[:h, :w]
    if fg is not None and fg.shape[:2] == (h, w) and bg.shape[:2] == (h, w):
        image = np.where(horse[..., None], fg, bg).astype(np.uint8)
        out["rgb_horse"] = (image, simulate_scribbles(horse, rng=5, margin=6, width=5), horse)
    return out


def folder_sets(folder: Path) -> dict:
    out = {}
    for img in sorted(folder.glob("*_image.*")):
        stem = img.name.split("_image.")[0]
        scr = next(folder.glob(f"{stem}_scribbles.*"), None)
        gt = next(folder.glob(f"{stem}_truth.*"), None)
        if scr is not None and gt is not None:
            out[stem] = (read_image(img), read_image(scr), read_image(gt) > 0)
    return out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def baseline(image, scribbles, truth) -> dict:
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    channel_axis = -1 if image.ndim == 3 else None
    feats = partial(
        multiscale_basic_features,
        intensity=True,
        edges=True,
        texture=True,
        sigma_min=1,
        sigma_max=16,
        channel_axis=channel_axis,
    )(image)
    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10)
    clf = fit_segmenter(scribbles, feats, clf)
    pred = predict_segmenter(feats, clf)
    t = time.perf_counter() - t0
    s = score(pred, truth_from_mask(truth))
    return {"seconds": t, "iou": s.foreground_iou, "dice": s.foreground_dice, "bf1": s.boundary_f1}


def frontier(image, scribbles, truth, seconds, seed, threads) -> dict:
    seg = Segmenter(train_config=TrainConfig(seed=seed, threads=threads, holdout_fraction=0))
    last = seg.fit(image, scribbles, seconds=seconds)
    t0 = time.perf_counter()
    pred = seg.predict(image)
    t_inf = time.perf_counter() - t0
    s = score(pred.labels, truth_from_mask(truth))
    mp = truth.size / 1e6
    return {
        "iou": s.foreground_iou,
        "dice": s.foreground_dice,
        "bf1": s.boundary_f1,
        "steps_per_s": last.steps_per_second,
        "inference_s": t_inf,
        "mp_per_s": mp / t_inf,
    }


def ceiling(image, truth, seconds, seed, threads) -> float:
    full = np.where(truth, 1, 2).astype(np.uint8)
    r = frontier(image, full, truth, seconds, seed, threads)
    return r["iou"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budgets", type=float, nargs="+", default=[2, 5, 10, 30, 60])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--extra", action="store_true", help="also run the held-out extra sets")
    p.add_argument("--only-extra", action="store_true")
    p.add_argument("--folder", type=Path, default=None)
    p.add_argument(
        "--ceiling",
        type=float,
        default=0,
        help="seconds for the full-supervision ceiling (0: skip)",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)

    sets = {}
    if not args.only_extra:
        for name in sample_names():
            s = load_sample(name)
            sets[name] = (s["image"], s["scribbles"], s["truth"] > 0)
    if args.extra or args.only_extra:
        sets.update(extra_sets())
    if args.folder:
        sets.update(folder_sets(args.folder))

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} threads={threads}, "
        f"load average {os.getloadavg()[0]:.2f}, seeds {args.seeds}"
    )
    results = {}
    for name, (image, scribbles, truth) in sets.items():
        row = {"baseline": [baseline(image, scribbles, truth) for _ in range(2)]}
        for b in args.budgets:
            row[f"{b:g}s"] = [
                frontier(image, scribbles, truth, b, seed, threads) for seed in args.seeds
            ]
        if args.ceiling:
            row["ceiling_iou"] = ceiling(image, truth, args.ceiling, 0, threads)
        results[name] = row
        med = lambda rs, k: statistics.median(r[k] for r in rs)  # noqa: E731
        base = med(row["baseline"], "iou")
        line = f"{name:18s} baseline IoU {base:.3f} ({med(row['baseline'], 'seconds'):.1f} s)"
        for b in args.budgets:
            rs = row[f"{b:g}s"]
            line += f" | {b:g}s IoU {med(rs, 'iou'):.3f} bF1 {med(rs, 'bf1'):.2f} ({med(rs, 'steps_per_s'):.0f} st/s)"
        if args.ceiling:
            line += f" | ceiling {row['ceiling_iou']:.3f}"
        print(line, flush=True)
        inf = row[f"{args.budgets[-1]:g}s"]
        print(
            f"{'':18s} inference {med(inf, 'inference_s'):.2f} s = {med(inf, 'mp_per_s'):.2f} MP/s; peak RSS {rss_mb():.0f} MB",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
