"""Whole-process time of ``frontier predict`` on a 4096 x 4096 uint16 TIFF, with a breakdown.

    python benchmarks/predict_process.py                    # 3 timed runs, then one with phases
    python benchmarks/predict_process.py --repeats 5 --threads 2
    PYTHONPATH=/tmp/base/src python benchmarks/predict_process.py   # another checkout's code

The input (a uint16 TIFF of bright blobs of many sizes on a textured, noisy
background) and the model (the filter-bank network, ``features="filters"``,
trained 20 steps on a 256 x 256 crop of it) are made once and kept in ``--cache`` (default: a
folder in the system's temporary directory). Each timed run is
``frontier predict MODEL IMAGE -o MASK --threads N -q --device cpu`` as a
subprocess, from start to exit; the figure is the median. One more run, in a
process that times the engine's functions as they are called (no change to
the engine), gives the breakdown: Python start-up (with this script's own
few imports), imports (wherever they happen), each phase without the imports
inside it, and the exit after ``main`` returns. The SHA-256 of the
mask's pixels is printed so two checkouts' outputs can be compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Functions timed in the breakdown: (module, attribute path, label). Names a
#: checkout lacks are skipped, so older and newer code can be compared.
PHASES = (
    ("napari_frontier.outputs.project", "load_model", "load checkpoint"),
    ("napari_frontier.outputs.provenance", "model_checksum", "model checksum"),
    ("napari_frontier.outputs.provenance", "make_provenance", "input identity"),
    ("napari_frontier.outputs.batch", "is_lazy", "plan (TIFF header)"),
    ("napari_frontier.data.io", "read_image", "read TIFF"),
    ("napari_frontier.segmenter", "Segmenter.predict", "Segmenter.predict"),
    ("napari_frontier.segmenter", "Segmenter.predict_labels", "Segmenter.predict_labels"),
    ("napari_frontier.data.normalise", "compute_stats", "  normalisation statistics"),
    ("napari_frontier.data.normalise", "normalise", "  normalise"),
    ("napari_frontier.prediction.tiling", "predict_probabilities", "  network (tiles)"),
    ("napari_frontier.prediction.tiling", "predict_labels", "  network (tiles)"),
    ("napari_frontier.prediction.tiling", "Prediction.mask", "mask encoding"),
    ("napari_frontier.data.io", "write_image", "write TIFF"),
)


def make_inputs(cache: Path, size: int, steps: int) -> tuple[Path, Path]:
    """The test image and a model trained on a crop of it (made once)."""
    import numpy as np

    image_path, model_path = cache / f"image-{size}.tif", cache / f"model-{steps}.pt"
    rng = np.random.default_rng(0)
    if not image_path.exists():
        import tifffile

        yy, xx = np.mgrid[:size, :size].astype(np.float32)
        img = 8000 + 1500 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
        n = size * size // 4000  # about one blob per 4000 px
        cy, cx = rng.uniform(0, size, (2, n))
        radius = rng.uniform(3, 40, n)
        blobs = np.zeros((size, size), bool)
        for y, x, r in zip(cy, cx, radius, strict=True):
            y0, y1 = int(max(0, y - r)), int(min(size, y + r + 1))
            x0, x1 = int(max(0, x - r)), int(min(size, x + r + 1))
            d2 = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2
            blobs[y0:y1, x0:x1] |= d2 < r * r
        img += np.where(blobs, 9000, 0) + rng.normal(0, 1200, (size, size))
        tifffile.imwrite(image_path, np.clip(img, 0, 65535).astype(np.uint16))
        del yy, xx, img
    if not model_path.exists():
        import tifffile

        from napari_frontier.learning.config import TrainConfig
        from napari_frontier.segmenter import Segmenter

        crop = tifffile.imread(image_path)[:256, :256]
        hi = crop > np.percentile(crop, 85)
        lo = crop < np.percentile(crop, 40)
        scribbles = np.zeros(crop.shape, np.uint8)
        scribbles[::7, :][hi[::7, :]] = 1
        scribbles[:, ::9][lo[:, ::9]] = 2
        tc = TrainConfig(seed=0, device="cpu", threads=2)
        try:  # the filter-bank network, whatever the default
            seg = Segmenter(train_config=tc, features="filters")
        except TypeError:  # a checkout from before the features option
            seg = Segmenter(train_config=tc)
        seg.fit(crop, scribbles, steps=steps)
        seg.save(model_path)
    return image_path, model_path


def predict_args(model: Path, image: Path, mask: Path, threads: int) -> list[str]:
    return [
        "predict", str(model), str(image), "-o", str(mask),
        "--threads", str(threads), "-q", "--device", "cpu",
    ]  # fmt: skip


def frontier_command() -> list[str]:
    """``frontier`` as the entry point runs it, with this interpreter (PYTHONPATH applies)."""
    return [
        sys.executable,
        "-c",
        "import sys; from napari_frontier.cli import main; sys.exit(main())",
    ]


def pixel_sha256(path: Path) -> str:
    import numpy as np
    import tifffile

    data = np.ascontiguousarray(tifffile.imread(path))
    return hashlib.sha256(f"{data.dtype}{data.shape}".encode() + data.tobytes()).hexdigest()


# -- the breakdown run (a child process) ---------------------------------------


def _phases_child(out_json: str, argv: list[str]) -> None:
    """Run the CLI with timers on imports and on the functions of :data:`PHASES`."""
    import importlib._bootstrap as bootstrap

    t_start, wall_start = time.perf_counter(), time.time()
    totals: dict[str, float] = {}
    imports = {"s": 0.0, "depth": 0}
    stack: list[list[float]] = []  # [import seconds seen inside each running phase]
    originals: dict[int, object] = {}  # id(original function) -> wrapper
    plain_find = bootstrap._find_and_load

    def find_and_load(name, import_):
        if imports["depth"]:  # timed by the outermost import
            module = plain_find(name, import_)
            if name.startswith("napari_frontier"):
                install(module)
            return module
        imports["depth"] += 1
        t0 = time.perf_counter()
        try:
            module = plain_find(name, import_)
        finally:
            dt = time.perf_counter() - t0
            imports["depth"] -= 1
            imports["s"] += dt
            for frame in stack:
                frame[0] += dt
        if name.startswith("napari_frontier"):
            install(module)
        return module

    def timed(fn, label):
        def wrapper(*a, **k):
            frame = [0.0]
            stack.append(frame)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stack.pop()
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - t0 - frame[0]
                for outer in stack:  # a phase's own time excludes the phases inside it
                    outer[0] += time.perf_counter() - t0 - frame[0]

        return wrapper

    def install(module):
        for mod_name, attr, label in PHASES:
            if module.__name__ != mod_name:
                continue
            owner, *rest = attr.split(".")
            target = getattr(module, owner, None)
            if rest and target is not None:
                fn = target.__dict__.get(rest[0])
                if fn is not None and id(fn) not in originals:
                    originals[id(fn)] = None
                    setattr(target, rest[0], timed(fn, label))
            elif not rest and target is not None and id(target) not in originals:
                originals[id(target)] = timed(target, label)
        # every napari_frontier module's references to a timed function
        for mod in list(sys.modules.values()):
            if getattr(mod, "__name__", "").startswith("napari_frontier"):
                for k, v in list(vars(mod).items()):
                    w = originals.get(id(v)) if callable(v) else None
                    if w is not None and v is not w:
                        setattr(mod, k, w)

    bootstrap._find_and_load = find_and_load
    from napari_frontier.cli import main

    sys.argv = ["frontier", *argv]
    try:
        rc = main()  # as the ``frontier`` entry point calls it
    finally:
        t_end = time.perf_counter()
        Path(out_json).write_text(
            json.dumps(
                {
                    "rc": rc,
                    "phases": totals,
                    "imports": imports["s"],
                    "in_child": t_end - t_start,
                    "child_start": wall_start,
                    "child_end": wall_start + t_end - t_start,
                }
            )
        )
    sys.exit(rc)


def breakdown(argv: list[str], env: dict) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "phases.json"
        cmd = [sys.executable, __file__, "_phases", str(out), "--", *argv]
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env)
        t1 = time.time()
        res = json.loads(out.read_text())
    res["wall"] = t1 - t0
    res["start-up"] = res["child_start"] - t0
    res["exit"] = t1 - res["child_end"]
    return res


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_phases":
        _phases_child(sys.argv[2], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="training steps of the model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "frontier-predict-process"
    )
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument(
        "--mask", type=Path, default=None, help="where the mask goes (default: in --cache)"
    )
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    image, model = make_inputs(args.cache, args.size, args.steps)
    mask = args.mask or args.cache / "mask.tif"
    mask.unlink(missing_ok=True)  # the hash printed is of this run's mask
    argv = predict_args(model, image, mask, args.threads)
    env = dict(os.environ)
    import napari_frontier

    mpx = args.size * args.size / 1e6
    print(f"code: {Path(napari_frontier.__file__).parent}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    walls, cpus = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), _children_cpu()
        subprocess.run([*frontier_command(), *argv], check=True, env=env)
        walls.append(time.perf_counter() - t0)
        cpus.append(_children_cpu() - c0)
    if walls:
        report(walls, cpus, mpx, args)
    if not args.no_breakdown:
        res = breakdown(argv, env)
        print(f"breakdown (one run, {res['wall']:.2f} s wall; times without the imports inside):")
        print(f"  {'python start-up':<30} {res['start-up']:6.2f} s")
        print(f"  {'imports (all)':<30} {res['imports']:6.2f} s")
        accounted = res["imports"]
        for label, s in res["phases"].items():
            print(f"  {label:<30} {s:6.2f} s")
            accounted += s
        print(f"  {'rest':<30} {res['in_child'] - accounted:6.2f} s")
        print(f"  {'exit':<30} {res['exit']:6.2f} s")
    if mask.exists():
        print(f"mask {mask.name} pixels sha256 {pixel_sha256(mask)[:16]}")
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _children_rss_mib() -> float:
    """Peak resident memory of the largest finished child process (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def report(walls, cpus, mpx, args) -> None:
    med = statistics.median(walls)
    print(
        f"frontier predict {args.size}x{args.size} uint16 TIFF, {args.threads} threads: "
        f"median {med:.2f} s of {', '.join(f'{w:.2f}' for w in walls)} -> {mpx / med:.2f} Mpx/s; "
        f"CPU time median {statistics.median(cpus):.2f} s; peak RSS {_children_rss_mib():.0f} MiB"
    )


if __name__ == "__main__":
    main()
