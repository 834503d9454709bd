"""One training run: the steps, the weight average, BatchNorm statistics and reports.

A :class:`Trainer` owns, while it runs, the model, its optimiser and weight
average and the :class:`~napari_frontier.learning.training_data.TrainingData` it
draws patches from. A thin loop drives it
(:meth:`~napari_frontier.segmenter.Segmenter.training`)::

    while not trainer.finished():
        trainer.step()
        if trainer.update_due():
            new = yield trainer.update()
            if new is not None:
                trainer.apply(new)
    final = trainer.final_update()

Whatever predicts while it runs asks :meth:`Trainer.weights_for_prediction`,
which recomputes the BatchNorm statistics of those weights first if they
are stale; nothing else does. No Qt, no widget, no layer.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import deque
from typing import NamedTuple

import numpy as np
import torch

from ..data.scribbles import IGNORE
from ..prediction.device import autocast, autocast_dtype, channels_last
from ..prediction.tiling import predict_probabilities
from .config import TrainConfig, TrainingDiverged, TrainingOutOfMemory, TrainUpdate
from .losses import class_balance_weights, dense_crf_loss, masked_cross_entropy
from .sampling import PatchSampler
from .training_data import TrainingData

#: Smallest training patch side tried after running out of memory.
MIN_PATCH = 16
#: Seed of the patches BatchNorm statistics (and the prediction guard) are
#: computed over: the same patches every time, so predictions change only as
#: the weights do.
STATISTICS_SEED = 12345
#: Seed of the held-out patches scored at updates: the same every time, a steady curve.
HOLDOUT_SEED = 12345


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of torch (CUDA, MPS, CPU allocator) and Python."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


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


# -- batches in, the model called: one place each ----------------------------------
class Inputs(NamedTuple):
    """What the network reads for a batch: its input and, if it has them, image features."""

    x: torch.Tensor
    features: torch.Tensor | None = None


def draw_batch(
    sampler: PatchSampler, batch_size: int, device: torch.device, **sample
) -> tuple[Inputs, torch.Tensor]:
    """A batch of patches ``(inputs, targets)`` from ``sampler``, on ``device``."""
    x, t, f = sampler.sample(batch_size, **sample)
    xb = torch.from_numpy(x).to(device, non_blocking=True)
    tb = torch.from_numpy(t).to(device, non_blocking=True)
    fb = None if f is None else torch.from_numpy(f).to(device, non_blocking=True)
    return Inputs(channels_last(xb), fb), tb


def forward(model: torch.nn.Module, inputs: Inputs, amp_dtype=None) -> torch.Tensor:
    """The model's logits for a batch (mixed precision with ``amp_dtype``)."""
    x, f = inputs
    with autocast(x.device, amp_dtype):
        return model(x) if f is None else model(x, f)


def _seeded_batches(
    sampler: PatchSampler, seed: int, batches: int, batch_size: int, device, augment: bool = True
):
    """``batches`` batches (as :func:`draw_batch`) from their own random stream.

    The same ``seed`` gives the same patches; the sampler's training stream
    is put back afterwards, so the training sequence is unchanged.
    """
    saved_rng = sampler.rng
    sampler.rng = np.random.default_rng(seed)
    try:
        for _ in range(batches):
            yield draw_batch(sampler, batch_size, device, augment=augment)
    finally:
        sampler.rng = saved_rng


# -- BatchNorm statistics and what the weights that predict get right ---------------
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
            forward(model, xb, amp_dtype)
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
    augment: bool = True,
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
        for xb, tb in _seeded_batches(sampler, seed, batches, batch_size, device, augment):
            pred = class_argmax(forward(model, xb, amp_dtype))
            scored = tb != IGNORE
            right += int((pred[scored] == tb[scored]).sum())
            painted += int(scored.sum())
    finally:
        model.train(was_training)
    return right / painted if painted else None


