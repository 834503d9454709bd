"""The frontier as vectors: GeoJSON, ImageJ ROI sets, CSV, napari shapes; round trips."""

import csv
import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates
from skimage.draw import polygon as draw_polygon

from napari_frontier import cli
from napari_frontier.data.io import read_image, write_image
from napari_frontier.errors import FrontierIOError
from napari_frontier.learning.config import TrainConfig
from napari_frontier.outputs.provenance import read_provenance
from napari_frontier.outputs.vectors import (
    GeoReference,
    frontier_classes,
    frontier_polygons,
    frontier_shapes,
    read_georeference,
    to_geojson,
    write_frontier,
)
from napari_frontier.segmenter import Segmenter

roifile = pytest.importorskip("roifile")
tifffile = pytest.importorskip("tifffile")


def _labels():
    """Three classes: a ring of class 1 around a hole, objects on the border, a square of 3."""
    yy, xx = np.mgrid[:60, :70]
    lab = np.full((60, 70), 2, np.uint8)
    r2 = (yy - 30) ** 2 + (xx - 30) ** 2
    lab[r2 < 20**2] = 1
    lab[r2 < 8**2] = 2  # a hole (of class 2) in the ring
    lab[0:10, 50:70] = 3  # on the top and right border
    lab[45:60, 0:5] = 1  # bottom-left corner
    lab[40:44, 55:59] = 3
    return lab


def _raster(objects, shape, to_rc=lambda r: (r[:, 1] - 0.5, r[:, 0] - 0.5)):
    """Class map from ``(rings, class)``: exteriors filled, holes emptied (file coordinates)."""
    out = np.zeros(shape, np.int32)
    for rings, k in objects:
        inside = np.zeros(shape, bool)
        for n, ring in enumerate(rings):
            rr, cc = draw_polygon(*to_rc(np.asarray(ring, float)), shape)
            inside[rr, cc] = n == 0
        out[inside] = k
    return out


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def _check(raster, truth, classes):
    for k in classes:
        assert _iou(raster == k, truth == k) >= 0.99, k


def test_label_map_round_trips_through_geojson_roi_and_csv(tmp_path):
    lab = _labels()
    polys = frontier_polygons(lab)
    assert sorted(p.label for p in polys) == [1, 1, 2, 2, 3, 3]  # the hole is an object too
    (ring,) = [p for p in polys if p.label == 1 and p.holes]
    assert len(ring.holes) == 1 and ring.pixels == int((lab == 1).sum()) - 15 * 5
    names = ("is", "is not", "other")
    for suffix in (".geojson", ".zip", ".csv"):
        write_frontier(tmp_path / f"f{suffix}", polys, class_names=names, image_shape=lab.shape)
    doc = json.loads((tmp_path / "f.geojson").read_text())
    assert doc["napari_frontier"]["coordinates"] == "pixel" and "crs" not in doc
    feats = doc["features"]
    assert {f["properties"]["class_name"] for f in feats} == set(names)
    assert all(f["properties"]["mean_probability"] is None for f in feats)
    _check(_raster([(f["geometry"]["coordinates"], f["properties"]["class"]) for f in feats],
                   lab.shape), lab, (1, 3))  # fmt: skip
    # RFC 7946 winding (x, y): exterior counter-clockwise, holes clockwise
    for f in feats:
        for n, r in enumerate(np.asarray(c, float) for c in f["geometry"]["coordinates"]):
            area = np.dot(r[:-1, 0], r[1:, 1]) - np.dot(r[1:, 0], r[:-1, 1])
            assert (area > 0) == (n == 0)

    rois = roifile.roiread(tmp_path / "f.zip")
    assert len(rois) == len(polys) and sum(r.composite for r in rois) == 2  # ring, background
    _check(_raster([(r.coordinates(multi=True), r.group) for r in rois], lab.shape), lab, (1, 3))
    assert "class_name: is not" in rois[2].props

    with open(tmp_path / "f.csv") as f:
        rows = list(csv.DictReader(f))
    objects = {}
    for row in rows:
        rings = objects.setdefault(int(row["object"]), ({}, int(row["class"])))[0]
        rings.setdefault(int(row["ring"]), []).append((float(row["x"]), float(row["y"])))
    _check(_raster([([v for _, v in sorted(r.items())], k) for r, k in objects.values()],
                   lab.shape), lab, (1, 3))  # fmt: skip


