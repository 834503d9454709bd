"""What the commands share: argument groups, the progress bar, the usage error."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
scribbles: an image of the same height and width as IMAGE, 0 = void (not
painted, ignored), 1 = "is", 2 = "is not" (or 1..K for K classes).
"""


class Usage(Exception):
    """A command line that cannot run as given (one line on stderr, exit status 2)."""


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of channel numbers"
        ) from None


def channel_args(p, axis: bool = True) -> None:
    if axis:
        p.add_argument(
            "--channel-axis",
            type=int,
            default=None,
            metavar="AXIS",
            help="axis of channels in the images (default: the model's, or OME-Zarr metadata)",
        )
    p.add_argument(
        "--channels",
        type=int_list,
        default=None,
        metavar="I,J,...",
        help="use only these channels (0-based, along the channel axis)",
    )


def common_args(p, nodata: bool = True) -> None:
    if nodata:
        p.add_argument(
            "--nodata",
            type=float,
            default=None,
            metavar="VALUE",
            help="pixel value that marks invalid input (NaN/inf always do)",
        )
        p.add_argument(
            "--channel-axis",
            type=int,
            default=None,
            metavar="AXIS",
            help="axis of channels in the image (default: grey, or RGB if the last axis has 3 or 4)",
        )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for torch (default: torch's choice)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def progress_bar(total, desc, quiet, unit="it"):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=False, dynamic_ncols=True)
