"""Models: ``build_model(model_cfg, channels, image_size) → ContrastiveNet`` with ``forward(x) → (h, z)``."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .encoders import VIT_PRESETS, ResNetEncoder, SmallCNN, ViTEncoder
from .perturb import perturb_weights, perturbation
from .projector import LinearHead, Projector

ENCODERS = ("small_cnn", "resnet18", "resnet50", "vit")


class ContrastiveNet(nn.Module):
    """Encoder ``f`` plus projector ``g``: ``forward(x [N,C,H,W]) → (h = f(x) [N, F], z = g(h) [N, D])``.

    ``z`` is the un-normalised projection; losses normalise it.
    """

    def __init__(self, encoder: nn.Module, projector: Projector) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Ordered encoder blocks then the projector, for layer-wise CKA."""
        return [(f"encoder.{n}", m) for n, m in self.encoder.blocks()] + [("projector", self.projector)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.projector(h)


def build_encoder(cfg: Mapping[str, Any], channels: int, image_size: int) -> nn.Module:
    """Build the encoder named by ``cfg["encoder"]`` (one of :data:`ENCODERS`)."""
    name = cfg["encoder"]
    norm = cfg.get("norm", "batch")
    if name == "small_cnn":
        return SmallCNN(channels, width=int(cfg.get("width") or 16), norm=norm)
    if name in ("resnet18", "resnet50"):
        return ResNetEncoder(name, channels, cifar_stem=bool(cfg.get("cifar_stem", False)),
                             width=int(cfg.get("width") or 1), norm=norm)
    if name == "vit":
        return ViTEncoder(image_size, channels, preset=cfg.get("vit_preset"))
    raise ValueError(f"model.encoder must be one of {ENCODERS}, got {name!r}")


def build_model(cfg: Mapping[str, Any], channels: int, image_size: int) -> ContrastiveNet:
    """Build a :class:`ContrastiveNet` from a model config mapping.

    Keys: ``encoder``, ``width``, ``norm``, ``cifar_stem``, ``vit_preset``, ``projector_hidden``,
    ``projector_out``, ``projector_norm``. Initialisation uses the global torch RNG: callers that
    need determinism wrap this in :func:`repalign.models.seeded_init`.
    """
    enc = build_encoder(cfg, channels, image_size)
    proj = Projector(enc.feature_dim, int(cfg["projector_hidden"]), int(cfg["projector_out"]),
                     norm=cfg.get("projector_norm", "batch"))
    return ContrastiveNet(enc, proj)


class seeded_init:
    """Context manager: fork the CPU RNG and seed it, so model construction is a function of ``seed``."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._ctx = torch.random.fork_rng(devices=[])

    def __enter__(self) -> None:
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


__all__ = ["ContrastiveNet", "Projector", "LinearHead", "SmallCNN", "ResNetEncoder", "ViTEncoder",
           "VIT_PRESETS", "ENCODERS", "build_model", "build_encoder", "seeded_init",
           "perturb_weights", "perturbation"]
