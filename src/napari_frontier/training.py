"""Training as a generator: small frozen updates out, new scribbles in.

The same generator is driven by a plain loop (CLI, tests, scripts) and by
napari's ``thread_worker`` (the plugin). It never touches a widget or a
layer; it receives numpy copies and yields immutable :class:`TrainUpdate`.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import FrontierError
from .labels import IGNORE
from .losses import (
    class_balance_weights,
    dense_crf_loss,
    edge_aware_smoothness,
    masked_cross_entropy,
)
from .sampling import PatchSampler


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (defaults chosen by ``benchmarks/``)."""

    patch_size: int = 96
    batch_size: int = 4
    #: Pixels of image context added around each training patch, with the
    #: loss on the centre ``patch_size`` only (0 = the loss covers the
    #: whole patch, whose border pixels see zero padding as context).
    context_margin: int = 0
    #: Scale augmentation: each patch is cut ``2 ** u`` times its side, u
    #: uniform in [-scale_augment, scale_augment], and resized to the patch
    #: (bilinear image, nearest targets); 0 = off. Only without a context margin.
    scale_augment: float = 0.0
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
    #: Class weights are ``painted pixels ** -class_balance_power`` (1 =
    #: every class weighs the same in the loss; patch centres are drawn
    #: class-uniformly in any case).
    class_balance_power: float = 1.0
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
    #: Label-free regulariser weighted by ``smoothness``: "neighbours"
    #: (4-neighbour edge-aware smoothness) or "crf" (relaxed Potts / CRF
    #: loss over a window of neighbours, :func:`losses.dense_crf_loss`).
    smoothness_kind: str = "crf"
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
    #: Seed of the patches the statistics are computed over: the same
    #: patches every time, so predictions change only as the weights do
    #: (None = new patches at every update). Measured: with new patches at
    #: every step a CT lesion's IoU jumped between 0.17 and 0.85 from one
    #: four-step interval to the next.
    bn_recalibration_seed: int | None = 12345
    #: ... at most once every this many steps (and always at the first and
    #: last update). Measured: every 16 steps still let a texture image
    #: collapse to IoU 0.000 at 150 steps; at every update it did not.
    bn_recalibration_steps: int = 1
    #: Learning rate at step n is ``learning_rate / sqrt(1 + n / lr_decay_steps)``
    #: (no horizon needed: training may run for any time), n counted from the
    #: start of training and from the last change of the strokes; 0 = constant.
    lr_decay_steps: float = 0.0
    #: The weights that predict (the weight average, ``ema > 0``) are replaced
    #: at an update only if, with their recomputed statistics, they get the
    #: painted pixels of the first quarter of the statistics batches right at most
    #: this much less often than training does (its running accuracy); else
    #: the last weights that passed keep predicting until the average passes
    #: again. 0 = always replaced. Measured: after 3750 steps on a texture
    #: image the average predicted one class everywhere (right on 58 % of
    #: the painted pixels against 100 % in training; IoU 0.86 -> 0.40).
    prediction_guard: float = 0.1
    #: Share of training patch centres drawn where the model is still wrong:
    #: in proportion to the running error (1 - p(true class)) of painted
    #: pixels in 8-px cells, measured on the training batches themselves
    #: (new strokes count as wrong until seen); the rest as before. 0 = off.
    #: Measured at 0.25 (dev set, 11 images, 3 seeds, 150 / 300 / 1500
    #: steps): mean IoU 0.713 / 0.732 / 0.808 -> 0.711 / 0.764 / 0.821 and a
    #: CT lesion found by every seed, but an MRI seed swings between 0.27
    #: and 0.73 from 1400 to 3000 steps (the defaults: 0.59-0.66) and the
    #: 60-s mean is 0.805 against 0.816, so it is off by default. At 0.1, or
    #: only until the strokes are fitted, the trade stays (benchmarks/RESULTS.md,
    #: thirteenth round).
    focus: float = 0.0
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


#: Smallest training patch side tried after running out of memory.
MIN_PATCH = 16


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of torch (CUDA, MPS, CPU allocator) and Python."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


