"""magicgui parts of the dock widget: layer pickers that follow the viewer, the settings form."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from magicgui.widgets import ComboBox, Container, FloatSpinBox, SpinBox


class LayerPicker:
    """A magicgui combo box of the viewer's layers of type ``kind`` (passing ``accept``).

    The list follows the viewer's layer list (added, removed, moved and
    renamed layers). ``prefer`` picks among the candidates when the current
    choice disappears (or nothing was chosen yet).
    """

    def __init__(
        self,
        viewer,
        kind: type,
        accept: Callable | None = None,
        prefer: Callable | None = None,
        label: str = "",
        tooltip: str | None = None,
    ):
        self.viewer = viewer
        self.kind = kind
        self.accept = accept or (lambda layer: True)
        self.prefer = prefer
        self.widget = ComboBox(choices=self._choices, label=label, tooltip=tooltip)
        self.native = self.widget.native
        #: Emits the chosen layer (or None) when the choice changes.
        self.changed = self.widget.changed
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.reordered):
            emitter.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self.refresh)

    def candidates(self) -> list:
        return [ly for ly in self.viewer.layers if isinstance(ly, self.kind) and self.accept(ly)]

    def _choices(self, widget=None) -> list[tuple[str, object]]:
        return [(ly.name, ly) for ly in self.candidates()]

    def refresh(self, event=None) -> None:
        """Re-list the layers, keeping the current choice when it still exists."""
        before = self.widget.value
        with self.widget.changed.blocked():
            self.widget.reset_choices()
        layers = self.candidates()
        if before is not None and any(ly is before for ly in layers):
            if self.widget.value is not before:
                self.widget.value = before
            return
        chosen = (self.prefer(layers) if self.prefer else layers[0]) if layers else None
        with self.widget.changed.blocked():
            if chosen is not None:
                self.widget.value = chosen
        self.widget.changed.emit(chosen)

    def layer(self):
        """The chosen layer, or None."""
        value = self.widget.value
        return value if any(ly is value for ly in self.candidates()) else None

    def currentText(self) -> str:
        return self.widget.current_choice

    def choose(self, layer_or_name) -> None:
        """Choose a layer (by object or name); raises ``KeyError`` if it is not listed."""
        self.refresh()
        name = getattr(layer_or_name, "name", layer_or_name)
        for ly in self.candidates():
            if ly.name == name:
                self.widget.value = ly
                return
        raise KeyError(f"no {self.kind.__name__.lower()} layer named {name!r}")

    def setEnabled(self, enabled: bool) -> None:
        self.widget.enabled = enabled

    def setToolTip(self, text: str) -> None:
        self.widget.tooltip = text


DEVICES = ("auto", "cpu", "cuda", "mps")


class SettingsForm:
    """Classes, patch size, learning rate, device and torch threads (magicgui form).

    The values take effect at the next Train: :meth:`apply` hands them to
    the session when one was changed.
    """

    def __init__(self, train_config, n_classes: int = 2):
        tc = train_config
        self.classes = SpinBox(
            value=n_classes,
            min=2,
            max=9,
            label="Classes",
            tooltip="Painted classes: 1 = is, 2 = is not, more for several kinds of object. "
            "Changing it starts a new model.",
        )
        self.patch_size = SpinBox(
            value=tc.patch_size,
            min=32,
            max=512,
            step=16,
            label="Patch size",
            tooltip="Side of the training patches in pixels (multiples of 16). Larger patches "
            "see more context and train slower.",
        )
        self.learning_rate = FloatSpinBox(
            value=tc.learning_rate,
            min=1e-5,
            max=0.1,
            step=5e-4,
            label="Learning rate",
            tooltip="Step size of the optimiser (AdamW). Lower it if training diverges.",
        )
        self.learning_rate.native.setDecimals(5)
        self.device = ComboBox(
            value=tc.device if tc.device in DEVICES else "auto",
            choices=DEVICES,
            label="Device",
            tooltip="auto: a GPU when there is one (CUDA, Apple MPS), else the CPU. "
            "Changing it starts a new model.",
        )
        self.threads = SpinBox(
            value=int(tc.threads or 0),
            min=0,
            max=os.cpu_count() or 1,
            label="Threads",
            tooltip="Torch threads for training on the CPU (0 = torch's default). One thread "
            "keeps the viewer smooth on small machines.",
        )
        self.container = Container(
            widgets=[self.classes, self.patch_size, self.learning_rate, self.device, self.threads]
        )
        self.native = self.container.native
        self.dirty = False
        self.container.changed.connect(self._on_changed)

    def _on_changed(self, *_) -> None:
        self.dirty = True

    def values(self) -> dict:
        return {
            "n_classes": int(self.classes.value),
            "patch_size": int(self.patch_size.value),
            "learning_rate": float(self.learning_rate.value),
            "device": str(self.device.value),
            "threads": int(self.threads.value) or None,
        }

    def apply(self, session) -> bool:
        """Hand changed settings to the (idle) session; True if there were any."""
        if not self.dirty:
            return False
        v = self.values()
        tc = dataclasses.replace(
            session.train_config,
            patch_size=v["patch_size"],
            learning_rate=v["learning_rate"],
            device=v["device"],
            threads=v["threads"],
        )
        session.apply_settings(tc, v["n_classes"])
        self.dirty = False
        return True
