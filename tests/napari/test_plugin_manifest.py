"""The npe2 manifest: it validates, every python_name imports, contributions work."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

npe2 = pytest.importorskip("npe2")
pytestmark = pytest.mark.gui

MANIFEST = Path(__file__).resolve().parents[2] / "napari.yaml"


def _manifest():
    return npe2.PluginManifest.from_file(MANIFEST)


def test_manifest_is_found_through_the_entry_point():
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-frontier")  # KeyError if not registered
    assert manifest.display_name == "napari-frontier"
    assert [w.display_name for w in manifest.contributions.widgets] == ["Scribble trainer"]


@pytest.mark.parametrize("command", _manifest().contributions.commands, ids=lambda c: c.id)
def test_every_python_name_imports(command):
    module, _, attr = command.python_name.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj)


def test_manifest_validates():
    manifest = _manifest()
    manifest.validate_imports()
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei", "textures"}
    writer = manifest.contributions.writers[0]
    assert set(writer.filename_extensions) == {".tif", ".tiff", ".png", ".npy"}


@pytest.mark.parametrize("name", ["nuclei", "textures"])
def test_sample_data_contribution(make_napari_viewer, name):
    from napari.layers import Image, Labels

    viewer = make_napari_viewer()
    viewer.open_sample("napari-frontier", name)
    image, scribbles = viewer.layers[name], viewer.layers["scribbles"]
    assert isinstance(image, Image) and isinstance(scribbles, Labels)
    assert scribbles.data.shape == image.data.shape[:2]
    assert set(np.unique(scribbles.data)) == {0, 1, 2}
    colors = scribbles.colormap.map(np.array([0, 1, 2]))
    assert colors[0][3] == 0  # void is transparent
    assert not np.allclose(colors[1], colors[2])


@pytest.mark.parametrize("suffix", [".tif", ".png", ".npy"])
def test_writer_contribution(make_napari_viewer, tmp_path, suffix):
    import napari
    from napari_frontier.data.io import read_image

    viewer = make_napari_viewer()
    mask = np.zeros((20, 30), np.int32)
    mask[5:10, 5:25] = 1
    mask[12:, :] = 2
    layer = viewer.add_labels(mask, name="mask")
    path = tmp_path / f"mask{suffix}"
    written = napari.save_layers(str(path), [layer], plugin="napari-frontier")
    assert [Path(p) for p in written] == [path]
    back = read_image(path)
    np.testing.assert_array_equal(back, mask)
    assert back.dtype == np.uint8
