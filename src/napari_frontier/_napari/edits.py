"""Scribble edits of a running training: layer events in, :class:`ScribbleDelta` out.

Only what changed goes to the trainer, as the box of the change. A finished
stroke or fill (napari's ``paint`` event) is sent as soon as napari has
written it; a refresh of the layer (undo, redo, a script) is compared with
the mirror, the scribbles as last sent, once the refreshes stop. A new array
of another shape is refused (training goes on with the previous scribbles).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from qtpy.QtCore import QTimer

from ..data.scribbles import ScribbleDelta, changed_box, union_box

#: After a refresh of the scribbles layer (undo, redo, a script), look for
#: changes this long after the last one (paint events are sent at once).
DEBOUNCE_MS = 300


def paint_box(atoms) -> tuple[slice, ...] | None:
    """Bounding box of the history atoms of one napari paint event."""
    box = None
    for atom in atoms or ():
        key = getattr(atom, "slice_key", None)  # napari's masked paint atom
        if key is not None:
            part = tuple(slice(s.start or 0, s.stop) for s in key)
        else:  # (indices, old values, new values)
            indices = atom[0]
            if not len(indices) or np.size(indices[0]) == 0:
                continue
            part = tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in indices)
        box = union_box(box, part)
    return box


class EditsTracker:
    """Sends the edits of one scribbles layer to a live trainer (main thread object).

    Parameters
    ----------
    warn
        Called with a message for the user (a refused array).
    """

    def __init__(self, warn):
        self._warn = warn
        #: Version of the newest delta sent (it goes on across trainings).
        self.version = 0
        #: Newest version the trainer has reported training on.
        self.received_version = 0
        #: Updates that reported a newer version than the one before.
        self.received = 0
        self.layer = None
        self.trainer = None
        self._mirror: np.ndarray | None = None  # the scribbles as last sent
        self._dirty: tuple[slice, ...] | None = None
        self._dirty_since = self._refresh_since = 0.0
        self._posted: dict[int, float] = {}  # version -> when its edit was made
        self._ignore = False
        self._send_timer = QTimer()
        self._send_timer.setSingleShot(True)
        self._send_timer.setInterval(0)
        self._send_timer.timeout.connect(self.flush)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._send_changes)

    @property
    def all_received(self) -> bool:
        """Nothing is left to send and the trainer has taken the newest delta."""
        return self._dirty is None and self.received_version >= self.version

    # -- lifecycle ------------------------------------------------------------------
    def begin(self, layer) -> np.ndarray:
        """Training starts on ``layer``: returns the mirror, the one copy made of its data.

        The trainer copies it again in its own thread (deltas sent meanwhile
        rewrite their boxes of that copy, so a copy taken mid-write is still right).
        """
        self.layer = layer
        self._ignore = False
        self._posted.clear()
        self._dirty = None
        self._mirror = np.array(layer.data, copy=True)
        self.received_version = self.version
        return self._mirror

    def connect(self, trainer) -> None:
        """Send the layer's edits to ``trainer`` from now on."""
        self.trainer = trainer
        events = self.layer.events
        events.paint.connect(self._on_paint)
        events.data.connect(self._on_data)
        events.set_data.connect(self._on_refresh)

    def cancel(self) -> None:
        """Send nothing more (training is being aborted)."""
        self._ignore = True
        self._stop_timers()

    def end(self) -> None:
        """Training has finished: disconnect from the layer."""
        self._stop_timers()
        if self.layer is not None:
            events = self.layer.events
            events.paint.disconnect(self._on_paint)
            events.data.disconnect(self._on_data)
            events.set_data.disconnect(self._on_refresh)
        self.layer = None
        self._mirror = None
        self.trainer = None

    def _stop_timers(self) -> None:
        self._timer.stop()
        self._send_timer.stop()

    def acknowledge(self, version: int) -> None:
        """The trainer reports the scribbles version it trains on."""
        if version > self.received_version:
            self.received_version = version
            self.received += 1

    def shown(self, version: int, now: float) -> list[float]:
        """An overlay of scribbles ``version`` is on screen: the latencies of the edits in it."""
        done = [v for v in self._posted if v <= version]
        return [now - self._posted.pop(v) for v in done]

    # -- events -------------------------------------------------------------------
    def _on_paint(self, event=None) -> None:
        """A finished stroke or fill: its box goes to the trainer as soon as it is applied."""
        box = paint_box(getattr(event, "value", None))
        if box is None:
            return
        if self._dirty is None:
            self._dirty_since = time.perf_counter()
        self._dirty = union_box(self._dirty, box)
        self._send_timer.start()  # napari writes the data after the event

    def flush(self) -> None:
        """Send the box painted since the last delta now."""
        box, self._dirty = self._dirty, None
        layer = self.layer
        if box is None or self._ignore or self.trainer is None or layer is None:
            return
        if self._mirror is None or layer.data.shape != self._mirror.shape:
            return
        self._send(ScribbleDelta.of(layer.data, box), self._dirty_since)

    def _send(self, delta: ScribbleDelta, since: float) -> None:
        """Send a delta of the layer's current data (of the mirror's shape) to the trainer."""
        self.version += 1
        delta = dataclasses.replace(delta, version=self.version)
        self._mirror[delta.region] = delta.labels
        self._posted[self.version] = since
        self.trainer.send(delta)

    def _on_data(self, event=None) -> None:
        """A new array: one of another shape is refused here (training goes on)."""
        layer = self.layer
        if self._ignore or self.trainer is None or layer is None or self._mirror is None:
            return
        if layer.data.shape != self._mirror.shape:
            self._warn(
                f"kept the previous scribbles: scribbles have shape {layer.data.shape} but the "
                f"image is {self._mirror.shape}; paint the scribbles on a layer of the same size "
                "as the image"
            )
        else:
            self._on_refresh()

    def _on_refresh(self, event=None) -> None:
        """A refresh (undo, redo, a script): look for changes when they stop."""
        if self.trainer is None or self._ignore:
            return
        self._refresh_since = time.perf_counter()
        self._timer.start()

    def _send_changes(self) -> None:
        layer = self.layer
        if self._ignore or self.trainer is None or layer is None or self._mirror is None:
            return
        self.flush()
        data = layer.data
        if data.shape != self._mirror.shape:
            return
        box = changed_box(self._mirror, data)
        if box is not None:
            self._send(ScribbleDelta.of(data, box), self._refresh_since)
