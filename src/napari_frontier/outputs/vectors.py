"""The frontier as vectors: one polygon (with holes) per object.

:func:`frontier_polygons` traces every object (a 4-connected region of one
predicted class) with sub-pixel contours. Which classes: for a two-class
model the "is" objects only (what a user opening the file in QGIS or Fiji
expects: the background is no object); for K > 2 classes every class;
``classes="all"`` or a list picks others (:func:`frontier_classes`). From probabilities the contour is
where the object's class ties with the best other class, ``P_k = max_j≠k P_j``:
for two classes exactly ``P = 0.5``. From a label map it runs between pixel
centres. Each object is traced on its own padded crop, so every ring closes
(also along the image border) and holes come out as interior rings.

:func:`write_frontier` writes them by suffix, atomically:

- ``.geojson`` / ``.json``: a GeoJSON FeatureCollection, one Polygon feature per
  object (exterior counter-clockwise, holes clockwise, in the file's
  coordinates), properties ``object``, ``class``, ``class_name``, ``area``,
  ``pixels``, ``mean_probability``. World coordinates and the CRS (EPSG) when
  a :class:`GeoReference` is given (:func:`read_georeference` reads it from a
  GeoTIFF), else pixel coordinates; the member ``napari_frontier`` says which.
- ``.zip``: an ImageJ/Fiji ROI set (``roifile``): a polygon ROI per object, a
  composite (shape) ROI for objects with holes; class in the ROI group and
  properties.
- ``.csv``: ``object,class,ring,y,x`` (ring 0 = exterior, 1.. = holes).

Coordinates in files follow the image-corner convention of ImageJ and GIS
(pixel ``(row, col)`` covers ``[row, row + 1] × [col, col + 1]``, so its
centre is ``(row + 0.5, col + 0.5)``). :class:`FrontierPolygon` and
:func:`frontier_shapes` use napari's convention (pixel centres at integers).
"""

from __future__ import annotations

import csv
import io as _io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.scribbles import IS
from ..errors import FrontierIOError

VECTOR_SUFFIXES = (".geojson", ".json", ".zip", ".csv")


