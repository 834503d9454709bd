"""npe2 sample data: each bundled image with its example scribbles."""

from __future__ import annotations

from ..data.samples import load_sample
from ..data.scribbles import IS, IS_NOT, VOID
from .layers import ROLE_KEY, SCRIBBLES, scribble_colormap


def _layers(name: str) -> list[tuple]:
    sample = load_sample(name)
    image = (sample["image"], {"name": name, "metadata": {"title": sample["title"]}}, "image")
    scribbles = (
        sample["scribbles"],
        {
            "name": SCRIBBLES,
            "colormap": scribble_colormap(),
            "features": {"index": [VOID, IS, IS_NOT], "class": ["void", "is", "is not"]},
            "metadata": {ROLE_KEY: SCRIBBLES},
            "opacity": 0.9,
        },
        "labels",
    )
    return [image, scribbles]


def nuclei() -> list[tuple]:
    """Fluorescence nuclei with example "is" / "is not" scribbles."""
    return _layers("nuclei")


def textures() -> list[tuple]:
    """Grass on brick texture with example "is" / "is not" scribbles."""
    return _layers("textures")
