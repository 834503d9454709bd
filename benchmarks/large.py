"""Predict a large, lazily generated image into Zarr: one process, then a local dask cluster.

Prints wall time, throughput (Mpx/s) and peak RSS: of the predicting process,
of each dask worker process and of the whole process tree (sampled with
psutil every 0.1 s, and the process's own ``ru_maxrss``), and checks that
the cluster wrote exactly what the single process wrote.

    python benchmarks/large.py                      # 20000 x 20000, then 2 workers
    python benchmarks/large.py --size 4096 --workers 2 --steps 20

The input is written chunk by chunk (never held whole) with a pattern of
bright disks on a noisy background; the model (default architecture) is
trained for ``--steps`` on a 256 x 256 crop of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def pattern(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Disks of varying radius every 64 px, on a textured background (uint8)."""
    y, x = ys[:, None], xs[None, :]
    cell = (y // 64) * 7919 + (x // 64) * 104729
    radius = 12 + cell % 13
    inside = (y % 64 - 32) ** 2 + (x % 64 - 32) ** 2 < radius**2
    noise = (y * 7 + x * 13 + (y * x) % 17) % 41
    return (np.where(inside, 150, 50) + noise).astype(np.uint8)


def make_input(path: Path, size: int, chunk: int) -> None:
    import zarr

    z = zarr.create_array(store=str(path), shape=(size, size), chunks=(chunk, chunk), dtype="uint8")
    xs = np.arange(size)
    for y0 in range(0, size, chunk):  # one row of chunks at a time
        ys = np.arange(y0, min(size, y0 + chunk))
        z[y0 : y0 + len(ys)] = pattern(ys, xs)


def train(path: Path, steps: int, device: str) -> None:
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    ys = xs = np.arange(256)
    image = pattern(ys, xs)
    yy, xx = np.mgrid[:256, :256]
    d2 = (yy % 64 - 32) ** 2 + (xx % 64 - 32) ** 2
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[d2 < 6**2] = 1
    scribbles[(yy % 64 < 2) | (xx % 64 < 2)] = 2
    seg = Segmenter(train_config=TrainConfig(seed=0, device=device))
    seg.fit(image, scribbles, steps=steps)
    seg.save(path)


def predict_phase(args) -> None:
    """Runs in a fresh process: the figures are those of prediction alone."""
    import resource

    import torch

    from napari_frontier.prediction.blocks import open_lazy, predict_to_zarr
    from napari_frontier.segmenter import Segmenter

    t0 = time.perf_counter()
    seg = Segmenter.load(args.model, device=args.device)
    image = open_lazy(args.input).array
    client = cluster = None
    threads = None
    if args.workers:
        from distributed import Client, LocalCluster

        threads = max(1, (os.cpu_count() or 1) // args.workers)
        cluster = LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        client = Client(cluster)
    t1 = time.perf_counter()
    stats = seg.stats(image)
    t2 = time.perf_counter()
    predict_to_zarr(
        seg,
        image,
        mask=args.out,
        block=args.block,
        stats=stats,
        scheduler=client,
        worker_threads=threads,
    )
    t3 = time.perf_counter()
    workers = {}
    if client is not None:
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        client.close()
        cluster.close()
    print(
        json.dumps(
            {
                "setup_s": t1 - t0,
                "stats_s": t2 - t1,
                "predict_s": t3 - t2,
                "torch_threads": threads or torch.get_num_threads(),
                "self_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "workers_maxrss_mib": sorted(v / 1024 for v in workers.values()),
            }
        )
    )


def run_measured(cmd: list[str]) -> tuple[dict, float, float, float]:
    """Run ``cmd``; return its JSON, wall time, peak RSS of the tree and of its main process."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_tree = peak_main = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_tree, peak_main
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                main = p.memory_info().rss
                kids = sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                break
            peak_main = max(peak_main, main)
            peak_tree = max(peak_tree, main + kids)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode:
        sys.exit(f"prediction failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), wall, peak_tree / 2**20, peak_main / 2**20


def same_zarr(a: Path, b: Path) -> bool:
    import zarr

    za, zb = zarr.open_array(str(a), mode="r"), zarr.open_array(str(b), mode="r")
    rows = za.chunks[0]
    return za.shape == zb.shape and all(
        np.array_equal(za[y : y + rows], zb[y : y + rows]) for y in range(0, za.shape[0], rows)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=20000, help="image side (default 20000)")
    p.add_argument("--chunk", type=int, default=1024, help="input Zarr chunk side")
    p.add_argument("--block", type=int, default=2048, help="prediction block side")
    p.add_argument("--workers", type=int, default=2, help="cluster workers (0: skip the cluster)")
    p.add_argument("--steps", type=int, default=30, help="training steps of the model")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--input", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase == "predict":
        predict_phase(args)
        return
    import torch

    work = Path(args.dir or tempfile.mkdtemp(prefix="frontier-large-"))
    work.mkdir(parents=True, exist_ok=True)
    mpx = args.size**2 / 1e6
    print(
        f"image {args.size} x {args.size} uint8 ({mpx:.0f} Mpx), chunks {args.chunk}, "
        f"blocks {args.block}; {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"device {args.device}; "
        f"load average {os.getloadavg()[0]:.2f} at the start; folder {work}"
    )
    t = time.perf_counter()
    make_input(work / "in.zarr", args.size, args.chunk)
    print(f"generated the input chunk by chunk in {time.perf_counter() - t:.1f} s")
    train(work / "model.pt", args.steps, args.device)
    runs = [("one process", 0)] + (
        [(f"local cluster, {args.workers} workers", args.workers)] if args.workers else []
    )
    outs = []
    for name, workers in runs:
        out = work / f"mask-{workers}.zarr"
        cmd = [sys.executable, __file__, "--phase", "predict", "--model", str(work / "model.pt"),
               "--input", str(work / "in.zarr"), "--out", str(out), "--block", str(args.block),
               "--workers", str(workers), "--device", args.device]  # fmt: skip
        info, wall, tree, main_rss = run_measured(cmd)
        outs.append(out)
        print(
            f"{name}: wall {wall:.1f} s (setup {info['setup_s']:.1f}, statistics "
            f"{info['stats_s']:.1f}, prediction {info['predict_s']:.1f}); "
            f"{mpx / info['predict_s']:.2f} Mpx/s predicting, {mpx / wall:.2f} Mpx/s overall; "
            f"peak RSS: process {info['self_maxrss_mib']:.0f} MiB (sampled {main_rss:.0f}), "
            f"workers {[round(v) for v in info['workers_maxrss_mib']]} MiB, "
            f"whole tree {tree:.0f} MiB; torch threads {info['torch_threads']}; "
            f"load average now {os.getloadavg()[0]:.2f}"
        )
    if len(outs) == 2:
        print(f"cluster output identical to the single process: {same_zarr(*outs)}")


if __name__ == "__main__":
    main()
