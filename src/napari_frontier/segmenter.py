"""The public engine object: train from scribbles, predict, save, load."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch

from . import __version__
from .device import select_device
from .errors import CheckpointError, ImageError, ShapeMismatchError
from .inference import Prediction, predict_probabilities
from .io import load_checkpoint, save_checkpoint
from .labels import DEFAULT_CLASS_NAMES, split_strokes, to_targets, validate_scribbles
from .model import ModelConfig, build_model
from .preprocess import DEFAULT_PERCENTILES, Prepared, prepare
from .sampling import PatchSampler
from .training import TrainConfig, TrainState, TrainUpdate, train_steps


def _as_list(v):
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


class Segmenter:
    """Learns "is" / "is not" (or K classes) from scribbles; predicts whole images.

    Parameters
    ----------
    n_classes
        Number of painted classes K (2: "is" / "is not").
    class_names
        Names of classes 1..K.
    channel_axis
        Axis of channels in the images (None: grey, or RGB(A) if the last axis is 3/4).
    nodata
        Input value that marks invalid pixels (NaN and inf always do).
    train_config
        :class:`TrainConfig`; defaults come from the benchmarks.
    model_config
        Keyword overrides for :class:`ModelConfig` (``width``, ``depth``, ...).

    Examples
    --------
    >>> seg = Segmenter()
    >>> seg.fit(image, scribbles, seconds=30)          # doctest: +SKIP
    >>> mask = seg.predict(image).mask()               # doctest: +SKIP
    """

    def __init__(
        self,
        n_classes: int = 2,
        class_names: Sequence[str] | None = None,
        channel_axis: int | None = None,
        nodata: float | None = None,
        train_config: TrainConfig | None = None,
        model_config: dict | None = None,
    ):
        if n_classes < 2:
            raise ValueError("n_classes must be at least 2")
        self.n_classes = n_classes
        if class_names is None:
            class_names = (
                DEFAULT_CLASS_NAMES if n_classes == 2 else [str(k) for k in range(1, n_classes + 1)]
            )
        self.class_names = tuple(class_names)
        self.channel_axis = channel_axis
        self.nodata = nodata
        self.train_config = train_config or TrainConfig()
        self._model_overrides = dict(model_config or {})
        self.model: torch.nn.Module | None = None
        self._ema: _WeightAverage | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        #: The running training's state (None when not training).
        self._state: TrainState | None = None
        self.device = select_device(self.train_config.device)
        self.percentiles = DEFAULT_PERCENTILES

    # -- set-up -----------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self.model is not None and self.step > 0

    @property
    def in_channels(self) -> int | None:
        return None if self.model is None else self.model.config.in_channels

    def prepare(self, image: np.ndarray) -> Prepared:
        """Normalise an image the way this segmenter does."""
        return prepare(image, self.channel_axis, self.nodata, self.percentiles)

    def _ensure_model(self, in_channels: int) -> None:
        if self.model is not None:
            if self.model.config.in_channels != in_channels:
                raise ShapeMismatchError(
                    f"the model was made for {self.model.config.in_channels} channel(s) but the "
                    f"image has {in_channels}"
                )
            return
        if self.train_config.seed is not None:
            torch.manual_seed(self.train_config.seed)
        cfg = ModelConfig(
            in_channels=in_channels, n_classes=self.n_classes, **self._model_overrides
        )
        self.model = build_model(cfg).to(self.device)
        if self.device.type != "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = None
        self._ema = None

    def _ensure_optimizer(self) -> None:
        if self.optimizer is None:
            tc = self.train_config
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay
            )
            self._ema = None
            if tc.ema > 0:
                ema = _WeightAverage(self.model, tc.ema)
                self.optimizer.register_step_post_hook(lambda *_: ema.update(self.model))
                self._ema = ema

    @property
    def predict_model(self) -> torch.nn.Module | None:
        """The network that predicts: the weight average while training, else the model."""
        return self._ema.module if self._ema is not None else self.model

    def reset(self) -> None:
        """Forget the learned weights (the next training starts fresh)."""
        self.model = None
        self._ema = None
        self.optimizer = None
        self.step = 0

    # -- training ---------------------------------------------------------
    def training(
        self,
        image,
        scribbles,
        seconds: float | None = None,
        steps: int | None = None,
    ) -> Generator[TrainUpdate, object, TrainUpdate]:
        """A generator that trains and yields :class:`TrainUpdate` a few times a second.

        ``image`` and ``scribbles`` may be lists (one model over several
        images). Send new scribbles (same form) into the generator to
        continue on them without restarting; close it to stop. A later call
        continues from the current weights.
        """
        images = _as_list(image)
        scribble_list = _as_list(scribbles)
        if len(images) != len(scribble_list):
            raise ShapeMismatchError(
                f"{len(images)} images but {len(scribble_list)} scribble images"
            )
        prepared = [self.prepare(im) for im in images]
        for p in prepared:
            _check_not_constant(p)
        checked = [
            validate_scribbles(s, self.n_classes, shape=p.shape, require_all_classes=False)
            for p, s in zip(prepared, scribble_list, strict=True)
        ]
        # Every class must be painted somewhere (on any image), on valid pixels.
        self._check_all_classes(checked, prepared)
        tc = self.train_config
        rng = np.random.default_rng(tc.seed)
        train_t, hold_t = self._split(checked, prepared, rng)
        self._ensure_model(prepared[0].n_channels)
        for p in prepared[1:]:
            self._ensure_model(p.n_channels)
        self._ensure_optimizer()
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        sampler = PatchSampler([p.x for p in prepared], train_t, self.n_classes, tc.patch_size, rng)
        holdout = PatchSampler([p.x for p in prepared], hold_t, self.n_classes, tc.patch_size, rng)
        state = TrainState(self.model, self.optimizer, self.device, self.step)
        if self._ema is not None:
            state.shadows = [self._ema.module]
        self._state = state

        def on_scribbles(new) -> str:
            new_list = _as_list(new)
            if len(new_list) != len(prepared):
                return "ignored new scribbles: wrong number of images"
            try:
                new_checked = [
                    validate_scribbles(s, self.n_classes, shape=p.shape, require_all_classes=False)
                    for p, s in zip(prepared, new_list, strict=True)
                ]
                self._check_all_classes(new_checked, prepared)
            except Exception as exc:
                return f"kept the previous scribbles: {exc}"
            tr, ho = self._split(new_checked, prepared, np.random.default_rng(tc.seed))
            for i, (t, h) in enumerate(zip(tr, ho, strict=True)):
                sampler.set_targets(i, t)
                holdout.set_targets(i, h)
            return "scribbles updated"

        gen = train_steps(state, sampler, tc, holdout, seconds, steps, on_scribbles)
        try:
            incoming = None
            while True:
                upd = gen.send(incoming)
                self.step = state.step
                incoming = yield upd
        except StopIteration as stop:
            self.step = state.step
            return stop.value
        finally:
            self.step = state.step
            self._state = None
            gen.close()

    def _check_all_classes(self, checked, prepared) -> None:
        from .errors import ScribbleError
        from .labels import class_counts

        counts = sum(
            class_counts(np.where(p.valid, s, 0), self.n_classes)
            for s, p in zip(checked, prepared, strict=True)
        )
        missing = [k + 1 for k in range(self.n_classes) if counts[k] == 0]
        if missing:
            names = ", ".join(f'{k} ("{self.class_names[k - 1]}")' for k in missing)
            raise ScribbleError(
                f"no painted pixel (on valid image pixels) for class {names}; "
                "paint at least one stroke of every class"
            )

    def _split(self, checked, prepared, rng):
        train_t, hold_t = [], []
        for s, p in zip(checked, prepared, strict=True):
            tr, ho = split_strokes(s, self.n_classes, self.train_config.holdout_fraction, rng)
            train_t.append(to_targets(tr, p.valid))
            hold_t.append(to_targets(ho, p.valid))
        return train_t, hold_t

    def fit(
        self,
        image,
        scribbles,
        seconds: float | None = None,
        steps: int | None = None,
        callback: Callable[[TrainUpdate], None] | None = None,
    ) -> TrainUpdate:
        """Train for ``seconds`` and/or ``steps`` (at least one) and return the last update."""
        if seconds is None and steps is None:
            raise ValueError("give seconds or steps (or both) to bound training")
        last = None
        for upd in self.training(image, scribbles, seconds=seconds, steps=steps):
            last = upd
            if callback is not None:
                callback(upd)
        return last

    # -- prediction -------------------------------------------------------
    def predict(
        self,
        image,
        tile: int = 1024,
        halo: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Predict a whole image (any size, tiled). Returns a :class:`Prediction`."""
        if self.model is None:
            raise CheckpointError("the model is not trained yet: train it or load a checkpoint")
        p = self.prepare(image)
        if p.n_channels != self.model.config.in_channels:
            raise ShapeMismatchError(
                f"the model was trained on {self.model.config.in_channels} channel(s) but this "
                f"image has {p.n_channels}"
            )
        probs = predict_probabilities(
            self.predict_model,
            p.x,
            self.device,
            tile=tile,
            halo=halo,
            batch_size=batch_size,
            progress=progress,
        )
        probs[:, ~p.valid] = np.nan
        return Prediction(probabilities=probs, valid=p.valid)

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict:
        """Self-describing checkpoint content (plain types and tensors only)."""
        if self.model is None:
            raise CheckpointError("nothing to save: the model is not trained yet")
        state, step = self._state, self.step
        if state is not None and state.good_weights is not None:
            # Training runs (maybe in another thread): take the consistent
            # copy made at its last update rather than weights being changed.
            weights, step = state.good_weights, state.good_step
            if state.good_shadows:  # the weights that predict (e.g. a weight average)
                weights = state.good_shadows[0]
        else:
            weights = self.predict_model.state_dict()
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in weights.items()},
            "model_config": self.model.config.as_dict(),
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "channels": self.model.config.in_channels,
            "channel_axis": self.channel_axis,
            "nodata": self.nodata,
            "normalisation": {"method": "percentile", "percentiles": list(self.percentiles)},
            "train_config": dataclasses.asdict(self.train_config),
            "step": step,
            "versions": {"napari_frontier": __version__, "torch": str(torch.__version__)},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def save(self, path) -> None:
        """Save weights and everything needed to use them (atomic write)."""
        save_checkpoint(path, self.state_dict())

    @classmethod
    def load(cls, path, device: str = "auto") -> Segmenter:
        """Load a checkpoint saved by :meth:`save` (never runs pickled code)."""
        payload = load_checkpoint(path)
        try:
            cfg = ModelConfig.from_dict(payload["model_config"])
            tc_fields = {f.name for f in dataclasses.fields(TrainConfig)}
            tc = TrainConfig(
                **{k: v for k, v in payload.get("train_config", {}).items() if k in tc_fields}
            )
            tc = dataclasses.replace(tc, device=device)
            seg = cls(
                n_classes=int(payload["n_classes"]),
                class_names=payload.get("class_names"),
                channel_axis=payload.get("channel_axis"),
                nodata=payload.get("nodata"),
                train_config=tc,
            )
            if cfg.n_classes != seg.n_classes:
                raise ValueError("class count of the network and of the checkpoint differ")
            seg.percentiles = tuple(payload["normalisation"]["percentiles"])
            model = build_model(cfg)
            model.load_state_dict(payload["state_dict"], strict=True)
        except CheckpointError:
            raise
        except Exception as exc:
            detail = _first_line(exc)
            if "size mismatch" in str(exc):
                detail = (
                    "its weights have other shapes (another network width, depth or channel count)"
                )
            raise CheckpointError(
                f"{path}: checkpoint does not match this model ({detail})"
            ) from exc
        seg.model = model.to(seg.device)
        seg.step = int(payload.get("step", 0))
        return seg


class _WeightAverage:
    """Exponential moving average of a model's weights (buffers are copied).

    The decay ramps up as ``(1 + n) / (10 + n)`` so that early predictions
    are not held back by the random initial weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.n = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        self.n += 1
        ema = list(self.module.parameters())
        torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - d)
        for be, b in zip(self.module.buffers(), model.buffers(), strict=True):
            be.copy_(b)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


def _check_not_constant(p: Prepared) -> None:
    """Training needs some contrast: every channel constant over valid pixels is refused."""
    if p.valid.size < 2:
        raise ImageError(
            f"the image has only {p.valid.size} pixel: too small to learn anything from"
        )
    x = p.x[:-1][:, p.valid]
    if x.size and np.all(x.max(axis=1) == x.min(axis=1)):
        raise ImageError(
            "every valid pixel of the image has the same value: there is nothing to learn "
            "from; check that the right image (or channel) is chosen"
        )


def check_image(image) -> None:
    """Raise :class:`ImageError` early for an image the engine cannot use."""
    prepare(image)


__all__ = ["ImageError", "Segmenter", "check_image"]
