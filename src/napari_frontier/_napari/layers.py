"""Find, create and style the plugin's layers (main thread only).

Overlay layers are named exactly ``"prediction"`` (P("is") as a tint),
``"frontier"`` (the pixels where P("is") crosses 0.5, a raster: cheap to
refresh while training) and ``"uncertainty"`` (hidden by default). They are tagged in
``layer.metadata``: a renamed overlay is still found, and a user's own layer
of the same name is never overwritten.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Labels
from napari.utils.colormaps import Colormap, DirectLabelColormap

from ..errors import ImageError
from ..labels import IS, IS_NOT, VOID

ROLE_KEY = "napari-frontier"
PREDICTION, FRONTIER, UNCERTAINTY, SCRIBBLES = "prediction", "frontier", "uncertainty", "scribbles"
OVERLAYS = (PREDICTION, FRONTIER, UNCERTAINTY)

IS_COLOR = (0.3, 1.0, 0.2, 1.0)  # green strokes
IS_NOT_COLOR = (0.15, 0.55, 1.0, 1.0)  # blue strokes
#: Tint of predicted "is" areas: a different hue from the strokes, so strokes
#: painted inside a predicted object stay visible.
PREDICTION_COLOR = (1.0, 0.25, 0.85)  # magenta
FRONTIER_COLOR = (1.0, 0.9, 0.0)  # yellow


def scribble_colormap() -> DirectLabelColormap:
    """Void transparent, "is" green, "is not" blue, anything else grey."""
    return DirectLabelColormap(
        color_dict={
            None: (0.6, 0.6, 0.6, 1.0),
            VOID: (0.0, 0.0, 0.0, 0.0),
            IS: IS_COLOR,
            IS_NOT: IS_NOT_COLOR,
        }
    )


def mask_colormap() -> DirectLabelColormap:
    """A predicted class map: "is" in its colour, "is not" faintly, no-data clear."""
    return DirectLabelColormap(
        color_dict={
            None: (0.6, 0.6, 0.6, 1.0),
            VOID: (0.0, 0.0, 0.0, 0.0),
            IS: (*PREDICTION_COLOR, 1.0),
            IS_NOT: (*IS_NOT_COLOR[:3], 0.15),
        }
    )


def prediction_colormap() -> Colormap:
    """Transparent where P("is") is 0, the "is" colour where it is 1."""
    r, g, b = PREDICTION_COLOR
    return Colormap(
        colors=[[r, g, b, 0.0], [r, g, b, 0.1], [r, g, b, 0.6]],
        controls=[0.0, 0.5, 1.0],
        name="frontier P(is)",
    )


def frontier_colormap() -> Colormap:
    """Transparent at 0, opaque yellow at 1."""
    r, g, b = FRONTIER_COLOR
    return Colormap(colors=[[r, g, b, 0.0], [r, g, b, 1.0]], controls=[0.0, 1.0], name="frontier")


def find_layer(viewer, role: str, kind: type):
    """The plugin's layer of type ``kind`` for ``role``, or None.

    Only layers the plugin tagged count (a user's own layer that happens to
    be called "prediction" is never overwritten); among them the one named
    exactly ``role`` wins.
    """
    tagged = [
        layer
        for layer in viewer.layers
        if isinstance(layer, kind) and layer.metadata.get(ROLE_KEY) == role
    ]
    named = [layer for layer in tagged if layer.name == role]
    return (named or tagged or [None])[0]


def image_data(layer) -> np.ndarray:
    """A numpy copy of a 2D grey or RGB(A) image layer's data.

    Raises
    ------
    ImageError
        For stacks, multiscale or other shapes, with a message to show.
    """
    if not isinstance(layer, Image):
        raise ImageError("choose an image layer to train on")
    if layer.multiscale:
        raise ImageError(
            f'"{layer.name}" is a multiscale image; napari-frontier trains on single-scale '
            "2D images (open the full-resolution level as its own layer)"
        )
    if layer.ndim != 2:
        raise ImageError(
            f'"{layer.name}" has {layer.ndim} dimensions (shape {tuple(layer.data.shape)}); '
            "napari-frontier trains on 2D grey or RGB images: open one plane as its own layer"
        )
    return np.array(layer.data, copy=True)


def spatial_shape(layer) -> tuple[int, int]:
    """(H, W) of a 2D image layer (RGB channels left out)."""
    shape = tuple(layer.data.shape)
    return shape[:2] if getattr(layer, "rgb", False) else shape[-2:]


def style_scribbles(layer: Labels) -> None:
    """Make a Labels layer ready for painting "is" (1) and "is not" (2)."""
    layer.colormap = scribble_colormap()
    layer.features = {"index": [VOID, IS, IS_NOT], "class": ["void", "is", "is not"]}
    layer.metadata[ROLE_KEY] = SCRIBBLES
    layer.opacity = 0.9
    layer.selected_label = IS
    layer.mode = "paint"


def new_scribbles_layer(viewer, image_layer) -> Labels:
    """Add an empty, styled scribbles layer matching ``image_layer``."""
    shape = spatial_shape(image_layer)
    layer = viewer.add_labels(
        np.zeros(shape, np.uint8),
        name=SCRIBBLES,
        scale=image_layer.scale[-2:],
        translate=image_layer.translate[-2:],
    )
    style_scribbles(layer)
    return layer


def _place_below(viewer, layer, anchor) -> None:
    """Move ``layer`` right below ``anchor`` (so strokes stay on top)."""
    if anchor is None or anchor not in viewer.layers:
        return
    src, dst = viewer.layers.index(layer), viewer.layers.index(anchor)
    if src > dst:
        viewer.layers.move(src, dst)


def _add_image(viewer, role, shape, image_layer, **kwargs) -> Image:
    return viewer.add_image(
        np.zeros(shape, np.float32),
        name=role,
        contrast_limits=(0.0, 1.0),
        scale=image_layer.scale[-2:],
        translate=image_layer.translate[-2:],
        metadata={ROLE_KEY: role},
        **kwargs,
    )


def ensure_overlays(viewer, image_layer, scribbles_layer=None) -> list:
    """Find or create the three overlay layers (empty); returns the ones created.

    Creating layers is the slowest thing the main thread does for the plugin,
    so it happens once, before training starts, not while a worker competes
    for the interpreter.
    """
    shape = spatial_shape(image_layer)
    selection = viewer.layers.selection
    active, selected = selection.active, set(selection)
    created = []
    if find_layer(viewer, PREDICTION, Image) is None:
        cmap = prediction_colormap()
        layer = _add_image(viewer, PREDICTION, shape, image_layer, colormap=cmap)
        created.append(layer)
    if find_layer(viewer, UNCERTAINTY, Image) is None:
        layer = _add_image(
            viewer, UNCERTAINTY, shape, image_layer, colormap="inferno", opacity=0.6, visible=False
        )
        created.append(layer)
    if find_layer(viewer, FRONTIER, Image) is None:
        layer = _add_image(viewer, FRONTIER, shape, image_layer, colormap=frontier_colormap())
        layer.data = np.zeros(shape, np.uint8)
        created.append(layer)
    for layer in created:
        _place_below(viewer, layer, scribbles_layer)
    if created:
        selection.clear()
        selection.update(s for s in selected if s in viewer.layers)
        if active in viewer.layers:
            selection.active = active
    return created


def show_overlay(viewer, overlay, image_layer, scribbles_layer=None) -> None:
    """Assign an :class:`~._loop.Overlay` to the overlay layers (made if missing).

    The active layer stays what it was, so painting continues undisturbed.
    """
    ensure_overlays(viewer, image_layer, scribbles_layer)
    find_layer(viewer, PREDICTION, Image).data = overlay.p_is
    find_layer(viewer, UNCERTAINTY, Image).data = overlay.uncertainty
    find_layer(viewer, FRONTIER, Image).data = overlay.frontier


def add_mask_layer(viewer, labels: np.ndarray, image_layer, name: str) -> Labels:
    """Add (or replace) a Labels layer holding a predicted class map."""
    existing = find_layer(viewer, name, Labels)
    if existing is not None:
        existing.data = labels
        return existing
    return viewer.add_labels(
        labels,
        name=name,
        scale=image_layer.scale[-2:],
        translate=image_layer.translate[-2:],
        opacity=0.6,
        colormap=mask_colormap(),
        metadata={ROLE_KEY: name},
    )
