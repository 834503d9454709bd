"""The public engine object: train from scribbles, predict, save, load."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Generator, Sequence

import numpy as np
import torch

from . import __version__
from .device import select_device
from .errors import CheckpointError, ImageError, ShapeMismatchError
from .inference import Prediction, predict_probabilities
from .io import load_checkpoint, save_checkpoint
from .labels import (
    DEFAULT_CLASS_NAMES,
    IGNORE,
    ScribbleDelta,
    class_counts,
    split_strokes,
    to_targets,
    validate_scribbles,
)
from .model import FlipAverage, ModelConfig, build_model
from .nd import (
    Layout,
    NormalisedSlice,
    NormStats,
    compute_stats,
    make_layout,
    predict_region,
    prepare_slice,
)
from .preprocess import DEFAULT_PERCENTILES, Prepared, prepare
from .sampling import PatchSampler
from .training import TrainConfig, TrainState, TrainUpdate, train_steps

log = logging.getLogger(__name__)

#: Normalised slices of an in-memory stack kept while training (the rest are
#: normalised again when painted: patches are read on demand).
_KEEP_SLICES = 2


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
    tta
        Test-time augmentation: predictions average the four flips of each
        tile (:class:`~napari_frontier.model.FlipAverage`), four times the
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
        self.channels = None if channels is None else tuple(int(c) for c in channels)
        self.nodata = nodata
        self.tta = bool(tta)
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
        self.model = build_model(cfg).to(self.device)
        if self.device.type != "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = None
        self._ema = None

    def _ensure_optimizer(self) -> None:
        if self.optimizer is None:
            tc = self.train_config
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(),
                lr=tc.learning_rate,
                weight_decay=tc.weight_decay,
                # The multi-tensor update (already the default on CUDA) gives
                # the same weights as the per-tensor one, 40 % faster on CPU.
                foreach=True if self.device.type in ("cpu", "cuda") else None,
            )
            self._ema = None
            if tc.ema > 0:
                ema = _WeightAverage(self.model, tc.ema)
                self.optimizer.register_step_post_hook(lambda *_: ema.update(self.model))
                self._ema = ema

    @property
    def predict_model(self) -> torch.nn.Module | None:
        """The network that predicts: the weight average while training, else the model.

        Called from the training thread between updates, it first brings the
        BatchNorm statistics up to date with the current weights.
        """
        module = self._predicting_weights()
        if self.tta and module is not None:
            return FlipAverage(module)
        return module

    def _predicting_weights(self) -> torch.nn.Module | None:
        """The weight average (or the model), statistics brought up to date; never wrapped."""
        if self._state is not None:
            self._state.calibrate()
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
        layouts = [self.layout(im) for im in images]
        for lay in layouts:
            n = int(np.prod(lay.scribble_shape[-2:]))
            if n < 2:
                raise ImageError(f"the image has only {n} pixel: too small to learn anything from")
        checked = [
            validate_scribbles(
                s, self.n_classes, shape=lay.scribble_shape, require_all_classes=False
            )
            for lay, s in zip(layouts, scribble_list, strict=True)
        ]
        stats = [self.stats(im, lay) for im, lay in zip(images, layouts, strict=True)]
        cache: dict[tuple, Prepared] = {}

        def on_demand(i: int) -> bool:
            # Patches of an in-memory stack are normalised as they are drawn
            # (cheap), so memory does not grow with the number of slices
            # painted; a lazy stack (dask, zarr) keeps each painted slice
            # normalised instead of reading from storage at every step.
            return bool(layouts[i].lead_shape) and isinstance(images[i], np.ndarray)

        def prepared(key) -> Prepared:
            # only painted slices of a stack are ever normalised
            if key in cache:
                cache[key] = cache.pop(key)  # the most recently used last
                return cache[key]
            i, idx = key
            cache[key] = prepare_slice(images[i], layouts[i], stats[i], idx, None, self.nodata)
            transient = [k for k in cache if on_demand(k[0])]
            for k in transient[:-_KEEP_SLICES]:
                del cache[k]
            return cache[key]

        def source(key):
            """What the samplers draw patches from for ``key``."""
            i, idx = key
            if on_demand(i):
                return NormalisedSlice(images[i], layouts[i], stats[i], idx, self.nodata)
            return prepared(key).x

        tc = self.train_config
        rng = np.random.default_rng(tc.seed)
        units = self._units(checked, layouts, prepared, rng)
        keys = [u[0] for u in units]
        for key in keys:
            _check_not_constant(prepared(key))
        for lay in layouts:
            self._ensure_model(lay.n_channels)
        self._ensure_optimizer()
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        xs = [source(k) for k in keys]
        # training and held-out strokes: the same images, other targets
        sampler, holdout = (
            PatchSampler(xs, [u[j] for u in units], self.n_classes, tc.patch_size, rng,
                         tc.context_margin, scale=tc.scale_augment,
                         focus=tc.focus if j == 1 else 0.0, jitter=tc.intensity_jitter)
            for j in (1, 2)
        )  # fmt: skip
        del units, checked, xs  # the samplers keep compact copies of what they need
        state = TrainState(self.model, self.optimizer, self.device, self.step)
        if self._ema is not None:
            state.shadows = [self._ema.module]
        self._state = state
        # Test-then-train: strokes that arrive while training runs are scored
        # by the current model before they join the training set.
        fresh = _FreshStrokeScore(
            enabled=tc.holdout_fraction <= 0, min_interval=5 * tc.update_interval
        )

        def on_delta(delta: ScribbleDelta) -> str:
            # A box of new labels on the first image: only that box is
            # re-read. Painted pixels that were held out and kept their
            # class stay held out; every other painted pixel trains.
            lay = layouts[0]
            region = delta.region
            if len(region) != len(lay.scribble_shape):
                return f"kept the previous scribbles: a box of {len(region)} axes"
            lead, (rows, cols) = region[:-2], region[-2:]
            labels = np.asarray(delta.labels)
            for idx in itertools.product(*(range(s.start, s.stop) for s in lead)):
                sub = labels[tuple(i - s.start for i, s in zip(idx, lead, strict=True))]
                key = (0, idx)
                if key not in keys and not sub.any():
                    continue  # an unpainted slice stays unread
                p = prepared(key)
                if key not in keys:  # strokes on a slice that had none
                    keys.append(key)
                    sampler.add(source(key), np.full(p.shape, IGNORE, dtype=np.int8))
                    holdout.add(source(key), np.full(p.shape, IGNORE, dtype=np.int8))
                j = keys.index(key)
                valid = p.valid[rows, cols]
                held = holdout.targets_of(j, rows, cols)
                keep = (held != IGNORE) & (held == sub.astype(np.int64) - 1) & valid
                train = np.where((sub > 0) & valid & ~keep, sub.astype(np.int64) - 1, IGNORE)
                fresh.score(
                    state.model, self.device, p.x, sampler.targets_of(j, rows, cols), train,
                    (rows.start, cols.start),
                )  # fmt: skip
                holdout.update_region(j, rows, cols, np.where(keep, held, IGNORE))
                sampler.update_region(j, rows, cols, train)
            return ""

        def on_scribbles(new) -> str:
            if isinstance(new, ScribbleDelta):
                return on_delta(new)
            new_list = _as_list(new)
            if len(new_list) != len(images):
                return "ignored new scribbles: wrong number of images"
            try:
                new_checked = [
                    validate_scribbles(
                        s, self.n_classes, shape=lay.scribble_shape, require_all_classes=False
                    )
                    for lay, s in zip(layouts, new_list, strict=True)
                ]
                new_units = self._units(
                    new_checked, layouts, prepared, np.random.default_rng(tc.seed)
                )
            except Exception as exc:
                return f"kept the previous scribbles: {exc}"
            seen = set()
            for key, t, h in new_units:
                seen.add(key)
                if key in keys:
                    j = keys.index(key)
                    everything = (slice(0, t.shape[0]), slice(0, t.shape[1]))
                    old = sampler.targets_of(j, *everything)
                    fresh.score(state.model, self.device, prepared(key).x, old, t, (0, 0))
                    sampler.set_targets(j, t)
                    holdout.set_targets(j, h)
                else:  # strokes on a slice that had none
                    keys.append(key)
                    sampler.add(source(key), t)
                    holdout.add(source(key), h)
            for j, key in enumerate(keys):
                if key not in seen:  # all strokes of that slice were erased
                    none = np.full(layouts[key[0]].yx, IGNORE, dtype=np.int8)
                    sampler.set_targets(j, none)
                    holdout.set_targets(j, none)
            return "scribbles updated"

        judge = holdout if tc.holdout_fraction > 0 else fresh.accuracy
        gen = train_steps(state, sampler, tc, judge, seconds, steps, on_scribbles)
        try:
            incoming = None
            while True:
                upd = gen.send(incoming)
                self.step = state.step
                incoming = yield upd
        except StopIteration as stop:
            self.step = state.step
            return stop.value
        except GeneratorExit:
            # Stopped at an update (closed): the weights that predict from
            # now on get the statistics of their weights, as at a normal end.
            # (After a failed step nothing is recomputed: the last good
            # weights are kept exactly as they were.)
            try:
                state.calibrate(final=True)
            except Exception as exc:  # a stop must not fail: keep the statistics as they are
                log.warning("BatchNorm statistics not recomputed at stop: %s", _first_line(exc))
            raise
        finally:
            self.step = state.step
            self._state = None
            gen.close()

    def _units(self, checked, layouts, prepared, rng) -> list:
        """``(key, train_targets, holdout_targets)`` of every painted slice.

        ``key`` is ``(image index, slice index)``; strokes are split into
        training and held-out strokes over the whole image (or stack).
        """
        from .errors import ScribbleError

        units = []
        counts = np.zeros(self.n_classes, dtype=np.int64)
        for i, (s, lay) in enumerate(zip(checked, layouts, strict=True)):
            tr, ho = split_strokes(s, self.n_classes, self.train_config.holdout_fraction, rng)
            painted = (s.reshape(lay.n_slices, -1) > 0).any(axis=1)
            for n, idx in enumerate(lay.slice_indices()):
                if not painted[n] and lay.lead_shape:
                    continue
                p = prepared((i, idx))
                counts += class_counts(np.where(p.valid, s[idx], 0), self.n_classes)
                units.append(((i, idx), to_targets(tr[idx], p.valid), to_targets(ho[idx], p.valid)))
        missing = [k + 1 for k in range(self.n_classes) if counts[k] == 0]
        if missing:
            names = ", ".join(f'{k} ("{self.class_names[k - 1]}")' for k in missing)
            raise ScribbleError(
                f"no painted pixel (on valid image pixels) for class {names}; "
                "paint at least one stroke of every class"
            )
        return units

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
        :mod:`napari_frontier.lazy`.
        """
        lay = self.layout(image)
        self._check_model(lay)
        if not lay.lead_shape:
            stats = stats or self.stats(image, lay)
            p = prepare_slice(image, lay, stats, (), None, self.nodata)
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
        probs = np.empty((self.n_classes, *lay.scribble_shape), dtype=np.float32)
        valid = np.empty(lay.scribble_shape, dtype=bool)
        for upd in self.predict_slices(image, tile, halo, batch_size, stats=stats):
            probs[(slice(None), *upd.index)] = upd.prediction.probabilities
            valid[upd.index] = upd.prediction.valid
            if progress is not None:
                progress(upd.done, upd.total)
        return Prediction(probabilities=probs, valid=valid)

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
                self.predict_model, self.device, image, lay, stats, idx, None, self.nodata,
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
            self.predict_model, self.device, image, lay, stats, tuple(index), region, self.nodata,
            tile=tile, halo=halo,
        )  # fmt: skip
        return Prediction(probabilities=probs, valid=valid)

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


class _FreshStrokeScore:
    """Accuracy of the model on strokes it has not trained on yet (test-then-train).

    Each time new scribbles arrive, the pixels that are newly painted (or
    painted with another class) are predicted by the current model before
    they join the training set; :meth:`accuracy` is the pixel accuracy over
    the last ``window`` such updates (None until a stroke is scored).
    """

    def __init__(self, window: int = 5, enabled: bool = True, min_interval: float = 0.0):
        from collections import deque

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


class _WeightAverage:
    """Exponential moving average of a model's weights and float buffers.

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


def check_image(image, channel_axis: int | None = None) -> None:
    """Raise :class:`ImageError` early for an image the engine cannot use (any N-D layout)."""
    layout = make_layout(image, channel_axis)
    if isinstance(image, np.ndarray):
        compute_stats(image, layout)  # dtype, and at least one valid pixel
    elif np.dtype(getattr(image, "dtype", np.float32)).kind not in "biuf":
        raise ImageError(f"unsupported image dtype {image.dtype}")


__all__ = ["ImageError", "Segmenter", "SliceUpdate", "check_image"]
