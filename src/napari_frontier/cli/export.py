"""``frontier export``: the network as a torch.export program."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    """The ``export`` command's arguments."""
    e = sub.add_parser(
        "export",
        help="export the network as a torch.export program (.pt2) for use without napari-frontier",
    )
    e.add_argument("model", help="checkpoint written by 'frontier train'")
    e.add_argument("-o", "--output", required=True, help="file to write (e.g. model.pt2)")


def run(args) -> int:
    import torch

    from ..data.io import atomic_path
    from ..segmenter import Segmenter

    seg = Segmenter.load(args.model, device="cpu")
    model = seg.model.eval()
    if model.config.backbone:  # the program holds the backbone's weights too
        from ..learning.backbone import WithBackbone

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
