"""Quality per second on the development set, the samples and synthetic composites.

For every image and seed, side by side in one process:

* ``rf``: scikit-image's random-forest pixel classifier on the same scribbles
  (``multiscale_basic_features`` + 50 trees of depth 10; features + fit + predict);
* ``pfrf``: the pretrained-feature forest: the same features and forest, joined
  by the frozen ImageNet backbone's activations (``napari_frontier.learning.backbone``,
  strides ``--pf-strides`` upsampled bilinearly to full resolution; with
  ``--pf-scale 2`` the backbone sees the image downsampled by 2);
* ``frontier``: napari-frontier with every default, scored after each budget
  (training time only: the clock stops while the checkpoint is predicted);
* ``reference``: a plain U-Net from scratch (``benchmarks/reference.py``), same budgets;
* ``ceiling``: napari-frontier trained on the complete ground truth.

Then per image: the median over seeds, the seed spread (max - min) and the
mean and the worst case over images, for each fixed half of the cases
(``HALVES``: choose a setting on A, check it on B; ``--half``) and for all.

    python benchmarks/quality.py --budgets 5 10 60 --seeds 0 1 2 --jobs 2 --json out.json
    python benchmarks/quality.py --budgets 5 10 --jobs 1 --threads 2   # one user on 2 cores
    python benchmarks/quality.py --steps --budgets 50 150 400 --methods frontier   # load-independent
    python benchmarks/quality.py --methods rf pfrf --seeds 0 --synthetic --half A   # forests only

Data: ``sample_data/`` (nuclei, textures), ``../shared/devset`` (``--devset``,
dense scribbles; ``--sparse`` adds the sparse scribbles), synthetic
composites (``--synthetic``). IoU: foreground ("is") IoU for two classes,
mean IoU over classes for K > 2; pixels outside the annotated region are not
scored.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DEVSET = HERE.parent.parent / "shared" / "devset"
#: Two fixed halves of the cases, each with photos, medical, fluorescence or
#: histology, and synthetic images: settings are chosen on A and checked on B.
HALVES = {
    "A": ("food_4class", "ct_lung_tumour", "hela_nuclei", "he_nuclei", "textures",
          "gravel_on_grass", "hue_blobs"),
    "B": ("food_rice", "mri_brain_tumour", "huh7_cells", "nuclei", "brick_on_gravel",
          "noisy_blobs"),
}  # fmt: skip
#: Methods scored once per seed (no budgets): IoU and seconds.
FORESTS = ("rf", "pfrf")


def half_of(name: str) -> str:
    """``A``, ``B`` or ``other``; a variant (``case:sparse``) goes with its case."""
    base = name.split(":")[0]
    return next((h for h, names in HALVES.items() if base in names), "other")


# -- data -------------------------------------------------------------------
def _classes_from_binary(truth: np.ndarray) -> np.ndarray:
    """Binary truth (1 object, 0 background, 255 not scored) -> 1 is / 2 is not / 0 void."""
    out = np.where(truth == 1, 1, 2).astype(np.uint8)
    out[truth == 255] = 0
    return out


def load_cases(devset: Path | None, sparse: bool, synthetic: bool, samples: bool) -> dict:
    """``name -> (image, scribbles, truth classes 0..K, K)``."""
    from napari_frontier.data.io import read_image
    from napari_frontier.data.samples import load_sample, sample_names

    cases = {}
    if samples:
        for name in sample_names():
            s = load_sample(name)
            cases[name] = (s["image"], s["scribbles"], _classes_from_binary(s["truth"] > 0), 2)
    if devset is not None and devset.is_dir():
        index = json.loads((devset / "index.json").read_text())
        for entry in index:
            d = devset / entry["case"]
            image = read_image(d / "image.tif")
            truth = read_image(d / "truth.tif")
            if entry["task"] == "multiclass":
                k = int(truth[truth != 255].max())
                truth = np.where(truth == 255, 0, truth).astype(np.uint8)
            else:
                k, truth = 2, _classes_from_binary(truth)
            variants = [("", "scribbles.tif")] + (
                [(":sparse", "scribbles_sparse.tif")] if sparse else []
            )
            for suffix, fname in variants:
                cases[entry["case"] + suffix] = (
                    image,
                    read_image(d / fname).astype(np.uint8),
                    truth,
                    k,
                )
    if synthetic:
        for name, (image, scribbles, truth) in synthetic_cases().items():
            cases[name] = (image, scribbles, _classes_from_binary(truth.astype(np.uint8)), 2)
    return cases


def synthetic_cases() -> dict:
    """Composites: one texture inside random blobs, another outside; a noisy-edge case; a colour case."""
    from skimage import data as skdata
    from skimage.data import binary_blobs

    from napari_frontier.data.simulate import simulate_scribbles

    out = {}
    gravel, grass, brick = skdata.gravel(), skdata.grass(), skdata.brick()
    for name, (a, b), seed in [
        ("gravel_on_grass", (gravel, grass), 11),
        ("brick_on_gravel", (brick, gravel), 12),
    ]:
        n = min(a.shape[0], b.shape[0], 512)
        truth = binary_blobs(length=n, blob_size_fraction=0.3, volume_fraction=0.45, rng=seed)
        image = np.where(truth, a[:n, :n], b[:n, :n]).astype(np.uint8)
        scr = simulate_scribbles(
            truth, rng=seed, object_fraction=0.5, max_objects=4, margin=8, width=5
        )
        out[name] = (image, scr, truth)
    # Faint blobs in strong noise with a smooth illumination gradient.
    r = np.random.default_rng(7)
    truth = binary_blobs(length=384, blob_size_fraction=0.08, volume_fraction=0.25, rng=7)
    _yy, xx = np.mgrid[:384, :384] / 384.0
    image = 0.6 * truth + 0.8 * xx + r.normal(0, 0.35, truth.shape)
    out["noisy_blobs"] = (
        image.astype(np.float32),
        simulate_scribbles(truth, rng=7, object_fraction=0.4, max_objects=12, margin=3, width=3),
        truth,
    )
    out["hue_blobs"] = hue_blobs()
    return out


def hue_blobs(n: int = 384, seed: int = 21):
    """Colour composite: two classes told apart by hue alone.

    Both classes share one grey texture (smoothed noise) and one brightness;
    inside the blobs the colour leans red, outside it leans blue-green, by
    less than the texture varies. A smooth illumination falls across the
    image (the same gain on every channel), plus pixel noise per channel. No
    brightness rule separates the classes; a model that keeps colours does.
    """
    from scipy.ndimage import gaussian_filter
    from skimage.data import binary_blobs

    from napari_frontier.data.simulate import simulate_scribbles

    r = np.random.default_rng(seed)
    truth = binary_blobs(length=n, blob_size_fraction=0.1, volume_fraction=0.35, rng=seed)
    texture = gaussian_filter(r.normal(0, 1, (n, n)), 2.0)
    texture = 0.5 + 0.15 * texture / texture.std()
    chroma = np.where(truth, 1.0, -1.0)[..., None] * np.array([0.06, -0.03, -0.03])
    yy, xx = np.mgrid[:n, :n] / n
    light = (0.65 + 0.5 * xx + 0.15 * np.sin(3 * yy))[..., None]
    image = light * (texture[..., None] + chroma) + r.normal(0, 0.03, (n, n, 3))
    image = np.clip(image * 255, 0, 255).astype(np.uint8)
    scr = simulate_scribbles(
        truth,
        rng=seed,
        object_fraction=0.4,
        max_objects=8,
        background_strokes=12,
        margin=4,
        width=3,
    )
    return image, scr, truth


def iou_of(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    from napari_frontier.learning.metrics import iou_per_class

    ious = iou_per_class(pred, truth, k)
    return float(ious[0]) if k == 2 else float(np.nanmean(ious))


# -- methods ----------------------------------------------------------------
def pretrained_features(image, strides=(2, 4, 8, 16), scale: int = 1) -> np.ndarray:
    """Backbone activations of ``strides`` at full resolution, ``(H, W, F)`` float32.

    The image goes through the engine's normalisation (``prepare``) and
    ``backbone_input``; with ``scale`` 2 the backbone sees it area-downsampled
    by 2 (effective strides 4..32) and the features are upsampled back.
    """
    import torch
    import torch.nn.functional as F

    from napari_frontier.data.normalise import prepare
    from napari_frontier.learning.backbone import backbone_features, backbone_input, load_backbone

    net = load_backbone()
    x = backbone_input(torch.from_numpy(prepare(image).x)[None])
    h, w = x.shape[-2:]
    if scale > 1:
        x = F.avg_pool2d(x, scale, scale, ceil_mode=True)
    f = backbone_features(x, net, out_stride=1, strides=strides)
    if scale > 1:
        # half-resolution pixel u covers full-resolution pixels 2u, 2u + 1
        f = F.interpolate(f, scale_factor=scale, mode="bilinear", align_corners=False)
        f = f[..., :h, :w]
    return f[0].permute(1, 2, 0).contiguous().numpy()


def run_rf(image, scribbles, truth, k, seed, pretrained=None) -> dict:
    """The forest on scikit-image's features; ``pretrained``: ``{"strides", "scale"}``
    adds the backbone's activations (the ``pfrf`` method)."""
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from skimage.future import fit_segmenter, predict_segmenter
    from sklearn.ensemble import RandomForestClassifier

    if pretrained is not None:
        from napari_frontier.learning.backbone import load_backbone

        load_backbone()  # once per process, outside the clock
    t0 = time.perf_counter()
    channel_axis = -1 if image.ndim == 3 else None
    img = np.nan_to_num(np.asarray(image, dtype=np.float32))
    feats = partial(
        multiscale_basic_features, intensity=True, edges=True, texture=True,
        sigma_min=1, sigma_max=16, channel_axis=channel_axis,
    )(img)  # fmt: skip
    out = {}
    if pretrained is not None:
        t1 = time.perf_counter()
        pf = pretrained_features(image, **pretrained)
        out["backbone_s"] = time.perf_counter() - t1
        feats = np.concatenate([feats.astype(np.float32, copy=False), pf], axis=-1)
    clf = RandomForestClassifier(n_estimators=50, n_jobs=-1, max_depth=10, random_state=seed)
    clf = fit_segmenter(scribbles, feats, clf)
    pred = predict_segmenter(feats, clf)
    out.update(iou=iou_of(pred, truth, k), seconds=time.perf_counter() - t0)
    return out


