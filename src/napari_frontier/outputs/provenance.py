"""Where an output came from: input identity, model checksum, options.

A batch prediction records the provenance of each output inside it (TIFF:
the JSON ImageDescription, under ``napari_frontier.provenance``; Zarr: the
attributes, same key) in the same atomic write as the pixels, so an output
and its record can never disagree. Resuming a batch skips an output only
when its record matches what would be written now; anything else is redone,
with a reason (:func:`mismatch`).

- **input**: resolved path, size and modification time of a file; for a
  Zarr store (a folder, whose own time does not follow its chunks) a SHA-256
  of every file in it, names and bytes.
- **model**: SHA-256 of the weights and of what changes predictions
  (network config, classes, normalisation, no-data value), not of the
  checkpoint file, so re-saving a model does not redo a batch but any
  training step does (:func:`model_checksum`).
- **options**: mask format, classes, channel axis and channel selection,
  test-time flips; with frontier vectors, their classes (``frontier_classes``).

Frontier vectors record it too (GeoJSON: a top-level member; ImageJ ROI
sets: the zip comment). Masks in formats that hold no metadata (PNG, JPEG,
NPY) record nothing and are always redone. A CSV frontier records nothing
either; it is written before the mask of the same image, so a matching mask
vouches for it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

PROVENANCE_FORMAT = "napari-frontier-provenance"
PROVENANCE_VERSION = 1
#: Key of napari-frontier's metadata (TIFF description, OME-Zarr group attributes).
META_KEY = "napari_frontier"

#: Outputs that cannot record provenance but are written before the mask.
VOUCHED_SUFFIXES = (".csv",)

#: Reasons for redoing an output, as they appear in summaries.
REASONS = (
    "interrupted",
    "missing output",
    "no provenance",
    "other input",
    "input changed",
    "model changed",
    "options changed",
    "overwrite",
)


def _zarr_name(path: Path) -> bool:
    return path.name.lower().endswith(".zarr")


def tree_sha256(folder, chunk: int = 1 << 20) -> str:
    """SHA-256 of every file under ``folder``: relative names and contents, in sorted order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(root, name)
            h.update(p.relative_to(folder).as_posix().encode() + b"\0")
            with open(p, "rb") as f:
                while block := f.read(chunk):
                    h.update(block)
            h.update(b"\0")
    return h.hexdigest()


def input_identity(path) -> dict:
    """How to recognise the same input again (see the module docstring)."""
    p = Path(path)
    ident: dict = {"path": str(p.resolve())}
    if not p.exists():  # reading it will say what is wrong
        ident["missing"] = True
    elif p.is_dir():
        ident["sha256"] = tree_sha256(p)
    else:
        st = p.stat()
        ident["size"] = int(st.st_size)
        ident["mtime_ns"] = int(st.st_mtime_ns)
    return ident


def model_checksum(seg) -> str:
    """SHA-256 of a segmenter's weights and the settings that change its predictions."""
    import torch

    payload = seg.state_dict()
    h = hashlib.sha256()
    meta = {
        k: payload.get(k)
        for k in ("model_config", "n_classes", "class_names", "channels", "nodata", "normalisation")
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prediction_options(seg, format: str) -> dict:
    """The options that change an output: mask format, classes, channel axis and selection."""
    return {
        "format": format,
        "classes": int(seg.n_classes),
        "class_names": list(seg.class_names),
        "channel_axis": seg.channel_axis,
        "channels": None if seg.channels is None else list(seg.channels),
    } | ({"tta": "flips"} if seg.tta else {})


def make_provenance(source, model: str, options: dict) -> dict:
    """The record written into every output of ``source``."""
    return {
        "format": PROVENANCE_FORMAT,
        "format_version": PROVENANCE_VERSION,
        "input": input_identity(source),
        "model": model,
        "options": options,
    }


def metadata(provenance: dict | None, **extra) -> dict:
    """The napari-frontier metadata dict of an output (``{"source": ..., "provenance": ...}``)."""
    meta = {"source": "napari-frontier", **extra}
    if provenance is not None:
        meta["provenance"] = provenance
    return meta


def read_provenance(path) -> dict | None:
    """The provenance recorded in a TIFF or Zarr output, or None (none, unreadable, other format)."""
    path = Path(path)
    try:
        if _zarr_name(path) or path.is_dir():
            import zarr

            node = zarr.open(str(path), mode="r")
            attrs = dict(node.attrs)
            meta = attrs.get(META_KEY, attrs)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shaped = tf.shaped_metadata or ({},)
                meta = shaped[0].get(META_KEY, {})
        elif path.suffix.lower() in (".geojson", ".json"):
            meta = json.loads(path.read_text()).get(META_KEY, {})
        elif path.suffix.lower() == ".zip":  # an ImageJ ROI set: the zip comment
            import zipfile

            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.comment.decode() or "{}").get(META_KEY, {})
        else:
            return None
        prov = meta.get("provenance") if isinstance(meta, dict) else None
    except Exception:  # a damaged output is not a finished one
        return None
    if not isinstance(prov, dict) or prov.get("format") != PROVENANCE_FORMAT:
        return None
    return prov


def mismatch(recorded: dict | None, expected: dict) -> str | None:
    """Why an output with the ``recorded`` provenance must be redone (one of :data:`REASONS`), or None."""
    if recorded is None or recorded.get("format_version", 0) > PROVENANCE_VERSION:
        return "no provenance"
    rin, ein = recorded.get("input") or {}, expected["input"]
    if rin.get("path") != ein.get("path"):
        return "other input"
    if rin != ein:
        return "input changed"
    if recorded.get("model") != expected["model"]:
        return "model changed"
    if recorded.get("options") != json.loads(json.dumps(expected["options"])):
        return "options changed"
    return None


def part_files(path) -> list[Path]:
    """Temporary files a crashed write of ``path`` may have left beside it."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    import re

    # .NAME.part, .NAME.XXXX.part (atomic files), .NAME.zarr (staged blocks),
    # ..NAME.zarr.part, .NAME.old, .staged.NAME (a staged Zarr output) and its parts
    pattern = re.compile(r"^\.+(staged\.)?" + re.escape(path.name) + r"(\..+)?$")
    return sorted(q for q in folder.iterdir() if q.name != path.name and pattern.match(q.name))


def remove_parts(path) -> None:
    """Remove what :func:`part_files` finds."""
    import shutil

    for q in part_files(path):
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        else:
            q.unlink(missing_ok=True)