@dataclass(frozen=True)
class FrontierPolygon:
    """One object: its outline and holes as closed ``(N, 2)`` (y, x) arrays, pixel centres at integers."""

    object: int
    label: int
    exterior: np.ndarray
    holes: tuple[np.ndarray, ...]
    pixels: int
    mean_probability: float | None = None
    index: tuple[int, ...] = ()

    @property
    def area(self) -> float:
        """Area inside the exterior and outside the holes, in pixels."""
        return abs(_signed_area(self.exterior)) - sum(abs(_signed_area(h)) for h in self.holes)

    @property
    def rings(self) -> list[np.ndarray]:
        return [self.exterior, *self.holes]


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring of (a, b) points (positive when counter-clockwise in a, b)."""
    a, b = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(a, np.roll(b, -1)) - np.dot(b, np.roll(a, -1)))


def _close(ring: np.ndarray) -> np.ndarray:
    if len(ring) and not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


# -- tracing ---------------------------------------------------------------------
def frontier_classes(n_classes: int, classes: Sequence[int] | str | None = None) -> tuple[int, ...]:
    """The classes whose objects are traced, for a model of ``n_classes`` classes.

    ``None`` (the default): ``(1,)``, the "is" objects, for two classes, and
    every class 1..K for more. ``"all"``: every class. A sequence: those
    classes (each in 1..K), in increasing order.

    Raises
    ------
    ValueError
        A class outside 1..K, an empty list, or a string other than ``"all"``.
    """
    n = int(n_classes)
    if classes is None:
        return (IS,) if n <= 2 else tuple(range(1, n + 1))
    if isinstance(classes, str):
        if classes.strip().lower() != "all":
            raise ValueError(f"{classes!r}: use 'all' or a list of classes 1..{n}")
        return tuple(range(1, n + 1))
    picked = sorted({int(k) for k in classes})
    if not picked:
        raise ValueError("no class given: use 'all' or a list of classes 1..{n}")
    bad = [k for k in picked if not 1 <= k <= n]
    if bad:
        raise ValueError(f"{','.join(map(str, bad))}: the model has classes 1..{n}")
    return tuple(picked)


def frontier_polygons(
    labels: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    classes: Sequence[int] | str | None = None,
    min_pixels: int = 1,
    n_classes: int | None = None,
) -> list[FrontierPolygon]:
    """Polygons of the objects of some classes (see the module docstring).

    Parameters
    ----------
    labels
        Class map ``(..., Y, X)``, 1..K, 0 = no-data (never traced). Default:
        the argmax of ``probabilities`` (0 where they are NaN).
    probabilities
        ``(K, ..., Y, X)`` class probabilities (e.g. ``Prediction.probabilities``):
        sub-pixel contours at the class boundary, and ``mean_probability`` of
        each object (mean P(class) over its boundary pixels).
    classes
        Classes to trace: default the "is" objects of a two-class model and
        every class of a K > 2 one; ``"all"``; or a list (see
        :func:`frontier_classes`).
    min_pixels
        Smaller objects are left out.
    n_classes
        K. Default: the number of ``probabilities``, else the highest class
        in ``labels`` (at least 2): give it with a class map of a K > 2 model
        in which some class is never predicted.

    Returns
    -------
    list of FrontierPolygon
        Numbered 1.. in order of slice, class, then position. For stacks each
        polygon's ``index`` is its slice.
    """
    from skimage.measure import find_contours, label
    from skimage.segmentation import find_boundaries

    if labels is None and probabilities is None:
        raise ValueError("give labels and/or probabilities")
    if labels is None:
        p = np.asarray(probabilities)
        labels = (np.nan_to_num(p, nan=-1.0).argmax(0) + 1).astype(np.int32)
        labels[np.isnan(p).any(0)] = 0
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ValueError(f"labels must be at least 2D, not {labels.shape}")
    if probabilities is not None and np.shape(probabilities)[1:] != labels.shape:
        raise ValueError(
            f"probabilities {np.shape(probabilities)} do not fit labels {labels.shape}"
        )
    if n_classes is None:
        if probabilities is not None:
            n_classes = int(np.shape(probabilities)[0])
        else:
            n_classes = max(2, int(labels.max()) if labels.size else 0)
    classes = frontier_classes(n_classes, classes)
    out: list[FrontierPolygon] = []
    for idx in np.ndindex(*labels.shape[:-2]):
        lab = labels[idx]
        probs = None if probabilities is None else np.asarray(probabilities[(slice(None), *idx)])
        for k in classes:
            comp = label(lab == k, connectivity=1)
            for n, sl in enumerate(_find_objects(comp), 1):
                if sl is None:
                    continue
                ys = slice(max(0, sl[0].start - 1), min(lab.shape[0], sl[0].stop + 1))
                xs = slice(max(0, sl[1].start - 1), min(lab.shape[1], sl[1].stop + 1))
                obj = comp[ys, xs] == n
                count = int(obj.sum())
                if count < min_pixels:
                    continue
                mean_p = None
                if probs is None:
                    f = np.where(obj, 0.5, -0.5)
                else:
                    f = _margin(probs[:, ys, xs], k, obj)
                    edge = find_boundaries(obj, mode="inner", connectivity=1) & obj
                    mean_p = float(np.nanmean(probs[k - 1, ys, xs][edge]))
                # a rim of the negated edge values: contours close on the image border
                f = np.pad(f, 1, mode="edge")
                for rim in (f[0], f[-1], f[:, 0], f[:, -1]):
                    rim[...] = -np.abs(rim)
                offset = np.array([ys.start - 1, xs.start - 1], float)
                rings = [_close(c) + offset for c in find_contours(f, 0.0)]
                rings.sort(key=lambda r: -abs(_signed_area(r)))
                out.append(
                    FrontierPolygon(
                        object=len(out) + 1,
                        label=int(k),
                        exterior=rings[0],
                        holes=tuple(rings[1:]),
                        pixels=count,
                        mean_probability=mean_p,
                        index=tuple(int(i) for i in idx),
                    )
                )
    return out


def _find_objects(comp):
    from scipy.ndimage import find_objects

    return find_objects(comp)


def _margin(probs: np.ndarray, k: int, obj: np.ndarray) -> np.ndarray:
    """``P_k - max_j≠k P_j``, signed to be > 0 exactly on the object's pixels."""
    p = np.nan_to_num(probs, nan=0.0).astype(np.float64)
    others = np.delete(p, k - 1, axis=0).max(0)
    d = p[k - 1] - others
    eps = 1e-6
    return np.where(obj, np.maximum(d, eps), np.minimum(-np.abs(d), -eps))


