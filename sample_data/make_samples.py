"""Rebuild the bundled samples from images shipped inside PyPI packages.

Run once by the developers (needs the stardist wheel unpacked at
``--stardist``); the results are committed, nothing downloads at run time.

    python sample_data/make_samples.py --stardist /path/to/stardist/data/images
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from skimage import data as skdata
from skimage.data import binary_blobs

from napari_frontier.data.simulate import simulate_scribbles

HERE = Path(__file__).resolve().parent


def nuclei(stardist: Path) -> dict:
    image = tifffile.imread(stardist / "img2d.tif")
    truth = (tifffile.imread(stardist / "mask2d.tif") > 0).astype(np.uint8) * 255
    scribbles = simulate_scribbles(
        truth, rng=1, object_fraction=0.15, max_objects=10, background_strokes=6, margin=3, width=3
    )
    return {"image": image, "truth": truth, "scribbles": scribbles}


def textures() -> dict:
    grass = skdata.grass()
    brick = skdata.brick()
    n = min(grass.shape[0], brick.shape[0], 512)
    truth = binary_blobs(length=n, blob_size_fraction=0.35, volume_fraction=0.4, rng=3)
    image = np.where(truth, grass[:n, :n], brick[:n, :n]).astype(np.uint8)
    truth = truth.astype(np.uint8) * 255
    scribbles = simulate_scribbles(
        truth, rng=2, object_fraction=0.5, max_objects=4, background_strokes=5, margin=8, width=5
    )
    return {"image": image, "truth": truth, "scribbles": scribbles}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stardist", type=Path, required=True)
    args = parser.parse_args()
    index = {}
    for name, title, made in [
        ("nuclei", "Fluorescence nuclei (stardist img2d)", nuclei(args.stardist)),
        ("textures", "Grass on brick (scikit-image textures)", textures()),
    ]:
        entry = {"title": title, "channel_axis": None}
        for key in ("image", "scribbles", "truth"):
            fname = f"{name}_{key}.tif"
            tifffile.imwrite(HERE / fname, made[key], compression="zlib")
            entry[key] = fname
        index[name] = entry
    (HERE / "samples.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