@dataclass
class TrainState:
    """Everything a training run mutates (owned by one thread at a time)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    step: int = 0
    #: Weights (a private copy) at the last yield: consistent, readable from
    #: another thread while training runs, and restored after a failed step.
    good_weights: dict | None = None
    good_step: int = 0
    #: Modules that follow the model (e.g. a weight average): snapshotted and
    #: restored with it; ``good_shadows`` holds their copies.
    shadows: list = field(default_factory=list)
    good_shadows: list | None = None
    #: Batch size and patch side in use (smaller after running out of memory).
    batch_size: int | None = None
    patch_size: int | None = None
    #: Set while the training generator waits at an update whose BatchNorm
    #: statistics are not yet recomputed for the weights that predict: call
    #: :meth:`calibrate` before predicting (it does so once). Recomputing
    #: them only when something predicts, not at every update, leaves the
    #: steps in between to training (26 % more steps at 0.1 s updates).
    pending_calibration: Callable[[bool], None] | None = None
    #: The thread that runs the training generator (``threading.get_ident()``).
    thread: int | None = None
    #: Computes the end-of-training statistics; None once they are computed.
    _final_calibration: Callable[[bool], None] | None = None
    #: Updates at which the weight average failed ``TrainConfig.prediction_guard``
    #: and the last weights that passed predicted instead.
    held_back: int = 0

    def calibrate(self, final: bool = False) -> None:
        """Bring the predicting weights' BatchNorm statistics up to date, if needed.

        ``final``: training stops here; compute them as at its end (more
        batches), even if an update's statistics were already computed.
        Does something only in the thread that trains, while the training
        generator waits at an update: there nothing else uses the model.
        """
        if threading.get_ident() != self.thread:
            return
        pending, self.pending_calibration = self.pending_calibration, None
        if final:
            pending = self._final_calibration
        if pending is not None:
            pending(final)


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(1)`` for ``(N, K, H, W)`` logits, the first of equal maxima winning.

    A running comparison over the K classes: the same result as
    ``argmax(1)``, whose CPU kernel is ~100x slower on these shapes (~4.8 ms
    for 4 x 2 x 96 x 96 on one thread, about a tenth of a training step).
    """
    best = logits[:, 0]
    index = torch.zeros(best.shape, dtype=torch.long, device=logits.device)
    for k in range(1, logits.shape[1]):
        better = logits[:, k] > best
        index = torch.where(better, k, index)
        best = torch.maximum(best, logits[:, k])
    return index


def _holdout_accuracy(model, sampler, device, batch: int = 8) -> float | None:
    if callable(sampler):  # test-then-train: accuracy on strokes before they trained
        return sampler()
    if sampler is None or sampler.class_counts().sum() == 0:
        return None
    saved = sampler.rng
    sampler.rng = np.random.default_rng(12345)  # same patches every time: a steady curve
    try:
        x, t = sampler.sample(batch, augment=False)
    finally:
        sampler.rng = saved
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = class_argmax(model(torch.from_numpy(x).to(device))).cpu().numpy()
    model.train(was_training)
    scored = t != IGNORE
    return float((pred[scored] == t[scored]).mean()) if scored.any() else None


