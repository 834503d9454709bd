"""``frontier predict``: masks, probabilities and frontier vectors, for one image or a batch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import Usage, channel_args, common_args, progress_bar

_PREDICT_EPILOG = """\
Stacks and time series (Z/T, Y, X) are predicted slice by slice; masks keep
the image's shape without the channel axis. Zarr / OME-Zarr stores and TIFFs
over 64 Mpx are never loaded whole: they are predicted block by block (with
the model's halo of context) and written to Zarr as they go (a .tif output is
a tiled TIFF). In a folder, Zarr inputs give Zarr outputs, others .tif.
Outputs are written atomically and record their provenance (input path,
size and time or a Zarr content hash, model checksum, options). Running the
same batch (-o FOLDER) again skips outputs whose provenance matches and
redoes the others, saying why (--overwrite redoes all). A single named output
file is always written. Unreadable inputs are reported and skipped (exit
status 1 at the end).
"""


def add_parser(sub) -> None:
    """The ``predict`` command's arguments."""
    q = sub.add_parser(
        "predict",
        help="predict masks of one or many images (files, folders, globs, Zarr stores)",
        epilog=_PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("model", help="checkpoint written by 'frontier train'")
    q.add_argument(
        "image", nargs="+", help="image file(s), folders, glob patterns or Zarr / OME-Zarr stores"
    )
    q.add_argument(
        "-o",
        "--output",
        required=True,
        help="output mask (.tif, .png, .npy, .zarr, .ome.zarr); a folder when several images are given",
    )
    q.add_argument(
        "--format",
        choices=("binary", "labels"),
        default=None,
        help="binary: uint8 255 = is, 0 = is not, 127 = no-data; labels: class index 1..K, "
        "0 = no-data (default: binary for a two-class model, labels for more classes)",
    )
    q.add_argument(
        "--probabilities",
        default=None,
        metavar="PATH",
        help="also write P(class) as float32 (K, ...) TIFF or Zarr (a folder with several images)",
    )
    q.add_argument(
        "--frontier",
        default=None,
        metavar="PATH",
        help="also write the outlines of the predicted objects (P = 0.5 contours, holes "
        "included) as vectors: .geojson (world coordinates and CRS for a GeoTIFF, else "
        "pixels), .zip (ImageJ/Fiji ROI set) or .csv (object, class, ring, y, x); a folder "
        "with several images",
    )
    q.add_argument(
        "--frontier-classes",
        type=_classes_arg,
        default=None,
        metavar="all|I,J,...",
        help='classes whose objects --frontier writes: "all" or a list such as 1,2 '
        '(default: the "is" objects (class 1) of a two-class model, every class of more)',
    )
    q.add_argument(
        "--frontier-format",
        choices=("geojson", "zip", "csv"),
        default="geojson",
        help="file type of the frontier files in a --frontier folder (default geojson)",
    )
    q.add_argument(
        "--tta",
        action="store_true",
        help="average the predictions of the four flips of each tile (4x the time; "
        "helps most where the network is unsure, see the README)",
    )
    q.add_argument(
        "--tile", type=int, default=1024, help="side of the tiles predicted at once (default 1024)"
    )
    q.add_argument(
        "--block",
        type=int,
        default=2048,
        help="block (and Zarr chunk) side for images predicted block by block (default 2048)",
    )
    q.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every image (default: skip outputs whose recorded provenance matches)",
    )
    q.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on an existing dask.distributed cluster (e.g. tcp://host:8786)",
    )
    q.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="start a local dask cluster of N worker processes for the prediction",
    )
    channel_args(q)
    common_args(q, nodata=False)


def _classes_arg(text: str):
    """``--frontier-classes``: "all" or a comma-separated list of class numbers."""
    if text.strip().lower() == "all":
        return "all"
    try:
        classes = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        classes = []
    if not classes:
        raise argparse.ArgumentTypeError(f"{text!r}: use all or class numbers such as 1,2")
    return classes


def expand_inputs(patterns) -> list[Path]:
    """Files and Zarr stores named by paths, folders and globs (see :mod:`.batch`)."""
    from ..outputs.batch import expand_inputs as _expand

    return _expand(patterns)


