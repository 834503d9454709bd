"""Reading images, writing masks atomically, and safe checkpoints.

Every write goes to a temporary file (or folder, for a Zarr store) in the
target folder and is renamed into place only when complete, so a failure
(full disk, read-only folder, interrupted process) never leaves a partial
file under the final name; :func:`atomic_path` is the one place that does it.
Checkpoints are loaded with ``torch.load(weights_only=True)``: plain tensors
and containers only, never arbitrary pickled code.
"""

from __future__ import annotations

import contextlib
import errno
import io as _io
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, FrontierIOError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
CHECKPOINT_FORMAT = "napari-frontier"
CHECKPOINT_VERSION = 1


def _suffix(path: Path) -> str:
    return path.suffix.lower()


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png"),
    (b"II*\x00", "TIFF", ".tif"),
    (b"MM\x00*", "TIFF", ".tif"),
    (b"II+\x00", "TIFF", ".tif"),
    (b"MM\x00+", "TIFF", ".tif"),
    (b"\xff\xd8\xff", "JPEG", ".jpg"),
    (b"\x93NUMPY", "NumPy", ".npy"),
)


def sniff_format(path) -> tuple[str, str] | None:
    """(name, suffix) of the image format the file's first bytes show, or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    for magic, name, suffix in _MAGIC:
        if head.startswith(magic):
            return name, suffix
    return None


def check_writable(path) -> Path:
    """Fail early (before a long computation) if ``path`` cannot be written.

    Creates and removes a temporary file next to ``path``; the file itself is
    not touched.

    Raises
    ------
    FrontierIOError
        The folder is missing or read-only, the disk is full, or ``path`` is a folder.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"\0")
            raise _Probe
    except _Probe:
        pass
    return path


class _Probe(Exception):
    """Unwinds :func:`check_writable` before the rename."""


def read_image(path) -> np.ndarray:
    """Read a TIFF, PNG, JPEG or ``.npy`` image as a numpy array.

    Raises
    ------
    FrontierIOError
        The file is missing, a folder, unreadable, truncated or not an image.
    """
    path = Path(path)
    if not path.exists():
        raise FrontierIOError(f"{path}: no such file")
    if path.is_dir():
        raise FrontierIOError(f"{path}: is a folder, not an image file")
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise FrontierIOError(
            f"{path}: unsupported file type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if path.stat().st_size == 0:
        raise FrontierIOError(f"{path}: cannot read image: the file is empty")
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except Exception as exc:  # any decoder failure is the same problem to the user
        found = sniff_format(path)
        if found is not None and found[1] != {".tiff": ".tif", ".jpeg": ".jpg"}.get(suffix, suffix):
            raise FrontierIOError(
                f"{path}: cannot read image: the file is a {found[0]} file named {suffix}; "
                f"rename it to {path.stem}{found[1]}"
            ) from exc
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise FrontierIOError(f"{path}: cannot read image ({type(exc).__name__}: {text})") from exc
    data = np.asarray(data)
    if data.dtype == object:
        raise FrontierIOError(f"{path}: does not hold a numeric image")
    return data


@contextlib.contextmanager
def atomic_path(path, directory: bool = False):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    ``directory=False``: the temporary is an empty file (``.NAME.XXXX.part``),
    synced to disk before the rename. ``directory=True``: a folder tree such as
    a Zarr store; the temporary (``.NAME.part``, left over by a crashed write
    and removed first) does not exist yet and the writer creates it, and an
    existing ``path`` is replaced only once the new tree is complete.

    Before the rename the file (or the folder) gets the permissions the umask
    gives, as :func:`open` (or :func:`os.mkdir`) would give a new one, not the
    0600 of a temporary file. On any exception the temporary is removed and
    an :class:`OSError` is raised as :class:`FrontierIOError` (the original
    stays chained).
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FrontierIOError(f"{path}: folder {folder} does not exist")
    if directory:
        tmp = folder / f".{path.name}.part"
        _remove(tmp)
    else:
        if path.is_dir():
            raise FrontierIOError(f"{path}: is a folder")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=folder)
        except OSError as exc:
            raise FrontierIOError(f"{path}: cannot write here ({exc.strerror or exc})") from exc
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            os.chmod(tmp, 0o777 & ~umask())
            old = folder / f".{path.name}.old"
            if os.path.lexists(path):
                _remove(old)
                os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~umask())
            os.replace(tmp, path)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            if exc.errno != errno.ENOSPC and _disk_full(folder):
                # Some writers report a short write instead of ENOSPC.
                reason = f"No space left on device ({reason})"
            raise FrontierIOError(f"{path}: write failed ({reason})") from exc
        raise