def _smooth_probs(k, shape=(80, 90), seed=0):
    r = np.random.default_rng(seed)
    logits = gaussian_filter(r.normal(size=(k, *shape)), (0, 5, 5)) * 40
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_probability_contours_match_the_predicted_mask(k):
    probs = _smooth_probs(k)
    truth = probs.argmax(0) + 1
    # by default a two-class model gives its "is" objects, more classes every class
    default = frontier_polygons(probabilities=probs)
    assert {p.label for p in default} == ({1} if k == 2 else set(range(1, k + 1)))
    polys = frontier_polygons(probabilities=probs, classes="all")
    assert {p.label for p in polys} == set(range(1, k + 1))
    assert [p.exterior.tolist() for p in default] == [
        p.exterior.tolist() for p in polys if p.label in {q.label for q in default}
    ]
    centre = lambda r: (r[:, 0], r[:, 1])  # noqa: E731  (napari convention: centres at integers)
    raster = _raster([(p.rings, p.label) for p in polys], truth.shape, centre)
    _check(raster, truth, range(1, k + 1))
    for p in polys:
        assert p.mean_probability is not None and 1 / k < p.mean_probability <= 1
    if k == 2:  # the contour is where P("is") = 0.5, to interpolation accuracy
        inner = [
            r
            for p in polys
            for r in p.rings
            if (r.min(0) > 0).all() and (r.max(0) < np.array(truth.shape) - 1).all()
        ]
        assert inner
        for r in inner:
            # on grid edges, linear interpolation is exact
            on_edge = (r % 1 == 0).any(1)
            p = map_coordinates(probs[0].astype(np.float64), r[on_edge].T, order=1)
            np.testing.assert_allclose(p, 0.5, atol=1e-4)