def _cluster(args):
    """A dask.distributed client for --scheduler / --workers (None: this process)."""
    if args.scheduler is None and args.workers is None:
        return None, None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise Usage(
            "--scheduler / --workers need dask.distributed: pip install 'napari-frontier[cluster]'"
        ) from None
    if args.scheduler is not None:
        try:
            return Client(args.scheduler, timeout="20s"), None
        except OSError as exc:
            raise Usage(f"cannot reach the dask scheduler at {args.scheduler} ({exc})") from exc
    if args.workers < 1:
        raise Usage("--workers must be at least 1")
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    return Client(cluster), cluster


def run(args) -> int:
    import os

    from ..outputs.batch import plan_batch, run_batch, summarize
    from ..outputs.project import load_model

    if args.frontier_classes is not None and args.frontier is None:
        raise Usage("--frontier-classes picks the classes of --frontier PATH; give that too")
    seg = load_model(args.model, device=args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.channel_axis is not None:
        seg.channel_axis = args.channel_axis
    if args.channels is not None:
        seg.channels = tuple(args.channels)
    seg.tta = args.tta
    from ..outputs.vectors import frontier_classes

    try:
        classes = frontier_classes(seg.n_classes, args.frontier_classes)
    except ValueError as exc:
        raise Usage(f"--frontier-classes {exc}") from None
    items = plan_batch(
        args.image,
        args.output,
        args.probabilities,
        frontier=args.frontier,
        frontier_suffix=f".{args.frontier_format}",
    )
    if args.frontier and not items[0].resumable:
        from ..outputs.vectors import VECTOR_SUFFIXES

        if Path(args.frontier).suffix.lower() not in VECTOR_SUFFIXES:
            raise Usage(
                f"--frontier {args.frontier}: name a {', '.join(VECTOR_SUFFIXES)} file "
                "(a folder only with several images)"
            )
    many = any(it.resumable for it in items)  # a batch: report failures, go on
    client, cluster = _cluster(args)
    if client is not None and not args.quiet:
        print(f"frontier: predicting on dask cluster {client.scheduler.address}", file=sys.stderr)
    events = []
    bar = progress_bar(len(items), "predicting", args.quiet, "image")

    def on_block(item, done, total):
        bar.set_postfix_str(f"{item.source.name}: block {done}/{total}", refresh=True)

    try:
        with bar:
            for ev in run_batch(
                seg,
                items,
                format=args.format,
                tile=args.tile,
                block=args.block,
                scheduler=client,
                workers=1,
                overwrite=args.overwrite,
                block_progress=on_block,
                worker_threads=args.threads
                or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers else None),
                frontier_classes=classes,
            ):
                events.append(ev)
                if ev.status == "failed":
                    if not many:
                        from ..errors import FrontierError

                        raise FrontierError(ev.message)
                    bar.write(f"frontier: skipped {ev.item.source}: {ev.message}", file=sys.stderr)
                bar.update(1)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    failures = sum(ev.status == "failed" for ev in events)
    if many and (failures or not args.quiet):
        print(f"frontier: {summarize(events)}", file=sys.stderr)
    elif not many and not args.quiet:
        print(f"frontier: wrote {_described(seg, items[0], args.format, classes)}", file=sys.stderr)
    return 1 if failures else 0


def _described(seg, item, fmt, classes) -> str:
    """What a single prediction wrote, in words: ``mask.tif (binary: ...)``, ..."""
    from ..prediction.tiling import default_mask_format

    fmt = fmt or default_mask_format(seg.n_classes)
    names = [f'"{n}"' for n in seg.class_names]
    if fmt == "binary":
        rest = "0 = any other class" if seg.n_classes > 2 else f"0 = {names[1]}"
        what = f"binary mask: 255 = {names[0]}, {rest}, 127 = no-data"
    else:
        what = f"class labels 1..{seg.n_classes}, 0 = no-data"
    parts = [f"{item.mask} ({what})"]
    if item.probabilities is not None:
        parts.append(f"{item.probabilities} (P of each class)")
    if item.vectors is not None:
        if len(classes) == seg.n_classes:
            of = "objects of every class"
        else:
            of = ", ".join(names[k - 1] for k in classes) + " objects"
        parts.append(f"{item.vectors} (outlines of the {of})")
    return ", ".join(parts)
