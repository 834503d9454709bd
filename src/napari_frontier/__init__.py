"""napari-frontier: segmentation networks trained from "is" / "is not" scribbles.

The package imports neither Qt nor napari, and imports torch only when an
engine object is first used, so ``import napari_frontier`` is fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Segmenter": "segmenter",
    "TrainConfig": "learning.config",
    "TrainUpdate": "learning.config",
    "ModelConfig": "learning.network",
    "Prediction": "prediction.tiling",
    "read_image": "data.io",
    "write_image": "data.io",
    "score": "learning.metrics",
    "Scores": "learning.metrics",
    "simulate_scribbles": "data.simulate",
    "load_sample": "data.samples",
    "sample_names": "data.samples",
    "StabilityMonitor": "live.convergence",
    "fit_until_stable": "live.convergence",
    "frontier_polygons": "outputs.vectors",
    "write_frontier": "outputs.vectors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
