"""Regenerate ``golden_training.npz``: what a fixed-seed training run computes.

Run it (``python tests/data/make_golden.py``) only when training is meant to
change; ``tests/test_golden.py`` checks the engine against the file.

The run uses torch's portable CPU kernels (:data:`REPRODUCIBLE_ENV`, oneDNN
and NNPACK off): the vectorised kernels round differently on another CPU,
and a few training steps magnify that past any useful tolerance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_training.npz"

#: Environment of the golden run (read when torch starts): ATen's scalar
#: kernels, MKL's results the same on every x86-64 CPU, one thread.
REPRODUCIBLE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

#: Updates at which the run is recorded (step numbers).
PLANAR_STEPS = (1, 5, 10, 20)
STACK_STEPS = (1, 4, 8)


def planar_case():
    """A 96 x 128 grey image (a disk on a ramp with a faint texture) and two strokes."""
    yy, xx = np.mgrid[:96, :128].astype(np.float32)
    disk = (yy - 48) ** 2 + (xx - 60) ** 2 < 26**2
    texture = 8 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    image = (np.where(disk, 170.0, 70.0) + 0.3 * xx + texture).astype(np.float32)
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[46:50, 44:76] = 1
    scribbles[6:10, 10:120] = 2
    scribbles[84:88, 20:110] = 2
    # painted while training runs (a ScribbleDelta): a stroke of each class
    box = np.zeros((20, 60), np.uint8)
    box[2:5, 10:40] = 1  # inside the disk
    box[15:18, :] = 2  # ... and below it
    return image, scribbles, ((38, 30), box)


def stack_case():
    """A 3-slice stack (in memory): strokes on two slices, then on the third."""
    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    slices = []
    for z in range(3):
        disk = (yy - 32) ** 2 + (xx - 30 - 2 * z) ** 2 < (16 + 2 * z) ** 2
        slices.append(np.where(disk, 150.0, 60.0) + 5 * np.sin((xx + 7 * z) / 4.0))
    image = np.stack(slices).astype(np.float32)
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[0, 30:33, 20:40] = 1
    scribbles[0, 2:5, 4:60] = 2
    scribbles[2, 31:34, 24:44] = 1
    scribbles[2, 58:61, 4:60] = 2
    scribbles[2, 40:42, 26:36] = 1
    scribbles[0, 58:61, 8:56] = 2
    later = scribbles.copy()
    later[1, 30:33, 22:42] = 1
    later[1, 3:6, 6:58] = 2
    return image, scribbles, later


def _checksums(state_dict: dict) -> np.ndarray:
    """Per tensor: sum and sum of squares (float64), in state-dict order."""
    out = []
    for v in state_dict.values():
        a = v.detach().cpu().double()
        out.append((float(a.sum()), float((a * a).sum())))
    return np.array(out, dtype=np.float64)


def _record(seg, upd, small, out: dict, name: str) -> None:
    """Predict ``small`` now (statistics recomputed as for any prediction) and keep it all."""
    probs = seg.predict(small).probabilities
    out[f"{name}_probs_{upd.step}"] = probs[0].astype(np.float32)
    out[f"{name}_weights_{upd.step}"] = _checksums(seg.state_dict()["state_dict"])
    holdout = np.nan if upd.holdout_accuracy is None else upd.holdout_accuracy
    out[f"{name}_report_{upd.step}"] = np.array(
        [upd.loss, upd.train_accuracy, holdout, float(upd.done)], dtype=np.float64
    )


def run() -> dict:
    """Both runs, as the arrays the golden file holds (in a process started with
    :data:`REPRODUCIBLE_ENV`: see :func:`main`)."""
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)
    from napari_frontier.data.scribbles import ScribbleDelta
    from napari_frontier.learning.config import TrainConfig
    from napari_frontier.segmenter import Segmenter

    torch.set_num_threads(1)
    out: dict = {}

    # 2D, the defaults; a delta painted at step 10 is scored, then trains.
    image, scribbles, (start, box) = planar_case()
    tc = TrainConfig(seed=0, threads=1, update_interval=0.0, device="cpu")
    seg = Segmenter(train_config=tc, features="filters")
    small = np.ascontiguousarray(image[::3, ::3])
    gen = seg.training(image, scribbles, steps=PLANAR_STEPS[-1])
    upd = next(gen)
    while True:
        if upd.step in PLANAR_STEPS:
            _record(seg, upd, small, out, "planar")
        if upd.done:
            break
        upd = gen.send(ScribbleDelta(start, box, version=1)) if upd.step == 10 else next(gen)
    gen.close()
    out["planar_final"] = _checksums(seg.state_dict()["state_dict"])

    # A stack with held-out strokes scored at every update; new whole
    # scribbles (a third slice painted) sent at step 4.
    image, scribbles, later = stack_case()
    tc = TrainConfig(
        seed=0, threads=1, update_interval=0.0, holdout_interval=0.0, holdout_fraction=0.3,
        device="cpu", batch_size=2, patch_size=48,
    )  # fmt: skip
    seg = Segmenter(train_config=tc, model_config=dict(width=8), features="filters")
    small = np.ascontiguousarray(image[:, ::2, ::2])
    gen = seg.training(image, scribbles, steps=STACK_STEPS[-1])
    upd = next(gen)
    while True:
        if upd.step in STACK_STEPS:
            _record(seg, upd, small, out, "stack")
        if upd.done:
            break
        upd = gen.send(later) if upd.step == 4 else next(gen)
    gen.close()
    out["stack_final"] = _checksums(seg.state_dict()["state_dict"])
    return out


def main(argv: list[str]) -> None:
    """Write the run to ``argv[0]`` (default: the golden file), in a fresh process
    with :data:`REPRODUCIBLE_ENV` if this one was not started with it."""
    out = Path(argv[0]) if argv else GOLDEN
    if any(os.environ.get(k) != v for k, v in REPRODUCIBLE_ENV.items()):
        env = {**os.environ, **REPRODUCIBLE_ENV}
        subprocess.run([sys.executable, __file__, os.fspath(out)], env=env, check=True)
        return
    sys.path.insert(0, os.fspath(HERE.parents[1] / "src"))
    np.savez_compressed(out, **run())
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
