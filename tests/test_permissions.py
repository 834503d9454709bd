"""Outputs get the permissions the umask gives, as a plain ``open()`` would (not 0600)."""

from __future__ import annotations

import os
import stat
import sys

import numpy as np
import pytest

from napari_frontier import cli
from napari_frontier.data import io
from napari_frontier.data.io import write_image
from napari_frontier.learning.config import TrainConfig
from napari_frontier.outputs.batch import write_array
from napari_frontier.segmenter import Segmenter

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


@pytest.fixture(scope="module")
def segmenter():
    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[30:34, 22:42] = 1
    scribbles[2:6, 2:60] = 2
    seg = Segmenter(
        train_config=TrainConfig(seed=0, threads=1, device="cpu"),
        model_config=dict(width=8, depth=2),
    )
    seg.fit(image, scribbles, steps=2)
    return seg


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_outputs_get_the_permissions_of_the_umask(tmp_path, segmenter, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        assert io.umask() == umask
        mask = write_image(tmp_path / "mask.tif", np.zeros((8, 8), np.uint8))
        segmenter.save(checkpoint := tmp_path / "model.pt")
        assert cli.main(["export", str(checkpoint), "-o", str(tmp_path / "model.pt2")]) == 0
        store = write_array(tmp_path / "mask.zarr", np.zeros((8, 8), np.uint8))
        again = write_image(tmp_path / "mask.tif", np.ones((8, 8), np.uint8))  # replaced
    finally:
        os.umask(old)
    for path in (mask, checkpoint, tmp_path / "model.pt2", again):
        assert _mode(path) == file_mode, path
    assert _mode(store) == dir_mode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
