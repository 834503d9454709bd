"""Autosave, restore and projects for the widget: layers in, :mod:`..outputs.project` files out.

The files are written by the Qt-free :mod:`napari_frontier.outputs.project`; this
module only gathers layer data (on the main thread) and owns the autosave
timer. While training runs, the model saved is the consistent copy the
trainer made at its last update (:meth:`Segmenter.state_dict`), never
weights being changed by the worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..errors import FrontierError
from ..outputs import project as P
from . import layers as L

log = logging.getLogger(__name__)

#: Autosave every minute (and whenever training stops).
AUTOSAVE_INTERVAL_MS = 60_000


def image_source(layer) -> str | None:
    """The file an image layer was opened from, if any."""
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else None


def image_key(layer) -> str:
    """Autosave key of an image layer: its name and the file it came from."""
    return P.autosave_key(layer.name, image_source(layer))


def settings_of(session) -> dict:
    return {
        "train_config": dataclasses.asdict(session.train_config),
        "model_config": dict(session.model_config),
    }


def _model_of(session):
    seg = session.segmenter
    return seg if seg is not None and seg.model is not None else None


class _Job:
    """``func(*args, **kwargs)`` once, then nothing of them is kept."""

    def __init__(self, func, args, kwargs):
        self._call = (func, args, kwargs)

    def run(self):
        func, args, kwargs = self._call
        self._call = None
        return func(*args, **kwargs)


class _Snapshot:
    """A model's checkpoint content taken on the main thread, written by a worker."""

    def __init__(self, model, state: dict):
        self.model = model
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _write(*args, _done: threading.Event | None = None, **kwargs):
    """Worker job: write an autosave; returns its path or the exception."""
    try:
        return P.write_autosave(*args, **kwargs)
    except (FrontierError, OSError) as exc:
        return exc
    finally:
        if _done is not None:
            _done.set()


class Autosaver:
    """Saves scribbles and model of the chosen image at intervals and when training stops.

    Parameters
    ----------
    session
        The :class:`~.session.TrainingSession` (its model).
    layers
        A callable returning ``(image_layer, scribbles_layer)`` (either may be None).
    interval_ms
        Autosave period; 0 turns the timer off (stop still autosaves).
    folder
        Where autosaves go (default :func:`napari_frontier.outputs.project.autosave_dir`).
    """

    def __init__(self, session, layers, interval_ms: int = AUTOSAVE_INTERVAL_MS, folder=None):
        self.session = session
        self.layers = layers
        self.folder = folder
        self.count = 0
        self.last_path: Path | None = None
        self._last: tuple | None = None
        self._warned = False
        self._writing = False
        self._pending: tuple | None = None
        self._done = threading.Event()
        self._done.set()
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.autosave(background=True))
        self.set_interval(interval_ms)
        session.state_changed.connect(self._on_state)

    def set_interval(self, interval_ms: int) -> None:
        self.timer.stop()
        if interval_ms > 0:
            self.timer.setInterval(int(interval_ms))
            self.timer.start()

    def _on_state(self, training: bool) -> None:
        if not training:
            self.autosave(background=True)

    def path_for(self, image_layer) -> Path:
        return P.autosave_path(image_key(image_layer), self.folder)

    def autosave(self, background: bool = False) -> Path | None:
        """Write the autosave if anything changed; never raises (warns once).

        The scribbles and the model's weights are copied here (main thread,
        milliseconds); with ``background`` they are serialised and written
        in a worker thread and None is returned (``count`` and ``last_path``
        change when the file is written).
        """
        image, scribbles = self.layers()
        if image is None or scribbles is None or self._writing:
            return None
        data = np.array(scribbles.data, copy=True)
        seg = _model_of(self.session)
        step = None if seg is None else seg.step
        if self._last is not None:
            last_key, last_data, last_step = self._last
            if last_key == image.name and last_step == step and np.array_equal(last_data, data):
                return self.last_path
        try:
            snapshot = None if seg is None else _Snapshot(seg.model, seg.state_dict())
        except FrontierError as exc:
            self._failed(exc)
            return None
        args = (image_key(image), data)
        kwargs = dict(
            segmenter=snapshot,
            image_shape=L.spatial_shape(image),
            image_name=image.name,
            image_path=image_source(image),
            settings={**settings_of(self.session), "scribbles_name": scribbles.name},
            folder=self.folder,
        )
        done = (image.name, data, step)
        if not background:
            result = _write(*args, **kwargs)
            return self._written(result, done)
        from napari.qt.threading import create_worker

        # The worker object may outlive the write (Qt keeps it), so it must not
        # hold the copies: it gets a job that drops them once it has run.
        job = _Job(_write, args, {**kwargs, "_done": self._done})
        self._pending = done
        worker = create_worker(job.run, _start_thread=False)
        worker.returned.connect(self._written_in_background)
        worker.finished.connect(self._finished_writing)
        self._writing = True
        self._done.clear()
        worker.start()
        return None

    def _written_in_background(self, result) -> None:
        done, self._pending = self._pending, None
        self._written(result, done)

    def _finished_writing(self) -> None:
        self._writing = False
        self._pending = None

    @property
    def writing(self) -> bool:
        """True while a background autosave is being written."""
        return self._writing

    def close(self, timeout: float = 10.0) -> None:
        """Stop the timer; wait (up to ``timeout`` s) for a write in progress."""
        self.timer.stop()
        self._done.wait(timeout)

    def _written(self, result, done) -> Path | None:
        if isinstance(result, BaseException):
            self._failed(result)
            return None
        self._warned = False
        self._last = done
        self.count += 1
        self.last_path = result
        return result

    def _failed(self, exc) -> None:
        log.debug("autosave failed", exc_info=exc)
        if not self._warned:
            self._warned = True
            show_warning(f"napari-frontier: autosave failed: {exc}")

    def available(self, image_layer) -> dict | None:
        """What the autosave of ``image_layer`` says about itself (``project.json``), or None."""
        if image_layer is None:
            return None
        path = self.path_for(image_layer)
        if not path.is_file():
            return None
        try:
            info = P.project_info(path)
        except FrontierError:
            return None
        shape, expected = info["image"].get("shape"), L.scribble_shape(image_layer)
        if shape and tuple(shape)[: len(expected)] != expected:
            return None
        return info

    def restore(self, viewer, image_layer):
        """Add the autosaved scribbles as a new layer and load the autosaved model.

        Returns ``(scribbles_layer, segmenter or None)``; the current
        scribbles are left as they are (nothing is overwritten).
        """
        if image_layer is None:
            raise FrontierError("choose the image whose autosave to restore")
        path = self.path_for(image_layer)
        if not path.is_file():
            raise FrontierError(f'no autosave of "{image_layer.name}" found')
        project = P.load_project(path, load_image=False, device=self.session.train_config.device)
        return _add_scribbles(viewer, image_layer, project, "restored"), project.segmenter


