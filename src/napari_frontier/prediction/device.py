"""Devices: which one (CUDA, then Apple MPS, then CPU), its mixed precision, its memory format.

The one place for what depends on the device: training, tiled prediction and
the segmenter that builds a model all ask here.
"""

from __future__ import annotations

import torch


def select_device(name: str | None = "auto") -> torch.device:
    """Return the device called ``name``; ``"auto"`` picks CUDA, then MPS, then CPU."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but torch sees no CUDA device")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``, or None where it does not pay."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The context a forward pass runs in: mixed precision with ``dtype``, none with None."""
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def channels_last(x, device: torch.device | None = None):
    """A 4-D tensor (or a model) in channels-last memory format off the CPU; as it is on the CPU.

    ``device``: where ``x`` is (default: the tensor's own device).
    """
    device = torch.device(device) if device is not None else x.device
    if device.type == "cpu":
        return x
    if isinstance(x, torch.nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)
