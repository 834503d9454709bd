"""Open napari with the "Scribble trainer" docked (for ``scripts/demo.py`` / ``frontier gui``)."""

from __future__ import annotations

import argparse


def open_viewer(image=None, scribbles=None, sample: str | None = "nuclei", show: bool = True):
    """A napari viewer with the widget docked and an image (a file or a bundled sample).

    Parameters
    ----------
    image
        Image file to open (any format :func:`napari_frontier.data.io.read_image` reads);
        when None, ``sample`` is opened instead.
    scribbles
        Scribbles file for ``image`` (0 void, 1 "is", 2 "is not"); an empty
        scribbles layer is made when None.
    sample
        Bundled sample ("nuclei", "textures") used when no image is given.
    show
        Show the window.

    Returns
    -------
    (viewer, widget)
    """
    import napari

    from ..data.io import read_image
    from . import layers as L

    viewer = napari.Viewer(show=show, title="napari-frontier")
    if image is not None:
        from pathlib import Path

        data = read_image(image)
        layer = viewer.add_image(
            data, name=Path(image).stem, rgb=data.ndim == 3 and data.shape[-1] in (3, 4)
        )
        if scribbles is not None:
            marks = viewer.add_labels(read_image(scribbles).astype("uint8"), name=L.SCRIBBLES)
            L.style_scribbles(marks)
        else:
            L.new_scribbles_layer(viewer, layer)
    elif sample:
        viewer.open_sample("napari-frontier", sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    scribbles_layer = widget.scribbles_picker.layer()
    if scribbles_layer is not None:
        viewer.layers.selection.active = scribbles_layer
        scribbles_layer.mode = "paint"
    return viewer, widget


def main(argv=None) -> int:
    """``frontier gui [IMAGE] [-s SCRIBBLES] [--sample NAME]``: open napari and run it."""
    p = argparse.ArgumentParser(
        prog="frontier gui", description="Open napari with the scribble trainer docked."
    )
    p.add_argument("image", nargs="?", help="image file (default: a bundled sample)")
    p.add_argument("-s", "--scribbles", help="scribbles file for IMAGE")
    p.add_argument("--sample", default="nuclei", help="bundled sample: nuclei or textures")
    args = p.parse_args(argv)
    import napari

    open_viewer(args.image, args.scribbles, sample=args.sample)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
