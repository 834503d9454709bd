"""Predicting many images: files, folders, globs and Zarr stores, resumable.

A batch is planned first (one :class:`BatchItem` per input, with its output
paths), then run as a generator of :class:`BatchEvent` (so the CLI shows a
progress bar and a GUI worker can report and cancel between images). An input
that cannot be read is reported and skipped; the batch goes on.

Outputs are written atomically, with their provenance inside them (input
identity, model checksum, options: :mod:`napari_frontier.outputs.provenance`).
Running a batch again skips an output only when its recorded provenance
matches; any other output (other or changed input, other model, other
options, a crash's leftovers, no record) is redone, and the event says why
(``overwrite=True`` redoes everything). A single, explicitly named output
file is not a batch: it is always written.

Small images are read whole and predicted in memory. Zarr / OME-Zarr stores
and TIFFs with more than ``lazy_pixels`` pixels are predicted block by block
(:mod:`napari_frontier.prediction.blocks`), never loaded whole. With a dask ``scheduler``
(a ``distributed`` client or address) every image goes through the block
path on the cluster; the result is the same as in one process.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.io import IMAGE_SUFFIXES
from ..errors import FrontierError, FrontierIOError
from .provenance import META_KEY

#: TIFFs with more pixels than this are read lazily (tile by tile).
LAZY_PIXELS = 64 * 2**20


def _zarr_name(p: Path) -> bool:
    return p.name.lower().endswith(".zarr")


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files and Zarr stores named by paths, folders (their images) and globs, in order, once each."""
    from ..prediction.blocks import is_zarr

    out: list[Path] = []
    for pat in patterns:
        p = Path(pat)
        if p.is_dir() and not is_zarr(p):
            out += sorted(
                q
                for q in p.iterdir()
                if (q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES) or is_zarr(q)
            )
        elif not p.exists() and any(ch in str(pat) for ch in "*?["):
            out += sorted(Path(q) for q in glob.glob(str(pat), recursive=True))
        else:
            out.append(p)
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def is_lazy(path: Path, lazy_pixels: int = LAZY_PIXELS) -> bool:
    """Zarr stores, and TIFFs larger than ``lazy_pixels``, are read lazily."""
    from ..prediction.blocks import is_zarr

    if is_zarr(path):
        return True
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        try:
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape
        except Exception:
            return False  # read_image will report what is wrong with it
        n = 1
        for s in shape:
            n *= int(s)
        return n > lazy_pixels
    return False


