"""napari-frontier: segmentation networks trained from "is" / "is not" scribbles.

The package imports neither Qt nor napari, and imports torch only when an
engine object is first used, so ``import napari_frontier`` is fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Segmenter": "segmenter",
    "TrainConfig": "training",
    "TrainUpdate": "training",
    "ModelConfig": "model",
    "Prediction": "inference",
    "read_image": "io",
    "write_image": "io",
    "score": "metrics",
    "Scores": "metrics",
    "simulate_scribbles": "scribbles",
    "load_sample": "samples",
    "sample_names": "samples",
    "StabilityMonitor": "convergence",
    "fit_until_stable": "convergence",
    "frontier_polygons": "vectors",
    "write_frontier": "vectors",
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
