"""Projects and autosaves: image reference, scribbles, model and settings in one file.

A project is a single zip file (``.frontier``) holding ``project.json``
(format, version, image reference, settings), ``scribbles.npy``, the model
checkpoint ``model.pt`` (when there is one) and, for images that exist only
in memory, ``image.npy``. It is written to a temporary name and renamed when
complete, like every file the engine writes, and read without unpickling
anything (``allow_pickle=False``, ``torch.load(weights_only=True)``).

Autosaves are projects without the image, kept under
``$XDG_DATA_HOME/napari-frontier/autosave/`` and named after the image, so
scribbles survive a crash of napari.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.io import atomic_path, check_format, read_image
from ..errors import CheckpointError, FrontierIOError, ProjectError

PROJECT_SUFFIX = ".frontier"
PROJECT_FORMAT = "napari-frontier-project"
PROJECT_VERSION = 1
_MEMBERS = ("project.json", "scribbles.npy", "image.npy", "model.pt")


@dataclass
class Project:
    """What a project file holds (``image`` is None when it was not loaded)."""

    scribbles: np.ndarray
    image: np.ndarray | None = None
    image_path: str | None = None
    image_name: str = "image"
    image_shape: tuple[int, ...] | None = None
    scribbles_name: str = "scribbles"
    segmenter: object | None = None
    settings: dict = field(default_factory=dict)
    saved_at: str = ""


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = _io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def save_project(
    path,
    scribbles: np.ndarray,
    *,
    image: np.ndarray | None = None,
    image_path=None,
    embed_image: bool | None = None,
    image_shape=None,
    segmenter=None,
    image_name: str = "image",
    scribbles_name: str = "scribbles",
    settings: dict | None = None,
) -> Path:
    """Write a project file atomically.

    Parameters
    ----------
    scribbles
        The scribbles (0 = void, 1..K).
    image, image_path
        The image's pixels and/or the file it came from. The pixels are
        embedded when ``embed_image`` is True, or when it is None and there
        is no ``image_path`` (an image that exists only in memory).
    image_shape
        The image's shape, recorded when the pixels are not given.
    segmenter
        A :class:`~napari_frontier.segmenter.Segmenter` with a model, or None.
    settings
        JSON-serialisable settings (training and network options, ...).
    """
    path = Path(path)
    scribbles = np.asarray(scribbles)
    if embed_image is None:
        embed_image = image_path is None
    if embed_image and image is None:
        raise ProjectError("cannot embed the image: no pixels given")
    if image is not None:
        image_shape = np.shape(image)
    image_shape = None if image_shape is None else [int(n) for n in image_shape]
    meta = {
        "format": PROJECT_FORMAT,
        "format_version": PROJECT_VERSION,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": {
            "name": image_name,
            "path": None if image_path is None else str(Path(image_path).resolve()),
            "relative_path": _relative(image_path, path.parent),
            "embedded": bool(embed_image),
            "shape": image_shape,
        },
        "scribbles": {"name": scribbles_name, "shape": list(scribbles.shape)},
        "model": segmenter is not None and getattr(segmenter, "model", None) is not None,
        "settings": settings or {},
    }
    model_bytes = _model_bytes(segmenter) if meta["model"] else None
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.json", json.dumps(meta, indent=2, default=str))
        zf.writestr("scribbles.npy", _npy_bytes(scribbles))
        if embed_image:
            zf.writestr("image.npy", _npy_bytes(np.asarray(image)))
        if model_bytes is not None:
            zf.writestr("model.pt", model_bytes)
    return path


def _relative(image_path, folder: Path) -> str | None:
    if image_path is None:
        return None
    try:
        return os.path.relpath(Path(image_path).resolve(), folder.resolve())
    except ValueError:  # another drive on Windows
        return None


def _model_bytes(segmenter) -> bytes:
    from ..data.io import save_checkpoint

    with tempfile.TemporaryDirectory(prefix="frontier-") as d:
        target = Path(d) / "model.pt"
        save_checkpoint(target, segmenter.state_dict())
        return target.read_bytes()


def _load_model_bytes(data: bytes, source: Path, device: str):
    from ..segmenter import Segmenter

    with tempfile.TemporaryDirectory(prefix="frontier-") as d:
        target = Path(d) / "model.pt"
        target.write_bytes(data)
        try:
            return Segmenter.load(target, device=device)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{source}: the model in this project: {str(exc).split(': ', 1)[-1]}"
            ) from exc


def load_project(path, load_image: bool = True, load_model: bool = True, device: str = "auto"):
    """Read a project file; returns a :class:`Project`.

    Raises
    ------
    ProjectError
        Not a project, corrupted, newer format, or scribbles that do not fit the image.
    FrontierIOError
        The file is missing, or the image it refers to cannot be found or read.
    CheckpointError
        The model inside is unsafe or does not load.
    """
    path = Path(path)
    if not path.exists():
        raise FrontierIOError(f"{path}: no such project file")
    if path.is_dir():
        raise FrontierIOError(f"{path}: is a folder, not a project file")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "project.json" not in names or "scribbles.npy" not in names:
                raise ProjectError(f"{path}: not a napari-frontier project")
            meta = json.loads(zf.read("project.json"))
            _check_meta(meta, path)
            scribbles = np.load(_io.BytesIO(zf.read("scribbles.npy")), allow_pickle=False)
            image = None
            if load_image and "image.npy" in names:
                image = np.load(_io.BytesIO(zf.read("image.npy")), allow_pickle=False)
            model_data = zf.read("model.pt") if load_model and "model.pt" in names else None
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, OSError) as exc:
        if isinstance(exc, (ProjectError, FrontierIOError)):
            raise
        raise ProjectError(
            f"{path}: not a readable napari-frontier project ({type(exc).__name__}: {exc})"
        ) from exc
    info = meta["image"]
    if load_image and image is None:
        image = read_image(_find_image(info, path))
    shape = tuple(info["shape"]) if info.get("shape") else None
    if image is not None:
        shape = tuple(image.shape)
    if shape is not None and tuple(scribbles.shape) not in (shape, shape[:2]):
        raise ProjectError(
            f"{path}: the scribbles ({scribbles.shape}) do not fit the image ({shape}); "
            "the image file may have been replaced by another"
        )
    segmenter = None if model_data is None else _load_model_bytes(model_data, path, device)
    return Project(
        scribbles=scribbles,
        image=image,
        image_path=info.get("path"),
        image_name=info.get("name") or "image",
        image_shape=shape,
        scribbles_name=meta.get("scribbles", {}).get("name") or "scribbles",
        segmenter=segmenter,
        settings=meta.get("settings") or {},
        saved_at=meta.get("saved_at", ""),
    )


def project_info(path) -> dict:
    """The ``project.json`` of a project (cheap: nothing else is read)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("project.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ProjectError(f"{path}: not a readable napari-frontier project ({exc})") from exc
    _check_meta(meta, path)
    return meta


def _check_meta(meta, path: Path) -> None:
    check_format(meta, PROJECT_FORMAT, PROJECT_VERSION, "project", path, ProjectError)
    if not isinstance(meta.get("image"), dict):
        raise ProjectError(f"{path}: the project does not say which image it belongs to")


def _find_image(info: dict, project_path: Path) -> Path:
    candidates = []
    if info.get("path"):
        candidates.append(Path(info["path"]))
    if info.get("relative_path"):
        candidates.append(project_path.parent / info["relative_path"])
    for c in candidates:
        if c.is_file():
            return c
    where = info.get("path") or "(no path recorded)"
    raise FrontierIOError(
        f"{project_path}: the project's image {where} is missing; put it back (or next to "
        "the project file, where it was) and open the project again"
    )


def is_project(path) -> bool:
    """True for a file that looks like a project (suffix or zip content)."""
    path = Path(path)
    if path.suffix.lower() == PROJECT_SUFFIX:
        return True
    return path.is_file() and zipfile.is_zipfile(path) and _has_project_json(path)


def _has_project_json(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return "project.json" in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def load_model(path, device: str = "auto"):
    """A :class:`~napari_frontier.segmenter.Segmenter` from a checkpoint or a project."""
    from ..segmenter import Segmenter

    if is_project(path):
        project = load_project(path, load_image=False, device=device)
        if project.segmenter is None:
            raise ProjectError(f"{path}: the project holds no model yet; train one first")
        return project.segmenter
    return Segmenter.load(path, device=device)


# -- autosave -----------------------------------------------------------------
def autosave_dir() -> Path:
    """``$XDG_DATA_HOME/napari-frontier/autosave`` (``~/.local/share`` by default)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "napari-frontier" / "autosave"


def autosave_key(name: str, source=None) -> str:
    """A file-name-safe key of an image: its name plus a hash of its file (or name)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")[:60] or "image"
    ident = str(Path(source).resolve()) if source else f"name:{name}"
    return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def autosave_path(key: str, folder=None) -> Path:
    """Where the autosave of the image with this key lives."""
    return Path(folder or autosave_dir()) / f"{key}{PROJECT_SUFFIX}"


def write_autosave(
    key: str,
    scribbles,
    *,
    segmenter=None,
    image_shape=None,
    image_name: str = "image",
    image_path=None,
    settings=None,
    folder=None,
) -> Path:
    """Autosave scribbles (and the model) of one image; the image itself is not copied."""
    target = autosave_path(key, folder)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FrontierIOError(
            f"{target.parent}: cannot create the autosave folder ({exc})"
        ) from exc
    return save_project(
        target,
        scribbles,
        image_path=image_path,
        image_shape=image_shape,
        embed_image=False,
        segmenter=segmenter,
        image_name=image_name,
        settings=settings,
    )


def read_autosave(key: str, folder=None, device: str = "auto") -> Project | None:
    """The autosave of the image with this key (image not loaded), or None."""
    target = autosave_path(key, folder)
    if not target.is_file():
        return None
    return load_project(target, load_image=False, device=device)
