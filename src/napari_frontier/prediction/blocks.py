"""Images larger than memory: predicted block by block, written to Zarr as it goes.

The image (a Zarr array or OME-Zarr image, a large TIFF opened through
tifffile's Zarr store, a dask array, or any array-like with numpy slicing) is
cut into blocks aligned to the output chunks. Each block task reads only its
block plus a halo of context equal to the model's (its window starts on the
network's pooling grid, and the network's reflection padding applies only at
the real image border), predicts it and writes its chunk of the output. This
is what ``dask.array.map_overlap`` does, with the border handled as the
in-memory prediction handles it, so the result equals
:meth:`Segmenter.predict` within float rounding, and the peak memory is a few
windows per worker, whatever the image size.

Blocks run on dask: threads in this process by default, or on a
``dask.distributed`` cluster (``scheduler=`` an address or a ``Client``). A
model is loaded once per worker process (cached by its token), never per
block. Outputs go to a hidden ``.NAME.part`` folder renamed into place when
complete, so an output that exists is a finished one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io as _io
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import atomic_path
from ..data.layout import Layout
from ..data.normalise import NormStats
from ..errors import FrontierIOError, ImageError
from .regions import predict_window, region_window

#: Default side of a block (and of an output chunk), in pixels.
BLOCK = 2048

_LOCK = threading.Lock()
_MODELS: dict[str, object] = {}
_ARRAYS: dict[str, object] = {}


# -- the model, once per worker ----------------------------------------------
class ModelRef:
    """A picklable handle on a trained :class:`~napari_frontier.Segmenter`.

    In this process it hands out the live segmenter; pickled (to a
    ``distributed`` worker) it carries the checkpoint bytes, and each worker
    process rebuilds the model once and caches it by ``token``, with the
    ``load`` of the segmenter's own class: this layer drives a segmenter it is
    given and never imports :mod:`napari_frontier.segmenter`, which sits above it.
    """

    def __init__(self, segmenter, device: str = "auto", threads: int | None = None):
        import torch

        from ..data.io import CHECKPOINT_FORMAT, CHECKPOINT_VERSION

        # Blocks run in several threads at once: give them an eval-mode copy,
        # so no thread ever toggles train/eval mode under another one.
        live = copy.copy(segmenter)
        live.model = copy.deepcopy(segmenter.model_for_prediction()).eval()
        live._ema = None  # the copy above already holds the predicting weights
        live._trainer = None  # ... and nothing trains it
        live.optimizer = None
        live.tta = False  # ... and the flips, when test-time augmentation is on
        self._live = live
        self.device = device
        self.threads = threads
        self.tta = segmenter.tta
        self._kind = type(segmenter)  # pickled by name; its ``load`` rebuilds one
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            **segmenter.state_dict(),
            "saved_at": "",
        }
        buf = _io.BytesIO()
        torch.save(payload, buf)
        self._payload = buf.getvalue()
        self.token = hashlib.sha1(self._payload).hexdigest()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_live"] = None
        return state

    def get(self):
        """The segmenter (loaded and cached on first use in this process)."""
        if self._live is not None:
            return self._live
        key = f"{self.token}:{self.device}"
        with _LOCK:
            seg = _MODELS.get(key)
            if seg is None:
                seg = self._load()
                _MODELS[key] = seg
        return seg

    def _load(self):
        import torch

        if self.threads:
            torch.set_num_threads(int(self.threads))
        fd, tmp = tempfile.mkstemp(suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload)
            seg = self._kind.load(tmp, device=self.device)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        seg.model.eval()
        if self.tta:
            from .tiling import FlipAverage

            seg.model = FlipAverage(seg.model)
        return seg


# -- lazy inputs --------------------------------------------------------------
def is_zarr(path) -> bool:
    """True for a Zarr store (v2 or v3) or a folder named ``*.zarr``."""
    p = Path(path)
    if not p.is_dir():
        return False
    if p.suffix.lower() == ".zarr":
        return True
    return any((p / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


class TiffSource:
    """A TIFF read tile by tile through tifffile's Zarr store (picklable: reopened per process)."""

    def __init__(self, path, level: int = 0):
        self.path = str(path)
        self.level = level
        arr = self._array()
        self.shape = tuple(arr.shape)
        self.dtype = arr.dtype
        self.ndim = len(self.shape)

    def _array(self):
        key = f"tiff:{self.path}:{self.level}"
        with _LOCK:
            arr = _ARRAYS.get(key)
            if arr is None:
                import tifffile
                import zarr

                store = tifffile.imread(self.path, aszarr=True, level=self.level)
                arr = zarr.open(store, mode="r")
                if not hasattr(arr, "shape"):  # a group of resolution levels
                    arr = arr[str(self.level)] if str(self.level) in arr else arr["0"]
                _ARRAYS[key] = arr
        return arr

    def __getitem__(self, key):
        return self._array()[key]


