"""Memory of the live trainer alone on a 64-slice stack: no Qt, no napari.

Drives a :class:`~napari_frontier.live.trainer.LiveTrainer` as the widget does, at
about four times the soak's edit rate: an edit at most every 0.5 s, sent
between training updates (a 5 x 40 px stroke on a random slice, or, one
time in four, the whole stack's scribbles reset), and a view of a random
slice with every edit. Prints RSS every 20 s. With
``benchmarks/soak.py --stack 64`` it tells whether memory growth comes
from the engine or from the viewer.

    python benchmarks/stack_loop.py --seconds 200

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=200.0)
    ap.add_argument("--slices", type=int, default=64)
    args = ap.parse_args(argv)

    import psutil

    from napari_frontier.data.scribbles import ScribbleDelta
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.live.trainer import LiveTrainer, OverlayDelta, View
    from napari_frontier.segmenter import Segmenter

    rng = np.random.default_rng(0)
    base = rng.normal(100, 20, (512, 512)).astype(np.float32)
    base[100:300, 100:300] += 80
    n = args.slices
    stack = np.stack([np.roll(base, 3 * z, axis=1) for z in range(n)])
    original = np.zeros(stack.shape, np.uint8)
    original[:, 150:153, 120:260] = 1
    original[:, 400:403, 50:450] = 2
    seg = Segmenter(train_config=TrainConfig(threads=1, seed=0))
    trainer = LiveTrainer(seg, stack, original, view=View((0,)), wait_for_shown=True)
    proc = psutil.Process()
    t0 = last_edit = last_print = time.perf_counter()
    version = 0
    print(f"stack {stack.shape}, an edit at most every 0.5 s, RSS every 20 s")
    for event in trainer.run():
        now = time.perf_counter()
        if isinstance(event, OverlayDelta):
            trainer.shown(0.05)
        if now - last_edit > 0.5:
            last_edit, version = now, version + 1
            if version % 4 == 0:
                trainer.send(ScribbleDelta((0, 0, 0), original.copy(), version=version))
            else:
                z, y, x = (
                    int(rng.integers(n)),
                    int(rng.integers(20, 490)),
                    int(rng.integers(20, 450)),
                )
                label = np.full((1, 5, 40), int(rng.integers(1, 3)), np.uint8)
                trainer.send(ScribbleDelta((z, y, x), label, version=version))
            trainer.send(View((int(rng.integers(n)),), (0, 512, 0, 512)))
        if now - last_print > 20:
            last_print = now
            rss = proc.memory_info().rss >> 20
            print(f"{now - t0:5.0f} s  RSS {rss} MiB  step {seg.step}  edits {version}", flush=True)
        if now - t0 > args.seconds and not trainer.stopping:
            trainer.stop(final_prediction=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