def test_which_classes_are_traced():
    assert frontier_classes(2) == (1,)
    assert frontier_classes(3) == frontier_classes(3, "all") == (1, 2, 3)
    assert frontier_classes(2, "ALL") == (1, 2)
    assert frontier_classes(4, [3, 1, 3]) == (1, 3)
    for bad, needle in ((["0"], "classes 1..2"), ([3], "classes 1..2"), ([], "no class"),
                        ("some", "'all'")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            frontier_classes(2, bad)
    # a class map alone: K from its highest class (at least 2), or given
    lab = np.ones((8, 8), np.uint8)
    lab[2:5, 2:5] = 2
    assert [p.label for p in frontier_polygons(lab)] == [1]
    assert [p.label for p in frontier_polygons(lab, n_classes=3)] == [1, 2]
    assert frontier_shapes(lab)[1] == [1, 1]  # the outline and the hole of class 1


def test_holes_and_stacks_for_napari_shapes():
    lab = np.stack([_labels(), _labels()[::-1]])
    shapes, classes = frontier_shapes(lab, classes=[1])
    assert len(shapes) == 2 * 3 and classes == [1] * 6  # per slice: ring, hole, corner
    assert all(s.shape[1] == 3 for s in shapes)
    assert {int(s[0, 0]) for s in shapes} == {0, 1}
    flat, _ = frontier_shapes(_labels(), classes=[1])
    np.testing.assert_allclose(shapes[0][:, 1:], flat[0])


def _geotiff(path, image, transform=None, point=False):
    keys = [1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 2 if point else 1, 3072, 0, 1, 32633,
            3076, 0, 1, 9001]  # fmt: skip
    tags = [(34735, 3, len(keys), keys, True)]
    if transform is None:
        tags += [(33550, 12, 3, (10.0, 5.0, 0.0), True),
                 (33922, 12, 6, (0, 0, 0, 500000.0, 4600000.0, 0), True)]  # fmt: skip
    else:
        tags += [(34264, 12, 16, tuple(np.ravel(transform)), True)]
    tifffile.imwrite(path, image, extratags=tags)


def test_geotiff_world_coordinates(tmp_path):
    lab = _labels()
    _geotiff(tmp_path / "g.tif", lab)
    geo = read_georeference(tmp_path / "g.tif")
    assert geo.epsg == 32633
    np.testing.assert_allclose(geo.transform, (10, 0, 500000, 0, -5, 4600000))
    doc = to_geojson(frontier_polygons(lab), geo)
    assert doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert doc["napari_frontier"]["coordinates"] == "world"
    xs = np.concatenate(
        [np.asarray(f["geometry"]["coordinates"][0])[:, 0] for f in doc["features"]]
    )
    assert xs.min() >= 500000 and xs.max() <= 500000 + 70 * 10
    ring = next(f for f in doc["features"] if f["properties"]["class"] == 1)
    assert ring["properties"]["area"] == pytest.approx(ring["properties"]["pixels"] * 50, rel=0.05)
    to_rc = lambda r: ((4600000 - r[:, 1]) / 5 - 0.5, (r[:, 0] - 500000) / 10 - 0.5)  # noqa: E731
    raster = _raster([(f["geometry"]["coordinates"], f["properties"]["class"])
                      for f in doc["features"]], lab.shape, to_rc)  # fmt: skip
    _check(raster, lab, (1, 3))
    # a rotated / sheared ModelTransformation; PixelIsPoint shifts by half a pixel
    m = [[2, 1, 0, 100], [1, -3, 0, 200], [0, 0, 0, 0], [0, 0, 0, 1]]
    _geotiff(tmp_path / "t.tif", lab, m, point=True)
    geo = read_georeference(tmp_path / "t.tif")
    x, y = geo.to_world(np.array([0.5]), np.array([0.5]))  # the first pixel's centre
    np.testing.assert_allclose([x[0], y[0]], [100, 200])
    assert read_georeference(tmp_path / "plain.tif") is None
    write_image(tmp_path / "plain.tif", lab)
    assert read_georeference(tmp_path / "plain.tif") is None


def test_write_frontier_refuses_unknown_types_and_leaves_nothing(tmp_path):
    polys = frontier_polygons(_labels())
    with pytest.raises(FrontierIOError, match="unknown frontier file type"):
        write_frontier(tmp_path / "f.shp", polys)
    with pytest.raises(FrontierIOError):
        write_frontier(tmp_path / "missing" / "f.geojson", polys)
    assert list(tmp_path.iterdir()) == []
    assert GeoReference((1, 0, 0, 0, 1, 0)).to_world(np.array([2.0]), np.array([3.0]))[1] == 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    yy, xx = np.mgrid[:64, :64]
    img = np.where((yy - 32) ** 2 + (xx - 30) ** 2 < 15**2, 200.0, 50.0).astype(np.float32)
    img += np.random.default_rng(0).normal(0, 5, img.shape).astype(np.float32)
    s = np.zeros(img.shape, np.uint8)
    s[30:34, 22:38] = 1
    s[:3] = 2
    seg = Segmenter(
        train_config=TrainConfig(seed=0, threads=1, device="cpu"),
        model_config=dict(width=8, depth=2),
    )
    seg.fit(img, s, steps=40)
    path = tmp_path_factory.mktemp("m") / "m.pt"
    seg.save(path)
    return path, img


def test_cli_frontier_outputs(tmp_path, model, capsys):
    m, img = model
    _geotiff(tmp_path / "geo.tif", img)
    code = cli.main([str(a) for a in ["predict", m, tmp_path / "geo.tif", "-o",
                                      tmp_path / "mask.tif", "--frontier", tmp_path / "f.geojson"]])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    mask = read_image(tmp_path / "mask.tif")
    doc = json.loads((tmp_path / "f.geojson").read_text())
    assert doc["crs"]["properties"]["name"].endswith("32633")
    assert read_provenance(tmp_path / "f.geojson") == read_provenance(tmp_path / "mask.tif")
    to_rc = lambda r: ((4600000 - r[:, 1]) / 5 - 0.5, (r[:, 0] - 500000) / 10 - 0.5)  # noqa: E731
    # by default the "is" objects only: every feature drawn at once is the "is" mask
    assert {f["properties"]["class"] for f in doc["features"]} == {1}
    raster = _raster([(f["geometry"]["coordinates"], 1) for f in doc["features"]],
                     mask.shape, to_rc)  # fmt: skip
    assert _iou(raster == 1, mask == 255) >= 0.99
    assert all(0.5 < f["properties"]["mean_probability"] <= 1 for f in doc["features"])
    assert read_provenance(tmp_path / "f.geojson")["options"]["frontier_classes"] == [1]
    # --frontier-classes all: the "is not" objects too
    code = cli.main([str(a) for a in ["predict", m, tmp_path / "geo.tif", "-o", tmp_path / "m1.tif",
                                      "--frontier", tmp_path / "all.geojson", "--frontier-classes",
                                      "all"]])  # fmt: skip
    assert code == 0
    doc = json.loads((tmp_path / "all.geojson").read_text())
    assert {f["properties"]["class"] for f in doc["features"]} == {1, 2}
    raster = _raster([(f["geometry"]["coordinates"], f["properties"]["class"])
                      for f in doc["features"]], mask.shape, to_rc)  # fmt: skip
    _check(raster, np.where(mask == 255, 1, 2), (1, 2))
    assert read_provenance(tmp_path / "all.geojson")["options"]["frontier_classes"] == [1, 2]

    # a batch: a folder of ROI sets, resumed; a deleted frontier file is redone
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.tif", img)
    run = ["predict", m, tmp_path / "in", "-o", tmp_path / "out", "--frontier",
           tmp_path / "vec", "--frontier-format", "zip"]  # fmt: skip
    assert cli.main([str(a) for a in run]) == 0
    rois = roifile.roiread(tmp_path / "vec" / "a.zip")
    assert {r.group for r in rois} == {1}
    raster = _raster([(r.coordinates(multi=True), 1) for r in rois], img.shape)
    a_mask = read_image(tmp_path / "out" / "a.tif")
    assert _iou(raster == 1, a_mask == 255) >= 0.99
    capsys.readouterr()
    assert cli.main([str(a) for a in run]) == 0
    assert "1 skipped (up to date)" in capsys.readouterr().err
    # other classes: the batch redoes the image (the option is in its provenance)
    assert cli.main([str(a) for a in [*run, "--frontier-classes", "1,2"]]) == 0
    assert "1 redone (options changed)" in capsys.readouterr().err
    rois = roifile.roiread(tmp_path / "vec" / "a.zip")
    raster = _raster([(r.coordinates(multi=True), r.group) for r in rois], img.shape)
    _check(raster, np.where(a_mask == 255, 1, 2), (1, 2))
    assert cli.main([str(a) for a in run]) == 0
    assert "1 redone (options changed)" in capsys.readouterr().err
    (tmp_path / "vec" / "a.zip").unlink()
    assert cli.main([str(a) for a in run]) == 0
    assert "1 redone (missing output)" in capsys.readouterr().err
    assert (tmp_path / "vec" / "a.zip").exists()
    # a single output needs a vector file name
    code = cli.main([str(a) for a in ["predict", m, tmp_path / "geo.tif", "-o",
                                      tmp_path / "m2.tif", "--frontier", tmp_path / "f.shp"]])  # fmt: skip
    assert code == 2 and "--frontier" in capsys.readouterr().err


def test_zarr_inputs_get_vectors_from_the_block_path(tmp_path, model, capsys):
    zarr = pytest.importorskip("zarr")
    m, img = model
    (tmp_path / "in").mkdir()
    for name in ("a.zarr", "b.ome.zarr"):
        z = zarr.create_array(store=str(tmp_path / "in" / name), shape=img.shape,
                              chunks=(32, 32), dtype=img.dtype)  # fmt: skip
        z[...] = img
    run = ["predict", m, tmp_path / "in", "-o", tmp_path / "out", "--frontier", tmp_path / "vec",
           "--frontier-format", "csv", "--block", "32"]  # fmt: skip
    assert cli.main([str(a) for a in run]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.zarr", "b.ome.zarr"]
    assert sorted(p.name for p in (tmp_path / "vec").iterdir()) == ["a.csv", "b.csv"]
    mask = zarr.open_array(str(tmp_path / "out" / "a.zarr"), mode="r")[...]
    with open(tmp_path / "vec" / "a.csv") as f:
        rows = list(csv.DictReader(f))
    objects = {}
    for row in rows:
        rings = objects.setdefault(int(row["object"]), ({}, int(row["class"])))[0]
        rings.setdefault(int(row["ring"]), []).append((float(row["x"]), float(row["y"])))
    assert {k for _, k in objects.values()} == {1}  # the "is" objects
    raster = _raster([([v for _, v in sorted(r.items())], k) for r, k in objects.values()],
                     mask.shape)  # fmt: skip
    assert _iou(raster == 1, mask == 255) >= 0.99
    assert read_provenance(tmp_path / "out" / "b.ome.zarr") is not None
    capsys.readouterr()
    assert cli.main([str(a) for a in run]) == 0
    assert "0 done, 2 skipped (up to date)" in capsys.readouterr().err
