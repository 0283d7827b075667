"""ResNet feature backbones with NeMo's U-Net head: unit-norm features at output stride 8 (or 4).

A ResNet-18/34/50 trunk (written here; no torchvision needed) with a width multiplier,
followed by NeMo's decoder: layer4 (stride 32) is upsampled x2 and concatenated with
layer3, fused by a double conv (3x3 conv-BN-ReLU, twice), upsampled x2 again and
concatenated with layer2, fused by a second double conv, projected to ``feature_dim``
channels by a 1x1 conv and L2-normalised over channels.

Presets (``build_backbone(name)``):

=============  ==========  =====  ===========  =======================================
name           arch        width  feature_dim  use
=============  ==========  =====  ===========  =======================================
``small``      resnet18    32     128          CPU default: trains on a CPU in minutes
``resnet18``   resnet18    64     128          the standard ResNet-18 trunk
``resnet34``   resnet34    64     128          the standard ResNet-34 trunk
``resnet50``   resnet50    64     128          the NeMo paper's configuration
=============  ==========  =====  ===========  =======================================

Input: ``images (B, in_channels, H, W)`` float in [0, 1], RGB; the module subtracts the
ImageNet mean ``(0.485, 0.456, 0.406)`` and divides by the ImageNet std
``(0.229, 0.224, 0.225)`` itself (for ``in_channels != 3`` every channel uses the average
of those, 0.449 and 0.226). Output: ``(B, feature_dim, ceil(H / 8), ceil(W / 8))``.

Feature-cell geometry (pixel centres at integers, ``docs/conventions.md``): feature cell
``(i, j)`` covers input pixels rows ``[8i, 8i + 7]`` and columns ``[8j, 8j + 7]``; its
centre is the input pixel coordinate ``(u, v) = (8j + 3.5, 8i + 3.5)``. So a point at
image pixel ``(u, v)`` lies in feature coordinate ``((u - 3.5) / 8, (v - 3.5) / 8)``
(``feature_intrinsics`` maps ``K`` accordingly). How the network realises this exactly:

* a stride-2 convolution with an odd kernel can only put its output centres on input
  samples, never half-way between them, so a half-pixel shift must come from somewhere:
  the stem first averages each 2x2 block of (normalised, right/bottom zero-padded) input
  pixels with stride 1 (a box prefilter, sample ``k`` centred at pixel ``k + 0.5``), then
  applies ``conv1`` (7x7, stride 2) **without** left/top padding: its output ``k`` sees
  pixels ``[2k, 2k + 7]`` and is centred at ``2k + 3.5``. Together this is an 8x8 stem
  filter (the box also anti-aliases the stride);
* everything after the stem keeps torchvision's symmetric padding (max-pool 3x3 / stride 2
  / padding 1, strided 3x3 convs with padding 1, 1x1 stride-2 shortcuts), which keeps
  the offset: cell ``k`` of the stride-``s`` grid is centred at pixel ``s k + 3.5`` for
  ``s = 2, 4, 8, 16, 32``;
* the decoder's x2 bilinear upsampling is the one consistent with that: output ``m`` samples
  input position ``m / 2`` (``align_corners=True`` to size ``2n - 1``, then the last row /
  column repeated when the finer grid has ``2n`` cells: border clamping), so layer4, layer3
  and layer2 are concatenated at matching positions. (``align_corners=False`` would
  misplace layer4 by a quarter of its cell, 8 pixels.)

**Output stride 4** (``BackboneConfig.output_stride = 4``): a third decoder stage
(``fuse4``) upsamples the stride-8 fusion x2, concatenates layer1 and applies a double conv
(``C1`` channels) before the projection, so maps have twice the resolution for the same
trunk. The stride-4 grid of the network is centred at ``4k + 3.5``; to keep the convention
``s k + (s - 1) / 2`` (``4k + 1.5``) that the rest of the library assumes for every stride,
``forward`` shifts the image 2 pixels right and down (mean-colour padding) and crops the
map to ``ceil(H / 4)`` rows and ``ceil(W / 4)`` columns.

Layer sizes are ``ceil(H / s)`` at stride ``s`` for every ``H >= 1``; cells of the last
row/column may extend past the image (zero padding, i.e. the mean colour).

State-dict keys (torchvision's ResNet layout, so torchvision-format weights load by name
with ``load_trunk_state_dict``; only padding differs, which no state dict records):
``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var,num_batches_tracked}``,
``layer{1..4}.{block}.conv{1,2}`` / ``bn{1,2}`` (BasicBlock: resnet18/34) or
``conv{1,2,3}`` / ``bn{1,2,3}`` (Bottleneck: resnet50, stride on the 3x3 ``conv2`` as in
torchvision >= 0.5, "ResNet v1.5"), and ``layer{n}.0.downsample.0`` (1x1 conv) /
``layer{n}.0.downsample.1`` (BN) where the shortcut changes shape. torchvision's ``fc.*``
is not used. The head's keys are ``head.fuse16.{0,1,3,4}`` (conv, BN, conv, BN of the
stride-16 double conv), ``head.fuse8.{0,1,3,4}`` (and ``head.fuse4.{0,1,3,4}`` at output
stride 4) and ``head.proj.{weight,bias}``.

Decoder widths: ``C3 // 2`` at stride 16 and ``C2 // 2`` at stride 8, where ``C2, C3``
are layer2/layer3 channels (resnet50 at width 64: 512 and 256, the widths of NeMo's two
``Up`` blocks; NeMo's code also applies a 2048 -> 1024 double conv to layer4 before the
first upsampling, which we leave out: it holds 28M parameters at stride 32).

Example::

    >>> import torch
    >>> net = build_backbone(BackboneConfig(width=8, feature_dim=16), seed=0).eval()
    >>> feats = net(torch.rand(2, 3, 36, 52))
    >>> tuple(feats.shape), net.stride
    ((2, 16, 5, 7), 8)
    >>> bool(torch.allclose(feats.norm(dim=1), torch.ones(2, 5, 7), atol=1e-5))
    True
    >>> tuple(net.forward_pooled(torch.rand(2, 3, 36, 52)).shape) == (2, net.pooled_dim)
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from render.checks import check_floating, check_image_size, check_shape

__all__ = [
    "ARCHS",
    "PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OUTPUT_STRIDES",
    "BackboneConfig",
    "FeatureBackbone",
    "build_backbone",
    "feature_intrinsics",
    "feature_size",
]

#: arch -> (block type, blocks per stage), as in torchvision.
ARCHS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STRIDE = 8

#: output strides a FeatureBackbone can have (BackboneConfig.output_stride)
OUTPUT_STRIDES = (8, 4)


@dataclass(frozen=True)
class BackboneConfig:
    """Settings of a ``FeatureBackbone`` (stored as JSON beside checkpoints: ``asdict``).

    Attributes:
        arch: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        width: base channels (64 in the standard ResNets); stage ``n`` has
            ``width * 2**(n-1)`` channels, times 4 at the output of a Bottleneck block.
        feature_dim: channels of the output features.
        in_channels: input image channels.
        zero_init_residual: initialise the last BN gamma of every residual block to 0, so
            each block starts as the identity (Goyal et al. 2017; helps training from
            scratch). torchvision's default is ``False``.
        output_stride: 8 (NeMo) or 4: one more decoder stage, fusing layer1 at stride 4
            (twice the feature resolution for small images, at little cost: the trunk
            is unchanged).
    """

    arch: str = "resnet18"
    width: int = 64
    feature_dim: int = 128
    in_channels: int = 3
    zero_init_residual: bool = True
    output_stride: int = 8

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"BackboneConfig.arch: expected one of {tuple(ARCHS)}, got {self.arch!r}"
            )
        for name in ("width", "feature_dim", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"BackboneConfig.{name}: expected a positive int, got {value!r}"
                )
        if self.width < 2:
            raise ValueError(
                f"BackboneConfig.width: expected at least 2 (decoder widths are halves), "
                f"got {self.width}"
            )
        if self.output_stride not in OUTPUT_STRIDES or isinstance(self.output_stride, bool):
            raise ValueError(
                f"BackboneConfig.output_stride: expected one of {OUTPUT_STRIDES}, "
                f"got {self.output_stride!r}"
            )
        if not isinstance(self.zero_init_residual, bool):
            raise ValueError(
                "BackboneConfig.zero_init_residual: expected a bool, "
                f"got {self.zero_init_residual!r}"
            )

    @property
    def expansion(self) -> int:
        """Output channels of a block over its ``planes`` (1 Basic, 4 Bottleneck)."""
        return 1 if ARCHS[self.arch][0] == "basic" else 4

    @property
    def layer_channels(self) -> tuple[int, int, int, int]:
        """Output channels of layer1..layer4 (resnet18 @ 64: 64, 128, 256, 512)."""
        w, e = self.width, self.expansion
        return (w * e, 2 * w * e, 4 * w * e, 8 * w * e)

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Channels of the decoder's double convs: ``(C3 // 2, C2 // 2)`` at strides 16 and
        8, then ``C1`` at stride 4 when ``output_stride`` is 4."""
        c = self.layer_channels
        widths = (c[2] // 2, c[1] // 2)
        return widths + ((c[0],) if self.output_stride == 4 else ())

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BackboneConfig":
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"BackboneConfig: expected keys from {sorted(known)}, got unknown {unknown}"
            )
        return cls(**dict(data))


