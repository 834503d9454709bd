"""Training settings, the progress reports a run yields, and how a run fails.

:class:`~napari_frontier.learning.trainer.Trainer` runs the training;
:meth:`~napari_frontier.segmenter.Segmenter.training` drives it as a
generator of :class:`TrainUpdate` (a plain loop in the CLI, tests and
scripts, napari's ``thread_worker`` in the plugin).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import FrontierError


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults come from the benchmarks (``benchmarks/RESULTS.md``)."""

    #: Side of the square training patches, in pixels.
    patch_size: int = 96
    #: Patches per training step.
    batch_size: int = 4
    #: Brightness / contrast jitter of training patches, the same for every channel
    #: (gain in ``[1.25 ** -j, 1.25 ** j]``, shift in ``[-0.1 j, 0.1 j]``); 0 = off.
    intensity_jitter: float = 1.0
    #: AdamW learning rate (constant).
    learning_rate: float = 3e-3
    #: AdamW weight decay.
    weight_decay: float = 1e-4
    #: Weigh each class by the inverse of its painted pixel count (every class counts the same).
    class_balance: bool = True
    #: Share of strokes held out of training to score it. 0: every stroke trains, and a
    #: stroke painted while training runs is scored before it trains (test-then-train).
    holdout_fraction: float = 0.0
    #: Seed of the initial weights, the held-out split and the patches (None: random).
    seed: int | None = 0
    #: ``"auto"`` (CUDA, then MPS, then CPU) or a torch device name.
    device: str = "auto"
    #: Mixed precision on CUDA (bfloat16 where supported, else float16).
    amp: bool = True
    #: Torch CPU threads while training (None: torch's own setting).
    threads: int | None = None
    #: Weight of the CRF loss, a label-free loss on every pixel of a patch that moves
    #: the frontier to image edges across the unpainted band; 0 = off.
    smoothness: float = 1.0
    #: Decay of the weight average that predicts and is saved (ramped up as
    #: ``(1 + n) / (10 + n)``); 0 = the raw weights.
    ema: float = 0.99
    #: Colour scale of the CRF loss's bilateral weight (in normalised intensity).
    smoothness_sigma: float = 0.15
    #: The CRF loss acts only while the running accuracy on painted pixels of the
    #: training batches is at least this (the strokes are fitted first); 0 = always.
    smoothness_after: float = 0.95
    #: Momentum of BatchNorm running statistics (after a plain average of the first batches).
    bn_momentum: float = 0.1
    #: Batches of training patches over which the BatchNorm statistics of the weights
    #: that predict are recomputed before they predict (0 = the running statistics) ...
    bn_recalibration: int = 16
    #: ... and at the end of training, for the model and the weights kept.
    bn_recalibration_final: int = 32
    #: The weight average predicts only while it gets the painted pixels of training
    #: patches right at most this much less often than training does; else the last
    #: average that did; 0 = always.
    prediction_guard: float = 0.1
    #: Seconds between progress reports (where new scribbles are taken in).
    update_interval: float = 0.25
    #: Seconds between scores of the held-out strokes.
    holdout_interval: float = 1.0


@dataclass(frozen=True)
class TrainUpdate:
    """One progress report from the training generator."""

    step: int
    loss: float
    train_accuracy: float
    holdout_accuracy: float | None
    elapsed: float
    steps_per_second: float
    done: bool = False
    message: str = ""


class TrainingDiverged(FrontierError):
    """The loss became NaN or infinite; the last good weights were restored."""


class TrainingOutOfMemory(FrontierError, MemoryError):
    """Even the smallest batch and patch did not fit in memory."""
