"""Open napari with the nuclei sample and the "Scribble trainer" docked.

    python scripts/demo.py [IMAGE] [-s SCRIBBLES] [--sample textures]

Paint with label 1 ("is") and 2 ("is not"), press Train (Shift-T), keep
painting where the frontier is wrong.
"""

from __future__ import annotations

from napari_frontier._napari.app import main

if __name__ == "__main__":
    raise SystemExit(main())