#: Named presets, see the module docstring.
PRESETS: dict[str, BackboneConfig] = {
    "small": BackboneConfig(arch="resnet18", width=32),
    "resnet18": BackboneConfig(arch="resnet18", width=64),
    "resnet34": BackboneConfig(arch="resnet34", width=64),
    "resnet50": BackboneConfig(arch="resnet50", width=64),
}


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


def feature_size(image_size: Sequence[int], stride: int = _STRIDE) -> tuple[int, int]:
    """Feature-map size ``(ceil(H / stride), ceil(W / stride))`` for an image ``(H, W)``.

    >>> feature_size((36, 52))
    (5, 7)
    """
    h, w = check_image_size(image_size)
    _check_stride(stride)
    return -(-h // stride), -(-w // stride)


def feature_intrinsics(K: torch.Tensor, stride: int = _STRIDE) -> torch.Tensor:
    """Map image intrinsics to the intrinsics of a stride-``stride`` feature map.

    Feature cell ``(i, j)`` covers input pixels ``[stride*i, stride*i + stride - 1]``
    (rows) and likewise columns, so its centre is at pixel
    ``stride * j + (stride - 1) / 2``; a pixel coordinate ``u`` maps to
    ``u_f = (u - (stride - 1) / 2) / stride`` (``(u - 3.5) / 8`` at stride 8), in the same
    integer-centre convention: ``round(u_f)`` is the cell whose window holds pixel
    ``round(u)``. Projecting with the result is projecting with ``K`` and then applying
    that map: ``fx, fy, skew`` are divided by ``stride`` and
    ``c_f = (c - (stride - 1) / 2) / stride``.

    Args:
        K: ``(..., 3, 3)`` intrinsics in image pixels.
        stride: the feature map's stride (8 for ``FeatureBackbone``).

    Returns:
        ``(..., 3, 3)`` intrinsics in feature cells, same dtype and device.

    >>> from render import intrinsics
    >>> feature_intrinsics(intrinsics(100.0, 100.0, 31.5, 31.5)).tolist()
    [[12.5, 0.0, 3.5], [0.0, 12.5, 3.5], [0.0, 0.0, 1.0]]
    """
    if not isinstance(K, torch.Tensor):
        raise TypeError(f"K: expected a torch.Tensor, got {type(K).__name__}")
    if K.dim() < 2 or tuple(K.shape[-2:]) != (3, 3):
        raise ValueError(f"K: expected shape (..., 3, 3), got {tuple(K.shape)}")
    check_floating("K", K)
    _check_stride(stride)
    offset = (stride - 1) / 2.0
    S = K.new_tensor(
        [
            [1.0 / stride, 0.0, -offset / stride],
            [0.0, 1.0 / stride, -offset / stride],
            [0.0, 0.0, 1.0],
        ]
    )
    return S @ K


def _check_stride(stride: int) -> None:
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride: expected a positive int, got {stride!r}")


def _upsample2_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x2 bilinear upsampling where output cell ``m`` samples input position ``m / 2``.

    ``x (B, C, h, w)`` -> ``(B, C, H, W)`` with ``H in {2h - 1, 2h}`` (``h = ceil(H / 2)``):
    exact linear interpolation for ``m <= 2h - 2``, border clamping (the last input
    row / column repeated) for ``m = 2h - 1``. This matches grids whose cell ``k`` is
    centred at ``s * k + 3.5`` at every stride ``s`` (the module docstring).
    """
    h, w = x.shape[-2:]
    H, W = size
    if H not in (2 * h - 1, 2 * h) or W not in (2 * w - 1, 2 * w):
        raise ValueError(
            f"decoder: expected a target of (2h-1 or 2h, 2w-1 or 2w) for input {(h, w)}, "
            f"got {(H, W)}"
        )
    y = F.interpolate(x, size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=True)
    if (H, W) != (2 * h - 1, 2 * w - 1):
        y = F.pad(y, (0, W - (2 * w - 1), 0, H - (2 * h - 1)), mode="replicate")
    return y


# --------------------------------------------------------------------------------------
# Blocks (torchvision's layout and key names)
# --------------------------------------------------------------------------------------


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) plus the shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, "ResNet v1.5"), 1x1 expand x4, plus shortcut (ResNet-50)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """(3x3 conv - BN - ReLU) x 2, keys ``0`` conv, ``1`` BN, ``3`` conv, ``4`` BN."""
    return nn.Sequential(
        _conv3x3(cin, cout),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        _conv3x3(cout, cout),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNetHead(nn.Module):
    """NeMo's decoder: trunk layers -> ``(B, feature_dim, h_s, w_s)`` at the output stride
    ``s``, not normalised.

    ``fuse16``: double conv on ``[up(layer4), layer3]``; ``fuse8``: double conv on
    ``[up(fuse16), layer2]``; at output stride 4, ``fuse4``: double conv on
    ``[up(fuse8), layer1]``; ``proj``: 1x1 conv (with bias) to ``feature_dim``.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c1, c2, c3, c4 = config.layer_channels
        widths = config.decoder_channels
        self.fuse16 = _double_conv(c4 + c3, widths[0])
        self.fuse8 = _double_conv(widths[0] + c2, widths[1])
        if config.output_stride == 4:
            self.fuse4 = _double_conv(widths[1] + c1, widths[2])
        self.proj = nn.Conv2d(widths[-1], config.feature_dim, kernel_size=1, bias=True)

    def forward(self, c2: torch.Tensor, c3: torch.Tensor, c4: torch.Tensor,
                c1: torch.Tensor | None = None) -> torch.Tensor:
        """``c2 (B, C2, h8, w8)``, ``c3 (B, C3, h16, w16)``, ``c4 (B, C4, h32, w32)``, and
        ``c1 (B, C1, h4, w4)``, used (and needed) at output stride 4 only."""
        x = self.fuse16(torch.cat([_upsample2_to(c4, tuple(c3.shape[-2:])), c3], dim=1))
        x = self.fuse8(torch.cat([_upsample2_to(x, tuple(c2.shape[-2:])), c2], dim=1))
        if hasattr(self, "fuse4"):
            if c1 is None:
                raise ValueError("decoder: output stride 4 needs layer1's features (c1)")
            x = self.fuse4(torch.cat([_upsample2_to(x, tuple(c1.shape[-2:])), c1], dim=1))
        return self.proj(x)


# --------------------------------------------------------------------------------------
# The backbone
# --------------------------------------------------------------------------------------


class FeatureBackbone(nn.Module):
    """ResNet trunk + U-Net head: images -> unit-norm features at stride 8.

    Args:
        config: a ``BackboneConfig`` (``build_backbone`` also takes preset names).
        seed: seed of the weight initialisation (a private ``torch.Generator``; the
            global RNG is left alone). ``None`` draws from the global RNG.

    Attributes:
        config: the ``BackboneConfig``.
        stride: the output stride, ``config.output_stride`` (8 or 4; geometry in
            the module docstring and :meth:`forward`).
        feature_dim: channels of ``forward``'s output.
        pooled_dim: channels of ``forward_pooled``'s output (layer4's channels).
        conv1, bn1, maxpool, layer1..layer4: the trunk (torchvision names).
        head: the ``UNetHead``.

    Training mode needs more than one value per channel in every BatchNorm, i.e.
    ``B * ceil(H / 32) * ceil(W / 32) > 1``.
    """

    stride: int = _STRIDE

    def __init__(self, config: BackboneConfig | None = None, *, seed: int | None = None):
        super().__init__()
        if config is None:
            config = BackboneConfig()
        if not isinstance(config, BackboneConfig):
            raise TypeError(f"config: expected a BackboneConfig, got {type(config).__name__}")
        self.config = config
        self.stride = config.output_stride
        self.feature_dim = config.feature_dim
        self.pooled_dim = config.layer_channels[3]

        if config.in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean = (sum(IMAGENET_MEAN) / 3,) * config.in_channels
            std = (sum(IMAGENET_STD) / 3,) * config.in_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

        # nn.Conv2d draws its default init from the global RNG; with a seed, build inside
        # fork_rng so the global RNG is left as it was.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            block = BasicBlock if ARCHS[config.arch][0] == "basic" else Bottleneck
            blocks = ARCHS[config.arch][1]
            w = config.width
            # padding=0: the stem pads right/bottom only (see _stem and the module docstring).
            self.conv1 = nn.Conv2d(
                config.in_channels, w, kernel_size=7, stride=2, padding=0, bias=False
            )
            self.bn1 = nn.BatchNorm2d(w)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            inplanes = w
            layers = []
            for n, count in enumerate(blocks):
                planes, stride = w * 2**n, (1 if n == 0 else 2)
                downsample = None
                if stride != 1 or inplanes != planes * block.expansion:
                    downsample = nn.Sequential(
                        _conv1x1(inplanes, planes * block.expansion, stride),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                stage = [block(inplanes, planes, stride, downsample)]
                inplanes = planes * block.expansion
                stage += [block(inplanes, planes) for _ in range(count - 1)]
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.head = UNetHead(config)
            self._init_weights(seed)
        # channels-last weights and activations: faster convolutions on a CPU than the
        # default layout (same values up to float summation order; the README's build and
        # fit times are measured with it); tensors are saved contiguous, loading keeps it
        self.to(memory_format=torch.channels_last)

    # ---- initialisation and loading -----------------------------------------------------

    def _init_weights(self, seed: int | None) -> None:
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu", generator=gen
                    )
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if self.config.zero_init_residual:
                for m in self.modules():
                    if isinstance(m, (BasicBlock, Bottleneck)):
                        nn.init.zeros_(m.last_bn.weight)

    def trunk_modules(self) -> dict[str, nn.Module]:
        """The trunk's modules by torchvision name: conv1, bn1, layer1..layer4."""
        names = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
        return {n: getattr(self, n) for n in names}

    def load_trunk_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load trunk weights given under torchvision's key names (the head is untouched).

        ``fc.*`` keys (torchvision's classifier) are ignored; any other key must be a
        trunk key with the right shape, and every trunk key must be present.

        Raises:
            ValueError: naming missing, unexpected or mis-shaped keys.
        """
        expected = {}
        for prefix, module in self.trunk_modules().items():
            for key, value in module.state_dict().items():
                expected[f"{prefix}.{key}"] = value
        given = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        missing = sorted(set(expected) - set(given))
        unexpected = sorted(set(given) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"trunk state dict ({self.config.arch}, width {self.config.width}): "
                f"missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        for key, value in given.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise ValueError(
                    f"trunk state dict: {key}: expected shape {tuple(expected[key].shape)}, "
                    f"got {tuple(value.shape)}"
                )
        for prefix, module in self.trunk_modules().items():
            sub = {k[len(prefix) + 1 :]: v for k, v in given.items() if k.startswith(prefix + ".")}
            module.load_state_dict(sub, strict=True)

    # ---- forward ------------------------------------------------------------------------

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise, pad right/bottom, 2x2 box prefilter, conv1: output ``k`` at ``2k + 3.5``."""
        check_shape("images", images, ["B", self.config.in_channels, "H", "W"])
        check_floating("images", images)
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        H, W = x.shape[-2:]
        # conv1 must give ceil(H / 2) outputs from the box-filtered length H + pad - 1.
        pad_h = 2 * math.ceil(H / 2) - H + 6
        pad_w = 2 * math.ceil(W / 2) - W + 6
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros: the mean colour
        x = F.avg_pool2d(x.contiguous(memory_format=torch.channels_last), kernel_size=2, stride=1)
        return self.relu(self.bn1(self.conv1(x)))

    def _layers(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self._stem(images))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return c1, c2, c3, self.layer4(c3)

    def forward_trunk(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Trunk features ``(layer2, layer3, layer4)``.

        Args:
            images: ``(B, in_channels, H, W)`` in [0, 1].

        Returns:
            ``(B, C2, ceil(H/8), ceil(W/8))``, ``(B, C3, ceil(H/16), ceil(W/16))``,
            ``(B, C4, ceil(H/32), ceil(W/32))``; cell ``k`` of the stride-``s`` map is
            centred at pixel ``s k + 3.5``.
        """
        return self._layers(images)[1:]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm dense features.

        Args:
            images: ``(B, in_channels, H, W)`` float in [0, 1] (normalised inside).

        Returns:
            ``(B, feature_dim, ceil(H / s), ceil(W / s))`` at the output stride ``s =
            self.stride``, L2 norm 1 over channels; cell ``(i, j)`` is centred at input
            pixel ``(u, v) = (s j + (s - 1) / 2, s i + (s - 1) / 2)``. The network's own
            stride-``s`` grid is centred at ``s k + 3.5`` (module docstring), which is that
            at ``s = 8``; at ``s = 4`` the image is first shifted by 2 pixels (zero padding
            at the left and top, i.e. the mean colour) and the map cropped to
            ``ceil(H / 4)`` rows.
        """
        return F.normalize(self._dense(images), dim=1, eps=1e-12)

    def _dense(self, images: torch.Tensor) -> torch.Tensor:
        """``forward`` before the normalisation."""
        s = self.stride
        h, w = images.shape[-2:]
        shift = 4 - s // 2
        if shift:
            check_shape("images", images, ["B", self.config.in_channels, "H", "W"])
            mean = self.mean.to(images.dtype)
            images = F.pad(images - mean, (shift, 0, shift, 0)) + mean  # pad with the mean colour
        c1, c2, c3, c4 = self._layers(images)
        return self.head(c2, c3, c4, c1)[..., : -(-h // s), : -(-w // s)].contiguous()

    def forward_pooled(self, images: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled layer4 embedding ``(B, pooled_dim)`` (not normalised)."""
        return self.forward_trunk(images)[2].mean(dim=(2, 3))


def build_backbone(
    name_or_config: str | BackboneConfig = "small", *, seed: int | None = None
) -> FeatureBackbone:
    """A ``FeatureBackbone`` from a preset name (``PRESETS``) or a ``BackboneConfig``.

    >>> cfg = build_backbone("small").config
    >>> cfg.arch, cfg.width, cfg.feature_dim
    ('resnet18', 32, 128)
    """
    if isinstance(name_or_config, BackboneConfig):
        config = name_or_config
    elif isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(
                f"backbone preset: expected one of {tuple(PRESETS)}, got {name_or_config!r}"
            )
        config = PRESETS[name_or_config]
    else:
        raise ValueError(
            "backbone: expected a preset name or a BackboneConfig, "
            f"got {type(name_or_config).__name__}"
        )
    return FeatureBackbone(config, seed=seed)
