"""``frontier info``: what a checkpoint holds."""

from __future__ import annotations


def add_parser(sub) -> None:
    """The ``info`` command's arguments."""
    i = sub.add_parser(
        "info", help="show what a checkpoint holds (network, classes, settings) as JSON"
    )
    i.add_argument("model", help="checkpoint written by 'frontier train'")


def run(args) -> int:
    import contextlib
    import json

    from ..data.io import load_checkpoint
    from ..learning.network import ModelConfig

    payload = load_checkpoint(args.model)
    payload.pop("state_dict", None)
    # what the network reads, as --features spells it (a damaged config is shown as it is)
    with contextlib.suppress(KeyError, TypeError, ValueError):
        payload = {"features": ModelConfig.from_dict(payload["model_config"]).features, **payload}
    print(json.dumps(payload, indent=2, default=str))
    return 0