# -- the weight average and the fresh-stroke score ------------------------------------
class WeightAverage:
    """Exponential moving average of a model's weights and float buffers.

    The decay ramps up as ``(1 + n) / (10 + n)`` so that early predictions
    are not held back by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.n = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # (model, tensor lists) of the last update: the modules are walked once,
        # not at every step (nothing moves or converts a model while it trains)
        self._pairs = None

    def _lists(self, model: torch.nn.Module):
        if self._pairs is None or self._pairs[0] is not model:
            floats, sources, ints = [], [], []
            for be, b in zip(self.module.buffers(), model.buffers(), strict=True):
                if be.is_floating_point():  # BatchNorm statistics follow the weights
                    floats.append(be)
                    sources.append(b)
                else:
                    ints.append((be, b))
            params = list(model.parameters())
            self._pairs = (model, list(self.module.parameters()), params, floats, sources, ints)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        ema, params, floats, sources, ints = self._lists(model)
        torch._foreach_lerp_(ema, params, 1.0 - d)
        if floats:
            torch._foreach_lerp_(floats, sources, 1.0 - d)
        for be, b in ints:
            be.copy_(b)


def make_optimizer(
    model: torch.nn.Module, config: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, WeightAverage | None]:
    """AdamW for ``model`` and, with ``config.ema > 0``, the weight average it keeps up to date."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        # The multi-tensor update (already the default on CUDA) gives the
        # same weights as the per-tensor one, 40 % faster on CPU.
        foreach=True if device.type in ("cpu", "cuda") else None,
    )
    average = None
    if config.ema > 0:
        average = WeightAverage(model, config.ema)
        # after every step the optimiser takes (a skipped fp16 step is none)
        optimizer.register_step_post_hook(lambda *_: average.update(model))
    return optimizer, average


class FreshStrokeScore:
    """Accuracy of the model on strokes it has not trained on yet (test-then-train).

    Each time new scribbles arrive, the pixels that are newly painted (or
    painted with another class) are predicted by the current model before
    they join the training set; :meth:`accuracy` is the pixel accuracy over
    the last ``window`` such updates (None until a stroke is scored).
    """

    def __init__(self, window: int = 5, enabled: bool = True, min_interval: float = 0.0):
        self.enabled = enabled
        # Scoring costs a forward pass over the stroke and its context: while
        # someone paints fast (many small boxes a second) score a sample of
        # the edits, at most one per ``min_interval`` seconds; all of them train.
        self.min_interval = min_interval
        self._last = -float("inf")
        self._recent = deque(maxlen=window)

    def score(self, model, device, x, old, new, origin: tuple[int, int]) -> None:
        """Score the pixels where targets ``new`` differ from ``old`` (a region at ``origin``)."""
        if not self.enabled or time.perf_counter() - self._last < self.min_interval:
            return
        fresh = (new != IGNORE) & (new != old)
        if not fresh.any():
            return
        rows, cols = np.nonzero(fresh)
        halo = model.config.halo
        h, w = x.shape[-2:]
        y0 = max(0, origin[0] + rows.min() - halo)
        y1 = min(h, origin[0] + rows.max() + 1 + halo)
        x0 = max(0, origin[1] + cols.min() - halo)
        x1 = min(w, origin[1] + cols.max() + 1 + halo)
        probs = predict_probabilities(model, x[:, y0:y1, x0:x1], device, halo=0)
        pred = probs.argmax(0)[rows + origin[0] - y0, cols + origin[1] - x0]
        self._recent.append((int((pred == new[rows, cols]).sum()), len(rows)))
        self._last = time.perf_counter()

    def accuracy(self) -> float | None:
        total = sum(n for _, n in self._recent)
        return sum(c for c, _ in self._recent) / total if total else None


