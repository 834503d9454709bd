"""The bundled sample images, their example scribbles and ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FrontierIOError


def sample_dir() -> Path:
    """Folder of the bundled samples (inside the package, or the repository's)."""
    package = Path(__file__).resolve().parents[1]  # napari_frontier/, above data/
    for candidate in (package / "sample_data", package.parents[1] / "sample_data"):
        if (candidate / "samples.json").is_file():
            return candidate
    raise FrontierIOError("the sample data folder was not found in this installation")


def _index() -> dict:
    return json.loads((sample_dir() / "samples.json").read_text())


def sample_names() -> list[str]:
    """Names of the bundled samples."""
    return list(_index())


def load_sample(name: str) -> dict:
    """Load a sample: ``{"image", "scribbles", "truth" (or None), "title", ...}``."""
    from .io import read_image

    index = _index()
    if name not in index:
        raise KeyError(f"no sample {name!r}; choose one of {', '.join(index)}")
    entry = index[name]
    folder = sample_dir()
    out = {"name": name, "title": entry["title"], "channel_axis": entry.get("channel_axis")}
    out["image"] = read_image(folder / entry["image"])
    out["scribbles"] = read_image(folder / entry["scribbles"]).astype(np.uint8)
    out["truth"] = read_image(folder / entry["truth"]) if entry.get("truth") else None
    return out