def run_frontier(
    image, scribbles, truth, k, seed, budgets, steps_mode, train=None, model=None, threads=1
):
    """IoU after each budget (seconds of training, or steps) in one continuous run."""
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    train = dict(train or {})
    if steps_mode:
        # An update after every step, so each budget is scored at exactly
        # that step (updates cost nothing: BatchNorm statistics are only
        # recomputed when something predicts). With updates every 0.25 s
        # the scored step moved with the load by up to ~10 steps, and on
        # images whose IoU swings from step to step that alone moved
        # figures by up to 0.4.
        train.setdefault("update_interval", 0.0)
    tc = TrainConfig(seed=seed, threads=threads, **train)
    seg = Segmenter(n_classes=k, train_config=tc, model_config=model)
    todo = sorted(budgets)
    out, paused = {}, 0.0
    gen = seg.training(image, scribbles)
    try:
        for upd in gen:
            at = upd.step if steps_mode else upd.elapsed - paused
            if not (todo and at >= todo[0]):
                continue
            # one prediction scores every budget this update has reached
            t0 = time.perf_counter()
            iou = iou_of(seg.predict(image).labels, truth, k)
            out["predict_s"] = time.perf_counter() - t0
            paused += out["predict_s"]
            while todo and at >= todo[0]:
                out[todo.pop(0)] = {"iou": iou, "step": upd.step, "seconds": upd.elapsed - paused}
            # updates at which the prediction guard kept the last weights that passed
            out["held_back"] = seg._trainer.held_back
            if not todo:
                break
    finally:
        gen.close()
    return out