# -- the run --------------------------------------------------------------------------
class Trainer:
    """Trains ``model`` on ``data`` until ``seconds`` or ``steps`` (None: no limit).

    Parameters
    ----------
    model, optimizer, average
        The network, its optimiser and weight average (None: the raw weights
        predict), as :func:`make_optimizer` makes them; they keep what the
        run learns.
    data
        The training patches and held-out strokes.
    config
        The training settings.
    device
        Where the model is.
    step
        Steps the model has taken before this run.
    seconds, steps
        Limits of this run.

    Work on the model (steps, statistics) happens only in the thread that
    made the trainer; other threads may read :attr:`good_weights`,
    :attr:`good_average` and :attr:`good_step` (private copies) at any time.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        average: WeightAverage | None,
        data: TrainingData,
        config: TrainConfig,
        device: torch.device,
        step: int = 0,
        seconds: float | None = None,
        steps: int | None = None,
    ):
        self.model, self.optimizer, self.average = model, optimizer, average
        self.data = data
        self.config = config
        self.device = device
        #: Steps the model has taken (over all runs).
        self.global_step = step
        self._first_step = step
        self._limits = (seconds, steps)
        if config.threads:
            torch.set_num_threads(int(config.threads))
        self._thread = threading.get_ident()
        self.amp_dtype = autocast_dtype(device) if config.amp else None
        self._scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        #: Batch size in use (smaller after running out of memory).
        self.batch_size = config.batch_size
        model.train()
        self._norms = [
            m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        # Test-then-train: strokes that arrive while training runs are scored
        # by the current model before they join the training set.
        self._fresh = FreshStrokeScore(
            enabled=config.holdout_fraction <= 0, min_interval=5 * config.update_interval
        )
        self._start = self._last_update = time.perf_counter()
        self._last_holdout = -math.inf
        self.loss = self.accuracy = float("nan")  # running averages over the steps
        self.holdout_accuracy: float | None = None
        #: What the next report tells the user ("" if nothing).
        self.message = ""
        #: Weights (a private copy) at the last update: consistent, readable
        #: from another thread, and restored after a failed step ...
        self.good_weights = copy.deepcopy(model.state_dict())
        self.good_step = step
        #: ... and the weight average's, as of its last statistics.
        self.good_average = None if average is None else copy.deepcopy(average.module.state_dict())
        #: Updates at which the weight average failed ``config.prediction_guard``
        #: and the last weights that passed predicted instead.
        self.held_back = 0
        self._accepted = None  # the weight average that last passed the guard
        self._held_reported = 0  # holds an update's message has told of
        self._true_average = None  # the weight average while ``_accepted`` stands in
        self._stepped = False  # the last step changed the weights
        self._at_update = False  # the driver has the last report; training has not gone on
        # Statistics are recomputed when something predicts at an update, not
        # at every update: the steps in between go to training.
        self._statistics_due = False
        self._final_statistics = False

    # -- the loop -------------------------------------------------------------------
    def finished(self) -> bool:
        """The run has reached its limit of seconds or steps."""
        seconds, steps = self._limits
        if steps is not None and self.global_step - self._first_step >= steps:
            return True
        return seconds is not None and time.perf_counter() - self._start >= seconds

    def step(self) -> None:
        """One optimisation step.

        A failed step puts the last good weights back; running out of memory
        then halves the batch (or the patch) and says so in the next report,
        and any other error is raised (:class:`TrainingDiverged` for a loss
        that is not finite).
        """
        self._resume()
        cfg, model, opt, sampler = self.config, self.model, self.optimizer, self.data.sampler
        # Running statistics start as a plain average of the batches seen and
        # only then become an exponential average: with the default momentum
        # the initial variance of 1 dominates for hundreds of steps and
        # predictions in eval mode are wrong early in training.
        for bn in self._norms:
            bn.momentum = max(cfg.bn_momentum, 1.0 / (1 + int(bn.num_batches_tracked)))
        self._stepped = False
        try:
            cw = None
            if cfg.class_balance:
                cw = class_balance_weights(sampler.class_counts()).to(self.device)
            xb, tb = draw_batch(sampler, self.batch_size, self.device)
            logits = forward(model, xb, self.amp_dtype)
            loss = masked_cross_entropy(logits, tb, class_weights=cw)
            if cfg.smoothness > 0 and (
                cfg.smoothness_after <= 0 or self.accuracy >= cfg.smoothness_after
            ):
                probs = torch.softmax(logits.float(), dim=1)
                valid = xb.x[:, -1] > 0.5
                loss = loss + cfg.smoothness * dense_crf_loss(
                    probs, xb.x[:, :-1].float(), cfg.smoothness_sigma, valid=valid
                )
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged at step {self.global_step} (loss is {loss.item()}); "
                    "the last good weights were kept. Try a lower learning rate."
                )
            opt.zero_grad(set_to_none=True)
            if self._scaler is not None:
                self._scaler.scale(loss).backward()
                self._scaler.step(opt)
                self._scaler.update()
            else:
                loss.backward()
                opt.step()
            self.global_step += 1
        except Exception as exc:
            # A failed step may have left the weights half-updated: go back
            # to the weights of the last update the user saw.
            logits = loss = xb = tb = None
            self._restore()
            if not is_out_of_memory(exc):
                raise
            self.message = self._shrink_after_oom(exc)
            return
        with torch.no_grad():
            scored = tb != IGNORE
            acc = (class_argmax(logits)[scored] == tb[scored]).float().mean().item()
        lv = loss.item()
        self.loss = lv if math.isnan(self.loss) else 0.9 * self.loss + 0.1 * lv
        self.accuracy = acc if math.isnan(self.accuracy) else 0.9 * self.accuracy + 0.1 * acc
        self._stepped = True

    def update_due(self) -> bool:
        """Time for a report: ``update_interval`` after the last one, and after the run's first step."""
        if not self._stepped:
            return False
        now = time.perf_counter()
        return (
            now - self._last_update >= self.config.update_interval
            or self.global_step - self._first_step == 1
        )

    def update(self) -> TrainUpdate:
        """The report at an update (training goes on after it).

        The weights now become the last good ones, and until training goes on
        :meth:`weights_for_prediction` recomputes their statistics if asked.
        """
        cfg = self.config
        now = time.perf_counter()
        self.good_weights = copy.deepcopy(self.model.state_dict())
        self.good_step = self.global_step
        self._statistics_due = True
        if now - self._last_holdout >= cfg.holdout_interval:
            self.holdout_accuracy = self._holdout_score()
            self._last_holdout = time.perf_counter()
        if self.held_back > self._held_reported and not self.message:
            self._held_reported = self.held_back
            self.message = (
                "kept the previous prediction: the newest weights miss too many "
                "painted pixels when they predict (training goes on)"
            )
        self._at_update = True
        return self._report(done=False)

    def apply(self, new) -> None:
        """Take new scribbles at an update: whole ones or a :class:`ScribbleDelta`.

        Fresh strokes are scored by the current model before they train;
        what happened is the next report's message.
        """
        self._resume()
        message, fresh = self.data.apply(new)
        for f in fresh:
            self._fresh.score(self.model, self.device, f.x, f.old, f.new, f.origin)
        self.message = message

    def finish(self) -> None:
        """Final BatchNorm statistics, once, for the model and the weights that predict.

        For the weights that are kept, saved and exported (also after a
        stop). Does nothing when called from another thread than the trainer's.
        """
        if not self._final_statistics and self._in_own_thread():
            self.recalibrate(final=True)

    def final_update(self) -> TrainUpdate:
        """End the run (:meth:`finish`) and give its last report."""
        self._resume()
        self.finish()
        self.holdout_accuracy = self._holdout_score()
        return self._report(done=True)

    # -- prediction while training -------------------------------------------------------
    def weights_for_prediction(self) -> torch.nn.Module:
        """The module that predicts: the weight average, or the model; never wrapped.

        At an update, in the trainer's thread, its BatchNorm statistics are
        first recomputed if they are stale (once per update). From another
        thread it is returned as it is.
        """
        if self._statistics_due and self._in_own_thread():
            self.recalibrate()
        return self.average.module if self.average is not None else self.model

    def recalibrate(self, final: bool = False) -> None:
        """Recompute the BatchNorm statistics of the weights that predict (now).

        With a weight average, the prediction guard then decides whether it
        predicts: if it gets the painted pixels of the statistics patches
        right ``config.prediction_guard`` less often than training does,
        the last average that passed stands in for it until the next update.
        ``final``: more batches, and the model's statistics too.
        """
        cfg, avg = self.config, self.average
        seed = STATISTICS_SEED
        batches = cfg.bn_recalibration_final if final else cfg.bn_recalibration
        sampler, device, size, amp = self.data.sampler, self.device, self.batch_size, self.amp_dtype
        if avg is None:
            modules = [self.model]
        else:
            modules = [self.model, avg.module] if final else [avg.module]
        for m in modules:
            recalibrate_batchnorm(m, sampler, device, batches, size, seed, amp)
        self._statistics_due = False
        self.good_average = None if avg is None else copy.deepcopy(avg.module.state_dict())
        if avg is not None and cfg.prediction_guard > 0:
            acc = stroke_accuracy(
                avg.module, sampler, device, max(1, batches // 4), size, seed, amp
            )
            if (
                self._accepted is None
                or acc is None
                or math.isnan(self.accuracy)
                or acc >= self.accuracy - cfg.prediction_guard
            ):
                self._accepted = self.good_average
            else:
                self.held_back += 1
                if not final and self._true_average is None:  # back when training goes on
                    self._true_average = self.good_average
                avg.module.load_state_dict(self._accepted)
                self.good_average = self._accepted
        if final:
            self._final_statistics = True

    def good_state(self) -> tuple[dict, int]:
        """The weights that predict as of the last update (a private copy), and their step."""
        weights = self.good_average if self.good_average is not None else self.good_weights
        return weights, self.good_step

    # -- inside ------------------------------------------------------------------------
    def _in_own_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def _resume(self) -> None:
        """Training goes on after an update: its statistics go stale."""
        if not self._at_update:
            return
        self._at_update = False
        self._statistics_due = False
        if self._true_average is not None:  # the average goes on from where it was
            self.average.module.load_state_dict(self._true_average)
            self._true_average = None
        self.message = ""
        self._last_update = time.perf_counter()

    def _restore(self) -> None:
        """Back to the last good weights (after a failed step)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.model.load_state_dict(self.good_weights)
        if self.average is not None and self.good_average is not None:
            self.average.module.load_state_dict(self.good_average)
        self.global_step = self.good_step

    def _holdout_score(self) -> float | None:
        """Accuracy on the held-out strokes, or on fresh strokes before they trained."""
        if self.config.holdout_fraction <= 0:
            return self._fresh.accuracy()
        module = self.weights_for_prediction()
        holdout = self.data.holdout
        if holdout.class_counts().sum() == 0:
            return None
        return stroke_accuracy(module, holdout, self.device, 1, 8, HOLDOUT_SEED, augment=False)

    def _report(self, done: bool) -> TrainUpdate:
        elapsed = time.perf_counter() - self._start
        n = self.global_step - self._first_step
        return TrainUpdate(
            step=self.global_step,
            loss=self.loss,
            train_accuracy=self.accuracy,
            holdout_accuracy=self.holdout_accuracy,
            elapsed=elapsed,
            steps_per_second=n / elapsed if elapsed > 0 else 0.0,
            done=done,
            message=self.message,
        )

    def _shrink_after_oom(self, exc: BaseException) -> str:
        """Halve the batch (then the patch) after running out of memory; the message says so."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        sampler = self.data.sampler
        multiple = getattr(getattr(self.model, "config", None), "multiple", 1)
        if self.batch_size > 1:
            self.batch_size //= 2
            what = f"batch size {self.batch_size}"
        elif sampler.patch_size // 2 >= max(MIN_PATCH, multiple):
            sampler.patch_size //= 2
            what = f"patches of {sampler.patch_size} px"
        else:
            raise TrainingOutOfMemory(
                f"out of memory even with one patch of {sampler.patch_size} px at step "
                f"{self.global_step}; the last good weights were kept. Close other programs, "
                "use a smaller network (width/depth) or train on the CPU"
            ) from exc
        return f"out of memory at step {self.global_step}: continuing with {what}"