@dataclass(frozen=True)
class LazyImage:
    """A lazily opened image and what its metadata says about channels."""

    array: object
    channel_axis: int | None = None
    path: str | None = None


def open_lazy(path) -> LazyImage:
    """Open a Zarr array, an OME-Zarr image (full resolution) or a TIFF without reading pixels.

    Raises
    ------
    FrontierIOError
        Missing, unreadable, or a Zarr group holding no image.
    """
    p = Path(path)
    if not p.exists():
        raise FrontierIOError(f"{p}: no such file or folder")
    try:
        if p.is_dir():
            import zarr

            node = zarr.open(str(p), mode="r")
            channel_axis = None
            if not hasattr(node, "shape"):
                attrs = dict(node.attrs)
                ms = attrs.get("ome", attrs).get("multiscales")
                if ms:
                    first = ms[0]
                    sub = first["datasets"][0]["path"]
                    axes = [
                        a.get("type") if isinstance(a, dict) else None
                        for a in first.get("axes", [])
                    ]
                    if "channel" in axes:
                        channel_axis = axes.index("channel")
                    node = node[sub]
                else:
                    arrays = [a for _, a in node.arrays()]
                    if len(arrays) != 1:
                        raise FrontierIOError(
                            f"{p}: a Zarr group with {len(arrays)} arrays and no OME-Zarr "
                            "multiscales metadata; point to one array inside it"
                        )
                    node = arrays[0]
            return LazyImage(node, channel_axis, str(p))
        if p.suffix.lower() in (".tif", ".tiff"):
            return LazyImage(TiffSource(p), None, str(p))
    except FrontierIOError:
        raise
    except Exception as exc:
        raise FrontierIOError(f"{p}: cannot open ({type(exc).__name__}: {exc})") from exc
    raise FrontierIOError(f"{p}: not a Zarr store or TIFF file")


# -- outputs ------------------------------------------------------------------
def _open_array(path: str):
    with _LOCK:
        arr = _ARRAYS.get(path)
        if arr is None:
            import zarr

            arr = zarr.open_array(path, mode="r+")
            _ARRAYS[path] = arr
    return arr


def _create_array(
    path: Path, shape, chunks, dtype, fill_value, attrs: dict, ome: bool, channel: bool
):
    import zarr

    if ome:
        group = zarr.open_group(str(path), mode="w")
        arr = group.create_array(
            "0", shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value
        )
        axes = [{"name": n, "type": t} for n, t in _axes(len(shape), channel)]
        group.attrs["ome"] = {
            "version": "0.5",
            "multiscales": [
                {
                    "name": path.name,
                    "axes": axes,
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": [1.0] * len(shape)}
                            ],
                        }
                    ],
                }
            ],
        }
        group.attrs["napari_frontier"] = attrs
        return str(path / "0")
    arr = zarr.create_array(
        store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value
    )
    arr.attrs.update(attrs)
    return str(path)


def _axes(n: int, channel: bool):
    lead = [("t", "time"), ("z", "space")][-(n - 2 - channel) :] if n - 2 - channel else []
    return [("c", "channel")] * channel + lead + [("y", "space"), ("x", "space")]


