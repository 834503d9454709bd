"""Does `--until-stable` stop, and at the right time? IoU at its stop against fixed budgets.

Four commands, all counted in training steps (the same on any load; ~25
steps/s on one CPU thread, so 1500 / 7500 steps stand for 60 / 300 s):

``trace``: one continuous training run per image and seed (updates after
every step), the probe that :func:`fit_until_stable` predicts saved every
``--save-every`` steps with the truth IoU of the slice (``DIR/<image>_s<seed>.npz``)::

    python benchmarks/until_stable.py trace --half A --seeds 0 --out traces

``table``: replays :class:`StabilityMonitor` over the saved checkpoints, as
``fit_until_stable`` meets them, and prints per image the stop (step,
seconds: training plus the checks' predictions), the IoU there and at the
budgets; ``--sweep`` tries a grid of ratios, levels, windows and minimum
steps (ratio 0: the level alone; choose on half A, check on half B)::

    python benchmarks/until_stable.py table --half A --dir traces --sweep
    python benchmarks/until_stable.py table --half B --dir traces

``noise``: from traces saved every 50 steps, the change the earlier rule
allowed (0.1 % of the pixels over 20 s, and between 2-s checks) against the
change measured late in training, and the frontier displacement over 250 /
1000 / 5000 steps::

    python benchmarks/until_stable.py noise --half A B --dir traces

``online``: :func:`fit_until_stable` itself (capped at ``--cap`` steps), to
check that it stops where the replay says::

    python benchmarks/until_stable.py online --images mri_brain_tumour --seeds 0
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality

from napari_frontier.learning.config import TrainConfig
from napari_frontier.live.convergence import (
    DEFAULT_EVERY,
    DEFAULT_LEVEL,
    DEFAULT_MIN_STEPS,
    DEFAULT_RATIO,
    DEFAULT_WINDOW,
    StabilityMonitor,
    fit_until_stable,
    probe_of,
)
from napari_frontier.segmenter import Segmenter

#: The fixed halves: parameters are chosen on A and checked on B.
HALVES = {
    "A": [
        "food_4class", "ct_lung_tumour", "hela_nuclei", "he_nuclei", "textures",
        "gravel_on_grass", "hue_blobs",
    ],
    "B": [
        "food_rice", "mri_brain_tumour", "huh7_cells", "nuclei", "brick_on_gravel",
        "noisy_blobs",
    ],
}  # fmt: skip
BUDGETS = (1500, 7500)


def _segmenter(k: int, seed: int) -> Segmenter:
    # an update after every step: every check lands on the same step on any load
    tc = TrainConfig(seed=seed, threads=1, update_interval=0.0)
    return Segmenter(n_classes=k, train_config=tc)


def trace(case, seed: int, steps: int, every: int, path: Path) -> None:
    img, scr, truth, k = case
    seg = _segmenter(k, seed)
    index, region = probe_of(seg, img, scr)
    whole = region == (slice(0, truth.shape[0]), slice(0, truth.shape[1])) and not index
    stats = seg.stats(img)
    rec = {"labels": [], "steps": [], "seconds": [], "predict_s": [], "iou": [], "sps": []}
    paused = 0.0
    gen = seg.training(img, scr, steps=steps)
    try:
        for upd in gen:
            if upd.step % every and upd.step != 1 and not upd.done:
                continue
            t0 = time.perf_counter()
            lab = seg.predict_region(img, index, region, stats=stats).labels
            dt = time.perf_counter() - t0
            full = lab if whole else seg.predict(img).labels
            iou = quality.iou_of(full, truth, k)
            paused += time.perf_counter() - t0
            for key, v in zip(rec, (lab, upd.step, upd.elapsed - paused, dt, iou,
                                    upd.steps_per_second), strict=True):  # fmt: skip
                rec[key].append(v)
            if upd.done:
                break
    finally:
        gen.close()
    np.savez_compressed(path, **{key: np.asarray(v) for key, v in rec.items()}, k=k)


def replay(d, ratio, level, every, window, min_steps) -> dict:
    """Where the monitor stops on a trace: the checkpoints fit_until_stable would predict."""
    steps = [int(s) for s in d["steps"]]
    mon = StabilityMonitor(ratio, level, every, window, min_steps)
    checks_s, next_check = 0.0, -1
    predict_s = d["predict_s"] if "predict_s" in d else np.zeros(len(steps))
    for i, s in enumerate(steps):
        if s < next_check:
            continue
        checks_s += float(predict_s[i])
        st = mon.update(d["labels"][i], s)
        next_check = (s // every + 1) * every
        if st.stable:
            return {"step": s, "i": i, "seconds": float(d["seconds"][i]) + checks_s, "st": st}
    return {"step": None, "i": len(steps) - 1, "seconds": None, "st": mon.last}


def _iou_at(d, step):
    steps = list(d["steps"])
    # the last update at that step: at the end of a run, the final one
    return float(d["iou"][len(steps) - 1 - steps[::-1].index(step)]) if step in steps else math.nan


def _cases(args):
    names = list(args.images or [])
    for h in args.half or []:
        names += HALVES[h]
    return names or HALVES["A"] + HALVES["B"]


def cmd_trace(args) -> None:
    cases = quality.load_cases(quality.DEVSET, False, True, True)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in _cases(args):
        for seed in args.seeds:
            path = args.out / f"{name}_s{seed}.npz"
            if path.exists():
                continue
            t0 = time.perf_counter()
            trace(cases[name], seed, args.steps, args.save_every, path)
            print(f"{name} seed {seed}: {time.perf_counter() - t0:.0f} s -> {path}", flush=True)


def _load(args):
    out = {}
    for name in _cases(args):
        for seed in args.seeds:
            path = args.dir / f"{name}_s{seed}.npz"
            if path.exists():
                out[name, seed] = dict(np.load(path))
    return out


def _row(d, r) -> tuple[float, float, float]:
    """IoU at the stop (at the end without one) and at the budgets."""
    return float(d["iou"][r["i"]]), _iou_at(d, BUDGETS[0]), _iou_at(d, BUDGETS[1])


def cmd_table(args) -> None:
    traces = _load(args)
    last_step = max(int(d["steps"][-1]) for d in traces.values())
    if args.sweep:
        print(f"# {len(traces)} traces in {args.dir}; no stop counts as the last step")
        print("| ratio | level px | window | min steps | stopped | mean stop step | mean IoU: "
              f"stop / {BUDGETS[0]} / {BUDGETS[1]} | worst stop − {BUDGETS[0]} | "
              f"worst stop − {BUDGETS[1]} |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        grid = itertools.product(args.ratios, args.levels, args.windows, args.min_steps_grid)
        for ratio, level, window, min_steps in grid:
            res = [(d, replay(d, ratio, level, args.every_, window, min_steps))
                   for d in traces.values()]  # fmt: skip
            rows = np.array([_row(d, r) for d, r in res])
            n = sum(r["step"] is not None for _, r in res)
            stop = np.mean([r["step"] or last_step for _, r in res])
            m = np.nanmean(rows, axis=0)
            print(f"| {ratio:g} | {level:g} | {window} | {min_steps} | {n}/{len(res)} | "
                  f"{stop:.0f} | {m[0]:.3f} / {m[1]:.3f} / {m[2]:.3f} | "
                  f"{np.min(rows[:, 0] - rows[:, 1]):+.3f} | "
                  f"{np.min(rows[:, 0] - rows[:, 2]):+.3f} |")  # fmt: skip
        return
    print(f"# ratio {args.ratio:g}, level {args.level:g} px, window {args.window} x "
          f"{args.every_} steps, from step {args.min_steps}; traces in {args.dir}")  # fmt: skip
    print(f"| image | seed | stop step | stop s (steps/s) | IoU at stop | {BUDGETS[0]} steps "
          f"| {BUDGETS[1]} steps | moved / wobble at the stop |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for (name, seed), d in traces.items():
        r = replay(d, args.ratio, args.level, args.every_, args.window, args.min_steps)
        sps = float(np.median(d["sps"][1:]))
        if r["step"] is None:
            where, secs = f"none ({int(d['steps'][-1])})", "–"
        else:
            where, secs = str(r["step"]), f"{r['seconds']:.0f} ({sps:.0f})"
        st = r["st"]
        moved = "–" if st.window_moved is None else f"{st.window_moved:.2f} / {st.wobble:.2f} px"
        row = _row(d, r)
        rows.append(row)
        print(f"| {name} | {seed} | {where} | {secs} | {row[0]:.3f} | {row[1]:.3f} | "
              f"{row[2]:.3f} | {moved} |")  # fmt: skip
    m = np.nanmean(rows, axis=0)
    print(f"| mean | | | | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | |")


def cmd_noise(args) -> None:
    """Why the earlier rule never stopped: the change it allowed against the change measured."""
    print(f"# medians over the checkpoints from step {args.late} on; traces in {args.dir}")
    print("| image | seed | % of pixels changed in 50 steps (~2 s) | in 500 steps (~20 s) "
          "| frontier moved in 250 / 1000 / 5000 steps, px | in 1000 steps, early → late "
          "| IoU range |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (name, seed), d in _load(args).items():
        steps = [int(s) for s in d["steps"]]
        late = [i for i, s in enumerate(steps) if s >= args.late]
        frac = [_median_over(d, late, g, "fraction") for g in (50, 500)]
        px = " / ".join(f"{_median_over(d, late, g, 'moved'):.2f}" for g in (250, 1000, 5000))
        # does the change fade with training? 1000 steps in the first and the last third
        thirds = np.array_split(np.array(late), 3)
        fade = " → ".join(f"{_median_over(d, list(t), 1000, 'moved'):.2f}" for t in thirds[::2])
        iou = d["iou"][late]
        print(f"| {name} | {seed} | {frac[0]:.2f} | {frac[1]:.2f} | {px} | {fade} | "
              f"{iou.min():.3f}–{iou.max():.3f} |")  # fmt: skip


def _median_over(d, late, gap, what) -> float:
    """Median change between each late checkpoint and the one ``gap`` steps before it."""
    from napari_frontier.live.convergence import frontier_moved

    steps, lab = [int(s) for s in d["steps"]], d["labels"]
    pairs = [(steps.index(steps[j] - gap), j) for j in late if steps[j] - gap in steps]
    if not pairs:
        return math.nan
    if what == "fraction":
        vals = [100 * float((lab[i] != lab[j]).mean()) for i, j in pairs]
    else:
        vals = [frontier_moved(lab[i], lab[j]) for i, j in pairs]
    return float(np.median(vals))


def cmd_online(args) -> None:
    cases = quality.load_cases(quality.DEVSET, False, True, True)
    for name in _cases(args):
        img, scr, truth, k = cases[name]
        for seed in args.seeds:
            seg = _segmenter(k, seed)
            t0 = time.perf_counter()
            res = fit_until_stable(
                seg, img, scr, max_seconds=None, max_steps=args.cap, ratio=args.ratio,
                level=args.level, every=args.every_, window=args.window, min_steps=args.min_steps,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            iou = quality.iou_of(seg.predict(img).labels, truth, k)
            print(f"{name} seed {seed}: {res.reason} at step {res.update.step} "
                  f"({wall:.0f} s with {res.checks} checks), IoU {iou:.3f}; "
                  f"{res.stability.describe()}", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("trace", "table", "noise", "online"):
        s = sub.add_parser(name)
        s.add_argument("--images", nargs="+")
        s.add_argument("--half", nargs="+", choices=sorted(HALVES))
        s.add_argument("--seeds", type=int, nargs="+", default=[0])
        s.add_argument("--ratio", type=float, default=DEFAULT_RATIO)
        s.add_argument("--level", type=float, default=DEFAULT_LEVEL)
        s.add_argument("--every-steps", dest="every_", type=int, default=DEFAULT_EVERY)
        s.add_argument("--window", type=int, default=DEFAULT_WINDOW)
        s.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS)
        if name == "trace":
            s.add_argument("--out", type=Path, required=True)
            s.add_argument("--steps", type=int, default=BUDGETS[1])
            s.add_argument("--save-every", type=int, default=DEFAULT_EVERY,
                           help="steps between saved checkpoints")  # fmt: skip
        if name == "table":
            s.add_argument("--dir", type=Path, required=True)
            s.add_argument("--sweep", action="store_true")
            s.add_argument("--ratios", type=float, nargs="+", default=[0, 1.25, 1.5, 2])
            s.add_argument("--levels", type=float, nargs="+", default=[1, 1.5, 2, 3])
            s.add_argument("--windows", type=int, nargs="+", default=[4, 8])
            s.add_argument("--min-steps-grid", type=int, nargs="+", default=[1000, 1500])
        if name == "noise":
            s.add_argument("--dir", type=Path, required=True)
            s.add_argument("--late", type=int, default=2500)
        if name == "online":
            s.add_argument("--cap", type=int, default=BUDGETS[1])
    args = p.parse_args()
    torch.set_num_threads(1)
    commands = {"trace": cmd_trace, "table": cmd_table, "noise": cmd_noise, "online": cmd_online}
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