def _seeded_batches(sampler: PatchSampler, seed: int, batches: int, batch_size: int, device):
    """``(input on device, targets)`` for ``batches`` training batches from their own stream.

    The same ``seed`` gives the same patches; the sampler's training stream
    is put back afterwards, so the training sequence is unchanged.
    """
    saved_rng = sampler.rng
    sampler.rng = np.random.default_rng(seed)
    try:
        for _ in range(batches):
            x, t = sampler.sample(batch_size)
            xb = torch.from_numpy(x).to(device)
            if device.type != "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, t
    finally:
        sampler.rng = saved_rng


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    sampler: PatchSampler,
    device: torch.device,
    batches: int,
    batch_size: int,
    seed: int,
    amp_dtype=None,
) -> None:
    """Recompute BatchNorm statistics for the current weights (precise BatchNorm).

    Forward passes in training mode over ``batches`` fresh batches of
    training patches (from their own random stream: the training sequence
    is unchanged) with a plain average; nothing else in the model changes.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0 or sampler.class_counts().sum() == 0:
        return
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in norms]
    was_training = model.training
    model.train()
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the batches below
        for xb, _ in _seeded_batches(sampler, seed, batches, batch_size, device):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                model(xb)
    finally:
        for bn, (momentum, n) in zip(norms, saved, strict=True):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(n)
        model.train(was_training)


@torch.no_grad()
def stroke_accuracy(
    model: torch.nn.Module,
    sampler: PatchSampler,
    device: torch.device,
    batches: int,
    batch_size: int,
    seed: int,
    amp_dtype=None,
) -> float | None:
    """Fraction of painted pixels an eval-mode model gets right on seeded training patches.

    The patches are those :func:`recalibrate_batchnorm` draws with the same
    seed (its first ``batches``); the training sequence is unchanged.
    """
    if batches <= 0 or sampler.class_counts().sum() == 0:
        return None
    was_training = model.training
    model.eval()
    right = painted = 0
    try:
        for xb, t in _seeded_batches(sampler, seed, batches, batch_size, device):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred = class_argmax(model(xb)).cpu().numpy()
            scored = t != IGNORE
            right += int((pred[scored] == t[scored]).sum())
            painted += int(scored.sum())
    finally:
        model.train(was_training)
    return right / painted if painted else None


def train_steps(
    state: TrainState,
    sampler: PatchSampler,
    config: TrainConfig,
    holdout: PatchSampler | Callable[[], float | None] | None = None,
    seconds: float | None = None,
    steps: int | None = None,
    on_scribbles=None,
) -> Generator[TrainUpdate, object, TrainUpdate]:
    """Train until ``seconds`` or ``steps`` is reached (or forever if both are None).

    Yields a :class:`TrainUpdate` about every ``config.update_interval``
    seconds. ``holdout`` is a sampler of held-out strokes or a function that
    returns the accuracy to report as ``holdout_accuracy`` (test-then-train). A value sent into the generator is passed to ``on_scribbles``
    (which updates the samplers) before the next step, so new strokes take
    effect without a restart. Closing the generator stops at once; the model
    keeps its current weights.
    """
    model, opt, device = state.model, state.optimizer, state.device
    state.thread = threading.get_ident()
    amp_dtype = None
    if config.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    model.train()
    start = time.perf_counter()
    last_yield = start
    last_holdout_t = -math.inf
    holdout_acc = None
    first_step = last_recalibration = state.step
    # The learning rate decays from the first step of this call and from
    # every change of the strokes (a new stroke is learnt at the full rate).
    lr_origin = state.step
    loss_avg = acc_avg = float("nan")
    message = ""
    good = copy.deepcopy(model.state_dict())
    good_step = state.good_step = state.step
    state.good_weights = good
    state.good_shadows = [copy.deepcopy(m.state_dict()) for m in state.shadows]
    batch_size = state.batch_size = state.batch_size or config.batch_size
    if state.patch_size:
        sampler.patch_size = state.patch_size
    state.patch_size = sampler.patch_size
    cw = None

    def finished() -> bool:
        if steps is not None and state.step - first_step >= steps:
            return True
        return seconds is not None and time.perf_counter() - start >= seconds

    def update(done: bool) -> TrainUpdate:
        elapsed = time.perf_counter() - start
        n = state.step - first_step
        return TrainUpdate(
            step=state.step,
            loss=loss_avg,
            train_accuracy=acc_avg,
            holdout_accuracy=holdout_acc,
            elapsed=elapsed,
            steps_per_second=n / elapsed if elapsed > 0 else 0.0,
            done=done,
            message=message,
        )

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    predictor = state.shadows[0] if state.shadows else model

    accepted = None  # the weight average that last passed the prediction guard
    held_reported = 0  # holds an update's message has told of
    held_back = None  # the true weight average while ``accepted`` predicts instead

    def calibrate(final: bool = False) -> None:
        # The weights that predict (a weight average, if any; at the end the
        # model too); the snapshot a checkpoint is written from is taken with them.
        nonlocal accepted, held_back
        seed = state.step if config.bn_recalibration_seed is None else config.bn_recalibration_seed
        batches = config.bn_recalibration_final if final else config.bn_recalibration
        for m in (model, *state.shadows) if final else (state.shadows or [model]):
            recalibrate_batchnorm(m, sampler, device, batches, batch_size, seed, amp_dtype)
        state.good_shadows = [copy.deepcopy(m.state_dict()) for m in state.shadows]
        if state.shadows and config.prediction_guard > 0:
            acc = stroke_accuracy(
                state.shadows[0], sampler, device, max(1, batches // 4), batch_size, seed, amp_dtype
            )
            if (
                accepted is None
                or acc is None
                or math.isnan(acc_avg)
                or acc >= acc_avg - config.prediction_guard
            ):
                accepted = state.good_shadows[0]
            else:
                state.held_back += 1
                if not final and held_back is None:  # back in place when training goes on
                    held_back = state.good_shadows[0]
                state.shadows[0].load_state_dict(accepted)
                state.good_shadows[0] = accepted
        if final:
            state._final_calibration = None

    state._final_calibration = calibrate

    while not finished():
        # Running statistics start as a plain average of the batches seen and
        # only then become an exponential average: with the default momentum
        # the initial variance of 1 dominates for hundreds of steps and
        # predictions in eval mode are wrong early in training.
        for bn in norms:
            bn.momentum = max(config.bn_momentum, 1.0 / (1 + int(bn.num_batches_tracked)))
        try:
            if config.class_balance:
                cw = class_balance_weights(
                    sampler.class_counts(), power=config.class_balance_power
                ).to(device)
            x, t = sampler.sample(batch_size, focus=True)
            xb = torch.from_numpy(x).to(device, non_blocking=True)
            tb = torch.from_numpy(t).to(device, non_blocking=True)
            if device.type != "cpu":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xb)
            loss = masked_cross_entropy(logits, tb, class_weights=cw)
            if config.smoothness > 0 and (
                config.smoothness_after <= 0 or acc_avg >= config.smoothness_after
            ):
                probs = torch.softmax(logits.float(), dim=1)
                valid = xb[:, -1] > 0.5
                reg = dense_crf_loss if config.smoothness_kind == "crf" else edge_aware_smoothness
                loss = loss + config.smoothness * reg(
                    probs, xb[:, :-1].float(), config.smoothness_sigma, valid=valid
                )
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {state.step} (loss is {loss.item()}); "
                    "the last good weights were kept. Try a lower learning rate."
                )
            opt.zero_grad(set_to_none=True)
            if config.lr_decay_steps > 0:
                n = state.step - lr_origin
                lr = config.learning_rate / math.sqrt(1 + n / config.lr_decay_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            state.step += 1
        except Exception as exc:
            # A failed step may have left the weights half-updated: go back
            # to the weights of the last update the user saw.
            logits = loss = xb = tb = None
            opt.zero_grad(set_to_none=True)
            model.load_state_dict(good)
            for m, saved in zip(state.shadows, state.good_shadows or [], strict=False):
                m.load_state_dict(saved)
            state.step = good_step
            if not is_out_of_memory(exc):
                raise
            message = _shrink_after_oom(state, sampler, model, device, exc)
            batch_size = state.batch_size
            continue
        with torch.no_grad():
            scored = tb != IGNORE
            acc = (class_argmax(logits)[scored] == tb[scored]).float().mean().item()
            if sampler.focus > 0 and sampler.last_origins:
                p = torch.softmax(logits.float(), dim=1)
                p_true = p.gather(1, torch.where(scored, tb, 0)[:, None])[:, 0]
                sampler.feedback((1 - p_true).cpu().numpy(), scored.cpu().numpy())
        lv = loss.item()
        loss_avg = lv if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * lv
        acc_avg = acc if math.isnan(acc_avg) else 0.9 * acc_avg + 0.1 * acc

        now = time.perf_counter()
        if now - last_yield >= config.update_interval or state.step - first_step == 1:
            good = copy.deepcopy(model.state_dict())
            good_step = state.good_step = state.step
            state.good_weights = good
            if state.step - last_recalibration >= config.bn_recalibration_steps or (
                state.step - first_step == 1
            ):
                # Done when something predicts (state.calibrate()), not here.
                state.pending_calibration = calibrate
                last_recalibration = state.step
            if now - last_holdout_t >= config.holdout_interval:
                if not callable(holdout):  # a sampler: scored by the weights that predict
                    state.calibrate()
                holdout_acc = _holdout_accuracy(predictor, holdout, device)
                last_holdout_t = time.perf_counter()
            if state.held_back > held_reported and not message:
                held_reported = state.held_back
                message = (
                    "kept the previous prediction: the newest weights miss too many "
                    "painted pixels when they predict (training goes on)"
                )
            incoming = yield update(False)
            state.pending_calibration = None  # training goes on: statistics go stale
            if held_back is not None:  # the average goes on from where it was
                state.shadows[0].load_state_dict(held_back)
                held_back = None
            message = ""
            last_yield = time.perf_counter()
            if incoming is not None and on_scribbles is not None:
                message = on_scribbles(incoming) or ""
                lr_origin = state.step
    state.pending_calibration = None
    calibrate(final=True)
    holdout_acc = _holdout_accuracy(predictor, holdout, device)
    final = update(True)
    incoming = yield final
    if incoming is not None and on_scribbles is not None:
        on_scribbles(incoming)
    return final


def _shrink_after_oom(state: TrainState, sampler: PatchSampler, model, device, exc) -> str:
    """Halve the batch (then the patch) after running out of memory; the message says so."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    multiple = getattr(getattr(model, "config", None), "multiple", 1)
    if state.batch_size > 1:
        state.batch_size //= 2
        what = f"batch size {state.batch_size}"
    elif sampler.patch_size // 2 >= max(MIN_PATCH, multiple):
        sampler.patch_size //= 2
        state.patch_size = sampler.patch_size
        what = f"patches of {sampler.patch_size} px"
    else:
        raise TrainingOutOfMemory(
            f"out of memory even with one patch of {sampler.patch_size} px at step "
            f"{state.step}; the last good weights were kept. Close other programs, use "
            "a smaller network (width/depth) or train on the CPU"
        ) from exc
    return f"out of memory at step {state.step}: continuing with {what}"