@dataclass(frozen=True)
class BatchItem:
    """One input and where its outputs go."""

    source: Path
    mask: Path
    probabilities: Path | None
    lazy: bool
    #: False for a single, explicitly named output: always written, never skipped.
    resumable: bool = True
    #: The frontier as vectors (.geojson, .zip ROI set, .csv), or None.
    vectors: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.mask, self.probabilities, self.vectors) if p is not None]

    @property
    def finished(self) -> bool:
        """All outputs exist (they are written atomically, so they are complete)."""
        return all(p.exists() for p in self.outputs)

    def stale_reason(self, provenance: dict) -> str | None:
        """Why this item must be (re)done, or None when every output is up to date.

        ``"new"`` when no output exists yet (and no crash left a part), else one of
        :data:`napari_frontier.outputs.provenance.REASONS`.
        """
        from .provenance import VOUCHED_SUFFIXES, mismatch, part_files, read_provenance

        crashed = any(part_files(p) for p in self.outputs)
        if not any(p.exists() for p in self.outputs):
            return "interrupted" if crashed else "new"
        for p in self.outputs:
            if not p.exists():
                return "interrupted" if crashed else "missing output"
        for p in self.outputs:
            if p.suffix.lower() in VOUCHED_SUFFIXES:
                continue  # written before the mask, which vouches for it
            reason = mismatch(read_provenance(p), provenance)
            if reason is not None:
                return reason
        return None


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch: ``status`` is ``done``, ``skipped`` or ``failed``.

    ``reason``: for ``done``, ``"new"`` (first time), ``"written"`` (a single named
    output, always written) or why an existing output was redone (one of
    :data:`napari_frontier.outputs.provenance.REASONS`); ``"up to date"`` for ``skipped``.
    """

    item: BatchItem
    status: str
    index: int
    total: int
    message: str = ""
    reason: str = ""

    @property
    def redone(self) -> bool:
        return self.status == "done" and self.reason not in ("new", "written", "")


def _stem(src: Path) -> str:
    name = src.name
    for tail in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(tail):
            return name[: -len(tail)]
    return src.stem


def _out_name(src: Path, lazy: bool, ext: str, suffix: str = "") -> str:
    name = src.name
    for tail in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(tail):
            return name[: -len(tail)] + suffix + (tail if "zarr" in tail else ext)
    if lazy:  # a large TIFF: a tiled TIFF
        return src.stem + suffix + src.suffix.lower()
    return src.stem + suffix + ext


def plan_batch(
    inputs: Sequence[str],
    output,
    probabilities=None,
    lazy_pixels: int = LAZY_PIXELS,
    suffix: str = ".tif",
    frontier=None,
    frontier_suffix: str = ".geojson",
) -> list[BatchItem]:
    """One :class:`BatchItem` per input; ``output`` is a file for one input, else a folder.

    ``frontier``: where the frontier vectors go (a file for one input, else a
    folder of ``<name><frontier_suffix>`` files), or None.
    """
    paths = expand_inputs(inputs)
    if not paths:
        raise FrontierIOError(f"no input image found in {' '.join(map(str, inputs))}")
    out = Path(output)
    from ..prediction.blocks import is_zarr

    # a batch: several images, or inputs named by a folder or a glob, or an output folder
    many = (
        len(paths) > 1
        or (out.is_dir() and not _zarr_name(out))
        or str(output).endswith(("/", os.sep))
        or any(
            (Path(pat).is_dir() and not is_zarr(pat))
            or (not Path(pat).exists() and any(ch in str(pat) for ch in "*?["))
            for pat in inputs
        )
    )
    items = []
    for p in paths:
        lazy = is_lazy(p, lazy_pixels)
        if many:
            mask = out / _out_name(p, lazy, suffix)
            probs = (
                Path(probabilities) / _out_name(p, lazy, suffix, "_probabilities")
                if probabilities
                else None
            )
            vectors = Path(frontier) / (_stem(p) + frontier_suffix) if frontier else None
        else:
            mask, probs = out, Path(probabilities) if probabilities else None
            vectors = Path(frontier) if frontier else None
        items.append(BatchItem(p, mask, probs, lazy, resumable=many, vectors=vectors))
    return items


def _prepare_folders(items) -> None:
    for it in items:
        for path in it.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)


def write_array(path, data, attrs: dict | None = None) -> Path:
    """Write an in-memory result atomically: a Zarr store for ``*.zarr``, else :func:`write_image`.

    ``attrs``: napari-frontier metadata (e.g. provenance), in the Zarr attributes
    or the TIFF description (``{"napari_frontier": attrs}``); other formats drop it.
    """
    import numpy as np

    from ..data.io import atomic_path, write_image

    path = Path(path)
    attrs = {"source": "napari-frontier", **(attrs or {})}
    if not _zarr_name(path):
        return write_image(path, data, metadata={META_KEY: attrs})
    import zarr

    from ..prediction.blocks import _create_array

    with atomic_path(path, directory=True) as tmp:
        chunks = (*(1,) * (data.ndim - 2), *(min(2048, s) for s in data.shape[-2:]))
        fill = np.nan if data.dtype.kind == "f" else 0
        target = _create_array(
            tmp, data.shape, chunks, data.dtype, fill, attrs,
            path.name.lower().endswith(".ome.zarr"), False,
        )  # fmt: skip
        zarr.open_array(target, mode="r+")[...] = data
    return path


def _write_from_zarr(zpath: Path, target: Path) -> None:
    """Move or convert a finished Zarr output to the requested format."""
    import shutil

    import zarr

    from ..data.io import atomic_path, write_image
    from ..prediction.blocks import zarr_to_tiff

    if _zarr_name(target):
        with atomic_path(target, directory=True) as tmp:
            os.replace(zpath, tmp)
        return
    arr = zarr.open_array(str(zpath), mode="r")
    meta = {META_KEY: dict(arr.attrs)}
    if target.suffix.lower() in (".tif", ".tiff"):
        zarr_to_tiff(arr, target, metadata=meta)
    else:
        write_image(target, arr[...], metadata=meta)
    shutil.rmtree(zpath, ignore_errors=True)


def _predict_item(
    seg, it: BatchItem, fmt, tile, block, scheduler, workers, on_block, wthreads, attrs,
    classes=None,
):  # fmt: skip
    """Predict one input to its outputs; ``attrs`` (provenance) go into each output.

    ``classes``: those of the frontier vectors (:func:`.vectors.frontier_classes`).
    """
    import shutil

    from ..data.io import read_image
    from ..prediction.blocks import open_lazy, predict_to_zarr

    if it.lazy:
        lz = open_lazy(it.source)
        image = lz.array
        if lz.channel_axis is not None and seg.channel_axis is None:
            seg.channel_axis = lz.channel_axis
    else:
        image = read_image(it.source)
    if not it.lazy and scheduler is None:
        if it.vectors is None and it.probabilities is None:  # the mask alone: no probabilities
            import torch

            from ..prediction.tiling import encode_mask

            # tiles side by side, torch's threads shared out (see inference._tiles)
            labels = seg.predict_labels(image, tile=tile, workers=torch.get_num_threads())
            write_array(it.mask, encode_mask(labels, fmt), attrs | {"kind": fmt})
            return
        pred = seg.predict(image, tile=tile)
        if it.vectors is not None:  # first: the mask written last vouches for it
            _write_vectors(seg, it, attrs, probabilities=pred.probabilities, classes=classes)
        write_array(it.mask, pred.mask(fmt), attrs | {"kind": fmt})
        if it.probabilities is not None:
            write_array(
                it.probabilities,
                pred.probabilities.astype("float32"),
                attrs | {"kind": "probabilities"},
            )
        return

    # block path: Zarr as it goes, converted at the end when a TIFF is asked for
    def staged(path):
        if path is None:
            return path
        if _zarr_name(path):  # staged too when vectors must be written before it
            return path if it.vectors is None else path.parent / f".staged.{path.name}"
        return path.parent / f".{path.name}.zarr"

    zmask, zprobs = staged(it.mask), staged(it.probabilities)
    if it.vectors is not None and fmt == "binary" and seg.n_classes > 2:
        from .vectors import frontier_classes

        if set(frontier_classes(seg.n_classes, classes)) - {1}:
            raise FrontierError(
                f"{it.source}: the frontier of classes 2..{seg.n_classes} of an image predicted "
                "block by block is traced from its mask, and a binary mask merges them; "
                "use --format labels (or --frontier-classes 1)"
            )
    try:
        predict_to_zarr(
            seg,
            image,
            mask=zmask,
            probabilities=zprobs,
            format=fmt,
            block=block,
            tile=tile,
            scheduler=scheduler,
            workers=workers,
            progress=on_block,
            worker_threads=wthreads,
            attrs=attrs,
        )
        if it.vectors is not None:
            labels = _labels_of_mask(zmask, fmt)
            _write_vectors(seg, it, attrs, labels=labels, classes=classes)
        if zmask != it.mask:
            _write_from_zarr(zmask, it.mask)
        if zprobs is not None and zprobs != it.probabilities:
            _write_from_zarr(zprobs, it.probabilities)
    finally:
        for z, final in ((zmask, it.mask), (zprobs, it.probabilities)):
            if z is not None and z != final:
                shutil.rmtree(z, ignore_errors=True)


def _labels_of_mask(path: Path, fmt: str):
    """The class map (1..K, 0 = no-data) of a written mask (:func:`decode_mask`)."""
    from ..prediction.blocks import open_lazy
    from ..prediction.tiling import decode_mask

    return decode_mask(open_lazy(path).array[...], fmt)


def _write_vectors(seg, it: BatchItem, attrs, labels=None, probabilities=None, classes=None):
    from .vectors import frontier_polygons, read_georeference, write_frontier

    polygons = frontier_polygons(labels, probabilities, classes, n_classes=seg.n_classes)
    shape = probabilities.shape[1:] if probabilities is not None else labels.shape
    write_frontier(
        it.vectors,
        polygons,
        georeference=read_georeference(it.source),
        class_names=seg.class_names,
        image_shape=shape,
        provenance=attrs.get("provenance"),
    )


def run_batch(
    seg,
    items: Sequence[BatchItem],
    format: str | None = None,
    tile: int = 1024,
    block: int = 2048,
    scheduler=None,
    workers: int | None = None,
    overwrite: bool = False,
    block_progress: Callable[[BatchItem, int, int], None] | None = None,
    worker_threads: int | None = None,
    frontier_classes=None,
) -> Generator[BatchEvent, None, None]:
    """Predict every item; yield a :class:`BatchEvent` per image.

    ``format``: of the masks, ``"binary"`` or ``"labels"``; default binary for
    a two-class model, labels for K > 2 (:func:`~napari_frontier.prediction.tiling.default_mask_format`).
    ``frontier_classes``: the classes of the frontier vectors (default the
    "is" objects of a two-class model, every class of a K > 2 one; ``"all"``;
    or a list: :func:`~napari_frontier.outputs.vectors.frontier_classes`),
    recorded in the provenance of items with vectors.

    ``block_progress(item, done, total)`` is called after each block of an
    image predicted block by block (from a worker thread). ``workers``: threads
    in this process; ``worker_threads``: torch threads per cluster worker.

    A resumable item whose outputs all carry matching provenance is skipped
    (``overwrite=True`` redoes it); every output written records its
    provenance. Failures of one input (unreadable, wrong shape) are yielded as
    ``failed`` events and the batch goes on. ``scheduler``: None (this
    process), or a ``distributed`` address / client.
    """
    from ..prediction.tiling import default_mask_format
    from .provenance import make_provenance, model_checksum, prediction_options, remove_parts
    from .vectors import frontier_classes as resolve_classes

    if format is None:
        format = default_mask_format(seg.n_classes)
    classes = resolve_classes(seg.n_classes, frontier_classes)
    _prepare_folders(items)
    total = len(items)
    channel_axis = seg.channel_axis
    model_sha = model_checksum(seg)
    options = prediction_options(seg, format)
    for n, it in enumerate(items, 1):
        opts = options if it.vectors is None else options | {"frontier_classes": list(classes)}
        try:
            provenance = make_provenance(it.source, model_sha, opts)
        except OSError as exc:
            yield BatchEvent(it, "failed", n, total, f"{it.source}: cannot read ({exc})")
            continue
        if not it.resumable:
            reason = "written"
        else:
            reason = it.stale_reason(provenance)
            if reason is None and not overwrite:
                yield BatchEvent(it, "skipped", n, total, "output up to date", "up to date")
                continue
            if overwrite and reason is None:
                reason = "overwrite"
        for out in it.outputs:
            remove_parts(out)

        def on_block(d, t, it=it):
            if block_progress is not None:
                block_progress(it, d, t)

        seg.channel_axis = channel_axis
        try:
            _predict_item(
                seg, it, format, tile, block, scheduler, workers, on_block, worker_threads,
                {"provenance": provenance}, classes,
            )  # fmt: skip
        except (FrontierError, OSError, ValueError) as exc:
            msg = str(exc) if isinstance(exc, FrontierError) else f"{type(exc).__name__}: {exc}"
            yield BatchEvent(it, "failed", n, total, msg, reason)
            continue
        finally:
            seg.channel_axis = channel_axis
        yield BatchEvent(it, "done", n, total, "", reason)


def summarize(events: Sequence[BatchEvent]) -> str:
    """One line: ``"3 done, 2 skipped (up to date), 1 redone (model changed), 1 failed"``."""
    from collections import Counter

    done = sum(e.status == "done" and not e.redone for e in events)
    skipped = sum(e.status == "skipped" for e in events)
    failed = sum(e.status == "failed" for e in events)
    why = Counter(e.reason for e in events if e.redone)
    parts = [f"{done} done"]
    if skipped:
        parts.append(f"{skipped} skipped (up to date)")
    if why:
        if len(why) == 1:
            detail = next(iter(why))
        else:
            detail = ", ".join(f"{k}: {v}" for k, v in why.most_common())
        parts.append(f"{sum(why.values())} redone ({detail})")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts)
