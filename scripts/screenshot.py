"""Make docs/screenshot.png: napari with the nuclei sample, the widget and live overlays.

Run it with a display, or headless under Xvfb::

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py

Options: ``--seconds`` of training (default 10), ``--output`` path, ``--sample``.
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
    args = p.parse_args(argv)

    import napari

    viewer = napari.Viewer(show=True, title="napari-frontier")
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-frontier", args.sample)
    _, widget = viewer.window.add_plugin_dock_widget("napari-frontier", "Scribble trainer")
    wait(4000)  # let the widget's warm-up finish, as a user's painting would
    widget.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or widget.session.overlay_count < 2:
        wait(200)
    widget.stop()
    while widget.is_training:
        wait(100)
    viewer.layers.selection.active = viewer.layers["scribbles"]
    viewer.reset_view()
    wait(1000)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    upd = widget.session.history[-1]
    print(
        f"wrote {out}: step {upd.step}, loss {upd.loss:.3f}, "
        f"first overlay after {widget.session.first_overlay_seconds:.2f} s, "
        f"{widget.session.overlay_count} overlays, "
        f"{len(viewer.layers['frontier'].data)} frontier paths"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