def run_reference(image, scribbles, truth, k, seed, budgets, steps_mode):
    from reference import ReferenceTrainer

    r = ReferenceTrainer(image, scribbles, k, seed)
    out, done = {}, 0.0
    for b in sorted(budgets):
        if steps_mode:
            r.train(steps=int(b - done))
        else:
            r.train(seconds=b - done)
        done = b
        out[b] = {"iou": iou_of(r.predict(), truth, k), "step": r.steps, "seconds": r.elapsed}
    return out


def task(args):
    name, method, seed, budgets, steps_mode, train, model, case, threads, pretrained = args
    import torch

    torch.set_num_threads(threads)
    image, scribbles, truth, k = case
    if method == "rf":
        return name, method, seed, run_rf(image, scribbles, truth, k, seed)
    if method == "pfrf":
        return name, method, seed, run_rf(image, scribbles, truth, k, seed, pretrained)
    if method == "frontier":
        return (
            name,
            method,
            seed,
            run_frontier(
                image, scribbles, truth, k, seed, budgets, steps_mode, train, model, threads
            ),
        )
    if method == "reference":
        return (
            name,
            method,
            seed,
            run_reference(image, scribbles, truth, k, seed, budgets, steps_mode),
        )
    if method == "ceiling":
        full = truth.copy()  # every scored pixel painted; not-scored pixels stay void
        return (
            name,
            method,
            seed,
            run_frontier(image, full, truth, k, seed, budgets[-1:], steps_mode, train, model),
        )
    raise ValueError(method)


