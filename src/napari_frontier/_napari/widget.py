"""The "Scribble trainer" dock widget: layout and wiring only.

Everything that runs training, jobs or exports, or touches overlay layers,
lives in :mod:`.session` and its satellites (:mod:`.edits`, :mod:`.overlays`,
:mod:`.jobs`) and :mod:`.layers`; this module turns clicks and keys into calls
and session signals into labels.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..data.scribbles import IS, IS_NOT
from ..errors import FrontierError
from ..prediction.tiling import default_mask_format
from . import _projects
from . import layers as L
from ._pickers import LayerPicker, SettingsForm
from ._plot import CurvePlot
from .session import TrainingSession

if TYPE_CHECKING:
    from napari.viewer import Viewer

log = logging.getLogger(__name__)

KEY_TRAIN, KEY_SWAP, KEY_SUGGEST = "Shift-T", "Shift-X", "Shift-G"
IDLE_TEXT = 'Paint "is" (label 1) and "is not" (label 2) strokes, then Train.'


def _shows_errors(method):
    """Button handlers: show user errors as notifications instead of raising."""

    @functools.wraps(method)
    def wrapper(self, *args):
        try:
            return method(self)
        except (FrontierError, OSError, KeyError) as exc:
            show_error(f"napari-frontier: {exc}")
        return None

    return wrapper


def _is_source_image(layer) -> bool:
    return layer.metadata.get(L.ROLE_KEY) not in L.OVERLAYS


def _prefer_scribbles(layers):
    for layer in reversed(layers):
        if layer.name == L.SCRIBBLES or layer.metadata.get(L.ROLE_KEY) == L.SCRIBBLES:
            return layer
    return layers[-1]


class FrontierWidget(QWidget):
    """Train a segmentation network live from "is" / "is not" scribbles.

    Scripting API: :meth:`start`, :meth:`stop`, :attr:`is_training`,
    :meth:`export_mask`, :meth:`set_layers`, :meth:`save_model`,
    :meth:`load_model`, :meth:`apply_to`, :meth:`suggest`; the
    :class:`~.session.TrainingSession` is ``widget.session``.
    """

    def __init__(self, napari_viewer: Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = TrainingSession(napari_viewer)
        self._build()
        self.autosaver = _projects.Autosaver(
            self.session, lambda: (self.image_picker.layer(), self.scribbles_picker.layer())
        )
        self._offered: set[str] = set()
        self._chosen = None
        self._format_classes = 2  # class count the mask format was chosen for
        self._connect()
        self._on_image_chosen()

    # -- layout -------------------------------------------------------------
    def _button(self, text: str, tip: str, slot) -> QPushButton:
        b = QPushButton(text)
        b.setToolTip(tip)
        b.clicked.connect(slot)  # slots take no arguments (see _shows_errors)
        return b

    def _build(self) -> None:
        v = self.viewer
        self.image_picker = LayerPicker(
            v, Image, accept=_is_source_image, tooltip="The image to train on and predict"
        )
        self.scribbles_picker = LayerPicker(
            v,
            Labels,
            prefer=_prefer_scribbles,
            tooltip=f'Labels layer to paint on: 1 = "is", 2 = "is not" ({KEY_SWAP} swaps the brush)',
        )
        self.new_button = self._button(
            "New scribbles layer",
            "Add an empty Labels layer the size of the image, ready to paint",
            self._on_new_scribbles,
        )
        form = QFormLayout()
        form.addRow("Image", self.image_picker.native)
        form.addRow("Scribbles", self.scribbles_picker.native)
        form.addRow("", self.new_button)

        self.train_button = self._button(
            "Train", f"Train live from the scribbles ({KEY_TRAIN} toggles)", self._on_train
        )
        self.stop_button = self._button(
            "Stop", f"Stop training ({KEY_TRAIN} toggles)", self._on_stop
        )
        self.reset_button = self._button(
            "Reset model", "Forget what the network learned", self._on_reset
        )
        row = QHBoxLayout()
        for b in (self.train_button, self.stop_button, self.reset_button):
            row.addWidget(b)
        self.status = QLabel(IDLE_TEXT)
        self.status.setWordWrap(True)
        self.plot = CurvePlot()

        self.format_box = QComboBox()
        self.format_box.addItems(["binary", "labels"])
        self.format_box.setToolTip(
            'binary: 255 = "is", 0 = not; labels: class 1..K (the default for K > 2); '
            "127 / 0 = no data"
        )
        self.export_button = self._button(
            "Export mask…",
            "Write the current prediction as .tif/.png/.npy (of a stack: the predicted volume)",
            self._on_export,
        )
        self.volume_button = self._button(
            "Predict volume",
            "Predict every slice of the image in the background into a Labels layer "
            "(cancel it in the activity dock); Export then writes the whole volume",
            self._on_predict_volume,
        )
        self.frontier_button = self._button(
            "Export frontier…",
            "Write the P = 0.5 frontier as polygons: GeoJSON (world coordinates for a GeoTIFF), "
            "ImageJ/Fiji ROI set (.zip) or CSV",
            self._on_export_frontier,
        )
        self.shapes_button = self._button(
            "Frontier as shapes",
            "Add the frontier as an editable Shapes layer (one polygon per object and hole)",
            self._on_frontier_shapes,
        )
        self.save_button = self._button("Save model…", "Save the network", self._on_save)
        self.load_button = self._button("Load model…", "Load a saved network", self._on_load)
        self.apply_picker = LayerPicker(
            v, Image, accept=_is_source_image, tooltip="Another image to predict with the model"
        )
        self.apply_button = self._button(
            "Apply", "Predict this image in the background; adds a mask layer", self._on_apply
        )
        self.suggest_button = self._button(
            "Suggest where to paint",
            f"Centre the view on the most uncertain unpainted area ({KEY_SUGGEST})",
            self._on_suggest,
        )
        grid = QGridLayout()
        grid.addWidget(self.volume_button, 0, 0, 1, 2)
        grid.addWidget(self.format_box, 1, 0)
        grid.addWidget(self.export_button, 1, 1)
        grid.addWidget(self.frontier_button, 2, 0)
        grid.addWidget(self.shapes_button, 2, 1)
        grid.addWidget(self.save_button, 3, 0)
        grid.addWidget(self.load_button, 3, 1)
        grid.addWidget(QLabel("Apply to"), 4, 0)
        grid.addWidget(self.apply_picker.native, 4, 1)
        grid.addWidget(self.apply_button, 5, 1)
        self.save_project_button = self._button(
            "Save project…",
            "Save image reference, scribbles, model and settings in one file",
            self._on_save_project,
        )
        self.open_project_button = self._button(
            "Open project…", "Open a saved project (image, scribbles, model)", self._on_open_project
        )
        self.restore_button = self._button(
            "Restore autosave",
            "Add the autosaved scribbles of this image as a new layer and load the autosaved model",
            self._on_restore,
        )
        grid.addWidget(self.save_project_button, 6, 0)
        grid.addWidget(self.open_project_button, 6, 1)
        grid.addWidget(self.restore_button, 7, 0, 1, 2)
        results = QGroupBox("Results")
        results.setLayout(grid)
        self.settings = SettingsForm(self.session.train_config, self.session.n_classes)
        settings = QGroupBox("Settings (used at the next Train)")
        box = QVBoxLayout(settings)
        box.setContentsMargins(2, 2, 2, 2)
        box.addWidget(self.settings.native)

        hint = QLabel(
            f"Keys: {KEY_TRAIN} train/stop · {KEY_SWAP} swap is/is not · {KEY_SUGGEST} suggest"
        )
        hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.suggest_button)
        layout.addWidget(results)
        layout.addWidget(settings)
        layout.addWidget(hint)
        layout.addStretch(1)

    def _connect(self) -> None:
        v, s = self.viewer, self.session
        s.updated.connect(self._on_update)
        s.state_changed.connect(self._on_state)
        s.busy_changed.connect(self._sync)
        s.volume_done.connect(self._on_volume_done)
        self.image_picker.changed.connect(self._on_image_chosen)
        v.bind_key(KEY_TRAIN, self._key_toggle, overwrite=True)
        v.bind_key(KEY_SWAP, self._key_swap, overwrite=True)
        v.bind_key(KEY_SUGGEST, self._key_suggest, overwrite=True)
        session, autosaver = self.session, self.autosaver
        self.destroyed.connect(lambda *_: _teardown(v, session, autosaver))

    def _on_image_chosen(self, *_) -> None:
        """Another image: its overlay layers now (Train only starts the worker); the
        volume button only for stacks; an autosave offered."""
        image = self.image_picker.layer()
        self.volume_button.setVisible(image is not None and bool(L.lead_shape(image)))
        if image is not self._chosen and image is not None and not self.session.is_training:
            try:
                self.session.set_image(image, self.scribbles_picker.layer())
            except Exception as exc:  # an image the plugin cannot show: Train will say why
                log.debug("no overlays for %s", image.name, exc_info=exc)
        self._chosen = image
        self._offer_restore()

    def _sync(self, *_) -> None:
        training, busy = self.session.is_training, self.session.is_busy
        idle = not training and not busy
        self.train_button.setEnabled(idle)
        self.stop_button.setEnabled(training)
        for w in (
            self.reset_button,
            self.save_button,
            self.load_button,
            self.apply_button,
            self.volume_button,
            self.image_picker,
            self.scribbles_picker,
            self.new_button,
            self.open_project_button,
            self.settings.native,
        ):
            w.setEnabled(idle)
        self.restore_button.setEnabled(
            idle and self.autosaver.available(self.image_picker.layer()) is not None
        )
        self._follow_class_count()

    def _follow_class_count(self) -> None:
        """The mask format follows the model's class count when it changes (labels for K > 2)."""
        seg = self.session.segmenter
        k = seg.n_classes if seg is not None else self.session.n_classes
        if k != self._format_classes:
            self._format_classes = k
            self.format_box.setCurrentText(default_mask_format(k))

    # -- session signals ------------------------------------------------------
    @staticmethod
    def _describe(upd) -> str:
        held = "–" if upd.holdout_accuracy is None else f"{upd.holdout_accuracy:.1%}"
        return (
            f"step {upd.step} · loss {upd.loss:.3f} · train acc. {upd.train_accuracy:.1%}"
            f" · new strokes {held}"
        )

    def _on_update(self, upd) -> None:
        text = f"{self._describe(upd)} · {upd.steps_per_second:.1f} steps/s"
        stability = self.session.stability
        if stability is not None and stability.changed is not None:
            text += f" · {stability.describe()}"
        self.status.setText(text)
        self.plot.add(upd)

    def _on_state(self, training: bool) -> None:
        history = self.session.history
        if training:
            self.status.setText("training: waiting for the first steps…")
        elif history:
            self.status.setText(f"stopped at {self._describe(history[-1])}")
        else:
            self.status.setText(IDLE_TEXT)
        self._sync()

    def _on_volume_done(self, layer) -> None:
        done = "predicted" if self.session.jobs.volume_complete else "cancelled: partly predicted"
        self.status.setText(f'"{layer.name}": {done}')

    # -- scripting API --------------------------------------------------------
    @property
    def is_training(self) -> bool:
        """True from :meth:`start` until the worker has finished."""
        return self.session.is_training

    def set_layers(self, image=None, scribbles=None) -> None:
        """Choose the image and/or scribbles layer (layer or name)."""
        if image is not None:
            self.image_picker.choose(image)
        if scribbles is not None:
            self.scribbles_picker.choose(scribbles)

    def start(self) -> None:
        """Start live training on the chosen layers (raises ``FrontierError``)."""
        scribbles = self.scribbles_picker.layer()
        if scribbles is not None and L.ROLE_KEY not in scribbles.metadata:
            L.style_scribbles(scribbles)
        if not self.is_training:
            self.settings.apply(self.session)
            self._follow_class_count()
        self.session.start(self.image_picker.layer(), scribbles)
        self.plot.clear()

    def stop(self) -> None:
        """Ask training to stop; :attr:`is_training` turns False when it has."""
        if self.is_training:
            self.status.setText("stopping…")
        self.session.stop()

    def export_mask(self, path, format: str | None = None):
        """Write the current prediction to ``path`` (binary or labels mask)."""
        return self.session.jobs.export_mask(path, format or self.format_box.currentText())

    def export_frontier(self, path):
        """Write the frontier of the current prediction (format by suffix); returns the path."""
        return self.session.jobs.export_frontier(path)

    def frontier_shapes(self):
        """Add the frontier of the current prediction as a Shapes layer and return it."""
        return self.session.jobs.frontier_shapes()

    def save_model(self, path) -> None:
        """Save the network to ``path``."""
        self.session.save(path)

    def load_model(self, path) -> None:
        """Load a network and predict the chosen image with it (in the background)."""
        self.session.load(path, preview_layer=self.image_picker.layer())
        self.plot.clear()
        self.status.setText(f"loaded {path}")

    def save_project(self, path):
        """Save image reference, scribbles, model and settings to ``path``; returns it."""
        return _projects.save_project(
            path, self.session, self.image_picker.layer(), self.scribbles_picker.layer()
        )

    def open_project(self, path):
        """Open a project: adds its image and scribbles layers, loads its model."""
        image, scribbles = _projects.open_project(path, self.viewer, self.session)
        self.set_layers(image=image, scribbles=scribbles)
        self.plot.clear()
        self.status.setText(f"opened {path}")
        return image, scribbles

    def autosave(self):
        """Autosave now (scribbles and model of the chosen image); returns the path."""
        return self.autosaver.autosave()

    def restore_autosave(self):
        """Add the chosen image's autosaved scribbles as a layer; load the autosaved model."""
        self.session.require_idle("restore an autosave")
        image = self.image_picker.layer()
        layer, seg = self.autosaver.restore(self.viewer, image)
        self.set_layers(scribbles=layer)
        if seg is not None:
            self.session.set_segmenter(seg, preview_layer=image)
        self.status.setText(f'restored the autosave of "{image.name}"')
        return layer

    def _offer_restore(self, *_) -> None:
        image = self.image_picker.layer()
        found = self.autosaver.available(image)
        self._sync()
        if found is None or image.name in self._offered:
            return
        self._offered.add(image.name)
        show_info(
            f'napari-frontier: scribbles of "{image.name}" were autosaved '
            f'({found.get("saved_at") or "earlier"}); click "Restore autosave" to get them back'
        )

    def predict_volume(self) -> None:
        """Predict every slice of the chosen image in the background (a Labels layer)."""
        image = self.image_picker.layer()
        self.session.jobs.predict_volume(image)
        self.status.setText(f'predicting every slice of "{image.name}"…')

    def apply_to(self, layer) -> None:
        """Predict another image layer (layer or name) in the background."""
        self.apply_picker.choose(layer)
        self.session.jobs.apply_to(self.apply_picker.layer())

    def suggest(self):
        """Centre the camera on the most uncertain unpainted area; returns (row, col)."""
        return self.session.overlays.suggest(
            self.scribbles_picker.layer(), self.image_picker.layer()
        )

    # -- buttons and keys -----------------------------------------------------
    @_shows_errors
    def _on_new_scribbles(self):
        image = self.image_picker.layer()
        if image is None:
            raise FrontierError("open or choose an image first")
        layer = L.new_scribbles_layer(self.viewer, image)
        self.scribbles_picker.choose(layer)
        self.viewer.layers.selection.active = layer

    @_shows_errors
    def _on_train(self):
        self.start()

    @_shows_errors
    def _on_stop(self):
        self.stop()

    @_shows_errors
    def _on_reset(self):
        self.session.reset()
        self.plot.clear()
        self.status.setText("model reset. " + IDLE_TEXT)

    @_shows_errors
    def _on_export(self):
        path, _ = QFileDialog.getSaveFileName(
            self, "Export mask", "mask.tif", "TIFF (*.tif *.tiff);;PNG (*.png);;NumPy (*.npy)"
        )
        if path:
            show_info(f"napari-frontier: wrote {self.export_mask(path)}")

    @_shows_errors
    def _on_export_frontier(self):
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export frontier",
            "frontier.geojson",
            "GeoJSON (*.geojson *.json);;ImageJ ROI set (*.zip);;CSV (*.csv)",
        )
        if path:
            show_info(f"napari-frontier: wrote {self.export_frontier(path)}")

    @_shows_errors
    def _on_frontier_shapes(self):
        self.frontier_shapes()

    @_shows_errors
    def _on_save(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "model.pt", "Model (*.pt)")
        if path:
            self.save_model(path)
            show_info(f"napari-frontier: saved the model to {path}")

    @_shows_errors
    def _on_load(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", "Model (*.pt *.pth)")
        if path:
            self.load_model(path)

    @_shows_errors
    def _on_save_project(self):
        path, _ = QFileDialog.getSaveFileName(
            self, "Save project", "project.frontier", "napari-frontier project (*.frontier)"
        )
        if path:
            show_info(f"napari-frontier: saved the project to {self.save_project(path)}")

    @_shows_errors
    def _on_open_project(self):
        path, _ = QFileDialog.getOpenFileName(
            self, "Open project", "", "napari-frontier project (*.frontier)"
        )
        if path:
            self.open_project(path)

    @_shows_errors
    def _on_restore(self):
        self.restore_autosave()

    @_shows_errors
    def _on_predict_volume(self):
        self.predict_volume()

    @_shows_errors
    def _on_apply(self):
        self.apply_to(self.apply_picker.currentText())

    @_shows_errors
    def _on_suggest(self):
        self.suggest()

    def _key_toggle(self, viewer=None):
        if self.is_training:
            self._on_stop()
        elif self.train_button.isEnabled():
            self._on_train()

    def _key_swap(self, viewer=None):
        layer = self.scribbles_picker.layer()
        if layer is not None:
            layer.selected_label = IS_NOT if layer.selected_label == IS else IS

    def _key_suggest(self, viewer=None):
        self._on_suggest()


def _teardown(viewer, session, autosaver=None) -> None:
    """Runs when the widget is destroyed: stop the worker and the autosave timer, free the keys."""
    if autosaver is not None:
        autosaver.close()
    session.close()
    for key in (KEY_TRAIN, KEY_SWAP, KEY_SUGGEST):
        with contextlib.suppress(KeyError, ValueError, RuntimeError):
            viewer.bind_key(key, None)
