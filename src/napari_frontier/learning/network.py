"""The network: fixed multi-scale filters, a per-pixel branch and a context U-Net.

The filter bank (Gaussian, gradient magnitude, Laplacian of Gaussian and
Hessian eigenvalues at several scales, the features a random-forest pixel
classifier uses) is computed by fixed operations inside the model. A network
that starts from these features separates classes after a few dozen steps.

Layout (``context_stride = s > 1``, the default)::

    image -> fine features (sigma < s) -> stem (1x1, full resolution) -> pixel logits --+
                                            | avg-pool s                               |
    image -> pyramid: coarse features (sigma >= 2, at 1/2 .. 1/s resolution)           + -> logits
                                            | concatenated at 1/s resolution           |
                                            U-Net -> context logits -> upsample x s ---+

Only cheap per-pixel work happens at full resolution; everything that needs
spatial context runs on a grid ``s`` times coarser. With ``s = 1`` every
feature and the whole U-Net are at full resolution (the format-1 network,
still loaded from old checkpoints).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Settings measured and not kept (benchmarks/RESULTS.md), with the value
#: every network still has: old checkpoints that hold it load.
REMOVED_SETTINGS = {"norm": "batch", "renorm_start": 0, "fuse": "add", "pixel_features": "fine"}


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
    # Resolution divisor of the context U-Net and of the coarsest filter
    # pyramid level (a power of two; 1 = everything at full resolution).
    context_stride: int = 4
    #: Activations of a frozen ImageNet backbone (:mod:`napari_frontier.learning.backbone`),
    #: read per pixel at the context resolution and added to the logits.
    backbone: bool = False

    def __post_init__(self):
        s = self.context_stride
        if s < 1 or s & (s - 1):
            raise ValueError(f"context_stride must be a power of two, got {s}")
        if self.backbone and s < 2:
            raise ValueError("backbone features need context_stride >= 2")

    @property
    def features(self) -> str:
        """``"filters"``, ``"pretrained"`` or ``"both"``: what the network reads."""
        return {(True, False): "filters", (False, True): "pretrained", (True, True): "both"}.get(
            (self.use_filters, self.backbone), "none"
        )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["sigmas"] = list(self.sigmas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        for key, kept in REMOVED_SETTINGS.items():
            if key in d and (value := d.pop(key)) != kept:
                raise ValueError(
                    f"the network uses {key}={value!r}, which this version no longer has "
                    f"(only {kept!r}): retrain the model"
                )
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}")
        # Checkpoints written before this setting existed hold the s = 1 network.
        d.setdefault("context_stride", 1)
        d.setdefault("backbone", False)  # ... and before this one, no backbone
        if "sigmas" in d:
            d["sigmas"] = tuple(float(s) for s in d["sigmas"])
        return cls(**d)

    @property
    def multiple(self) -> int:
        """Input sizes must be a multiple of this (padding is done for you)."""
        return self.context_stride * 2**self.depth

    @property
    def halo(self) -> int:
        """Context in pixels a tile needs on each side for seamless tiling."""
        s = self.context_stride
        filt = math.ceil(4 * max(self.sigmas)) + 2 * s + 2 if self.use_filters else 0
        own = filt + s * (2 * (2 ** (self.depth + 1)) + 8)
        if not self.backbone:
            return own
        from .backbone import reach

        return max(own, reach + 2 * s)  # the backbone's features are read per pixel


#: ``--features`` choices and the settings they stand for.
FEATURES = {
    "filters": {"use_filters": True, "backbone": False},
    "pretrained": {"use_filters": False, "backbone": True},
    "both": {"use_filters": True, "backbone": True},
}


def features_settings(features: str) -> dict:
    """The :class:`ModelConfig` settings of a ``features`` choice (a clear error otherwise)."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {features!r}")
    return dict(FEATURES[features])


