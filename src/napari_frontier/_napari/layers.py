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

from ..data.scribbles import IS, IS_NOT, VOID
from ..errors import ImageError

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


#: A multiscale image is trained on its full-resolution level only when one
#: slice of that level has at most this many pixels (the live overlays and the
#: training copy of a painted slice are that large).
MAX_LEVEL0_PIXELS = 64 * 1024 * 1024


def image_data(layer, copy: bool = True):
    """The pixels of an image layer for the worker: 2D, stack or time series, grey or RGB(A).

    A numpy array is copied (the worker owns its copy; with ``copy=False``
    the caller copies it, e.g. in the worker); any other array
    (dask, zarr, a TIFF opened as zarr) is passed through as it is, so a huge
    or lazy image is never read whole here: the engine reads only the slices
    and regions it needs. A multiscale layer gives its full-resolution level.

    Raises
    ------
    ImageError
        For multiscale images too large to train on, with a message to show.
    """
    if not isinstance(layer, Image):
        raise ImageError("choose an image layer to train on")
    data = layer.data
    if layer.multiscale:
        data = data[0]
        h, w = scribble_shape(layer)[-2:]
        if h * w > MAX_LEVEL0_PIXELS:
            raise ImageError(
                f'"{layer.name}" is a multiscale image whose full-resolution level is {h} x {w} '
                f"pixels, too large to train on live (at most {MAX_LEVEL0_PIXELS:,} per slice): "
                "open a crop or a coarser level as its own layer, train there, and predict the "
                "full image with `frontier predict`"
            )
    if isinstance(data, np.ndarray) and copy:
        return np.array(data, copy=True)
    return data


def scribble_shape(layer) -> tuple[int, ...]:
    """Shape of the scribbles (and masks) of an image layer: its data's without RGB channels.

    For a multiscale layer, of the full-resolution level.
    """
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(s) for s in data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def spatial_shape(layer) -> tuple[int, ...]:
    """Shape of the scribbles of an image layer (``(H, W)`` for a 2D image).

    Same as :func:`scribble_shape`; kept for callers that predate stacks.
    """
    return scribble_shape(layer)


def lead_shape(layer) -> tuple[int, ...]:
    """Shape of the slice axes (Z, T, ...) of an image layer; ``()`` for a 2D image."""
    return scribble_shape(layer)[:-2]


def current_index(viewer, layer) -> tuple[int, ...]:
    """Index of the slice of ``layer`` in view (from the viewer's dims); ``()`` for 2D."""
    lead = lead_shape(layer)
    if not lead:
        return ()
    data = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    return tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(data[: len(lead)], lead))