# -- report -----------------------------------------------------------------
def _columns(methods, budgets, unit: str) -> list[tuple[str, str, int]]:
    """``(key, header, width)`` of the summary's columns."""
    cols = [("rf", "rf", 6)]
    if "rf" in methods:
        cols.append(("rf_s", "rf s", 6))
    if "pfrf" in methods:
        cols += [("pfrf", "pfrf", 6), ("pfrf_s", "pfrf s", 6)]
    for m in ("frontier", "reference"):
        if m in methods:
            cols += [(f"{m}@{b:g}", f"{m[:3]}@{b:g}{unit}", 11) for b in budgets]
    if "frontier" in methods:
        cols.append(("spread", "spread", 7))
    if "ceiling" in methods:
        cols.append(("ceiling", "ceiling", 8))
    return cols


def _image_values(r: dict, methods, budgets) -> dict[str, float]:
    """One image's figures: seed medians, the forests' seconds, the frontier's seed spread."""
    med = statistics.median
    nan = float("nan")
    v: dict[str, float] = {}
    for m in FORESTS:
        runs = r.get(m) or []
        v[m] = med(x["iou"] for x in runs) if runs else nan
        v[f"{m}_s"] = med(x["seconds"] for x in runs) if runs else nan
    for m in ("frontier", "reference"):
        for b in budgets:
            vals = [x[b]["iou"] for x in r.get(m, []) if b in x]
            v[f"{m}@{b:g}"] = med(vals) if vals else nan
    last = [x[budgets[-1]]["iou"] for x in r.get("frontier", []) if budgets[-1] in x]
    v["spread"] = max(last) - min(last) if last else nan
    c = [x[budgets[-1]]["iou"] for x in r.get("ceiling", []) if budgets[-1] in x]
    v["ceiling"] = med(c) if c else nan
    return v


def _aggregate(rows: list[dict], key: str, label: str) -> float:
    """Mean or worst over images; worst is the largest for seconds and the seed spread."""
    vals = np.array([r[key] for r in rows], dtype=float)
    if np.isnan(vals).all():
        return float("nan")
    if label == "mean":
        return float(np.nanmean(vals))
    high_is_worse = key == "spread" or key.endswith("_s")
    return float(np.nanmax(vals) if high_is_worse else np.nanmin(vals))


def summary(results: dict, budgets, methods) -> dict:
    """``{group: {"images": {name: figures}, "mean": figures, "worst": figures}}``
    per half (``HALVES``, plus ``other`` if any case is in neither) and ``all``."""
    per_image = {n: _image_values(r, methods, budgets) for n, r in results.items()}
    groups = {h: [n for n in per_image if half_of(n) == h] for h in (*HALVES, "other")}
    groups = {h: names for h, names in groups.items() if names}
    if len(groups) > 1:
        groups["all"] = list(per_image)
    out = {}
    for h, names in groups.items():
        rows = [per_image[n] for n in names]
        keys = rows[0].keys()
        out[h] = {
            "images": {n: per_image[n] for n in names},
            **{lab: {k: _aggregate(rows, k, lab) for k in keys} for lab in ("mean", "worst")},
        }
    return out