def _gaussian_kernels(sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    radius = math.ceil(4 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    d1 = -t / sigma**2 * g
    d2 = (t**2 / sigma**4 - 1 / sigma**2) * g
    return g, d1, d2


def _pyramid_stride(sigma: float, max_stride: int) -> int:
    """Resolution divisor used to compute the features of scale ``sigma``."""
    f = 1
    while f * 2 <= min(sigma, max_stride):
        f *= 2
    return f


class FilterBank(nn.Module):
    """Fixed per-channel multi-scale features; no trainable weights.

    Scales of sigma >= 2 are computed on an average-pooled copy of the image
    (a Gaussian pyramid) and upsampled again: the coarse features are smooth,
    so this loses nothing the network uses and costs a fraction of blurring
    with wide kernels at full resolution.
    """

    per_scale = 5  # smoothed, gradient magnitude, LoG, two Hessian eigenvalues

    def __init__(self, channels: int, sigmas: tuple[float, ...], max_stride: int = 1):
        super().__init__()
        self.channels = channels
        self.sigmas = tuple(sigmas)
        self.strides = tuple(_pyramid_stride(s, max_stride) for s in self.sigmas)
        for i, (s, f) in enumerate(zip(self.sigmas, self.strides, strict=True)):
            # The f x f average already smooths by variance (f^2 - 1) / 12.
            eff = math.sqrt(max(s * s - (f * f - 1) / 12, 0.25)) / f
            g, _, _ = _gaussian_kernels(eff)
            self.register_buffer(f"k{i}", g[None], persistent=False)
        self._taps: dict[tuple[int, torch.dtype], tuple[float, ...]] = {}

    def taps(self, i: int, dtype: torch.dtype) -> tuple[float, ...]:
        """Scale ``i``'s Gaussian taps in ``dtype``, as Python numbers (no device sync)."""
        key = (i, dtype)
        if key not in self._taps:
            self._taps[key] = tuple(getattr(self, f"k{i}")[0].cpu().to(dtype).tolist())
        return self._taps[key]

    @property
    def out_channels(self) -> int:
        return self.channels * (1 + self.per_scale * len(self.sigmas))

    @property
    def multiple(self) -> int:
        return max(self.strides)

    @staticmethod
    def _sep(x: torch.Tensor, taps: tuple[float, ...]) -> torch.Tensor:
        """Separable filter (valid part), as sums of shifted views.

        ~15x faster on CPUs than a grouped convolution with a 1-channel
        kernel (27 ms against 1.8 ms for a 1322 x 1322 pass on 2 threads),
        and the same sums in the same order.
        """
        n = len(taps)
        h = x.shape[-2] - n + 1
        y = x[..., 0:h, :] * taps[0]
        for i in range(1, n):
            y.add_(x[..., i : i + h, :], alpha=taps[i])
        w = y.shape[-1] - n + 1
        z = y[..., 0:w] * taps[0]
        for i in range(1, n):
            z.add_(y[..., i : i + w], alpha=taps[i])
        return z

    def _scale(self, x: torch.Tensor, g: tuple[float, ...], s: float) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        r = len(g) // 2 + 1
        mode = "reflect" if r < h and r < w else "replicate"
        # One separable Gaussian (with a 1-pixel margin); the derivatives are
        # finite differences of the smoothed image, ~6x cheaper than separable
        # derivative-of-Gaussian passes.
        return self._derivatives(self._sep(F.pad(x, (r, r, r, r), mode=mode), g), s)

    @staticmethod
    def _derivatives(sm: torch.Tensor, s: float) -> list[torch.Tensor]:
        """The five features of a scale from its smoothed image ``sm`` (1-pixel margin)."""
        c = sm[..., 1:-1, 1:-1]
        up, down = sm[..., :-2, 1:-1], sm[..., 2:, 1:-1]
        left, right = sm[..., 1:-1, :-2], sm[..., 1:-1, 2:]
        gy, gx = (down - up) * 0.5, (right - left) * 0.5
        hyy, hxx = down - 2 * c + up, right - 2 * c + left
        hxy = (sm[..., 2:, 2:] - sm[..., 2:, :-2] - sm[..., :-2, 2:] + sm[..., :-2, :-2]) * 0.25
        # Scale-normalised derivatives (in units of the pyramid level's
        # pixels) so every scale has a similar range.
        gm = torch.sqrt(gx * gx + gy * gy + 1e-12) * s
        tr = (hxx + hyy) * s * s
        disc = torch.sqrt(((hxx - hyy) * s * s) ** 2 + 4 * (hxy * s * s) ** 2 + 1e-12)
        return [c, gm, tr, 0.5 * (tr + disc), 0.5 * (tr - disc)]

    def groups(self, x: torch.Tensor, full: bool = True) -> list[tuple[int, torch.Tensor]]:
        """``(stride, features)`` per pyramid level, in channel order.

        Consecutive scales computed at the same level share one tensor, at
        that level's resolution; the first group is full resolution and
        starts with ``x`` itself (``full=False``: ``x`` alone, for
        :meth:`full_resolution_strips`).
        """
        pooled = {1: x}
        runs: list[tuple[int, list[torch.Tensor]]] = [(1, [x])]
        for i, (s, f) in enumerate(zip(self.sigmas, self.strides, strict=True)):
            if f == 1 and not full:
                continue
            if f not in pooled:
                pooled[f] = F.avg_pool2d(x, f)
            level = self._scale(pooled[f], self.taps(i, x.dtype), s / f)
            if runs[-1][0] == f:
                runs[-1][1].extend(level)
            else:
                runs.append((f, level))
        return [(f, torch.cat(feats, dim=1)) for f, feats in runs]

    def full_resolution_strips(self, x: torch.Tensor, rows: int):
        """Yield ``(r0, r1, features)``: rows ``r0:r1`` of the first group of :meth:`groups`.

        The same numbers, a strip at a time: a strip's features stay in cache
        instead of whole-tile ones (a tenth less time per tile on a CPU).
        """
        h, w = x.shape[-2:]
        padded = []
        for i, (s, f) in enumerate(zip(self.sigmas, self.strides, strict=True)):
            if f == 1:
                g = self.taps(i, x.dtype)
                r = len(g) // 2 + 1
                mode = "reflect" if r < h and r < w else "replicate"
                padded.append((F.pad(x, (r, r, r, r), mode=mode), g, r, s))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            feats = [x[..., r0:r1, :]]
            for xp, g, r, s in padded:
                feats += self._derivatives(self._sep(xp[..., r0 : r1 + 2 * r, :], g), s)
            yield r0, r1, torch.cat(feats, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All features at full resolution (for inspection)."""
        size = x.shape[-2:]
        return torch.cat(
            [
                t if f == 1 else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                for f, t in self.groups(x)
            ],
            dim=1,
        )


def _pointwise(
    xs: list[torch.Tensor],
    conv: nn.Conv2d,
    bn: nn.Module | None = None,
) -> torch.Tensor:
    """A 1x1 convolution (then BatchNorm) over the channels of ``xs`` taken in order.

    Done as matrix products on (N, C, H*W) views: for few channels at full
    resolution this is several times faster on CPUs than the convolution
    routine (which reorders the data first), and the inputs need not be
    concatenated. In eval mode the BatchNorm is folded into the weights.
    """
    w, b, bn = _folded(conv, bn)
    n, _, h, wd = xs[0].shape
    out = None
    c0 = 0
    for x in xs:
        c = x.shape[1]
        y = _product(w[:, c0 : c0 + c], x)
        out = y if out is None else out.add_(y)
        c0 += c
    if c0 != w.shape[1]:
        raise ValueError(f"expected {w.shape[1]} input channels, got {c0}")
    if b is not None:
        out = out.add_(b.to(out.dtype)[:, None])
    out = out.view(n, -1, h, wd)
    return out if bn is None else bn(out)


def _folded(conv: nn.Conv2d, bn: nn.Module | None):
    """``(weight matrix, bias, BatchNorm left to apply)``, eval-mode BatchNorm folded in."""
    w = conv.weight.flatten(1)
    b = conv.bias
    if isinstance(bn, nn.BatchNorm2d) and not bn.training:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        w = w * scale[:, None]
        b = shift if b is None else shift + b * scale
        bn = None
    return w, b, bn


def _product(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w @ x`` over the channels of ``x`` (N, C, H, W), as ``(N, out, H * W)``."""
    n, c, h, wd = x.shape
    # bmm with the weight on the left: matmul would fold the batch into
    # one tall product with a 2-column output, which BLAS runs slowly.
    return torch.bmm(w.to(x.dtype).expand(n, -1, -1), x.reshape(n, c, h * wd))


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
    """Input ``(N, C + 1, H, W)`` (validity last); output ``(N, K, H, W)`` logits.

    There is one output channel per painted class and none for void.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.in_channels
        s = config.context_stride
        n_fine, n_coarse = c, 0
        self.filters = None
        if config.use_filters:
            self.filters = FilterBank(c, config.sigmas, s)
            per = FilterBank.per_scale * c
            n_fine += per * sum(f == 1 for f in self.filters.strides)
            n_coarse = per * sum(f > 1 for f in self.filters.strides)
        self.stem = nn.Sequential(
            nn.Conv2d(n_fine + 1, config.width, 1, bias=False),
            nn.BatchNorm2d(config.width),
            nn.ReLU(inplace=True),
        )
        widths = [config.width * 2**i for i in range(config.depth + 1)]
        self.down = nn.ModuleList()
        prev = config.width + n_coarse
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
        self.pretrained = None
        if config.backbone:
            from .backbone import FEATURE_CHANNELS

            # A per-pixel readout of the pretrained activations (no spatial
            # convolution: they carry their own context, and a U-Net over them
            # learns where the strokes are instead of what they cover).
            hidden = 2 * config.width
            self.pretrained = nn.Sequential(
                nn.Conv2d(FEATURE_CHANNELS, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, config.n_classes, 1),
            )

    #: Rows of the full-resolution stem computed at once when nothing needs
    #: gradients (prediction): the ``width``-channel stem of a whole tile is
    #: never held, so it stays in cache and no large buffer is allocated
    #: (fresh allocations of ~100 MB cost as much as the product itself).
    strip_rows = 64

    def _stem_strips(self, image: torch.Tensor, validity: torch.Tensor, s: int):
        """``(stem average-pooled by s, per-pixel logits)`` computed strip by strip."""
        n, _, h, w = image.shape
        rows = max(s, self.strip_rows // s * s)
        if self.filters is not None:
            strips = self.filters.full_resolution_strips(image, rows)
        else:
            strips = (
                (r0, min(h, r0 + rows), image[:, :, r0 : r0 + rows]) for r0 in range(0, h, rows)
            )
        pooled = pixel = None
        for r0, r1, x0 in strips:
            st = torch.relu_(_pointwise([x0, validity[:, :, r0:r1]], self.stem[0], self.stem[1]))
            p = F.avg_pool2d(st, s) if s > 1 else st
            if pooled is None:
                pooled = st.new_empty((n, p.shape[1], h // s, w // s))
            pooled[:, :, r0 // s : r1 // s] = p
            if self.pixel is not None:
                q = _pointwise([st], self.pixel)
                if pixel is None:
                    pixel = q.new_empty((n, q.shape[1], h, w))
                pixel[:, :, r0:r1] = q
        return pooled, pixel

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pretrained activations of input ``x`` at the context resolution."""
        from .backbone import network_features

        return network_features(x, self.config.context_stride)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for ``x``; ``features`` are its :meth:`backbone_features` if already known."""
        image, validity = x[:, :-1], x[:, -1:]
        s = self.config.context_stride
        # Strips only where every pixel is computed on its own: no gradients,
        # and a stem normalisation with fixed statistics (not one recomputed
        # from the batch, as when statistics are recalibrated).
        strips = (
            not torch.is_grad_enabled()
            and not self.stem[1].training
            and x.shape[-2] % s == 0
            and x.shape[-1] % s == 0
        )
        groups = [(1, image)] if self.filters is None else self.filters.groups(image, not strips)
        stem = pixel = None
        if strips:  # the full-resolution features too, strip by strip
            pooled, pixel = self._stem_strips(image, validity, s)
        else:
            stem = torch.relu_(
                _pointwise([torch.cat([groups[0][1], validity], dim=1)], self.stem[0], self.stem[1])
            )
            pooled = F.avg_pool2d(stem, s) if s > 1 else stem
        h = pooled
        if s > 1:
            h = torch.cat(
                [pooled] + [t if f == s else F.avg_pool2d(t, s // f) for f, t in groups[1:]],
                dim=1,
            )
        skips = []
        for i, block in enumerate(self.down):
            if i:
                h = F.max_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips[:-1]), strict=True):
            h = block(torch.cat([upconv(h), skip], dim=1))
        out = self.head(h)
        if self.pretrained is not None:
            if features is None:
                features = self.backbone_features(x)
            out = out + self.pretrained(features.to(out.dtype))
        if s > 1:
            out = F.interpolate(out, scale_factor=s, mode="bilinear", align_corners=False)
        if self.pixel is not None:
            out = out.add_(pixel if pixel is not None else _pointwise([stem], self.pixel))
        return out


def build_model(config: ModelConfig) -> FrontierNet:
    """Build the network described by ``config``."""
    return FrontierNet(config)