def view_region(layer) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)`` of ``layer`` in view, in full-resolution pixels."""
    (r0, c0), (r1, c1) = np.asarray(layer.corner_pixels)[:, -2:]
    r1, c1 = r1 + 1, c1 + 1
    if getattr(layer, "multiscale", False):
        fy, fx = np.asarray(layer.downsample_factors[layer.data_level])[-2:]
        r0, r1, c0, c1 = r0 * fy, r1 * fy, c0 * fx, c1 * fx
    return int(r0), int(r1), int(c0), int(c1)


def placement(layer, index: tuple[int, ...] = ()) -> dict:
    """``scale`` and ``translate`` for a layer of the scribbles' shape over ``layer``.

    With ``index``, for a layer of one slice (shape ``(1, ..., 1, H, W)``)
    placed on that slice of the stack: it shows there and nowhere else.
    """
    n = len(scribble_shape(layer))
    scale = np.asarray(layer.scale, dtype=float)[-n:]
    translate = np.asarray(layer.translate, dtype=float)[-n:].copy()
    if index:
        translate[: len(index)] += scale[: len(index)] * np.asarray(index, dtype=float)
    return {"scale": scale, "translate": translate}


def overlay_shape(layer) -> tuple[int, ...]:
    """Shape of an overlay layer: one slice (``(1, ..., 1, H, W)``) of the image."""
    shape = scribble_shape(layer)
    return (1,) * len(shape[:-2]) + shape[-2:]


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
    shape = scribble_shape(image_layer)
    layer = viewer.add_labels(np.zeros(shape, np.uint8), name=SCRIBBLES, **placement(image_layer))
    style_scribbles(layer)
    return layer


def _place_below(viewer, layer, anchor) -> None:
    """Move ``layer`` right below ``anchor`` (so strokes stay on top)."""
    if anchor is None or anchor not in viewer.layers:
        return
    src, dst = viewer.layers.index(layer), viewer.layers.index(anchor)
    if src > dst:
        viewer.layers.move(src, dst)


#: The overlays show uint8: P("is") and uncertainty scaled to 0..255 (a
#: quarter of the texture a float32 layer uploads on every redraw), the
#: frontier as 0 / 1.
LIMITS = {PREDICTION: (0.0, 255.0), UNCERTAINTY: (0.0, 255.0), FRONTIER: (0.0, 1.0)}


def _add_image(viewer, role, data, image_layer, index=(), **kwargs) -> Image:
    return viewer.add_image(
        data,
        name=role,
        contrast_limits=LIMITS[role],
        metadata={ROLE_KEY: role},
        **placement(image_layer, index),
        **kwargs,
    )


def _styles() -> dict:
    return {
        PREDICTION: dict(colormap=prediction_colormap()),
        UNCERTAINTY: dict(colormap="inferno", opacity=0.6, visible=False),
        FRONTIER: dict(colormap=frontier_colormap()),
    }


def ensure_overlays(viewer, image_layer, scribbles_layer=None, index=(), data=None) -> list:
    """Find or create the three overlay layers; returns the ones created.

    ``data`` maps a role to the array the layer shows (default: zeros of one
    slice of the image); an existing layer of another shape is made anew,
    one of the right shape is given ``data`` (once). Creating layers is the
    slowest thing the main thread does for the plugin, so it happens when an
    image is chosen, not while a worker competes for the interpreter. Over a
    stack, overlays hold one slice (``index``) and are placed on it.
    """
    shape = overlay_shape(image_layer)
    index = tuple(index) if len(shape) > 2 else ()
    data = data or {}
    selection = viewer.layers.selection
    active, selected = selection.active, set(selection)
    created = []
    for role, style in _styles().items():
        array = data.get(role)
        if array is None:
            array = np.zeros(shape, np.uint8)
        layer = find_layer(viewer, role, Image)
        if layer is not None and tuple(layer.data.shape) != shape:
            viewer.layers.remove(layer)  # made for another image: make it anew
            layer = None
        if layer is None:
            created.append(_add_image(viewer, role, array, image_layer, index, **style))
        elif layer.data is not array and role in data:
            layer.data = array
            layer.contrast_limits = LIMITS[role]
    for layer in created:
        _place_below(viewer, layer, scribbles_layer)
    if created:
        selection.clear()
        selection.update(s for s in selected if s in viewer.layers)
        if active in viewer.layers:
            selection.active = active
    return created


def _refresh(layer, thumbnail: bool) -> None:
    """Redraw a layer whose array changed in place (napari >= 0.6 can skip the thumbnail)."""
    try:
        layer.refresh(thumbnail=thumbnail, highlight=False, extent=False)
    except TypeError:  # older napari: no keywords
        layer.refresh()


def _to_u8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (NaN: 0) as uint8 0..255."""
    out = np.nan_to_num(values, nan=0.0) * 255.0 + 0.5
    return out.astype(np.uint8)