# -- the block task -------------------------------------------------------------
def _block_task(ref, source, read, layout, stats, nodata, index, region, tile, halo, targets):
    """Predict one block; write it to the targets (or return it when there are none)."""
    seg = ref.get()
    model = seg.model
    window, inner = region_window(region, layout.yx, model.config.multiple, halo)
    # a dask input arrives as the window the graph has read; others are read here
    cf = layout.read(source, index, window) if read else layout.arrange(source)
    # One tile per forward pass on the CPU: batching gains little there and
    # would multiply the peak memory (the activations of a tile dominate it).
    batch = 4 if seg.device.type == "cuda" else 1
    probs, valid = predict_window(model, seg.device, cf, inner, stats, nodata, tile, halo, batch)
    if targets is None:
        return probs, valid
    where = (*index, *region)
    for kind, path in targets.items():
        arr = _open_array(path)
        if kind == "probabilities":
            arr[(slice(None), *where)] = probs
        else:
            from .tiling import Prediction

            arr[where] = Prediction(probabilities=probs, valid=valid).mask(kind)
    return None


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of an image: ``(slice index, (slice_y, slice_x))`` each."""

    layout: Layout
    block: int
    blocks: tuple

    @classmethod
    def of(cls, layout: Layout, block: int, multiple: int) -> BlockPlan:
        block = max(multiple, -(-block // multiple) * multiple)
        h, w = layout.yx
        blocks = tuple(
            (idx, (slice(y, min(h, y + block)), slice(x, min(w, x + block))))
            for idx in layout.slice_indices()
            for y in range(0, h, block)
            for x in range(0, w, block)
        )
        return cls(layout, block, blocks)


def _tasks(seg, image, layout, stats, plan, tile, targets, ref):
    import dask

    cfg = seg.model.config
    halo = -(-cfg.halo // cfg.multiple) * cfg.multiple
    is_dask = type(image).__module__.startswith("dask")
    source = image if is_dask else dask.delayed(image, pure=True)
    ref_d = dask.delayed(ref, pure=True)
    tasks = []
    for idx, region in plan.blocks:
        if is_dask:
            window, _ = region_window(region, layout.yx, cfg.multiple, halo)
            src = image[layout.key(idx, window)]
        else:
            src = source
        tasks.append(
            dask.delayed(_block_task, pure=True)(
                ref_d, src, not is_dask, layout, stats, seg.nodata, idx, region, tile, halo, targets
            )
        )
    return tasks


def _client(scheduler):
    if scheduler is None or scheduler in ("threads", "sync"):
        return None
    if isinstance(scheduler, str):
        from distributed import Client

        return Client(scheduler)
    return scheduler


def _run(tasks, scheduler, progress, workers: int | None):
    """Run block tasks; ``progress(done, total)`` after each."""
    import dask

    total = len(tasks)
    client = _client(scheduler)
    if client is None:
        from dask.callbacks import Callback

        done = [0]

        class _Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                name = key[0] if isinstance(key, tuple) else key
                if str(name).startswith("_block_task"):
                    done[0] += 1
                    if progress is not None:
                        progress(done[0], total)

        # one block at a time by default: torch already uses every core per block
        kw = {"scheduler": "sync"} if scheduler == "sync" else {"scheduler": "threads"}
        if scheduler != "sync":
            kw["num_workers"] = workers or 1
        with _Progress():
            return dask.compute(*tasks, **kw)
    from distributed import as_completed

    owned = client is not scheduler
    try:
        futures = client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        results = [None] * total
        for n, fut in enumerate(as_completed(futures), 1):
            results[index[fut.key]] = fut.result()
            if progress is not None:
                progress(n, total)
        return results
    finally:
        if owned:
            client.close()


# -- public functions -------------------------------------------------------------
def predict_to_zarr(
    seg,
    image,
    mask: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    format: str = "binary",
    block: int = BLOCK,
    tile: int = 1024,
    stats: NormStats | None = None,
    scheduler=None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    worker_threads: int | None = None,
    attrs: dict | None = None,
) -> dict[str, Path]:
    """Predict ``image`` block by block into Zarr stores, without loading it whole.

    Parameters
    ----------
    seg
        A trained :class:`~napari_frontier.Segmenter`.
    image
        Any array-like (Zarr array, :class:`TiffSource`, dask or numpy array) with
        the axes the segmenter expects (slices..., Y, X and channels).
    mask, probabilities
        Output paths (at least one). ``*.ome.zarr`` writes an OME-Zarr image.
        The mask is uint8 (``format`` as in :meth:`Prediction.mask`); the
        probabilities are float32 ``(K, slices..., Y, X)``, NaN at invalid pixels.
    block
        Side of the blocks and output chunks (rounded to the pooling grid).
    stats
        Normalisation statistics; default: from the whole image, read band by band.
    scheduler
        None or ``"threads"``: threads in this process (``workers`` of them, default 1,
        as torch uses every core for each block);
        ``"sync"``: one thread; an address or a ``distributed.Client``: that cluster
        (whose workers must see the input and output paths: a local cluster, or
        a shared file system).
    progress
        Called as ``progress(done, total)`` after each block.
    attrs
        More attributes for the outputs (e.g. ``{"provenance": ...}``), written
        before the store is renamed into place.

    Returns
    -------
    dict
        ``{"mask": path, "probabilities": path}`` of what was written.
    """
    if mask is None and probabilities is None:
        raise ValueError("give a mask and/or a probabilities output path")
    if format not in ("binary", "labels"):
        raise ValueError(f"unknown mask format {format!r}; use 'binary' or 'labels'")
    layout = seg.layout(image)
    seg._check_model(layout)
    stats = stats or seg.stats(image, layout)
    plan = BlockPlan.of(layout, block, seg.model.config.multiple)
    lead_chunks = (1,) * len(layout.lead_shape)
    attrs = {
        "source": "napari-frontier",
        "class_names": list(seg.class_names),
        "nodata_binary": 127,
        "nodata_labels": 0,
        **(attrs or {}),
    }
    outputs, targets = {}, {}
    # Each output goes to a temporary store, renamed into place (the mask
    # last) once every block is written; a failure removes them all.
    try:
        with contextlib.ExitStack() as stack:
            for kind, path, shape, chunks, dtype, fill in [
                (
                    format,
                    mask,
                    layout.scribble_shape,
                    (*lead_chunks, plan.block, plan.block),
                    "uint8",
                    0,
                ),
                (
                    "probabilities",
                    probabilities,
                    (seg.n_classes, *layout.scribble_shape),
                    (seg.n_classes, *lead_chunks, plan.block, plan.block),
                    "float32",
                    np.nan,
                ),
            ]:
                if path is None:
                    continue
                path = Path(path)
                tmp = stack.enter_context(atomic_path(path, directory=True))
                ome = path.name.lower().endswith(".ome.zarr")
                targets[kind] = str(
                    Path(
                        _create_array(
                            tmp,
                            shape,
                            chunks,
                            dtype,
                            fill,
                            attrs | {"kind": kind},
                            ome,
                            kind == "probabilities",
                        )
                    ).resolve()
                )
                outputs["probabilities" if kind == "probabilities" else "mask"] = (tmp, path)
            ref = ModelRef(seg, device=str(seg.device), threads=worker_threads)
            tasks = _tasks(seg, image, layout, stats, plan, tile, targets, ref)
            _run(tasks, scheduler, progress, workers)
    finally:
        for path in targets.values():
            _ARRAYS.pop(path, None)
    return {k: path for k, (_, path) in outputs.items()}


def predict_blocks(
    seg,
    image,
    block: int = BLOCK,
    tile: int = 1024,
    stats: NormStats | None = None,
    scheduler=None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Predict block by block and return the :class:`Prediction` in memory.

    For images that fit in memory but should be computed on a cluster (or
    to check the block path against :meth:`Segmenter.predict`).
    """
    from .tiling import Prediction

    layout = seg.layout(image)
    seg._check_model(layout)
    stats = stats or seg.stats(image, layout)
    plan = BlockPlan.of(layout, block, seg.model.config.multiple)
    ref = ModelRef(seg, device=str(seg.device))
    results = _run(
        _tasks(seg, image, layout, stats, plan, tile, None, ref), scheduler, progress, workers
    )
    probs = np.empty((seg.n_classes, *layout.scribble_shape), dtype=np.float32)
    valid = np.empty(layout.scribble_shape, dtype=bool)
    for (idx, region), (p, v) in zip(plan.blocks, results, strict=True):
        probs[(slice(None), *idx, *region)] = p
        valid[(*idx, *region)] = v
    return Prediction(probabilities=probs, valid=valid)


