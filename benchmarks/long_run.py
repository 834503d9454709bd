"""One long training run, scored every N steps: does the prediction hold as training goes on?

Prints per checkpoint: IoU against the truth, the running training
accuracy on painted pixels, the accuracy of the prediction on the painted
pixels themselves (a prediction that misses its own strokes is broken, not
just imprecise), the fraction predicted as each class, and how many
updates the prediction guard held back so far.

    python benchmarks/long_run.py textures --seed 0 --steps 5000 --every 250
    python benchmarks/long_run.py textures --seed 0 --steps 5000 --train '{"prediction_guard": 0}'
    python benchmarks/long_run.py textures --seed 0 --steps 5000 --model '{"width": 24}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from quality import DEVSET, iou_of, load_cases

    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", help="a case of benchmarks/quality.py (e.g. textures)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--train", type=json.loads, default=None, help="TrainConfig overrides (JSON)")
    ap.add_argument("--model", type=json.loads, default=None, help="ModelConfig overrides (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    image, scribbles, truth, k = load_cases(DEVSET, False, True, True)[args.image]
    train = {"update_interval": 0.0, **(args.train or {})}
    seg = Segmenter(
        n_classes=k,
        train_config=TrainConfig(seed=args.seed, threads=1, **train),
        model_config=args.model,
    )
    painted = scribbles > 0
    print(f"# {args.image} seed {args.seed}, train {train}, model {args.model}")
    gen = seg.training(image, scribbles, steps=args.steps)
    try:
        for upd in gen:
            if upd.step % args.every and not upd.done:
                continue
            labels = seg.predict(image).labels
            on_strokes = float((labels[painted] == scribbles[painted]).mean())
            share = " ".join(f"{(labels == c).mean():.2f}" for c in range(1, k + 1))
            print(
                f"step {upd.step:6d}  IoU {iou_of(labels, truth, k):.3f}  "
                f"training accuracy {upd.train_accuracy:.3f}  prediction right on strokes "
                f"{on_strokes:.3f}  class shares {share}  held back {seg._trainer.held_back}",
                flush=True,
            )
            if upd.done:
                break
    finally:
        gen.close()


if __name__ == "__main__":
    main()
