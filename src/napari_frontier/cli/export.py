"""``frontier export``: the network as a torch.export program."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    """The ``export`` command's arguments."""
    e = sub.add_parser(
        "export",
        help="write the network as a torch.export program (.pt2), usable without napari-frontier",
    )
    e.add_argument("model", help="checkpoint written by 'frontier train' (or a project)")
    e.add_argument("-o", "--output", required=True, help="program to write (e.g. model.pt2)")


def run(args) -> int:
    import torch

    from ..data.io import atomic_path
    from ..outputs.project import load_model

    seg = load_model(args.model, device="cpu")
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
    with atomic_path(args.output) as tmp, open(tmp, "wb") as f:
        # an open file, not the temporary's name: torch warns of names not ending in .pt2
        torch.export.save(program, f)
    c, k = model.config.in_channels, model.config.n_classes
    lo, hi = seg.percentiles
    names = ", ".join(f'"{n}"' for n in seg.class_names)
    print(
        f"frontier: wrote {args.output}, a torch.export program: "
        f"torch.export.load({str(args.output)!r}).module() runs it\n"
        f"  input:  float32 (N, {c + 1}, H, W): {c} image channel{'s' if c > 1 else ''}, "
        f"normalised (the image's {lo:g} and {hi:g} percentiles to 0 and 1, clipped to "
        f"[-4, 5]; invalid pixels 0), then a validity channel (1 = valid); H and W "
        f"multiples of {m}, at least 64\n"
        f"  output: (N, {k}, H, W) logits of the classes {names}",
        file=sys.stderr,
    )
    return 0