def frontier_shapes(
    labels: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    classes: Sequence[int] | str | None = None,
    min_pixels: int = 1,
    n_classes: int | None = None,
) -> tuple[list[np.ndarray], list[int]]:
    """Rings ready for a napari Shapes layer: ``(polygons, classes)``.

    ``polygons`` are ``(N, 2)`` (y, x) arrays in napari's pixel convention (for
    a stack, ``(N, 2 + slice axes)`` with the slice index in front), exteriors
    and holes alike (a hole is a ring of its object's class); ``classes``
    gives the class of each, e.g. for the ``edge_color``. Arguments as in
    :func:`frontier_polygons`.
    """
    polygons, kinds = [], []
    for poly in frontier_polygons(labels, probabilities, classes, min_pixels, n_classes):
        for ring in poly.rings:
            r = ring[:-1]  # napari closes polygons itself
            if poly.index:
                r = np.hstack([np.tile(np.asarray(poly.index, float), (len(r), 1)), r])
            polygons.append(r)
            kinds.append(poly.label)
    return polygons, kinds


# -- georeference ----------------------------------------------------------------
@dataclass(frozen=True)
class GeoReference:
    """Pixel-corner coordinates (col, row) to world (x, y): ``x = a·col + b·row + c``, ``y = d·col + e·row + f``."""

    transform: tuple[float, float, float, float, float, float]
    epsg: int | None = None

    def to_world(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b, c, d, e, f = self.transform
        return a * col + b * row + c, d * col + e * row + f


def read_georeference(path) -> GeoReference | None:
    """The georeference of a GeoTIFF (tiepoint + pixel scale, or transformation), or None."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            geo = tf.pages[0].geotiff_tags if tf.is_geotiff else None
    except Exception:
        return None
    if not geo:
        return None
    if "ModelTransformation" in geo:
        m = np.asarray(geo["ModelTransformation"], float).reshape(4, 4)
        t = (m[0, 0], m[0, 1], m[0, 3], m[1, 0], m[1, 1], m[1, 3])
    elif "ModelTiepoint" in geo and "ModelPixelScale" in geo:
        i, j, _, x, y, _ = (float(v) for v in geo["ModelTiepoint"][:6])
        sx, sy = (float(v) for v in geo["ModelPixelScale"][:2])
        t = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    else:
        return None
    a, b, c, d, e, f = (float(v) for v in t)
    if int(geo.get("GTRasterTypeGeoKey", 1)) == 2:
        # PixelIsPoint: raster coordinates name pixel centres; ours name corners
        c, f = c - 0.5 * (a + b), f - 0.5 * (d + e)
    epsg = None
    for key in ("ProjectedCSTypeGeoKey", "GeographicTypeGeoKey"):
        if key in geo and 1024 <= int(geo[key]) < 32767:
            epsg = int(geo[key])
            break
    return GeoReference((a, b, c, d, e, f), epsg)


# -- writers ---------------------------------------------------------------------
def _xy(ring: np.ndarray, geo: GeoReference | None) -> np.ndarray:
    """(y, x) pixel-centre ring to file coordinates (x, y): pixel corners, or world."""
    col, row = ring[:, 1] + 0.5, ring[:, 0] + 0.5
    if geo is not None:
        col, row = geo.to_world(col, row)
    return np.column_stack([col, row])


def to_geojson(
    polygons: Sequence[FrontierPolygon],
    georeference: GeoReference | None = None,
    class_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    provenance: dict | None = None,
) -> dict:
    """A GeoJSON FeatureCollection (dict) of the polygons (see the module docstring)."""
    geo = georeference
    features = []
    for poly in polygons:
        rings = []
        for n, ring in enumerate(poly.rings):
            xy = _xy(ring, geo)
            ccw = _signed_area(xy) > 0
            if ccw != (n == 0):  # exterior counter-clockwise, holes clockwise
                xy = xy[::-1]
            rings.append(np.round(xy, 6).tolist())
        scale = 1.0 if geo is None else abs(geo.transform[0] * geo.transform[4]
                                             - geo.transform[1] * geo.transform[3])  # fmt: skip
        props = {
            "object": poly.object,
            "class": poly.label,
            "class_name": _name(class_names, poly.label),
            "area": round(poly.area * scale, 6),
            "pixels": poly.pixels,
            "mean_probability": (
                None if poly.mean_probability is None else round(poly.mean_probability, 6)
            ),
        }
        if poly.index:
            props["slice"] = list(poly.index)
        features.append(
            {
                "type": "Feature",
                "id": poly.object,
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": props,
            }
        )
    meta: dict = {
        "source": "napari-frontier",
        "coordinates": "world" if geo is not None else "pixel",
    }
    if geo is None:
        meta["pixel_convention"] = (
            "x = column, y = row (downwards); pixel (row, col) covers "
            "[col, col + 1] x [row, row + 1]; area in pixels"
        )
    else:
        meta["transform"] = list(geo.transform)
        meta["epsg"] = geo.epsg
    if image_shape is not None:
        meta["image_shape"] = [int(s) for s in image_shape]
    if provenance is not None:
        meta["provenance"] = provenance
    collection: dict = {"type": "FeatureCollection", "napari_frontier": meta}
    if geo is not None and geo.epsg is not None:
        # RFC 7946 dropped "crs", but GDAL and QGIS still read this form
        collection["crs"] = {
            "type": "name",
            "properties": {"name": f"urn:ogc:def:crs:EPSG::{geo.epsg}"},
        }
    collection["features"] = features
    return collection


def _name(class_names, k: int) -> str:
    if class_names is not None and 0 < k <= len(class_names):
        return str(class_names[k - 1])
    return str(k)


def _roi(poly: FrontierPolygon, class_names, flat_index: int | None):
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    rings = [_xy(r, None)[:-1] for r in poly.rings]  # ImageJ closes polygons
    name = f"{poly.object:05d}-{_name(class_names, poly.label)}"
    if len(rings) == 1:
        roi = ImagejRoi.frompoints(rings[0].astype(np.float32), name=name)
        roi.roitype = ROI_TYPE.POLYGON
    else:  # a shape ROI: the rings as one path, filled even-odd (holes stay empty)
        path = []
        for r in rings:
            path += [0.0, *r[0]]
            for x, y in r[1:]:
                path += [1.0, x, y]
            path.append(4.0)
        allxy = np.vstack(rings)
        lo, hi = np.floor(allxy.min(0)), np.ceil(allxy.max(0))
        roi = ImagejRoi(
            roitype=ROI_TYPE.RECT,
            name=name,
            left=int(lo[0]),
            top=int(lo[1]),
            right=int(hi[0]),
            bottom=int(hi[1]),
            shape_roi_size=len(path),
            multi_coordinates=np.asarray(path, np.float32),
            options=ROI_OPTIONS(0),
        )
    roi.group = min(255, poly.label)
    if flat_index is not None:
        roi.position = flat_index + 1
    props = {
        "object": poly.object,
        "class": poly.label,
        "class_name": _name(class_names, poly.label),
        "area": round(poly.area, 6),
        "pixels": poly.pixels,
    }
    if poly.mean_probability is not None:
        props["mean_probability"] = round(poly.mean_probability, 6)
    roi.props = "".join(f"{k}: {v}\n" for k, v in props.items())
    return roi


def write_frontier(
    path,
    polygons: Sequence[FrontierPolygon],
    georeference: GeoReference | None = None,
    class_names: Sequence[str] | None = None,
    image_shape: Sequence[int] | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write polygons as GeoJSON, an ImageJ ROI set or CSV, chosen by the suffix (atomic).

    ``georeference`` applies to GeoJSON only (ROI sets and CSV are in pixels);
    ``provenance`` is recorded in GeoJSON (``napari_frontier.provenance``) and in
    the ROI set's zip comment; ``image_shape`` (stacks: all axes) orders slices.

    Raises
    ------
    FrontierIOError
        Unknown suffix, or the file cannot be written.
    """
    from ..data.io import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise FrontierIOError(
            f"{path}: unknown frontier file type {suffix!r}; use one of {', '.join(VECTOR_SUFFIXES)}"
        )
    lead = tuple(image_shape[:-2]) if image_shape is not None else ()
    with atomic_path(path) as tmp:
        if suffix in (".geojson", ".json"):
            doc = to_geojson(polygons, georeference, class_names, image_shape, provenance)
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
        elif suffix == ".csv":
            buf = _io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            has_slices = any(p.index for p in polygons)
            w.writerow(["object", "class", "ring", *(["slice"] if has_slices else []), "y", "x"])
            for poly in polygons:
                sl = ["/".join(map(str, poly.index))] if has_slices else []
                for n, ring in enumerate(poly.rings):
                    for y, x in np.round(ring + 0.5, 4):
                        w.writerow([poly.object, poly.label, n, *sl, f"{y:g}", f"{x:g}"])
            tmp.write_text(buf.getvalue())
        else:
            import zipfile

            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for poly in polygons:
                    flat = (
                        int(np.ravel_multi_index(poly.index, lead)) if poly.index and lead else None
                    )
                    roi = _roi(poly, class_names, flat)
                    zf.writestr(f"{roi.name}.roi", roi.tobytes())
                if provenance is not None:
                    zf.comment = json.dumps(
                        {"napari_frontier": {"provenance": provenance}}
                    ).encode()
    return path
