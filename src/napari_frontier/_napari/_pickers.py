"""A combo box of the viewer's layers of one kind, kept in sync with the layer list."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QComboBox


class LayerPicker(QComboBox):
    """Lists layers of type ``kind`` (passing ``accept``) by name.

    Parameters
    ----------
    viewer
        The napari viewer.
    kind
        Layer class (``napari.layers.Image``, ``napari.layers.Labels``).
    accept
        Extra filter, e.g. to leave out the plugin's own overlay layers.
    prefer
        Called with the candidate layers when nothing is chosen yet; returns
        the one to choose.
    """

    def __init__(
        self, viewer, kind: type, accept: Callable | None = None, prefer=None, parent=None
    ):
        super().__init__(parent)
        self.viewer = viewer
        self.kind = kind
        self.accept = accept or (lambda layer: True)
        self.prefer = prefer
        self.setMinimumContentsLength(12)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.refresh()

    def candidates(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, self.kind) and self.accept(ly)]

    def refresh(self, event=None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        current = self.currentText()
        layers = self.candidates()
        names = [ly.name for ly in layers]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        self.blockSignals(False)
        if current in names:
            self.setCurrentIndex(names.index(current))
        elif layers:
            chosen = self.prefer(layers) if self.prefer else layers[0]
            self.setCurrentIndex(names.index(chosen.name))
            self.currentIndexChanged.emit(self.currentIndex())
        else:
            self.currentIndexChanged.emit(-1)

    def layer(self):
        """The chosen layer, or None."""
        name = self.currentText()
        for ly in self.candidates():
            if ly.name == name:
                return ly
        return None

    def choose(self, layer_or_name) -> None:
        """Choose a layer (by object or name); raises ``KeyError`` if it is not listed."""
        self.refresh()
        name = getattr(layer_or_name, "name", layer_or_name)
        index = self.findText(name)
        if index < 0:
            raise KeyError(f"no {self.kind.__name__.lower()} layer named {name!r}")
        self.setCurrentIndex(index)
