"""Training throughput and inference speed of the engine (CPU or GPU).

Prints the median of several runs, with the ratio against a 1-thread
baseline measured in the same process.

    python benchmarks/engine.py --threads 1 2 --repeats 3
    python benchmarks/engine.py --threads 2 --model '{"width": 24}'
        # an architecture option against the defaults, interleaved in one process
    python benchmarks/engine.py --threads 1 --train '{"smoothness": 1.0}'
        # the same for a training option
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from napari_frontier.data.normalise import prepare
from napari_frontier.data.samples import load_sample
from napari_frontier.learning.config import TrainConfig
from napari_frontier.prediction.tiling import predict_probabilities
from napari_frontier.segmenter import Segmenter


def steps_per_second(
    threads: int,
    seconds: float,
    device: str,
    model: dict | None = None,
    train: dict | None = None,
) -> float:
    torch.set_num_threads(threads)
    s = load_sample("nuclei")
    seg = Segmenter(
        train_config=TrainConfig(seed=0, threads=threads, device=device, **(train or {})),
        model_config=model,
    )
    seg.fit(s["image"], s["scribbles"], steps=3)  # warm-up
    last = seg.fit(s["image"], s["scribbles"], seconds=seconds)
    return last.steps_per_second


def inference_mp_per_s(
    threads: int, size: int, device: str, tile: int, model: dict | None = None
) -> float:
    """Megapixels/s of probabilities for a ``size`` x ``size`` image (model already warm)."""
    torch.set_num_threads(threads)
    s = load_sample("nuclei")
    seg = Segmenter(train_config=TrainConfig(seed=0, device=device), model_config=model)
    seg.fit(s["image"], s["scribbles"], steps=2)
    image = np.tile(s["image"], (size // 512 + 1, size // 512 + 1))[:size, :size]
    x = prepare(image).x
    predict_probabilities(seg.model, x[:, :256, :256], seg.device, tile=tile)
    t0 = time.perf_counter()
    predict_probabilities(seg.model, x, seg.device, tile=tile)
    if seg.device.type == "cuda":
        torch.cuda.synchronize()
    return size * size / 1e6 / (time.perf_counter() - t0)


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The machine's measured float32 matrix-product rate (the CPU's practical peak)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(ts) / 1e9


def step_gflop() -> float:
    """Floating-point work of one default training step (forward + backward).

    Counted by torch's FlopCounterMode: convolutions and matrix products only
    (element-wise work, the filter bank's arithmetic, the optimiser, are extra).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.learning.network import ModelConfig, build_model

    tc = TrainConfig()
    model = build_model(ModelConfig())
    x = torch.randn(tc.batch_size, 2, tc.patch_size, tc.patch_size)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 1e9


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--size", type=int, default=1024, help="side of the inference test image")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--model",
        type=json.loads,
        default=None,
        help="ModelConfig overrides (JSON): measured against the defaults, runs interleaved",
    )
    p.add_argument(
        "--train",
        type=json.loads,
        default=None,
        help="TrainConfig overrides (JSON): training speed against the defaults, interleaved",
    )
    args = p.parse_args()
    print(
        f"# {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}, load {os.getloadavg()[0]:.2f}"
    )
    work = step_gflop()
    print(f"one training step: {work:.2f} GFLOP (forward + backward, convolutions and products)")
    if args.model or args.train:
        compare(args)
        return
    base_sps = base_inf = None
    for t in args.threads:
        sps = statistics.median(
            steps_per_second(t, args.seconds, args.device) for _ in range(args.repeats)
        )
        inf = statistics.median(
            inference_mp_per_s(t, args.size, args.device, args.tile) for _ in range(args.repeats)
        )
        base_sps = base_sps or sps
        base_inf = base_inf or inf
        peak = matmul_gflops(t)
        used = sps * work
        print(
            f"threads={t}: training {sps:.1f} steps/s (x{sps / base_sps:.2f}) = {used:.1f} GFLOP/s "
            f"of convolutions = {100 * used / peak:.0f}% of the measured matmul peak "
            f"({peak:.0f} GFLOP/s); inference {inf:.2f} MP/s = {1 / inf:.2f} s/MP "
            f"(x{inf / base_inf:.2f}) on {args.size}x{args.size}"
        )


def compare(args) -> None:
    """Defaults against ``args.model``, alternating run by run so load drifts hit both."""
    for t in args.threads:
        runs = {"defaults": ([], []), "option": ([], [])}
        for _ in range(args.repeats):
            for name, model, train in (
                ("defaults", None, None),
                ("option", args.model, args.train),
            ):
                runs[name][0].append(steps_per_second(t, args.seconds, args.device, model, train))
                runs[name][1].append(
                    inference_mp_per_s(t, args.size, args.device, args.tile, model)
                )
        sps0, inf0 = (statistics.median(v) for v in runs["defaults"])
        sps1, inf1 = (statistics.median(v) for v in runs["option"])
        print(
            f"threads={t}: defaults {sps0:.1f} steps/s, inference {inf0:.2f} MP/s; "
            f"{json.dumps(args.model or {})} {json.dumps(args.train or {})} {sps1:.1f} steps/s (x{sps1 / sps0:.2f}), "
            f"inference {inf1:.2f} MP/s (x{inf1 / inf0:.2f}) on {args.size}x{args.size}; "
            f"median of {args.repeats}"
        )


if __name__ == "__main__":
    main()
