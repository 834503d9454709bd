"""Background jobs of the plugin's worker threads (no Qt in here).

Live training itself is :class:`napari_frontier.live.trainer.LiveTrainer`; these are
the other jobs (a whole-slice preview, applying the model to another image,
predicting a volume) and the once-per-process warm-up. Errors are returned
or yielded, not raised: a worker would drop a ``RuntimeError``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

import numpy as np

from ..live.trainer import SlicePredictor

_warm = threading.Event()
#: Set when :func:`warm_up` has finished (successfully or not).
warmed_up = threading.Event()


def start_warm_up(model_config: dict | None = None) -> None:
    """Run :func:`warm_up` in a background thread (once per process)."""
    if not _warm.is_set():
        threading.Thread(
            target=warm_up, args=(model_config,), name="napari-frontier warm-up", daemon=True
        ).start()


def warm_up(model_config: dict | None = None) -> None:
    """Run two tiny training steps and one whole-tile prediction, once per process.

    Torch's first training step and first large prediction in a process cost
    a second or more each (kernel selection, allocator set-up); paying that
    while the user is still painting brings the first overlay after "Train"
    that much sooner. Uses its own throw-away model, so it can run beside
    anything else.
    """
    if _warm.is_set():
        return
    _warm.set()
    try:
        _warm_up(model_config)
    except Exception:  # only an optimisation: never disturb the user
        pass
    finally:
        warmed_up.set()


def _warm_up(model_config):
    import scipy.ndimage  # noqa: F401 (first imports cost a second in the worker)
    import skimage.measure
    import skimage.segmentation  # noqa: F401

    from ..learning.config import TrainConfig
    from ..segmenter import Segmenter

    rng = np.random.default_rng(0)
    image = rng.random((48, 48)).astype(np.float32)
    scribbles = np.zeros((48, 48), np.uint8)
    scribbles[4:12, 4:12], scribbles[30:40, 30:40] = 1, 2
    seg = Segmenter(train_config=TrainConfig(threads=1), model_config=model_config)
    seg.fit(image, scribbles, steps=2)
    big = rng.random((512, 512)).astype(np.float32)  # one full tile, as images get
    _ = seg.predict(big).frontier


def predict_overlay(seg, image, index: tuple[int, ...] = ()):
    """Worker job: overlays of a whole image (or one slice), for a model that is not training.

    Returns a whole-slice :class:`~napari_frontier.live.trainer.OverlayDelta`, or the
    exception (the caller shows it).
    """
    try:
        predictor = SlicePredictor(seg, image, index)
        return predictor.run(step=seg.step, final=True)
    except Exception as exc:
        return exc


def predict_labels(seg, image):
    """Worker job: class map (uint8, 1..K) of ``image``, or the exception."""
    try:
        return seg.predict(image).labels
    except Exception as exc:
        return exc


def predict_volume(seg, image) -> Generator:
    """Worker job: predict every slice of a stack; yields a ``SliceUpdate`` per slice.

    Normalisation statistics are computed once for the whole stack. An
    error is yielded (not raised) and ends the job. Quitting the worker
    stops it between slices.
    """
    try:
        stats = seg.stats(image)
        yield from seg.predict_slices(image, stats=stats)
    except Exception as exc:
        yield exc
