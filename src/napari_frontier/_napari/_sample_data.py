"""npe2 sample data: each bundled image with its example scribbles."""

from __future__ import annotations

from ..labels import IS, IS_NOT, VOID
from ..samples import load_sample

_COLORS = {
    None: (0.6, 0.6, 0.6, 1.0),
    VOID: (0.0, 0.0, 0.0, 0.0),
    IS: (1.0, 0.25, 0.85, 1.0),
    IS_NOT: (0.1, 0.8, 1.0, 1.0),
}


def _layers(name: str) -> list[tuple]:
    sample = load_sample(name)
    image = (sample["image"], {"name": name, "metadata": {"title": sample["title"]}}, "image")
    scribbles = (
        sample["scribbles"],
        {
            "name": "scribbles",
            "colormap": dict(_COLORS),
            "features": {"index": [VOID, IS, IS_NOT], "class": ["void", "is", "is not"]},
            "metadata": {"napari-frontier": "scribbles"},
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