def summarise(results: dict, budgets, methods, unit: str) -> list[str]:
    cols = _columns(methods, budgets, unit)
    head = f"{'image':24s}" + "".join(f" {h:>{w}s}" for _, h, w in cols)

    def fmt(label: str, v: dict) -> str:
        return f"{label:24s}" + "".join(f" {v[k]:{w}.3f}" for k, _, w in cols)

    lines = []
    for h, g in summary(results, budgets, methods).items():
        lines.append(f"-- {'all images' if h == 'all' else 'half ' + h}")
        lines.append(head)
        if h != "all":
            lines += [fmt(n, v) for n, v in g["images"].items()]
        lines += [fmt("mean", g["mean"]), fmt("worst", g["worst"])]
    lines.append(
        "(worst: min over images of the seed median; seconds and spread columns: max over images)"
    )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 60])
    p.add_argument("--steps", action="store_true", help="budgets are training steps, not seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["rf", "frontier", "reference"],
                   choices=["rf", "pfrf", "frontier", "reference", "ceiling"])  # fmt: skip
    p.add_argument("--pf-strides", type=int, nargs="+", default=[2, 4, 8, 16],
                   help="pfrf: the backbone strides used")  # fmt: skip
    p.add_argument("--pf-scale", type=int, default=1, choices=[1, 2],
                   help="pfrf: the backbone sees the image downsampled by this")  # fmt: skip
    p.add_argument("--half", choices=sorted(HALVES), default=None,
                   help="only this half of the cases (default: both)")  # fmt: skip
    p.add_argument("--reference-seeds", type=int, nargs="+", default=None)
    p.add_argument("--devset", type=Path, default=DEVSET)
    p.add_argument("--no-devset", action="store_true")
    p.add_argument("--no-samples", action="store_true")
    p.add_argument("--sparse", action="store_true", help="also the sparse devset scribbles")
    p.add_argument("--synthetic", action="store_true", help="also the synthetic composites")
    p.add_argument("--only", nargs="+", default=None, help="only these images")
    p.add_argument("--train", type=json.loads, default=None, help="TrainConfig overrides (JSON)")
    p.add_argument("--model", type=json.loads, default=None, help="ModelConfig overrides (JSON)")
    p.add_argument(
        "--features",
        default=None,
        choices=["filters", "pretrained", "both"],
        help="what the network reads (sets the --model overrides it stands for)",
    )
    p.add_argument("--jobs", type=int, default=1, help="processes")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (the networks)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.features:
        from napari_frontier.learning.network import features_settings

        args.model = {**(args.model or {}), **features_settings(args.features)}

    cases = load_cases(
        None if args.no_devset else args.devset, args.sparse, args.synthetic, not args.no_samples
    )
    if args.only:
        cases = {n: c for n, c in cases.items() if n in args.only}
    if args.half:
        cases = {n: c for n, c in cases.items() if half_of(n) == args.half}
    pretrained = {"strides": tuple(args.pf_strides), "scale": args.pf_scale}
    budgets = sorted(args.budgets)
    unit = "" if args.steps else "s"
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}, jobs {args.jobs} x {args.threads} torch thread(s), "
        f"seeds {args.seeds}, "
        f"budgets {budgets} {'steps' if args.steps else 's'}, train {args.train}, model {args.model}"
        + (f", pfrf {pretrained}" if "pfrf" in args.methods else ""),
        flush=True,
    )
    tasks = []
    for name, case in cases.items():
        for m in args.methods:
            seeds = args.seeds[:1] if m == "ceiling" else args.seeds
            if m == "reference" and args.reference_seeds:
                seeds = args.reference_seeds
            for s in seeds:
                tasks.append(
                    (name, m, s, budgets, args.steps, args.train, args.model, case, args.threads,
                     pretrained)
                )  # fmt: skip
    # longest first keeps the pool busy
    tasks.sort(key=lambda t: (t[1] in FORESTS, -t[7][0].size))
    results: dict = {n: {} for n in cases}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, m, s, r in pool.map(task, tasks):
            results[name].setdefault(m, []).append(r)
            if m == "pfrf":
                print(f"  {name} {m} seed {s}: {r['iou']:.3f} in {r['seconds']:.2f} s "
                      f"(backbone {r['backbone_s']:.2f} s)", flush=True)  # fmt: skip
            elif m != "rf":
                desc = " ".join(f"{b:g}:{r[b]['iou']:.3f}" for b in budgets if b in r)
                print(f"  {name} {m} seed {s}: {desc}", flush=True)
    for line in summarise(results, budgets, args.methods, unit):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results,
                                         "summary": summary(results, budgets, args.methods)},
                                        indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
