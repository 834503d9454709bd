"""The plain reference network of the quality benchmark (not part of the package).

A U-Net from scratch: 3 poolings, 16-32-64-128 channels, BatchNorm, batches
of 8 random 128-px crops centred on painted pixels, flips / rot90, Adam 2e-3,
masked cross-entropy, nothing else. Wherever napari-frontier's network loses
to it, the design of the network, not only its settings, is in question.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_frontier.data.normalise import prepare
from napari_frontier.data.scribbles import IGNORE, to_targets
from napari_frontier.learning.losses import masked_cross_entropy


def _block(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class PlainUNet(nn.Module):
    def __init__(self, cin: int, k: int, widths=(16, 32, 64, 128)):
        super().__init__()
        self.down = nn.ModuleList()
        prev = cin
        for w in widths:
            self.down.append(_block(prev, w))
            prev = w
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(prev, w, 2, stride=2))
            self.blocks.append(_block(2 * w, w))
            prev = w
        self.head = nn.Conv2d(prev, k, 1)

    def forward(self, x):
        skips = []
        for i, b in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = b(x)
            skips.append(x)
        for up, b, s in zip(self.ups, self.blocks, reversed(skips[:-1])):
            x = b(torch.cat([up(x), s], 1))
        return self.head(x)


class ReferenceTrainer:
    """Train :class:`PlainUNet` on one image; ``train(seconds)`` continues where it stopped."""

    def __init__(self, image, scribbles, n_classes: int, seed: int, patch: int = 128, batch=8):
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        p = prepare(image)
        self.x = p.x
        self.t = to_targets(scribbles.astype(np.int64), p.valid)
        h, w = self.t.shape
        self.patch = min(patch, h // 8 * 8, w // 8 * 8)
        self.batch = batch
        self.coords = np.argwhere(self.t != IGNORE)
        self.model = PlainUNet(self.x.shape[0], n_classes)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.steps = 0
        self.elapsed = 0.0

    def _crop(self):
        p = self.patch
        h, w = self.t.shape
        cy, cx = self.coords[self.rng.integers(len(self.coords))]
        y0 = int(np.clip(cy - p // 2, 0, h - p))
        x0 = int(np.clip(cx - p // 2, 0, w - p))
        x = self.x[:, y0 : y0 + p, x0 : x0 + p]
        t = self.t[y0 : y0 + p, x0 : x0 + p]
        k = int(self.rng.integers(4))
        x, t = np.rot90(x, k, (1, 2)), np.rot90(t, k)
        if self.rng.random() < 0.5:
            x, t = x[:, :, ::-1], t[:, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(t)

    def train(self, seconds: float | None = None, steps: int | None = None) -> None:
        self.model.train()
        t0 = time.perf_counter()
        n0 = self.steps
        while True:
            if seconds is not None and time.perf_counter() - t0 >= seconds:
                break
            if steps is not None and self.steps - n0 >= steps:
                break
            xs, ts = zip(*(self._crop() for _ in range(self.batch)))
            xb = torch.from_numpy(np.stack(xs))
            tb = torch.from_numpy(np.stack(ts))
            loss = masked_cross_entropy(self.model(xb), tb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.steps += 1
        self.elapsed += time.perf_counter() - t0

    @torch.no_grad()
    def predict(self) -> np.ndarray:
        """Class map 1..K of the whole image (padded to a multiple of 8)."""
        self.model.eval()
        _c, h, w = self.x.shape
        ph, pw = -h % 8, -w % 8
        x = np.pad(self.x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        out = self.model(torch.from_numpy(x)[None])[0, :, :h, :w]
        return (out.argmax(0) + 1).numpy().astype(np.uint8)