class Overlays:
    """The overlay layers of one image and the buffers they show (main thread only).

    The buffers hold one slice; each :class:`~napari_frontier.live.trainer.OverlayDelta`
    is written into them region by region and the visible layers are
    redrawn. The layers' data are never reassigned (a hidden layer is not
    redrawn until it is shown). ``probabilities`` and ``valid`` form the
    current :class:`~napari_frontier.prediction.tiling.Prediction` of the slice.
    """

    def __init__(self, viewer, image_layer, scribbles_layer=None, n_classes: int = 2):
        self.viewer = viewer
        self.image_layer = image_layer
        self.scribbles_layer = scribbles_layer
        shape = overlay_shape(image_layer)
        self.lead = (1,) * (len(shape) - 2)
        self.yx = tuple(shape[-2:])
        self.probabilities = np.zeros((n_classes, *self.yx), np.float32)
        self.valid = np.zeros(self.yx, bool)
        #: What the layers show (uint8, see ``LIMITS``).
        self.tint = np.zeros(self.yx, np.uint8)
        self.uncertainty = np.zeros(self.yx, np.uint8)
        self.frontier = np.zeros(self.yx, np.uint8)
        self._clean = True  # all buffers hold zeros
        #: The slice the buffers hold (None: nothing predicted yet).
        self.index: tuple[int, ...] | None = None
        #: Every pixel of the slice has been predicted.
        self.complete = False
        self.index_in_view = current_index(viewer, image_layer)
        self._views = self._make_views()
        self.attach()

    def _make_views(self) -> dict:
        # the layers' data: views of the buffers, of the image's dimensions
        lead = self.lead
        return {
            PREDICTION: self.tint.reshape(lead + self.yx),
            UNCERTAINTY: self.uncertainty.reshape(lead + self.yx),
            FRONTIER: self.frontier.reshape(lead + self.yx),
        }

    def _data(self) -> dict:
        return self._views

    def attach(self) -> list:
        """Make sure the layers exist and show these buffers; returns the layers created."""
        where = self.index if self.index is not None else self.index_in_view
        return ensure_overlays(
            self.viewer, self.image_layer, self.scribbles_layer, where, self._data()
        )

    def layer(self, role: str):
        return find_layer(self.viewer, role, Image)

    @property
    def has_prediction(self) -> bool:
        return self.index is not None

    def clear(self) -> None:
        """Forget the prediction (the layers show nothing)."""
        self.index = None
        self.complete = False
        self._zero()
        self.redraw(thumbnail=True)

    def _zero(self) -> None:
        if not self._clean:
            for a in (self.probabilities, self.valid, self.tint, self.uncertainty, self.frontier):
                a.fill(0)
        self._clean = True

    def write(self, delta) -> None:
        """Write an :class:`~napari_frontier.live.trainer.OverlayDelta` into the buffers (no redraw)."""
        if tuple(delta.shape) != self.yx:
            raise ValueError(f"an overlay of {delta.shape} for a slice of {self.yx}")
        if delta.probabilities.shape[0] != self.probabilities.shape[0]:
            # a model of another class count (loaded): new buffers, once
            self.probabilities = np.zeros((delta.probabilities.shape[0], *self.yx), np.float32)
            self.index = None
        if self.index != tuple(delta.index):
            self._zero()
            self.index = tuple(delta.index)
            self.complete = False
            if self.index:
                where = placement(self.image_layer, self.index)["translate"]
                for role in OVERLAYS:
                    layer = self.layer(role)
                    if layer is not None and not np.array_equal(layer.translate, where):
                        layer.translate = where  # the overlay of another slice: move it there
        rows, cols = delta.slices
        self._clean = False
        self.probabilities[:, rows, cols] = delta.probabilities
        self.valid[rows, cols] = delta.valid
        self.tint[rows, cols] = _to_u8(delta.p_is)
        self.uncertainty[rows, cols] = _to_u8(delta.uncertainty)
        self.frontier[rows, cols] = delta.frontier
        self.complete = self.complete or bool(delta.complete)

    def redraw(self, thumbnail: bool = False) -> None:
        """Redraw the visible overlay layers from the buffers."""
        for role in OVERLAYS:
            layer = self.layer(role)
            if layer is not None and layer.visible:
                _refresh(layer, thumbnail)


def add_mask_layer(viewer, labels: np.ndarray, image_layer, name: str) -> Labels:
    """Add (or replace) a Labels layer holding a predicted class map."""
    existing = find_layer(viewer, name, Labels)
    if existing is not None:
        existing.data = labels
        return existing
    return viewer.add_labels(
        labels,
        name=name,
        **placement(image_layer),
        opacity=0.6,
        colormap=mask_colormap(),
        metadata={ROLE_KEY: name},
    )


#: Edge colour of each class in "Frontier as shapes" (other classes: magenta).
SHAPE_COLORS = {IS: "yellow", IS_NOT: "cyan"}


def add_frontier_shapes(viewer, rings: list, classes: list):
    """Add the frontier as an editable Shapes layer: one polygon per ring, coloured by class."""
    return viewer.add_shapes(
        rings,
        shape_type="polygon",
        edge_color=[SHAPE_COLORS.get(k, "magenta") for k in classes],
        face_color="transparent",
        edge_width=1,
        name="frontier shapes",
        features={"class": classes},
    )
