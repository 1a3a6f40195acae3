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


class ExternalEncoder(nn.Module):
    """A plug-in encoder ``net`` (images ``[N, C, H, W]`` → features ``[N, F]``) with ``feature_dim``
    inferred on a probe batch and ``blocks()`` = its top-level children (for layer-wise CKA).

    Its parameters live under ``encoder.net.`` in a :class:`ContrastiveNet`; export strips that prefix."""

    def __init__(self, net: nn.Module, feature_dim: int, reference: str) -> None:
        super().__init__()
        self.net = net
        self.feature_dim = int(feature_dim)
        self.reference = reference

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"net.{n}", m) for n, m in self.net.named_children()] or [("net", self.net)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _torchvision_encoder(name: str, channels: int, image_size: int, cifar_stem: bool = False,
                         **options: Any) -> nn.Module:
    """``torchvision.models.<name>(weights=None, **options)`` with its classifier replaced by
    ``Identity``. ``cifar_stem`` (ResNets): 3×3 stride-1 first conv, no max-pool; ``channels`` ≠ 3
    rebuilds the first conv with the same kernel, stride and padding."""
    import torchvision

    if not hasattr(torchvision.models, name) or not callable(getattr(torchvision.models, name)):
        raise ValueError(f"torchvision.models has no model {name!r}")
    net = getattr(torchvision.models, name)(weights=None, **options)
    for head in ("fc", "classifier", "heads", "head"):
        if isinstance(getattr(net, head, None), nn.Module):
            setattr(net, head, nn.Identity())
            break
    conv1 = getattr(net, "conv1", None)
    if isinstance(conv1, nn.Conv2d):
        if cifar_stem:
            net.conv1 = nn.Conv2d(channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
            if hasattr(net, "maxpool"):
                net.maxpool = nn.Identity()
        elif channels != conv1.in_channels:
            net.conv1 = nn.Conv2d(channels, conv1.out_channels, conv1.kernel_size, stride=conv1.stride,
                                  padding=conv1.padding, bias=conv1.bias is not None)
    elif cifar_stem:
        raise ValueError(f"model.cifar_stem: torchvision model {name!r} has no conv1 to replace")
    return net


def _timm_encoder(name: str, channels: int, image_size: int, **options: Any) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ValueError("install the extra `pip install repalign[timm]` for timm:<name> encoders") from e
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=channels, **options)


def encoder_factory(ref: str, key: str = "model.encoder") -> Any:
    """The callable ``(channels, image_size, **options) → nn.Module`` named by an encoder reference."""
    from functools import partial

    from repalign.plugins import adapter_of, load_reference

    kind = adapter_of(ref)
    if kind == "torchvision":
        return partial(_torchvision_encoder, ref.split(":", 1)[1])
    if kind == "timm":
        return partial(_timm_encoder, ref.split(":", 1)[1])
    fn = load_reference(ref, key)
    if not callable(fn):
        from repalign.errors import ConfigError

        raise ConfigError(f"config key {key!r}: {ref!r} is a {type(fn).__name__}, not a callable "
                          "(channels, image_size, **options) → nn.Module")
    return fn


def build_external_encoder(ref: str, channels: int, image_size: int, options: Mapping[str, Any] | None = None,
                           cifar_stem: bool = False, key: str = "model.encoder") -> ExternalEncoder:
    """Build a plug-in encoder and check it on a probe batch of zeros ``[2, channels, S, S]`` (eval
    mode, no random numbers drawn): the output must be ``[2, F]``. Errors are one line naming ``key``."""
    from repalign.errors import ConfigError
    from repalign.plugins import adapter_of

    factory = encoder_factory(ref, key)
    kw = dict(options or {})
    if cifar_stem and adapter_of(ref) == "torchvision":
        kw["cifar_stem"] = True
    try:
        net = factory(channels, image_size, **kw)
    except Exception as e:  # noqa: BLE001 - user code / adapters: one line
        raise ConfigError(f"config key {key!r}: building {ref!r} failed: {type(e).__name__}: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"config key {key!r}: {ref!r} returned a {type(net).__name__}, not an nn.Module")
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, channels, image_size, image_size))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"config key {key!r}: {ref!r} failed on a probe batch [2, {channels}, {image_size}, "
                          f"{image_size}]: {type(e).__name__}: {' '.join(str(e).split())}") from None
    finally:
        net.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"config key {key!r}: {ref!r} must map images [N, C, H, W] to features [N, F], "
                          f"gave {shape} for a probe batch [2, {channels}, {image_size}, {image_size}]")
    return ExternalEncoder(net, out.shape[1], ref)


def build_encoder(cfg: Mapping[str, Any], channels: int, image_size: int) -> nn.Module:
    """Build the encoder named by ``cfg["encoder"]`` (one of :data:`ENCODERS`, an adapter
    ``torchvision:<name>``/``timm:<name>`` or an import reference; see :mod:`repalign.plugins`)."""
    from repalign.plugins import is_reference

    name = cfg["encoder"]
    if is_reference(name):
        return build_external_encoder(name, channels, image_size, cfg.get("options") or {},
                                      cifar_stem=bool(cfg.get("cifar_stem", False)))
    norm = cfg.get("norm", "batch")
    if name == "small_cnn":
        return SmallCNN(channels, width=int(cfg.get("width") or 16), norm=norm)
    if name in ("resnet18", "resnet50"):
        return ResNetEncoder(name, channels, cifar_stem=bool(cfg.get("cifar_stem", False)),
                             width=int(cfg.get("width") or 1), norm=norm)
    if name == "vit":
        return ViTEncoder(image_size, channels, preset=cfg.get("vit_preset"))
    from repalign.errors import ConfigError

    raise ConfigError(f"config key 'model.encoder': must be one of {ENCODERS}, got {name!r}")


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
           "VIT_PRESETS", "ENCODERS", "build_model", "build_encoder", "seeded_init", "ExternalEncoder",
           "build_external_encoder", "encoder_factory",
           "perturb_weights", "perturbation"]
