"""Traces of until_stable.py with TrainConfig overrides that touch only the weights that predict.

python benchmarks/results/guard-2026-12-04/variant_traces.py guard0 textures,gravel_on_grass,nuclei 0
python benchmarks/results/guard-2026-12-04/variant_traces.py raw textures,gravel_on_grass,nuclei 0
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/

import quality
import until_stable

from napari_frontier.learning.config import TrainConfig
from napari_frontier.segmenter import Segmenter

#: guard0: always the weight average; raw: no average, the training weights predict.
VARIANTS = {"guard0": {"prediction_guard": 0.0}, "raw": {"ema": 0.0}}


def main() -> None:
    variant, names, seeds = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")
    override = VARIANTS[variant]

    def segmenter(k, seed):
        tc = TrainConfig(seed=seed, threads=1, update_interval=0.0, **override)
        return Segmenter(n_classes=k, train_config=tc)

    until_stable._segmenter = segmenter
    cases = quality.load_cases(quality.DEVSET, False, True, True)
    out = Path(f"traces-{variant}")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for seed in map(int, seeds):
            path = out / f"{name}_s{seed}.npz"
            t0 = time.perf_counter()
            until_stable.trace(cases[name], seed, 7500, 250, path)
            print(variant, name, seed, f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
