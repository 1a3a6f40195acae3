"""Taking a trained encoder out of a run: ``repalign export RUN_DIR --arm NAME`` and :func:`load_encoder`.

The export holds only the arm's encoder ``f`` (no projector, head, optimiser or other arms) with
plain key names — the prefix ``net.encoder.`` (and the adapter's ``net.``) removed — so for
``resnet18``/``resnet50`` and ``torchvision:<name>`` encoders the file loads into the torchvision
model with ``fc = Identity`` (missing keys: only ``fc.weight``/``fc.bias`` under ``strict=False``);
with ``model.cifar_stem`` first build the model with ``conv1 = Conv2d(C, 64, 3, 1, 1, bias=False)`` and
``maxpool = Identity()``. Next to it a JSON file describes the architecture::

    {"format": "repalign-encoder-v1", "arm", "objective", "epoch", "step", "model": {...},
     "channels", "image_size", "feature_dim", "prefix": "net.encoder.net.", "torchvision": "resnet18" | null,
     "cifar_stem": bool, "weights": "<file>"}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from repalign.errors import UserError
from repalign.results import read_meta

FORMAT = "repalign-encoder-v1"


def _arm_cfg(run_dir: Path, arm: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    from repalign.config import load_config, resolve_arms

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    arms = {a.name: a for a in resolve_arms(cfg)}
    if arm not in arms:
        raise UserError(f"--arm: no arm {arm!r} in {str(run_dir)!r} (arms: {', '.join(arms)})")
    meta = read_meta(run_dir)
    return cfg, arms[arm], meta


def _module_state(run_dir: Path, arm: str, epoch: int | None) -> tuple[Mapping[str, torch.Tensor], Any, int]:
    from repalign.training.checkpoint import load_checkpoint, load_latest

    ck = run_dir / "checkpoints"
    if epoch is None:
        state, _path, _warn = load_latest(ck / "last.pt")
        return state["arms"][arm]["module"], state["epoch"], state["step"]
    path = ck / f"epoch_{epoch:04d}.pt"
    if not path.is_file():
        have = sorted(p.stem.split("_")[1].lstrip("0") or "0" for p in ck.glob("epoch_*.pt"))
        raise UserError(f"--epoch: no checkpoint for epoch {epoch} in {str(ck)!r} (epochs: {', '.join(have) or 'none'})")
    state = load_checkpoint(path)
    return state["arms"][arm], state["epoch"], state["step"]


def encoder_state(module_state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder's tensors of an arm's module state dict with plain names, and the prefix removed."""
    prefix = "net.encoder."
    enc = {k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)}
    if enc and all(k.startswith("net.") for k in enc):  # torchvision / plug-in wrapper: self.net
        enc = {k[4:]: v for k, v in enc.items()}
        prefix += "net."
    return enc, prefix


def export_encoder(run_dir: str | Path, arm: str, epoch: int | None = None, fmt: str = "pt",
                   out: str | Path | None = None) -> Path:
    """Write the arm's encoder weights (``.pt`` or ``.safetensors``) and ``<name>.json``; return the weights path."""
    run_dir = Path(run_dir)
    if fmt not in ("pt", "safetensors"):
        raise UserError(f"--format: must be pt or safetensors, got {fmt!r}")
    cfg, a, meta = _arm_cfg(run_dir, arm)
    module_state, ep, step = _module_state(run_dir, arm, epoch)
    enc, prefix = encoder_state(module_state)
    mcfg = a.model_cfg(cfg["model"])
    name = mcfg["encoder"]
    tv = name.split(":", 1)[1] if name.startswith("torchvision:") else (name if name in ("resnet18", "resnet50") else None)
    base = Path(out) if out is not None else run_dir / "export" / (f"{arm}_epoch{ep}" if epoch is not None else arm)
    base.parent.mkdir(parents=True, exist_ok=True)
    weights = base.with_suffix(f".{fmt}")
    enc = {k: v.detach().contiguous().clone() for k, v in enc.items()}
    if fmt == "safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise UserError("--format safetensors: install the extra `pip install repalign[safetensors]`") from None
        save_file(enc, str(weights))
    else:
        torch.save(enc, weights)
    feat = None
    desc = {"format": FORMAT, "run_dir": str(run_dir.resolve()), "arm": arm,
            "objective": (meta.get("arms", {}).get(arm, {}) or {}).get("objective", a.objective),
            "epoch": ep, "step": step, "model": mcfg, "channels": meta.get("channels"),
            "image_size": meta.get("image_size"), "feature_dim": feat, "prefix": prefix, "torchvision": tv,
            "cifar_stem": bool(mcfg.get("cifar_stem")), "weights": weights.name}
    if desc["channels"] is not None:
        desc["feature_dim"] = int(_build(mcfg, desc["channels"], desc["image_size"]).feature_dim)
    base.with_suffix(".json").write_text(json.dumps(desc, indent=1, default=str))
    return weights


def _build(mcfg: Mapping[str, Any], channels: int, image_size: int) -> nn.Module:
    from repalign.models import build_encoder, seeded_init

    with seeded_init(0):
        return build_encoder(mcfg, channels, image_size)


def load_encoder(run_dir: str | Path, arm: str, epoch: int | None = None) -> nn.Module:
    """The trained encoder ``f`` of ``arm`` (images ``[N, C, H, W]`` → features ``[N, F]``), in eval mode,
    from ``last.pt`` (``epoch=None``) or ``epoch_XXXX.pt``."""
    run_dir = Path(run_dir)
    cfg, a, meta = _arm_cfg(run_dir, arm)
    module_state, _ep, _step = _module_state(run_dir, arm, epoch)
    if "channels" not in meta:
        raise UserError(f"{str(run_dir)!r}: meta.json lacks channels/image_size; cannot rebuild the encoder")
    enc = _build(a.model_cfg(cfg["model"]), meta["channels"], meta["image_size"])
    prefix = "net.encoder."
    enc.load_state_dict({k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)})
    return enc.eval()


__all__ = ["export_encoder", "load_encoder", "encoder_state", "FORMAT"]
