"""Shared test set-up: keep napari, Qt and Mesa away from the home folder."""

from __future__ import annotations

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="frontier-tests-")
for _var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR", "XDG_DATA_HOME"):
    _d = os.path.join(_TMP, _var.lower())
    os.makedirs(_d, mode=0o700, exist_ok=True)
    os.environ.setdefault(_var, _d)
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_TMP, "napari-settings.yaml"))
os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def disk_image():
    """A 96x96 grey image: bright disk (object) on a dark noisy background, with its truth."""
    r = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    truth = (yy - 48) ** 2 + (xx - 44) ** 2 < 22**2
    image = np.where(truth, 180, 60) + r.normal(0, 12, truth.shape)
    scribbles = np.zeros(truth.shape, np.uint8)
    scribbles[44:48, 28:60] = 1  # a stroke across the disk, 6 px short of its edge
    ring = ((yy - 48) ** 2 + (xx - 44) ** 2 >= 27**2) & ((yy - 48) ** 2 + (xx - 44) ** 2 < 30**2)
    scribbles[ring] = 2  # a circle around it, 5 px outside: the void band between
    return image.astype(np.float32), scribbles, truth
