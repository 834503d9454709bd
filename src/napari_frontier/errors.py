"""Exception types raised by the engine.

Every error a user can cause derives from :class:`FrontierError`, so the CLI
and the napari widget can show its message instead of a traceback.
"""

from __future__ import annotations


class FrontierError(Exception):
    """Base class for errors a user can act on."""


class ScribbleError(FrontierError, ValueError):
    """The scribbles cannot be used for training (empty, one class, bad values)."""


class ShapeMismatchError(FrontierError, ValueError):
    """Image and scribbles (or a model and an image) do not fit together."""


class ImageError(FrontierError, ValueError):
    """The image cannot be used (no valid pixel, unsupported shape or dtype)."""


class CheckpointError(FrontierError):
    """A checkpoint is missing, corrupted, unsafe or does not match."""


class FrontierIOError(FrontierError, OSError):
    """A file could not be read or written."""


class ProjectError(FrontierError):
    """A project file is missing, corrupted, newer than this version, or does not fit."""
