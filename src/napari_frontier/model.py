"""The network: fixed multi-scale filters feeding a compact U-Net.

The filter bank (Gaussian, gradient magnitude, Laplacian of Gaussian and
Hessian eigenvalues at several scales, the features a random-forest pixel
classifier uses) is computed by fixed convolutions inside the model. A network
that starts from these features separates classes after a few dozen steps;
the U-Net then adds context a per-pixel classifier cannot see.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in checkpoints)."""

    in_channels: int = 1
    n_classes: int = 2
    width: int = 16
    depth: int = 2
    sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    use_filters: bool = True
    pixel_branch: bool = True

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        d = dict(d)
        if "sigmas" in d:
            d["sigmas"] = tuple(float(s) for s in d["sigmas"])
        return cls(**d)

    @property
    def multiple(self) -> int:
        """Input sizes must be a multiple of this (padding is done for you)."""
        return 2**self.depth

    @property
    def halo(self) -> int:
        """Context in pixels a tile needs on each side for seamless tiling."""
        filt = math.ceil(4 * max(self.sigmas)) if self.use_filters else 0
        return filt + 2 * (2 ** (self.depth + 1)) + 8


def _gaussian_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    radius = math.ceil(4 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    d1 = -t / sigma**2 * g
    d2 = (t**2 / sigma**4 - 1 / sigma**2) * g
    return g, d1, d2


class FilterBank(nn.Module):
    """Fixed per-channel multi-scale features; no trainable weights."""

    per_scale = 5  # smoothed, gradient magnitude, LoG, two Hessian eigenvalues

    def __init__(self, channels: int, sigmas: tuple[float, ...]):
        super().__init__()
        self.channels = channels
        self.sigmas = tuple(sigmas)
        for i, s in enumerate(self.sigmas):
            g, _, _ = _gaussian_kernels(s)
            self.register_buffer(f"k{i}", g[None], persistent=False)

    @property
    def out_channels(self) -> int:
        return self.channels * (1 + self.per_scale * len(self.sigmas))

    def _sep(self, x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        y = F.conv2d(x, ky.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        y = F.conv2d(y, kx.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        h, w = x.shape[-2:]
        for i, s in enumerate(self.sigmas):
            g = getattr(self, f"k{i}")[0].to(x.dtype)
            r = g.numel() // 2 + 1
            mode = "reflect" if r < h and r < w else "replicate"
            # One separable Gaussian per scale (with a 1-pixel margin); the
            # derivatives are finite differences of the smoothed image, which
            # is ~6x cheaper than six separable derivative-of-Gaussian passes.
            sm = self._sep(F.pad(x, (r, r, r, r), mode=mode), g, g)
            c = sm[..., 1:-1, 1:-1]
            up, down = sm[..., :-2, 1:-1], sm[..., 2:, 1:-1]
            left, right = sm[..., 1:-1, :-2], sm[..., 1:-1, 2:]
            gy, gx = (down - up) * 0.5, (right - left) * 0.5
            hyy, hxx = down - 2 * c + up, right - 2 * c + left
            hxy = (sm[..., 2:, 2:] - sm[..., 2:, :-2] - sm[..., :-2, 2:] + sm[..., :-2, :-2]) * 0.25
            # Scale-normalised derivatives so every scale has a similar range.
            gm = torch.sqrt(gx * gx + gy * gy + 1e-12) * s
            tr = (hxx + hyy) * s * s
            disc = torch.sqrt(((hxx - hyy) * s * s) ** 2 + 4 * (hxy * s * s) ** 2 + 1e-12)
            feats += [c, gm, tr, 0.5 * (tr + disc), 0.5 * (tr - disc)]
        return torch.cat(feats, dim=1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FrontierNet(nn.Module):
    """Filter bank + U-Net. Input ``(N, C + 1, H, W)`` (validity last); output ``(N, K, H, W)``.

    There is one output channel per painted class and none for void.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.in_channels
        if config.use_filters:
            self.filters = FilterBank(c, config.sigmas)
            n_in = self.filters.out_channels + 1
        else:
            self.filters = None
            n_in = c + 1
        self.stem = nn.Sequential(
            nn.Conv2d(n_in, config.width, 1, bias=False),
            nn.BatchNorm2d(config.width),
            nn.ReLU(inplace=True),
        )
        widths = [config.width * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        prev = config.width
        for w in widths:
            self.down.append(_block(prev, w))
            prev = w
        self.up = nn.ModuleList()
        self.upconv = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(prev, w, 2, stride=2))
            self.up.append(_block(2 * w, w))
            prev = w
        self.head = nn.Conv2d(prev, config.n_classes, 1)
        self.pixel = None
        if config.pixel_branch:
            # A per-pixel classifier on the filter features (what a random
            # forest sees). The U-Net head starts at zero, so early predictions
            # follow local appearance and context is added as it is learned.
            self.pixel = nn.Conv2d(config.width, config.n_classes, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, validity = x[:, :-1], x[:, -1:]
        if self.filters is not None:
            image = self.filters(image)
        h = self.stem(torch.cat([image, validity], dim=1))
        stem = h
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([upconv(h), skip], dim=1))
        out = self.head(h)
        if self.pixel is not None:
            out = out + self.pixel(stem)
        return out


def build_model(config: ModelConfig) -> FrontierNet:
    """Build the network described by ``config``."""
    return FrontierNet(config)
