"""Training steps per second with updates every 0.1 s / 0.25 s, and without recalibration.

BatchNorm statistics of the predicting weights are recomputed only when
something predicts; an update alone should then cost (almost) nothing. The
last two settings predict from every update as the plugin's live view can
(statistics recomputed over 4 batches, as in the plugin), with and without
the prediction guard (``TrainConfig.prediction_guard``). Fits
the nuclei sample for SECONDS per setting on one torch thread, runs
interleaved, and prints the median of REPEATS.

    PYTHONPATH=src python benchmarks/recalibration_cost.py --seconds 8 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from napari_frontier.data.samples import load_sample
from napari_frontier.learning.config import TrainConfig
from napari_frontier.segmenter import Segmenter

SETTINGS = {
    "updates every 0.1 s (the plugin)": dict(update_interval=0.1),
    "updates every 0.25 s (API, CLI)": dict(update_interval=0.25),
    "updates every 0.1 s, no recalibration": dict(update_interval=0.1, bn_recalibration=0),
    "one update at the end": dict(update_interval=1e9),
}
LIVE = {
    "plugin, predicting from every update, guard on": dict(prediction_guard=0.1),
    "plugin, predicting from every update, guard off": dict(prediction_guard=0.0),
}


def live_steps_per_second(image, scribbles, seconds: float, **kw) -> tuple[float, int, int]:
    """Train for ``seconds``; at every update (0.1 s) the predicting weights are made ready.

    Returns steps per second, updates, and updates the prediction guard held back.
    """
    tc = TrainConfig(seed=0, threads=1, update_interval=0.1, bn_recalibration=4, **kw)
    seg = Segmenter(train_config=tc)
    seg.fit(image, scribbles, steps=3)
    gen = seg.training(image, scribbles, seconds=seconds)
    rate, updates, held = 0.0, 0, 0
    for upd in gen:
        seg.model_for_prediction()  # recomputes statistics, runs the guard
        rate, updates = upd.steps_per_second, updates + 1
        held = seg._trainer.held_back
    return rate, updates, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    s = load_sample("nuclei")
    res: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, kw in SETTINGS.items():
            seg = Segmenter(train_config=TrainConfig(seed=0, threads=1, **kw))
            seg.fit(s["image"], s["scribbles"], steps=3)
            last = seg.fit(s["image"], s["scribbles"], seconds=args.seconds)
            res.setdefault(name, []).append(last.steps_per_second)
        for name, kw in LIVE.items():
            rate, updates, held = live_steps_per_second(
                s["image"], s["scribbles"], args.seconds, **kw
            )
            res.setdefault(name, []).append(rate)
            print(f"{name}: {updates} updates, {held} held back by the guard")
    base = statistics.median(res["one update at the end"])
    for name, v in res.items():
        m = statistics.median(v)
        print(f"{name}: {m:.1f} steps/s (x{m / base:.2f} of one update at the end)")


if __name__ == "__main__":
    main()
