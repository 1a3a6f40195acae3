"""Encoders: ``small_cnn`` (CPU-fast), ``resnet18``/``resnet50`` and ``vit`` (torchvision).

Every encoder maps images ``[N, C, H, W]`` to features ``h`` of shape ``[N, feature_dim]`` and
exposes ``feature_dim`` and ``blocks()`` (ordered ``(name, module)`` pairs used by layer-wise CKA).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
import torchvision

from repalign.errors import ConfigError


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"config key 'model.norm': must be 'batch', 'group' or 'none', got {kind!r}")


class SmallCNN(nn.Module):
    """Four 3×3 conv blocks (widths w, 2w, 4w, 8w; strides 2, 1, 2, 2) + global average pool.

    ``h = avgpool(block4(block3(block2(block1(x)))))`` with ``feature_dim = 8·width``. The
    stride-2 first block (like a ResNet stem) makes it ~5× cheaper than a stride-1 stem: on 28×28
    inputs one SGD step on 512 images (K = 2 views × B = 256) takes ≈ 0.2 s on 2 cores at width 16.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, norm: str = "batch") -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        strides = [2, 1, 2, 2]
        layers: list[nn.Module] = []
        c = in_channels
        for i, (w, s) in enumerate(zip(widths, strides)):
            layers.append(
                nn.Sequential(
                    nn.Conv2d(c, w, 3, stride=s, padding=1, bias=norm == "none"),
                    _norm2d(norm, w),
                    nn.ReLU(inplace=True),
                )
            )
            c = w
        self.block1, self.block2, self.block3, self.block4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = widths[-1]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, 5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block4(self.block3(self.block2(self.block1(x))))
        return self.pool(x).flatten(1)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-18/50 without its classifier (``fc = Identity``).

    ``cifar_stem=True`` replaces the stem by a 3×3 stride-1 conv and removes the max-pool
    (the standard CIFAR variant); ``in_channels`` ≠ 3 rebuilds the first conv.
    ``width`` multiplies the channel widths via ``width_per_group`` (ResNet-50 only; 1 = standard).
    """

    def __init__(self, arch: str, in_channels: int = 3, cifar_stem: bool = False, width: int = 1,
                 norm: str = "batch") -> None:
        super().__init__()
        kwargs = {}
        if norm == "group":
            kwargs["norm_layer"] = lambda c: nn.GroupNorm(min(32, c), c)
        elif norm != "batch":
            raise ConfigError(f"config key 'model.norm': must be 'batch' or 'group' for {arch}, got {norm!r}")
        if arch == "resnet18":
            if width != 1:
                raise ConfigError(f"config key 'model.width': must be 1 for resnet18 (torchvision BasicBlock has fixed "
                                  f"width), got {width!r}")
            net = torchvision.models.resnet18(weights=None, **kwargs)
        elif arch == "resnet50":
            net = torchvision.models.resnet50(weights=None, width_per_group=64 * width, **kwargs)
        else:
            raise ValueError(f"unknown resnet arch {arch!r}")
        if cifar_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def blocks(self) -> list[tuple[str, nn.Module]]:
        n = self.net
        return [("stem", n.relu), ("layer1", n.layer1), ("layer2", n.layer2),
                ("layer3", n.layer3), ("layer4", n.layer4)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class ViTPreset:
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int


#: Presets by image size (paper-notes §3): CIFAR 32 px patch 4, Tiny 64 px patch 8 (dim 384),
#: ImageNet 224 px ViT-B/16. ``tiny`` is a 2-layer model for tests.
VIT_PRESETS: dict[str, ViTPreset] = {
    "32": ViTPreset(4, 12, 12, 384, 1536),
    "64": ViTPreset(8, 12, 12, 384, 1536),
    "224": ViTPreset(16, 12, 12, 768, 3072),
    "tiny": ViTPreset(4, 2, 2, 32, 64),
}


class ViTEncoder(nn.Module):
    """torchvision ``VisionTransformer`` returning the CLS-token feature (``heads = Identity``)."""

    def __init__(self, image_size: int, in_channels: int = 3, preset: str | None = None) -> None:
        super().__init__()
        key = preset or str(image_size)
        if key not in VIT_PRESETS:
            raise ConfigError(f"config key 'model.vit_preset': must be one of {sorted(VIT_PRESETS)}, got {key!r}"
                              + ("" if preset else " (the default: the image size)"))
        p = VIT_PRESETS[key]
        if image_size % p.patch_size:
            raise ConfigError(f"config key 'data.image_size': image size {image_size} is not divisible by ViT patch size "
                              f"{p.patch_size} (model.vit_preset {key!r})")
        net = torchvision.models.VisionTransformer(
            image_size=image_size, patch_size=p.patch_size, num_layers=p.num_layers,
            num_heads=p.num_heads, hidden_dim=p.hidden_dim, mlp_dim=p.mlp_dim)
        if in_channels != 3:
            net.conv_proj = nn.Conv2d(in_channels, p.hidden_dim, p.patch_size, stride=p.patch_size)
        net.heads = nn.Identity()
        self.net = net
        self.feature_dim = p.hidden_dim

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"layer{i}", m) for i, m in enumerate(self.net.encoder.layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
