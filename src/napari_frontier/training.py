"""Training settings, the progress reports a run yields, and how a run fails.

:class:`~napari_frontier.trainer.Trainer` runs the training;
:meth:`~napari_frontier.segmenter.Segmenter.training` drives it as a
generator of :class:`TrainUpdate` (a plain loop in the CLI, tests and
scripts, napari's ``thread_worker`` in the plugin).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FrontierError


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults chosen by ``benchmarks/``)."""

    patch_size: int = 96
    batch_size: int = 4
    #: Brightness / contrast jitter of training patches, the same for every
    #: channel (colours keep their hue): a gain uniform in [1.25 ** -j,
    #: 1.25 ** j] and a shift uniform in [-0.1 j, 0.1 j] of the normalised
    #: range, j = intensity_jitter; 0 = off. Measured: drawn per channel, as
    #: before, it shifted the hue of colour photos, and a 4-class food photo
    #: kept 15 % of its painted pixels wrong after 1500 steps (IoU 0.86;
    #: 0.92 drawn once for all channels); off, single-channel images lost
    #: (nuclei -0.10 IoU, a CT lesion never found). For one channel the
    #: default draws and applies what the per-channel jitter did. The shift
    #: alone removed (gain kept): huh7_cells +0.08 IoU, but the nuclei sample
    #: and a CT lesion -0.07; the 11-image mean level (0.812 against 0.816).
    intensity_jitter: float = 1.0
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    class_balance: bool = True
    #: Fraction of strokes held out of training (a fixed split). 0, the
    #: default: every stroke trains, and a stroke painted while training runs
    #: is first scored by the current model (test-then-train).
    holdout_fraction: float = 0.0
    seed: int | None = 0
    device: str = "auto"
    amp: bool = True
    threads: int | None = None
    #: Weight of the label-free regulariser on all pixels of a patch (the
    #: frontier follows image edges across the unpainted band); 0 = off.
    #: Default: the CRF loss at weight 1, once the strokes are fitted
    #: (``smoothness_after``). Measured on the dev set (11 images, 3 seeds,
    #: 1500 steps): mean IoU 0.762 -> 0.818, worst 0.598 -> 0.663.
    smoothness: float = 1.0
    #: Predictions (and checkpoints) use an exponential moving average of
    #: the weights with this decay (ramped up as ``(1 + n) / (10 + n)``),
    #: with BatchNorm statistics recomputed for the averaged weights; 0 = the
    #: raw weights. Measured on the dev set (11 images, 2 seeds, 1500
    #: steps): mean IoU 0.721 -> 0.759, worst seed 0.107 -> 0.458.
    ema: float = 0.99
    #: Colour scale of the CRF loss's bilateral weight (normalised intensity).
    #: Measured (11 images, 3 seeds, 150 / 300 / 1500 steps): 0.06 level with
    #: 0.15 (mean 0.717 / 0.715 / 0.822 against 0.717 / 0.731 / 0.816, worst
    #: image 0.636 against 0.660), 0.3 worse (0.711 / 0.706 / 0.801).
    smoothness_sigma: float = 0.15
    #: The regulariser acts only while the running accuracy on painted
    #: pixels of the training batches is at least this (0 = always): the
    #: strokes are fitted first, then the prior shapes the frontier between
    #: them; a new stroke the model gets wrong switches it off until fitted.
    #: Measured: on from the first step, the CRF loss kept 2 of 3 seeds from
    #: ever finding a small CT lesion (IoU 0.03); after 0.95 they find it.
    smoothness_after: float = 0.95
    #: Momentum of BatchNorm running statistics (after a plain average of
    #: the first ``1 / bn_momentum`` batches).
    bn_momentum: float = 0.1
    #: Before the weights that predict are used (a prediction, a held-out
    #: score, a checkpoint of a run that predicted), BatchNorm statistics are
    #: recomputed with the current weights over this many batches of training
    #: patches (0 = keep the running averages of the training batches); updates that
    #: nothing predicts from skip it. Measured: running averages turned a
    #: model scoring 0.86 IoU into one predicting a single class (0.002).
    bn_recalibration: int = 16
    #: ... and over this many at the end of training (the weights that are
    #: kept, saved and exported; also after a stop).
    bn_recalibration_final: int = 32
    #: The weights that predict (the weight average, ``ema > 0``) are replaced
    #: at an update only if, with their recomputed statistics, they get the
    #: painted pixels of the first quarter of the statistics batches right at most
    #: this much less often than training does (its running accuracy); else
    #: the last weights that passed keep predicting until the average passes
    #: again. 0 = always replaced. Measured: after 3750 steps on a texture
    #: image the average predicted one class everywhere (right on 58 % of
    #: the painted pixels against 100 % in training; IoU 0.86 -> 0.40).
    prediction_guard: float = 0.1
    update_interval: float = 0.25
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
