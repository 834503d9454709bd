"""What a :class:`~.session.TrainingSession` shows: overlay redraws, latencies, the view.

The :class:`~.layers.Overlays` buffers of the image are written with each
:class:`~napari_frontier.live.trainer.OverlayDelta` at once and redrawn once
the queued Qt events are handled. Stroke-to-screen latencies are logged here.
The view (slice and visible region) goes to the trainer with each update;
after training, moving to another slice of a stack predicts it.
"""

from __future__ import annotations

import time
from collections import deque

from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer

from ..errors import FrontierError
from ..live.suggest import suggest_location
from ..live.trainer import OverlayDelta, View
from . import layers as L

#: Stroke -> overlay latencies kept in ``OverlayDisplay.latencies``.
MAX_LATENCIES = 1000
#: After training, moving to another slice of a stack predicts it this soon
#: after the slider stops.
SLICE_PREVIEW_MS = 150


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


class OverlayDisplay:
    """The overlay layers of the session's image, and the view they follow.

    Parameters
    ----------
    session
        The :class:`~.session.TrainingSession`: its image, trainer and model.
    """

    def __init__(self, session):
        self._session = session
        self.viewer = session.viewer
        #: The overlay layers of the image and their buffers.
        self.buffers: L.Overlays | None = None
        #: Overlays drawn so far.
        self.count = 0
        #: Seconds from the start of training to its first overlay.
        self.first_seconds: float | None = None
        #: Seconds from an edit to the overlay that includes it.
        self.latencies: deque[float] = deque(maxlen=MAX_LATENCIES)
        #: How much the live prediction of the view changes (convergence signal).
        self.stability = None
        self._started_at = 0.0
        self._redraw_pending = False
        self._last_delta: OverlayDelta | None = None
        self._slice_timer = QTimer()
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(SLICE_PREVIEW_MS)
        self._slice_timer.timeout.connect(self._preview_slice)
        self.viewer.dims.events.current_step.connect(self._on_dims)

    # -- the prediction shown -----------------------------------------------------
    @property
    def prediction(self):
        """The current :class:`~napari_frontier.prediction.tiling.Prediction` of the slice shown.

        Its arrays are the overlay buffers (updated in place), or None.
        """
        o = self.buffers
        if o is None or not o.has_prediction:
            return None
        from ..prediction.tiling import Prediction

        return Prediction(probabilities=o.probabilities, valid=o.valid)

    @property
    def complete(self) -> bool:
        """False while only part of a large image has been predicted."""
        return self.buffers is not None and self.buffers.complete

    @property
    def index(self) -> tuple[int, ...]:
        """Slice of the stack the overlays show (``()`` for a 2D image)."""
        o = self.buffers
        return () if o is None or o.index is None else o.index

    def forget(self) -> None:
        """The prediction shown is no longer the model's (another model, a reset)."""
        if self.buffers is not None:
            self.buffers.index = None
            self.buffers.complete = False

    # -- layers and redraws -------------------------------------------------------
    def for_image(self, image_layer, scribbles_layer=None) -> L.Overlays:
        """The overlay buffers of ``image_layer`` (made, or made anew for a new shape)."""
        o = self.buffers
        shape = L.overlay_shape(image_layer)
        if o is None or o.image_layer is not image_layer or o.lead + o.yx != shape:
            o = L.Overlays(self.viewer, image_layer, scribbles_layer, self._session.n_classes)
            self.buffers = o
        else:
            o.scribbles_layer = scribbles_layer or o.scribbles_layer
            o.attach()
        return o

    def start_clock(self) -> None:
        """Training starts: time its first overlay from now."""
        self._started_at = time.perf_counter()
        self.first_seconds = None

    def show(self, delta: OverlayDelta) -> None:
        """Write a delta into the buffers now; redraw once the queued events are handled."""
        o = self.buffers
        if o is None or o.image_layer not in self.viewer.layers:
            return
        o.attach()
        o.write(delta)
        if self.first_seconds is None:
            self.first_seconds = time.perf_counter() - self._started_at
        self.count += 1
        self._last_delta = delta
        if delta.stability is not None:
            self.stability = delta.stability
        if not self._redraw_pending:
            self._redraw_pending = True
            QTimer.singleShot(0, self._redraw)

    def _redraw(self) -> None:
        self._redraw_pending = False
        s = self._session
        if s.closed or self.buffers is None:
            return
        t0 = time.perf_counter()
        delta = self._last_delta
        self.buffers.redraw(thumbnail=delta.final)
        now = time.perf_counter()
        self.latencies.extend(s.edits.shown(delta.scribbles_version, now))
        if s.trainer is not None:
            s.trainer.shown(now - t0)
        s.overlay_shown.emit(delta)

    def remove_layers(self) -> None:
        """Remove every overlay layer from the viewer."""
        for layer in list(self.viewer.layers):
            if layer.metadata.get(L.ROLE_KEY) in L.OVERLAYS:
                self.viewer.layers.remove(layer)
        self.buffers = None

    def on_layer_removed(self, layer) -> None:
        if self.buffers is not None and layer is self.buffers.image_layer:
            self.buffers = None

    # -- the view -----------------------------------------------------------------
    def view(self) -> View:
        """What the trainer should predict first: the slice and region in view."""
        layer = self._session.image_layer
        return View(L.current_index(self.viewer, layer), L.view_region(layer))

    def post_view(self) -> None:
        """Send the view to the running trainer."""
        s = self._session
        layer = s.image_layer
        if s.trainer is None or layer is None or layer not in self.viewer.layers:
            return
        s.trainer.send(self.view())

    def _on_dims(self, event=None) -> None:
        """The viewer moved to another slice: the overlays follow it."""
        s = self._session
        layer = s.image_layer
        if s.closed or layer is None or not L.lead_shape(layer):
            return
        if s.is_training:
            self.post_view()
        elif self.prediction is not None:
            self._slice_timer.start()

    def _preview_slice(self) -> None:
        s = self._session
        layer = s.image_layer
        if s.closed or s.is_training or s.is_busy or layer not in self.viewer.layers:
            return
        seg = s.segmenter
        if seg is None or seg.model is None or self.prediction is None:
            return
        index = L.current_index(self.viewer, layer)
        if index != self.index:
            s.jobs.preview(layer, index, progress=False)

    def suggest(self, scribbles_layer=None, image_layer=None):
        """Centre the camera on the most uncertain unpainted area; returns (row, col) or None.

        ``image_layer`` places the point in the world when the session has no
        image yet.
        """
        pred = self.prediction
        if pred is None:
            raise FrontierError("train first: suggestions come from the prediction")
        index = self.index
        data = None if scribbles_layer is None else scribbles_layer.data
        if data is not None and index and data.shape[: len(index)] == data.shape[:-2]:
            data = data[index]  # the slice the prediction is of
        if data is not None and data.shape != pred.valid.shape:
            data = None
        where = suggest_location(pred.uncertainty, data)
        if where is None:
            show_info("napari-frontier: no uncertain unpainted area left")
            return None
        layer = self._session.image_layer or image_layer
        world = layer.data_to_world((*index, *where)) if layer is not None else where
        camera(self.viewer).center = tuple(world)[-2:]
        return where

    def close(self) -> None:
        self._slice_timer.stop()
        self.viewer.dims.events.current_step.disconnect(self._on_dims)
