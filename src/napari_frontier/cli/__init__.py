"""The ``frontier`` command line: train, predict, export, info.

User errors (bad files, bad scribbles, mismatched shapes) print one line on
stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import export, info, predict, train
from ._common import EPILOG, Usage

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: The commands, each a module with ``add_parser(sub)`` and ``run(args)``.
_COMMANDS = {"train": train, "predict": predict, "export": export, "info": info}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="frontier",
        description="Train a segmentation network from scribbles and predict masks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"napari-frontier {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS.values():
        command.add_parser(sub)
    return p


def main(argv=None) -> int:
    """Entry point of the ``frontier`` command."""
    args = _parser().parse_args(argv)
    from ..errors import FrontierError

    try:
        return _COMMANDS[args.command].run(args)
    except (FrontierError, Usage) as exc:
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
