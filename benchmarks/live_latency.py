"""Stroke -> overlay latency of the live trainer alone: no Qt, a simulated draw.

Drives a :class:`~napari_frontier.live.trainer.LiveTrainer` from a thread as the
plugin's worker does, on the nuclei sample tiled to SIZE x SIZE, with the
plugin's training settings. The main thread plays the viewer: a stroke
(5 x 40 px) in view every 3 s, a new 1024 x 1024 view every 7 s, and each
:class:`~napari_frontier.live.trainer.OverlayDelta` "drawn" by sleeping DRAW
seconds before :meth:`~napari_frontier.live.trainer.LiveTrainer.shown` is called.
The latency of a stroke is the time from sending it to the end of the
draw of the first overlay that reflects it, as the plugin measures it.

Runs the same strokes with each ``--draw`` value, so the share of the
latency that is the viewer's draw time (software OpenGL on the soak's
machine, ~0.3 s for a 4096² overlay) is told apart from the trainer's.

    python benchmarks/live_latency.py --size 4096 --seconds 90 --draw 0.0 0.3

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time

import numpy as np


def run_once(size: int, seconds: float, draw: float, seed: int = 0) -> dict:
    from napari_frontier.data.samples import load_sample
    from napari_frontier.data.scribbles import ScribbleDelta
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.live.trainer import LiveTrainer, OverlayDelta, Stopped, View
    from napari_frontier.segmenter import Segmenter

    sample = load_sample("nuclei")
    base, marks = sample["image"], sample["scribbles"]
    reps = -(-size // base.shape[0]), -(-size // base.shape[1])
    image = np.tile(base, reps)[:size, :size]
    scribbles = np.tile(marks, reps)[:size, :size].astype(np.uint8)
    rng = np.random.default_rng(seed)

    def view_at() -> View:
        y, x = int(rng.integers(0, size - 1024 + 1)), int(rng.integers(0, size - 1024 + 1))
        return View((), (y, y + 1024, x, x + 1024))

    view = view_at()
    # the plugin's settings (_napari/session.py GUI_TRAIN_CONFIG), without importing Qt
    seg = Segmenter(train_config=TrainConfig(threads=1, update_interval=0.1))
    trainer = LiveTrainer(seg, image, scribbles, view=view, wait_for_shown=True)
    events: queue.Queue = queue.Queue()

    def work():
        for event in trainer.run():
            events.put(event)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    posted: dict[int, float] = {}
    latencies: list[float] = []
    overlays = 0
    version = 0
    t0 = time.perf_counter()
    next_stroke, next_view = t0 + 3.0, t0 + 7.0
    while True:
        try:
            event = events.get(timeout=0.02)
        except queue.Empty:
            event = None
        if isinstance(event, Stopped):
            break
        if isinstance(event, OverlayDelta):
            time.sleep(draw)  # the viewer draws it
            now = time.perf_counter()
            for v in [v for v in posted if v <= event.scribbles_version]:
                latencies.append(now - posted.pop(v))
            trainer.shown(draw)
            overlays += 1
        now = time.perf_counter()
        if now >= next_stroke and not trainer.stopping:
            r0, r1, c0, c1 = view.region
            y, x = int(rng.integers(r0 + 20, r1 - 20)), int(rng.integers(c0 + 20, c1 - 60))
            version += 1
            label = np.full((5, 40), int(rng.integers(1, 3)), np.uint8)
            posted[version] = time.perf_counter()
            trainer.send(ScribbleDelta((y, x), label, version=version))
            next_stroke = now + 3.0
        if now >= next_view and not trainer.stopping:
            view = view_at()
            trainer.send(view)
            next_view = now + 7.0
        if now - t0 > seconds and not trainer.stopping:
            trainer.stop(final_prediction=False)
    thread.join()
    lat = np.asarray(latencies[1:])  # the first stroke meets the warm-up
    return {"draw": draw, "latencies": lat, "overlays": overlays, "steps": seg.step}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--draw", type=float, nargs="+", default=[0.0, 0.3])
    args = ap.parse_args(argv)
    print(f"{args.size}x{args.size}, {args.seconds:.0f} s per run, a stroke every 3 s")
    for draw in args.draw:
        r = run_once(args.size, args.seconds, draw)
        lat = r["latencies"]
        print(
            f"draw {draw:.2f} s: stroke -> overlay median {np.median(lat):.2f} s, "
            f"p95 {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s ({lat.size} strokes); "
            f"{r['overlays']} overlays, {r['steps']} steps",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
