"""The CUDA path, proved and measured: correctness, AMP training, inference, live latency.

Runs on any device (``--device cpu`` for a smoke run), but is meant for a
CUDA GPU:

* correctness: the same weights predict the same probabilities on the GPU
  (fp32) as on the CPU, and bf16/fp16 autocast changes almost no label;
* training with autocast + channels_last: steps/s at the default batch and
  at a larger one, and IoU on the nuclei sample after a few seconds;
* inference: megapixels/s on a 4096 x 4096 image (median of repeats);
* live loop (the plugin's Qt-free worker loop): Train -> first overlay,
  new stroke -> overlay that reflects it, overlays per second of a
  1-megapixel view.

    python benchmarks/gpu.py --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_frontier.data.samples import load_sample
from napari_frontier.data.scribbles import ScribbleDelta
from napari_frontier.learning.config import TrainConfig
from napari_frontier.learning.metrics import score, truth_from_mask
from napari_frontier.live.trainer import Failed, LiveTrainer, OverlayDelta
from napari_frontier.prediction.device import select_device
from napari_frontier.prediction.tiling import predict_probabilities
from napari_frontier.segmenter import Segmenter


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiled(image: np.ndarray, size: int) -> np.ndarray:
    reps = (size // image.shape[0] + 1, size // image.shape[1] + 1)
    return np.tile(image, reps)[:size, :size]


def correctness(device: torch.device) -> dict:
    s = load_sample("nuclei")
    seg = Segmenter(train_config=TrainConfig(seed=0, device=str(device), holdout_fraction=0))
    seg.fit(s["image"], s["scribbles"], steps=50)
    x = seg.prepare(s["image"]).x
    model = seg.model
    p_dev = predict_probabilities(model, x, device, amp=False)
    p_amp = predict_probabilities(model, x, device, amp=True)
    cpu_model = model.to("cpu")
    p_cpu = predict_probabilities(cpu_model, x, "cpu")
    model.to(device)
    return {
        "max_abs_diff_fp32_vs_cpu": float(np.abs(p_dev - p_cpu).max()),
        "label_agreement_amp_vs_fp32": float((p_amp.argmax(0) == p_dev.argmax(0)).mean()),
        "max_abs_diff_amp_vs_fp32": float(np.abs(p_amp - p_dev).max()),
    }


def training(device: torch.device, batch_size: int, seconds: float) -> dict:
    s = load_sample("nuclei")
    tc = TrainConfig(seed=0, device=str(device), batch_size=batch_size, holdout_fraction=0)
    seg = Segmenter(train_config=tc)
    seg.fit(s["image"], s["scribbles"], steps=5)  # warm-up (kernel selection)
    last = seg.fit(s["image"], s["scribbles"], seconds=seconds)
    pred = seg.predict(s["image"])
    iou = score(pred.labels, truth_from_mask(s["truth"] > 0)).foreground_iou
    return {"batch_size": batch_size, "steps_per_s": last.steps_per_second, "iou": iou}


def inference(device: torch.device, size: int, tile: int, repeats: int) -> dict:
    s = load_sample("nuclei")
    seg = Segmenter(train_config=TrainConfig(seed=0, device=str(device)))
    seg.fit(s["image"], s["scribbles"], steps=5)
    image = tiled(s["image"], size)
    x = seg.prepare(image).x
    predict_probabilities(seg.model, x[:, :tile, :tile], device, tile=tile)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        predict_probabilities(seg.model, x, device, tile=tile)
        sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    t0 = time.perf_counter()
    seg.predict(image)  # everything a user gets: probabilities, labels, uncertainty
    full = time.perf_counter() - t0
    return {
        "size": size,
        "tile": tile,
        "probabilities_s": t,
        "mp_per_s": size * size / 1e6 / t,
        "predict_with_outputs_s": full,
    }


def live(device: torch.device, size: int, seconds: float) -> dict:
    """Drive the plugin's worker loop without Qt and time what the user sees."""
    s = load_sample("nuclei")
    image = tiled(s["image"], size)
    scribbles = tiled(s["scribbles"], size)
    scribbles[size // 2 :] = 0  # strokes only on the top half at first
    seg = Segmenter(train_config=TrainConfig(seed=0, device=str(device), holdout_fraction=0))
    t_start = time.perf_counter()
    trainer = LiveTrainer(seg, image, scribbles, predict_interval=0.05)
    first = None
    overlays = []
    stroke_sent = None
    latencies = []
    version = 0
    full = tiled(s["scribbles"], size)
    for event in trainer:
        now = time.perf_counter()
        if isinstance(event, Failed):
            raise event.error
        if isinstance(event, OverlayDelta):
            if first is None:
                first = now - t_start
            overlays.append((now, event.seconds))
            if stroke_sent is not None and event.scribbles_version == version:
                latencies.append(now - stroke_sent)
                stroke_sent = None
        elapsed = now - t_start
        if stroke_sent is None and elapsed > 2 and len(latencies) < 5:
            # a new stroke: the bottom half gets its scribbles band by band
            version += 1
            r0 = size // 2 + ((version - 1) * size) // 12
            r1 = size // 2 + (version * size) // 12
            box = (slice(r0, r1), slice(0, size))
            trainer.send(ScribbleDelta.of(full, box, version))
            stroke_sent = time.perf_counter()
        if elapsed > seconds:
            trainer.stop(final_prediction=False)
    later = [t for t, _ in overlays if t - t_start > 2]
    rate = (len(later) - 1) / (later[-1] - later[0]) if len(later) > 1 else float("nan")
    return {
        "view": f"{size}x{size}",
        "train_to_first_overlay_s": first,
        "stroke_to_overlay_s": latencies,
        "overlays_per_s": rate,
        "overlay_predict_s_median": statistics.median(o for _, o in overlays),
        "steps": seg.step,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tiles", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 32])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = select_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M')} device {device} ({name}), torch {torch.__version__}"
    )
    out: dict = {"device": str(device), "name": name, "torch": torch.__version__}
    out["correctness"] = correctness(device)
    print("correctness:", out["correctness"], flush=True)
    out["training"] = [training(device, b, args.seconds) for b in args.batches]
    for r in out["training"]:
        print(
            f"training batch {r['batch_size']}: {r['steps_per_s']:.1f} steps/s, "
            f"nuclei IoU after {args.seconds:g} s {r['iou']:.3f}",
            flush=True,
        )
    out["inference"] = [inference(device, args.size, t, args.repeats) for t in args.tiles]
    for r in out["inference"]:
        print(
            f"inference {r['size']}x{r['size']} tile {r['tile']}: {r['probabilities_s']:.3f} s "
            f"= {r['mp_per_s']:.1f} MP/s (with labels, uncertainty: {r['predict_with_outputs_s']:.2f} s)",
            flush=True,
        )
    out["live"] = live(device, 1024, max(8.0, args.seconds))
    lv = out["live"]
    print(
        f"live {lv['view']}: Train -> first overlay {lv['train_to_first_overlay_s']:.2f} s; "
        f"stroke -> overlay {', '.join(f'{v:.2f}' for v in lv['stroke_to_overlay_s'])} s; "
        f"{lv['overlays_per_s']:.1f} overlays/s (predict {lv['overlay_predict_s_median'] * 1000:.0f} ms)",
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
