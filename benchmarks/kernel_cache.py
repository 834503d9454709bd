"""RSS of region predictions of random sizes vs one fixed size (the CPU kernel cache).

The CPU backend (oneDNN) keeps compiled kernels per input shape; live views
of every size used to add kernels without end. Prints RSS every 50
predictions of a 512 x 512 image.

    python benchmarks/kernel_cache.py random
    python benchmarks/kernel_cache.py fixed
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 python benchmarks/kernel_cache.py random

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import sys

import numpy as np


def main(argv=None) -> int:
    import psutil
    import torch

    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    mode = (argv or sys.argv[1:] or ["random"])[0]
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (512, 512)).astype(np.float32)
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[100:103, 50:200] = 1
    scribbles[300:303, 50:200] = 2
    seg = Segmenter(train_config=TrainConfig(threads=1, seed=0, device="cpu"))
    seg.fit(image, scribbles, steps=3)
    proc = psutil.Process()
    print(f"{mode} region sizes; RSS at start {proc.memory_info().rss >> 20} MiB")
    for i in range(400):
        if mode == "fixed":
            r0, c0, h, w = 100, 100, 300, 300
        else:
            r0, c0 = rng.integers(0, 200, 2)
            h, w = rng.integers(100, 312, 2)
        seg.predict_region(image, (), (slice(r0, r0 + h), slice(c0, c0 + w)))
        if i % 50 == 49:
            print(f"{i + 1} predictions: RSS {proc.memory_info().rss >> 20} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