def _add_scribbles(viewer, image_layer, project, suffix: str = ""):
    if tuple(project.scribbles.shape) != L.spatial_shape(image_layer):
        raise FrontierError(
            f"the saved scribbles ({project.scribbles.shape}) do not fit "
            f'"{image_layer.name}" ({L.spatial_shape(image_layer)})'
        )
    name = project.settings.get("scribbles_name") or project.scribbles_name
    layer = viewer.add_labels(
        np.array(project.scribbles),
        name=f"{name} ({suffix})" if suffix else name,
        **L.placement(image_layer),
    )
    L.style_scribbles(layer)
    return layer


def save_project(path, session, image_layer, scribbles_layer) -> Path:
    """Save image reference (or pixels), scribbles, model and settings to ``path``."""
    if image_layer is None or scribbles_layer is None:
        raise FrontierError("choose an image layer and a scribbles layer first")
    source = image_source(image_layer)
    return P.save_project(
        path,
        np.array(scribbles_layer.data, copy=True),
        image=None if source else L.image_data(image_layer),
        image_path=source,
        image_shape=tuple(np.shape(image_layer.data)),
        segmenter=_model_of(session),
        image_name=image_layer.name,
        scribbles_name=scribbles_layer.name,
        settings=settings_of(session),
    )


def open_project(path, viewer, session):
    """Add the project's image and scribbles as layers and load its model.

    Returns ``(image_layer, scribbles_layer)``; the model (if any) is set on
    the session and predicts the image in the background.
    """
    session.require_idle("open a project")
    project = P.load_project(path, device=session.train_config.device)
    image = project.image
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    image_layer = viewer.add_image(image, name=project.image_name, rgb=rgb)
    scribbles_layer = _add_scribbles(viewer, image_layer, project)
    settings = project.settings
    if settings.get("model_config") is not None:
        session.model_config = dict(settings["model_config"])
    if project.segmenter is not None:
        session.set_segmenter(project.segmenter, preview_layer=image_layer)
    else:
        session.segmenter = None
    show_info(f"napari-frontier: opened {path}")
    return image_layer, scribbles_layer
