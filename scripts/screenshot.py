"""Make docs/screenshot.png: napari with the nuclei sample, the widget and live overlays.

Run it with a display, or headless under Xvfb::

    xvfb-run -a -s "-screen 0 1400x1050x24" python scripts/screenshot.py

Options: ``--seconds`` of training (default 10), ``--output`` path, ``--sample``,
``--stack`` (docs/screenshot-stack.png: a time series made of drifting crops of
the sample, strokes on two frames, the live overlay of an unpainted frame and
"Predict volume").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait(ms: int) -> None:
    """Run the Qt event loop for ``ms`` milliseconds."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="training time")
    p.add_argument("--output", default=str(ROOT / "docs" / "screenshot.png"))
    p.add_argument("--sample", default="nuclei", help="bundled sample: nuclei or textures")
    p.add_argument("--stack", action="store_true", help="a stack of the sample (see above)")
    p.add_argument("--shapes", action="store_true", help="the frontier as vector shapes, zoomed in")
    args = p.parse_args(argv)
    if args.stack and args.output == p.get_default("output"):
        args.output = str(ROOT / "docs" / "screenshot-stack.png")

    import napari

    viewer = napari.Viewer(show=True, title="napari-frontier")
    viewer.window.resize(1400, 1000)
    if args.stack:
        _open_stack(viewer, args.sample)
    else:
        viewer.open_sample("napari-frontier", args.sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    wait(4000)  # let the widget's warm-up finish, as a user's painting would
    if args.stack:
        widget.set_layers(image="stack", scribbles="scribbles")
        viewer.dims.set_current_step(0, 0)
    widget.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or widget.session.overlay_count < 2:
        wait(200)
    widget.stop()
    while widget.is_training:
        wait(100)
    if args.stack:
        widget.predict_volume()
        while widget.session.is_busy:
            wait(100)
        viewer.layers["stack prediction"].visible = False
        viewer.dims.set_current_step(0, 5)  # an unpainted frame: the overlays follow
        while widget.session.prediction_index != (5,) or widget.session.is_busy:
            wait(100)
    viewer.layers.selection.active = viewer.layers["scribbles"]
    viewer.reset_view()
    if args.shapes:
        from napari_frontier._napari.overlays import camera

        for name in ("frontier", "prediction"):
            viewer.layers[name].visible = False
        shapes = widget.frontier_shapes()
        shapes.edge_width = 2
        camera(viewer).zoom *= 2.5
    wait(1000)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    upd = widget.session.history[-1]
    print(
        f"wrote {out}: step {upd.step}, loss {upd.loss:.3f}, "
        f"first overlay after {widget.session.first_overlay_seconds:.2f} s, "
        f"{widget.session.overlay_count} overlays, "
        f"{int(viewer.layers['frontier'].data.sum())} frontier pixels"
    )
    viewer.close()
    return 0


def _open_stack(viewer, sample: str, frames: int = 6, size: int = 384, drift: int = 24) -> None:
    """A time series of drifting crops of a sample; its strokes on frames 0 and 3."""
    import numpy as np

    from napari_frontier.data.samples import load_sample

    data = load_sample(sample)
    image, strokes = data["image"], data["scribbles"]
    crops = [(slice(z * drift, z * drift + size),) * 2 for z in range(frames)]
    stack = np.stack([image[c] for c in crops])
    scribbles = np.zeros(stack.shape[:3], np.uint8)
    for z in (0, 3):
        scribbles[z] = strokes[crops[z]]
    viewer.add_image(stack, name="stack", rgb=False)
    viewer.add_labels(scribbles, name="scribbles")


if __name__ == "__main__":
    raise SystemExit(main())