def zarr_to_tiff(source, path, tile: int = 256, metadata: dict | None = None) -> Path:
    """Copy a Zarr array (2D, or pages of a stack) to a tiled, compressed TIFF, band by band.

    ``metadata``: JSON-able dict for the ImageDescription (as in :func:`~napari_frontier.data.io.write_image`).
    """
    import tifffile
    import zarr

    arr = zarr.open(str(source), mode="r") if not hasattr(source, "shape") else source
    if not hasattr(arr, "shape"):
        arr = arr["0"]
    shape = tuple(arr.shape)
    h, w = shape[-2:]
    band = int(arr.chunks[-2]) if hasattr(arr, "chunks") else 1024
    band = max(tile, band // tile * tile)

    def tiles():
        for idx in np.ndindex(*shape[:-2]):
            for y0 in range(0, h, band):
                rows = np.asarray(arr[(*idx, slice(y0, min(h, y0 + band)), slice(None))])
                for ty in range(0, rows.shape[0], tile):
                    for tx in range(0, w, tile):
                        t = np.zeros((tile, tile), arr.dtype)
                        part = rows[ty : ty + tile, tx : tx + tile]
                        t[: part.shape[0], : part.shape[1]] = part
                        yield t

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=shape,
            dtype=arr.dtype,
            tile=(tile, tile),
            compression="zlib",
            bigtiff=arr.nbytes > 2**31,
            metadata=dict(metadata or {}),
        )
    return Path(path)


def check_source(image) -> None:
    """Raise :class:`ImageError` unless ``image`` looks like an array."""
    if not all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__")):
        raise ImageError(f"{type(image).__name__} is not an array (no shape, dtype or slicing)")
