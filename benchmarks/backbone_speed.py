"""Speed of the frozen backbone (``napari_frontier.learning.backbone``) on CPU, and its reach.

Speed: megapixels of input per second of ``Backbone.forward`` for square
images, per torch thread count, in fp32, fp32 channels_last and bf16 autocast,
at full scale and on the image downsampled by 2 (features at effective strides
4..32; the figure counts the original image's pixels). Median of ``--runs``
runs after one warm-up, by the wall clock and per CPU-second of this process
(on a loaded machine the latter is near what an idle core would give).

Reach (``--reach``): stride-4 features (``backbone_features``) of a 512 x 512
tile cut with a halo of context, against the same region of the whole image's
features; the largest difference relative to each channel's standard
deviation over the image, per halo.

    python benchmarks/backbone_speed.py --sizes 1024 2048 --threads 1 2 --runs 5
    python benchmarks/backbone_speed.py --reach
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_frontier.learning.backbone import backbone_features, load_backbone


def _forward(net, x, mode: str):
    if mode == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x)
    return net(x)


def speed(sizes, threads, runs: int, modes, scales, bf16_sizes, bf16_runs: int) -> list[dict]:
    net = load_backbone()
    rows = []
    for n in sizes:
        x0 = torch.randn(1, 3, n, n).clamp(-1, 1)
        for scale in scales:
            x = F.interpolate(x0, scale_factor=0.5, mode="area") if scale == 2 else x0
            for t in threads:
                torch.set_num_threads(t)
                for mode in modes:
                    if mode == "bf16" and n not in bf16_sizes:
                        continue
                    xi = x.contiguous(memory_format=torch.channels_last) if mode == "cl" else x
                    neti = net.to(memory_format=torch.channels_last) if mode == "cl" else net
                    k = bf16_runs if mode == "bf16" else runs
                    if mode != "bf16":
                        _forward(neti, xi, mode)  # warm-up (bf16 is too slow to repeat)
                    wall, cpu = [], []
                    for _ in range(k):
                        t0, c0 = time.perf_counter(), time.process_time()
                        _forward(neti, xi, mode)
                        wall.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                    net.to(memory_format=torch.contiguous_format)
                    med, cmed = statistics.median(wall), statistics.median(cpu)
                    mpx = n * n / 1e6
                    rows.append(
                        {"size": n, "scale": scale, "threads": t, "mode": mode, "runs": k,
                         "seconds": med, "cpu_seconds": cmed, "mpx_s": mpx / med,
                         "mpx_per_cpu_s": mpx / cmed}
                    )  # fmt: skip
                    print(
                        f"{n:5d}  1/{scale}  {t} thr  {mode:5s}  {med:7.3f} s  "
                        f"{mpx / med:6.2f} Mpx/s  {mpx / cmed:6.2f} Mpx/CPU-s  ({k} runs)",
                        flush=True,
                    )
    return rows


def _reach_images() -> dict[str, np.ndarray]:
    """Two 1024 x 1024 images: a colour photograph and a grey mosaic of textures."""
    from skimage import data

    grey = np.block(
        [[data.camera()[:512, :512], data.gravel()[:512, :512]],
         [data.grass()[:512, :512], data.brick()[:512, :512]]]
    )  # fmt: skip
    return {"retina": data.retina()[200:1224, 200:1224], "texture_mosaic": grey}


def reach(halos, tile: int = 512, at: int = 256) -> list[dict]:
    from napari_frontier.data.normalise import prepare
    from napari_frontier.learning.backbone import backbone_input

    net = load_backbone()
    rows = []
    for name, image in _reach_images().items():
        x = backbone_input(torch.from_numpy(prepare(image).x)[None])
        whole = backbone_features(x, net)
        std = whole.std(dim=(0, 2, 3)).clamp_min(1e-6).view(1, -1, 1, 1)
        ref = whole[..., at // 4 : (at + tile) // 4, at // 4 : (at + tile) // 4]
        for h in halos:
            a, b = max(at - h, 0), min(at + tile + h, x.shape[-1])
            f = backbone_features(x[..., a:b, a:b], net)
            o = (at - a) // 4
            part = f[..., o : o + tile // 4, o : o + tile // 4]
            rel = (part - ref).abs() / std
            rows.append(
                {"image": name, "halo": h, "max": float(rel.max()), "mean": float(rel.mean()),
                 "p99": float(torch.quantile(rel.flatten()[::7], 0.99))}
            )  # fmt: skip
            print(
                f"{name:16s} halo {h:4d}: max {rows[-1]['max']:.4f}  p99 {rows[-1]['p99']:.4f}  "
                f"mean {rows[-1]['mean']:.5f}  (|tile - whole| / channel std)",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--modes", nargs="+", default=["fp32", "cl", "bf16"],
                   choices=["fp32", "cl", "bf16"])  # fmt: skip
    p.add_argument("--scales", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--bf16-sizes", type=int, nargs="+", default=[1024],
                   help="sizes bf16 runs at (without bf16 hardware it is ~15x slower)")  # fmt: skip
    p.add_argument("--bf16-runs", type=int, default=1)
    p.add_argument("--reach", action="store_true", help="measure the reach instead of speed")
    p.add_argument("--halos", type=int, nargs="+",
                   default=[0, 16, 32, 48, 64, 80, 96, 128, 160, 192, 256])  # fmt: skip
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()} {platform.processor()} "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, torch {torch.__version__}",
        flush=True,
    )
    if args.reach:
        torch.set_num_threads(args.threads[-1])
        rows = reach(args.halos)
    else:
        rows = speed(
            args.sizes,
            args.threads,
            args.runs,
            args.modes,
            args.scales,
            args.bf16_sizes,
            args.bf16_runs,
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
