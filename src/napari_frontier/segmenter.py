"""The public engine object: train from scribbles, predict, save, load."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch

from . import __version__
from .data.io import load_checkpoint, save_checkpoint
from .data.layout import Layout, make_layout
from .data.normalise import (
    DEFAULT_PERCENTILES,
    NormStats,
    Prepared,
    compute_stats,
    prepare,
    prepare_slice,
)
from .data.scribbles import default_class_names
from .errors import CheckpointError, ImageError, ShapeMismatchError
from .learning.config import TrainConfig, TrainUpdate
from .learning.network import ModelConfig, build_model, features_settings
from .learning.trainer import Trainer, WeightAverage, make_optimizer
from .learning.training_data import TrainingData
from .prediction.device import channels_last, select_device
from .prediction.regions import predict_region
from .prediction.tiling import FlipAverage, Prediction, predict_labels, predict_probabilities

log = logging.getLogger(__name__)


def _as_list(v):
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


@dataclasses.dataclass(frozen=True)
class SliceUpdate:
    """One predicted slice of a stack (from :meth:`Segmenter.predict_slices`)."""

    index: tuple[int, ...]
    done: int
    total: int
    prediction: Prediction


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
        Other axes beyond the last two (Y, X) are slice axes (Z, T, ...): stacks
        and time series are trained and predicted slice by slice.
    channels
        Use only these channels (indices along ``channel_axis``); None: all.
    nodata
        Input value that marks invalid pixels (NaN and inf always do).
    train_config
        :class:`TrainConfig`; defaults come from the benchmarks.
    model_config
        Keyword overrides for :class:`ModelConfig` (``width``, ``depth``, ...).
    features
        What the network reads: ``"filters"`` (a fixed multi-scale filter
        bank), ``"pretrained"`` (a frozen ImageNet backbone's activations) or
        ``"both"``; None: the default of :class:`ModelConfig`. Recorded in checkpoints.
    tta
        Test-time augmentation: predictions average the four flips of each
        tile (:class:`~napari_frontier.prediction.tiling.FlipAverage`), four times the
        work. Off by default (live overlays stay fast); an attribute, so it
        can be switched on for a final export.

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
        channels: Sequence[int] | None = None,
        tta: bool = False,
        features: str | None = None,
    ):
        if n_classes < 2:
            raise ValueError("n_classes must be at least 2")
        self.n_classes = n_classes
        self.class_names = tuple(
            default_class_names(n_classes) if class_names is None else class_names
        )
        self.channel_axis = channel_axis
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.nodata = nodata
        self.tta = bool(tta)
        self.train_config = train_config or TrainConfig()
        self._model_overrides = dict(model_config or {})
        if features is not None:
            self._model_overrides.update(features_settings(features))
        self.model: torch.nn.Module | None = None
        self._ema: WeightAverage | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        #: The running training (None when not training).
        self._trainer: Trainer | None = None
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
        """Normalise a 2D image the way this segmenter does."""
        if self.channels is not None:
            lay = self.layout(image)
            return prepare_slice(image, lay, self.stats(image, lay), nodata=self.nodata)
        return prepare(image, self.channel_axis, self.nodata, self.percentiles)

    def layout(self, image) -> Layout:
        """How this segmenter reads the axes of ``image`` (slices, channels, Y, X)."""
        return make_layout(image, self.channel_axis, self.channels)

    def stats(self, image, layout: Layout | None = None) -> NormStats:
        """Whole-image normalisation statistics (read band by band from lazy arrays)."""
        layout = layout or self.layout(image)
        return compute_stats(image, layout, self.nodata, self.percentiles)

    def prepare_slice(
        self,
        image,
        index: tuple[int, ...] = (),
        region=None,
        stats: NormStats | None = None,
    ) -> Prepared:
        """Normalised network input of one slice (or ``(slice_y, slice_x)`` region)."""
        lay = self.layout(image)
        stats = stats or self.stats(image, lay)
        return prepare_slice(image, lay, stats, index, region, self.nodata)

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
        self.model = channels_last(build_model(cfg).to(self.device), self.device)
        self.optimizer = None
        self._ema = None

    def _image_features(self):
        """How training computes the backbone features of a slice, if the network reads them."""
        cfg = self.model.config if self.model is not None else ModelConfig(**self._model_overrides)
        if not cfg.backbone:
            return None
        from .learning.backbone import FEATURE_CHANNELS, image_features

        stride, device = cfg.context_stride, self.device
        return (lambda x: image_features(x, device, stride), FEATURE_CHANNELS, stride)

    def _ensure_optimizer(self) -> None:
        if self.optimizer is None:
            self.optimizer, self._ema = make_optimizer(self.model, self.train_config, self.device)

    @property
    def predict_model(self) -> torch.nn.Module | None:
        """The network that predicts: the weight average (if kept) or the model.

        A plain accessor; while training runs, predict through
        :meth:`model_for_prediction`, which brings its statistics up to date.
        """
        return self._wrapped(self._predicting_weights())

    def model_for_prediction(self) -> torch.nn.Module | None:
        """The network that predicts, ready to: what :meth:`predict` and its kin use.

        Called from the training thread between updates, it first brings the
        BatchNorm statistics up to date with the current weights.
        """
        if self._trainer is not None:
            return self._wrapped(self._trainer.weights_for_prediction())
        return self.predict_model

    def _wrapped(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        if self.tta and module is not None:
            return FlipAverage(module)
        return module

    def _predicting_weights(self) -> torch.nn.Module | None:
        """The weight average (or the model), never wrapped."""
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
        images). An image may be a stack or time series (slice axes before
        Y, X; scribbles of the image's shape without channels): one 2D model
        is trained over the slices that carry strokes, the only ones read and
        normalised (with whole-stack statistics), so a Zarr or dask stack is
        never loaded whole. Send new scribbles (same form) into the generator to
        continue on them without restarting; close it to stop. A later call
        continues from the current weights.
        """
        images = _as_list(image)
        scribble_list = _as_list(scribbles)
        if len(images) != len(scribble_list):
            raise ShapeMismatchError(
                f"{len(images)} images but {len(scribble_list)} scribble images"
            )
        data = TrainingData(
            images, scribble_list, [self.layout(im) for im in images],
            n_classes=self.n_classes, class_names=self.class_names, nodata=self.nodata,
            percentiles=self.percentiles, config=self.train_config,
            features=self._image_features(),
        )  # fmt: skip
        for lay in data.layouts:
            self._ensure_model(lay.n_channels)
        self._ensure_optimizer()
        trainer = Trainer(
            self.model, self.optimizer, self._ema, data, self.train_config, self.device,
            step=self.step, seconds=seconds, steps=steps,
        )  # fmt: skip
        self._trainer = trainer
        try:
            while not trainer.finished():
                trainer.step()
                if trainer.update_due():
                    upd = trainer.update()
                    self.step = trainer.global_step
                    new = yield upd
                    if new is not None:
                        trainer.apply(new)
            final = trainer.final_update()
            self.step = trainer.global_step
            new = yield final
            if new is not None:
                trainer.apply(new)
            return final
        except GeneratorExit:
            # Stopped at an update (closed): the weights that predict from
            # now on get the statistics of their weights, as at a normal end.
            # (After a failed step nothing is recomputed: the last good
            # weights are kept exactly as they were.)
            try:
                trainer.finish()
            except Exception as exc:  # a stop must not fail: keep the statistics as they are
                log.warning("BatchNorm statistics not recomputed at stop: %s", _first_line(exc))
            raise
        finally:
            self.step = trainer.global_step
            self._trainer = None

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
    def _check_model(self, layout: Layout) -> None:
        if self.model is None:
            raise CheckpointError("the model is not trained yet: train it or load a checkpoint")
        if layout.n_channels != self.model.config.in_channels:
            raise ShapeMismatchError(
                f"the model was trained on {self.model.config.in_channels} channel(s) but this "
                f"image has {layout.n_channels} (shape {layout.shape}, channel axis "
                f"{layout.channel_axis})"
            )

    def predict(
        self,
        image,
        tile: int = 1024,
        halo: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: NormStats | None = None,
    ) -> Prediction:
        """Predict a whole image (any size, tiled). Returns a :class:`Prediction`.

        A stack or time series (slice axes before Y, X) is predicted slice by
        slice; ``probabilities`` is then ``(K, *slices, Y, X)`` and ``progress``
        is called once per slice. Images larger than memory: see
        :mod:`napari_frontier.prediction.blocks`.
        """
        lay = self.layout(image)
        self._check_model(lay)
        if not lay.lead_shape:
            stats = stats or self.stats(image, lay)
            p = prepare_slice(image, lay, stats, (), None, self.nodata)
            probs = predict_probabilities(
                self.model_for_prediction(),
                p.x,
                self.device,
                tile=tile,
                halo=halo,
                batch_size=batch_size,
                progress=progress,
            )
            probs[:, ~p.valid] = np.nan
            return Prediction(probabilities=probs, valid=p.valid)
        probs = np.empty((self.n_classes, *lay.scribble_shape), dtype=np.float32)
        valid = np.empty(lay.scribble_shape, dtype=bool)
        for upd in self.predict_slices(image, tile, halo, batch_size, stats=stats):
            probs[(slice(None), *upd.index)] = upd.prediction.probabilities
            valid[upd.index] = upd.prediction.valid
            if progress is not None:
                progress(upd.done, upd.total)
        return Prediction(probabilities=probs, valid=valid)

    def predict_labels(
        self,
        image,
        tile: int = 1024,
        halo: int | None = None,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        stats: NormStats | None = None,
        workers: int = 1,
    ) -> np.ndarray:
        """``predict(image, ...).labels`` (uint8 1..K, 0 at invalid pixels), the same array.

        A 2D image goes tile by tile straight to labels, without the
        ``(K, H, W)`` float32 probabilities (for writing masks); ``workers``
        tiles at once on a CPU (:func:`~napari_frontier.prediction.tiling.predict_labels`).
        """
        lay = self.layout(image)
        if lay.lead_shape:
            return self.predict(image, tile, halo, batch_size, progress, stats).labels
        self._check_model(lay)
        p = prepare_slice(image, lay, stats or self.stats(image, lay), (), None, self.nodata)
        labels = predict_labels(
            self.model_for_prediction(), p.x, self.device,
            tile=tile, halo=halo, batch_size=batch_size, progress=progress, workers=workers,
        )  # fmt: skip
        labels[~p.valid] = Prediction.NODATA_LABELS
        return labels

    def predict_slices(
        self,
        image,
        tile: int = 1024,
        halo: int | None = None,
        batch_size: int | None = None,
        indices=None,
        stats: NormStats | None = None,
    ) -> Generator[SliceUpdate, None, None]:
        """Predict a stack slice by slice, yielding a :class:`SliceUpdate` per slice.

        Made to be driven by a background worker (napari's ``thread_worker``):
        close the generator to cancel between slices. ``indices`` limits it to
        some slices (default: all, in order). Normalisation uses whole-stack
        statistics, so each slice is predicted as in :meth:`predict`.
        """
        lay = self.layout(image)
        self._check_model(lay)
        stats = stats or self.stats(image, lay)
        indices = list(lay.slice_indices()) if indices is None else [tuple(i) for i in indices]
        for n, idx in enumerate(indices, 1):
            probs, valid = predict_region(
                self.model_for_prediction(), self.device, image, lay, stats, idx, None, self.nodata,
                tile=tile, halo=halo, batch_size=batch_size,
            )  # fmt: skip
            yield SliceUpdate(idx, n, len(indices), Prediction(probabilities=probs, valid=valid))

    def predict_region(
        self,
        image,
        index: tuple[int, ...] = (),
        region: tuple[slice, slice] | None = None,
        stats: NormStats | None = None,
        tile: int = 1024,
        halo: int | None = None,
    ) -> Prediction:
        """Predict one 2D slice of a stack, or a ``(slice_y, slice_x)`` region of it.

        For a live preview of the slice (or the part of a huge image) in
        view: only the region and its halo of context are read and
        predicted, and the result equals the same part of :meth:`predict`
        within float rounding. Pass ``stats`` (from :meth:`stats`, computed
        once) to avoid re-reading the whole image on every call.
        """
        lay = self.layout(image)
        self._check_model(lay)
        stats = stats or self.stats(image, lay)
        probs, valid = predict_region(
            self.model_for_prediction(), self.device, image, lay, stats, tuple(index), region,
            self.nodata, tile=tile, halo=halo,
        )  # fmt: skip
        return Prediction(probabilities=probs, valid=valid)

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict:
        """Self-describing checkpoint content (plain types and tensors only)."""
        if self.model is None:
            raise CheckpointError("nothing to save: the model is not trained yet")
        trainer, step = self._trainer, self.step
        if trainer is not None:
            # Training runs (maybe in another thread): take the consistent
            # copy made at its last update rather than weights being changed.
            weights, step = trainer.good_state()
        else:
            weights = self._predicting_weights().state_dict()
        return {
            "state_dict": {k: v.detach().cpu().clone() for k, v in weights.items()},
            "model_config": self.model.config.as_dict(),
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "channels": self.model.config.in_channels,
            "channel_axis": self.channel_axis,
            "channel_selection": None if self.channels is None else list(self.channels),
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
                channels=payload.get("channel_selection"),
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


def check_image(image, channel_axis: int | None = None) -> None:
    """Raise :class:`ImageError` early for an image the engine cannot use (any N-D layout)."""
    layout = make_layout(image, channel_axis)
    if isinstance(image, np.ndarray):
        compute_stats(image, layout)  # dtype, and at least one valid pixel
    elif np.dtype(getattr(image, "dtype", np.float32)).kind not in "biuf":
        raise ImageError(f"unsupported image dtype {image.dtype}")


__all__ = ["ImageError", "Segmenter", "SliceUpdate", "check_image"]
