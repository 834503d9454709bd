"""The one device helper: mixed precision and memory format by device."""

import torch

from napari_frontier.prediction.device import autocast, autocast_dtype, channels_last


def test_cpu_keeps_its_format_and_full_precision():
    x = torch.zeros(2, 3, 8, 8)
    assert channels_last(x) is x
    model = torch.nn.Conv2d(3, 4, 3)
    assert channels_last(model, "cpu") is model
    assert autocast_dtype(torch.device("cpu")) is None
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")


def test_other_devices_get_channels_last():
    x = torch.zeros(2, 3, 8, 8, device="meta")
    assert channels_last(x).is_contiguous(memory_format=torch.channels_last)
    model = channels_last(torch.nn.Conv2d(3, 4, 3).to("meta"), "meta")
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
