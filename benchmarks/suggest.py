"""Is "Suggest where to paint" worth a stroke? A simulated user, stroke by stroke.

Per image and seed: train a Segmenter on the sparse scribbles, then add one
correct stroke at a time (drawn from the ground truth) and continue training
the same network a fixed number of steps after each; score foreground IoU
after every stroke. The stroke goes

* ``suggest``: where :func:`napari_frontier.live.suggest.suggest_location` points
  (the plugin's rule: most uncertain unpainted 32 x 32 window);
* ``regions``: a candidate improvement, :func:`suggest_regions` below (not
  adopted: no clear gain over ``suggest``, see ``benchmarks/RESULTS.md``);
* ``random``: at a uniformly random scored, unpainted pixel;
* ``oracle``: into the largest connected region the prediction gets wrong
  (its deepest pixel): an upper reference no real rule can reach.

A stroke: a ~40 px line (3 px wide) of the true class at that place, running
along the nearest true boundary, kept ``margin`` px inside its class (the
location snaps to the nearest pixel that allows this) and never over paint.
Every strategy starts from the same trained network (a copy), the same
scribbles and the same training seed, so they differ only by where they paint.

    python benchmarks/suggest.py --strokes 8 --steps 60 --seeds 0 1 \
        --json benchmarks/results/suggest-DATE.json --png benchmarks/results/suggest-DATE.png

matplotlib is optional (only for ``--png``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEVSET = HERE.parent.parent / "shared" / "devset"
BINARY = ["food_rice", "ct_lung_tumour", "mri_brain_tumour", "hela_nuclei", "huh7_cells"]
STRATEGIES = ["suggest", "regions", "random", "oracle"]


# -- data -------------------------------------------------------------------
def load_case(name: str, devset: Path):
    """``(image, sparse scribbles, truth classes)``: 1 is, 2 is not, 0 not scored."""
    from napari_frontier.data.io import read_image

    if name in ("nuclei", "textures"):
        from napari_frontier.data.samples import load_sample

        s = load_sample(name)
        truth = np.where(np.asarray(s["truth"]) > 0, 1, 2).astype(np.uint8)
        return s["image"], np.asarray(s["scribbles"], np.uint8), truth
    d = devset / name
    raw = read_image(d / "truth.tif")
    truth = np.where(raw == 1, 1, 2).astype(np.uint8)
    truth[raw == 255] = 0
    return (
        read_image(d / "image.tif"),
        read_image(d / "scribbles_sparse.tif").astype(np.uint8),
        truth,
    )


# -- the simulated user --------------------------------------------------------
class User:
    """Draws correct strokes from the truth (classes 1, 2; 0 = not scored)."""

    def __init__(self, truth: np.ndarray, margin: int = 2, length: int = 40, width: int = 3):
        from scipy import ndimage

        self.truth = truth
        self.length, self.width = length, width
        self.inside = {}  # class -> pixels at least `margin` px inside it
        self.depth = {}  # class -> distance to the class boundary
        self.nearest = {}  # class -> indices of the nearest inside pixel
        for t in (1, 2):
            m = truth == t
            depth = ndimage.distance_transform_edt(np.pad(m, 1, constant_values=False))[1:-1, 1:-1]
            inside = depth > margin
            if not inside.any():  # a class too thin for the margin: its deepest pixels
                inside = m & (depth >= depth.max())
            self.depth[t], self.inside[t] = depth, inside
            _, idx = ndimage.distance_transform_edt(~inside, return_indices=True)
            self.nearest[t] = idx

    def stroke(self, point, painted: np.ndarray, cls: int | None = None):
        """``(mask, class)`` of a stroke at/near ``point``; class: truth there unless given."""
        r, c = point
        if cls is None:
            cls = int(self.truth[r, c])
            if cls == 0:  # not scored: the nearest scored class
                d = {t: np.hypot(*(self.nearest[t][:, r, c] - (r, c))) for t in (1, 2)}
                cls = min(d, key=d.get)
        r, c = (int(v) for v in self.nearest[cls][:, r, c])
        inside = self.inside[cls]
        # run along the boundary: perpendicular to the depth gradient
        gy, gx = np.gradient(self.depth[cls][max(r - 2, 0) : r + 3, max(c - 2, 0) : c + 3])
        ty, tx = -float(gx.mean()), float(gy.mean())
        n = np.hypot(ty, tx)
        ty, tx = (0.0, 1.0) if n < 1e-6 else (ty / n, tx / n)
        h, w = inside.shape
        line = [(r, c)]
        for sgn in (1, -1):
            for s in range(1, self.length // 2 + 1):
                y, x = round(r + sgn * s * ty), round(c + sgn * s * tx)
                if not (0 <= y < h and 0 <= x < w) or not inside[y, x]:
                    break
                line.append((y, x))
        mask = np.zeros_like(inside)
        ys, xs = np.array(line).T
        mask[ys, xs] = True
        from scipy import ndimage

        mask = ndimage.binary_dilation(mask, np.ones((self.width, self.width), bool)) & inside
        return mask & (painted == 0), cls


def suggest_regions(  # candidate rule, not adopted (see RESULTS.md)
    probabilities: np.ndarray,
    scribbles: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    window: int = 32,
    n: int = 5,
    reach: float | None = None,
) -> list[tuple[int, int]]:
    """Up to ``n`` places ``(row, col)`` to paint next, best first, at least ``window`` apart.

    Ranks pixels by the expected error of the prediction (``1 - max_k p_k``,
    the chance the predicted class is wrong if the probabilities are honest),
    averaged over a ``window``-sized neighbourhood, times how far the place is
    from any stroke of the class predicted there (``1 + distance / reach``):
    an uncertain area the network extrapolated to, far from every example of
    what it says is there, is worth a stroke more than the rim of one it was
    shown.

    Parameters
    ----------
    probabilities
        ``(K, H, W)`` class probabilities (NaN: invalid pixel).
    scribbles
        ``(H, W)`` strokes, 0 = void, 1..K = class. Painted pixels and their
        surroundings (``window // 2``) are never suggested.
    valid
        ``(H, W)`` bool, False where the input is invalid.
    window
        Size of the area scored (pixels) and the smallest distance between two
        suggestions.
    n
        Most suggestions returned.
    reach
        Distance (pixels) at which being far from the strokes doubles the
        score; default: a quarter of the image diagonal.

    Returns
    -------
    list of tuple
        Empty when nothing unpainted is uncertain.
    """
    from scipy import ndimage

    from napari_frontier.live.suggest import _painted_near

    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"probabilities must be (K, H, W), got shape {p.shape}")
    k, h, w = p.shape
    ok = np.isfinite(p).all(0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    p = np.nan_to_num(p, nan=1.0 / k)
    err = np.where(ok, 1.0 - p.max(0), 0.0).astype(np.float32)
    err = ndimage.uniform_filter(err, size=max(1, window), mode="constant")
    if reach is None:
        reach = 0.25 * float(np.hypot(h, w))
    near = _painted_near(scribbles, (h, w), window // 2)
    if near is not None:
        s = np.asarray(scribbles)
        predicted = p.argmax(0) + 1
        far = np.zeros((h, w), np.float32)
        for c in range(1, k + 1):
            strokes = s == c
            if strokes.any():
                d = ndimage.distance_transform_edt(~strokes).astype(np.float32)
            else:
                d = np.full((h, w), reach, np.float32)  # no example of c at all
            far = np.where(predicted == c, d, far)
        err = err * (1.0 + far / max(reach, 1e-6))
        err[near] = 0.0
    err[~ok] = 0.0
    out: list[tuple[int, int]] = []
    floor = 1e-3
    for _ in range(max(0, n)):
        i = int(np.argmax(err))
        if err.flat[i] <= floor:
            break
        row, col = divmod(i, w)
        out.append((int(row), int(col)))
        err[max(0, row - window) : row + window + 1, max(0, col - window) : col + window + 1] = 0.0
    return out


def random_point(truth, scribbles, rng):
    free = np.flatnonzero((truth > 0) & (scribbles == 0))
    return tuple(int(v) for v in np.unravel_index(int(rng.choice(free)), truth.shape))


def oracle_point(labels, truth, user: User):
    """Deepest pixel of the largest wrongly predicted region (and its true class)."""
    from scipy import ndimage

    best = None
    for t in (1, 2):
        wrong = (labels != t) & (truth == t)
        lab, n = ndimage.label(wrong)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            region = lab == k
            depth = ndimage.distance_transform_edt(region)
            best = (int(sizes[k - 1]), np.unravel_index(int(np.argmax(depth)), region.shape), t)
    if best is None:
        return None, None
    return tuple(int(v) for v in best[1]), best[2]


def choose(strategy, pred, scribbles, truth, user, rng):
    """``(point, class or None)`` for the next stroke."""
    from napari_frontier.live import suggest as S

    if strategy == "random":
        return random_point(truth, scribbles, rng), None
    if strategy == "oracle":
        return oracle_point(pred.labels, truth, user)
    if strategy == "suggest":
        p = S.suggest_location(pred.uncertainty, scribbles)
    elif strategy == "regions":
        p = suggest_regions(pred.probabilities, scribbles, valid=pred.valid)
        p = p[0] if p else None
    else:
        raise ValueError(strategy)
    return (random_point(truth, scribbles, rng) if p is None else p), None


def iou(labels, truth) -> float:
    from napari_frontier.learning.metrics import iou_per_class

    return float(iou_per_class(labels, truth, 2)[0])


def run_case(name, image, scribbles0, truth, seed, strategies, n_strokes, steps, init_steps):
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    seg0 = Segmenter(n_classes=2, train_config=TrainConfig(seed=seed, threads=1))
    seg0.fit(image, scribbles0, steps=init_steps)
    pred0 = seg0.predict(image)
    user = User(truth)
    out = {}
    for strategy in strategies:
        t0 = time.perf_counter()
        seg, scribbles, pred = copy.deepcopy(seg0), scribbles0.copy(), pred0
        rng = np.random.default_rng([seed, 7])
        curve, where = [iou(pred.labels, truth)], []
        for _ in range(n_strokes):
            point, cls = choose(strategy, pred, scribbles, truth, user, rng)
            if point is None:  # nothing left to fix
                curve.append(curve[-1])
                where.append(None)
                continue
            mask, cls = user.stroke(point, scribbles, cls)
            scribbles[mask] = cls
            where.append([*point, cls, int(mask.sum())])
            seg.fit(image, scribbles, steps=steps)
            pred = seg.predict(image)
            curve.append(iou(pred.labels, truth))
        out[strategy] = {"iou": curve, "strokes": where, "seconds": time.perf_counter() - t0}
        print(
            f"  {name:18s} seed {seed} {strategy:8s} "
            + " ".join(f"{v:.3f}" for v in curve)
            + f"  ({out[strategy]['seconds']:.0f} s)",
            flush=True,
        )
    return out


# -- report -----------------------------------------------------------------
def summarise(results, strategies, n_strokes):
    """Per image (mean over seeds) and mean over images: IoU after 0..n strokes."""
    table = {}
    for name, seeds in results.items():
        table[name] = {
            s: np.mean([seeds[k][s]["iou"] for k in seeds], axis=0).tolist() for s in strategies
        }
    table["mean"] = {
        s: np.mean([table[n][s] for n in results], axis=0).tolist() for s in strategies
    }
    lines = []
    marks = sorted({0, 1, 2, 4, n_strokes // 2, n_strokes} & set(range(n_strokes + 1)))
    head = f"{'image':18s} {'strategy':8s} " + " ".join(f"{m:>6d}" for m in marks)
    lines += [head + "   gain  area", "-" * (len(head) + 13)]
    for name, row in table.items():
        for s in strategies:
            c = row[s]
            gain = c[-1] - c[0]
            area = float(np.mean(np.array(c[1:]) - c[0]))  # mean gain over strokes 1..n
            lines.append(
                f"{name:18s} {s:8s} " + " ".join(f"{c[m]:6.3f}" for m in marks)
                + f" {gain:+6.3f} {area:+.3f}"
            )  # fmt: skip
    # paired: the same image, seed and starting network, strategy vs random
    if "random" in strategies:
        lines.append("")
        lines.append("paired with random (same image, seed, start): runs where the strategy's")
        lines.append("mean IoU over strokes 1..N is higher, and the mean difference")
        for s in strategies:
            if s == "random":
                continue
            d = [
                np.mean(run[s]["iou"][1:]) - np.mean(run["random"]["iou"][1:])
                for seeds in results.values()
                for run in seeds.values()
            ]
            wins = sum(v > 0 for v in d)
            lines.append(f"  {s:8s} beats random in {wins}/{len(d)} runs, mean {np.mean(d):+.3f}")
    return table, "\n".join(lines)


def plot(table, strategies, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    style = {"oracle": ("k", "--"), "random": ("tab:gray", ":"), "suggest": ("tab:orange", "-"),
             "regions": ("tab:blue", "-")}  # fmt: skip
    for ax, name in zip(axes.ravel(), names, strict=False):
        for s in strategies:
            c = table[name][s]
            color, ls = style.get(s, (None, "-"))
            ax.plot(range(len(c)), c, ls, color=color, marker="o", ms=3, label=s)
        ax.set_title(name if name != "mean" else "mean over images", fontsize=10)
        ax.set_xlabel("strokes added")
        ax.set_ylabel("foreground IoU")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=BINARY)
    ap.add_argument("--devset", type=Path, default=DEVSET)
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--strokes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60, help="training steps after each stroke")
    ap.add_argument("--init-steps", type=int, default=150, help="steps on the sparse scribbles")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--from-json", type=Path, help="only re-summarise / re-plot a saved run")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if a.from_json:
        saved = json.loads(a.from_json.read_text())
        results, meta = saved["results"], saved["meta"]
        strategies = [s for s in a.strategies if s in meta["strategies"]]
    else:
        meta = {
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "seeds": a.seeds, "strokes": a.strokes, "steps": a.steps,
            "init_steps": a.init_steps, "strategies": a.strategies,
        }  # fmt: skip
        strategies, results = a.strategies, {}
        t0 = time.perf_counter()
        for name in a.cases:
            image, scribbles, truth = load_case(name, a.devset)
            results[name] = {}
            for seed in a.seeds:
                results[name][str(seed)] = run_case(
                    name, image, scribbles, truth, seed, strategies, a.strokes, a.steps,
                    a.init_steps,
                )  # fmt: skip
            if a.json:  # keep what is done
                a.json.write_text(json.dumps({"meta": meta, "results": results}))
        meta["seconds"] = time.perf_counter() - t0
        if a.json:
            a.json.write_text(json.dumps({"meta": meta, "results": results}))
    table, text = summarise(results, strategies, meta["strokes"])
    print(
        f"# {meta['date']} {meta['machine']}; seeds {meta['seeds']}; {meta['init_steps']} steps "
        f"on the sparse scribbles, then {meta['steps']} steps after each stroke\n"
        "# foreground IoU after N added strokes (mean over seeds); gain = last - first; "
        "area = mean gain over strokes 1..N"
    )
    print(text)
    if a.png:
        try:
            plot(table, strategies, a.png,
                 f"IoU vs strokes added ({len(meta['seeds'])} seeds, {meta['steps']} steps/stroke)")  # fmt: skip
            print(f"figure: {a.png}")
        except ImportError:
            print("matplotlib is not installed: no figure", file=sys.stderr)
    return table


if __name__ == "__main__":
    main()