def _remove(path: Path) -> None:
    """Remove a file or a folder tree, if there is one (errors ignored)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


_UMASK_LOCK = threading.Lock()
_UMASK: list[int] = []


def umask() -> int:
    """The process's umask, read without changing it (for the permissions of new files).

    From ``/proc/self/status`` where there is one (Linux); elsewhere by an
    :func:`os.umask` round trip, done once under a lock (it is process-wide:
    another thread creating a file meanwhile would get umask 0) and kept.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        if not _UMASK:
            mask = os.umask(0o022)
            os.umask(mask)
            _UMASK.append(mask)
        return _UMASK[0]


def _disk_full(folder: Path, margin: int = 1 << 16) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def write_image(
    path,
    data: np.ndarray,
    compression: str | None = "zlib",
    photometric: str | None = None,
    metadata: dict | None = None,
    compression_level: int | None = 1,
) -> Path:
    """Write ``data`` atomically; the format follows the suffix (TIFF, PNG, JPEG, NPY).

    ``compression_level`` (TIFF zlib): 1 compresses a 4096 x 4096 mask 4x
    faster than zlib's default 6, into a file about 1.5x larger.
    ``photometric`` (TIFF only): e.g. ``"minisblack"`` for a stack of masks,
    which tifffile would otherwise take for RGB(A) planes when it has 3 or 4 slices.
    ``metadata`` (TIFF only; other formats ignore it): JSON-able dict stored in
    the ImageDescription beside the shape (read back by ``TiffFile.shaped_metadata``).
    """
    path = Path(path)
    suffix = _suffix(path)
    data = np.asarray(data)
    if suffix not in IMAGE_SUFFIXES:
        raise FrontierIOError(
            f"{path}: unsupported output type {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, data, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            level = compression_level if compression in ("zlib", "deflate") else None
            tifffile.imwrite(
                tmp,
                data,
                compression=compression,
                compressionargs=None if level is None else {"level": level},
                photometric=photometric,
                metadata=dict(metadata or {}),
            )
        else:
            import imageio.v3 as iio

            if data.dtype.kind == "f":
                raise FrontierIOError(f"{path}: {suffix} cannot hold float data; use .tif or .npy")
            iio.imwrite(tmp, data, extension=suffix)
    return path


def save_checkpoint(path, payload: dict) -> Path:
    """Write a checkpoint dict atomically (plain tensors, numbers, strings, lists)."""
    import torch

    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    buffer = _io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getvalue())
    return path


def load_checkpoint(path) -> dict:
    """Load and check a checkpoint without executing pickled code.

    Raises
    ------
    CheckpointError
        Missing, truncated, unsafe, foreign or newer-format file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():
            # A hand-made pickle gets a protocol warning before being refused.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: the file holds Python objects that would run code when "
                "loaded; napari-frontier only loads plain weight checkpoints"
            ) from exc
        raise CheckpointError(f"{path}: not a readable checkpoint ({text})") from exc
    check_format(
        payload, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint", path, CheckpointError
    )
    return payload


def check_format(meta, fmt: str, newest: int, what: str, path, error: type) -> None:
    """Raise ``error`` unless ``meta`` is a dict of format ``fmt``, version <= ``newest``."""
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise error(f"{path}: not a napari-frontier {what}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > newest:
        raise error(
            f"{path}: {what} format {version} is newer than this napari-frontier "
            f"understands ({newest}); upgrade napari-frontier"
        )
