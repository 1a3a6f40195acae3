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
    """The run's config, the arm and meta.json — by name: no objective, encoder or source is imported, and
    plug-in files need not exist (only the encoder may be rebuilt, with consent: :func:`_check_trust`)."""
    from repalign.config import load_config, resolve_arms

    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", check_files=False)
    arms = {a.name: a for a in resolve_arms(cfg)}
    if arm not in arms:
        raise UserError(f"--arm: no arm {arm!r} in {str(run_dir)!r} (arms: {', '.join(arms)})")
    meta = read_meta(run_dir)
    return cfg, arms[arm], meta


def _check_trust(run_dir: Path, mcfg: Mapping[str, Any], trust_code: bool | None, command: str) -> None:
    """A plug-in encoder (file or module reference) is rebuilt only with consent (issue 17): one line naming
    ``model.encoder`` and ``--trust-code`` otherwise. Built-in encoders and adapters need none."""
    from repalign.plugins import require_trust

    require_trust([("model.encoder", mcfg["encoder"])], trust_code, command, run_dir)


def _module_state(run_dir: Path, arm: str, epoch: int | None) -> tuple[Mapping[str, torch.Tensor], Any, int]:
    import sys

    from repalign.training.checkpoint import fallback_warning, load_checkpoint, load_latest

    ck = run_dir / "checkpoints"
    if epoch is None:
        state, used, problems = load_latest(ck / "last.pt")
        msg = fallback_warning(problems, used, state.get("step") if isinstance(state, Mapping) else None)
        if msg:  # never silently the older state (issue 17): the file and the step used
            print(msg, file=sys.stderr)
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
                   out: str | Path | None = None, trust_code: bool | None = None, encoder: Any = None) -> Path:
    """Write the arm's encoder weights (``.pt`` or ``.safetensors``) and ``<name>.json``; return the weights path.

    Imports none of the run's objectives or sources; a plug-in encoder is rebuilt (for its feature
    dimension) only with ``trust_code=True`` or ``REPALIGN_TRUST_CODE=1`` (:mod:`repalign.plugins`).
    Writing inside the run directory (the default ``RUN_DIR/export/``) takes the run directory's lock
    (:class:`~repalign.training.lock.RunLock`: one writer; a run being trained is refused, exit 4);
    ``out`` elsewhere only reads the run, which may then be read-only."""
    run_dir = Path(run_dir)
    if fmt not in ("pt", "safetensors"):
        raise UserError(f"--format: must be pt or safetensors, got {fmt!r}")
    cfg, a, meta = _arm_cfg(run_dir, arm)
    mcfg = with_objects(run_dir, arm, a.model_cfg(cfg["model"]), encoder, "repalign.export_encoder")
    _check_trust(run_dir, mcfg, trust_code, "repalign export")
    inside = out is None or _is_inside(Path(out), run_dir)
    if not inside:
        return _export(run_dir, arm, epoch, fmt, out, trust_code, cfg, a, meta, mcfg)
    from repalign.training.lock import RunLock

    with RunLock(run_dir):
        return _export(run_dir, arm, epoch, fmt, out, trust_code, cfg, a, meta, mcfg)


def _is_inside(path: Path, folder: Path) -> bool:
    import os

    p, f = os.path.realpath(path.expanduser()), os.path.realpath(folder)
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def _export(run_dir: Path, arm: str, epoch: int | None, fmt: str, out: str | Path | None, trust_code: bool | None,
            cfg: Mapping[str, Any], a: Any, meta: Mapping[str, Any], mcfg: dict[str, Any]) -> Path:
    from repalign.plugins import guard

    module_state, ep, step = _module_state(run_dir, arm, epoch)
    enc, prefix = encoder_state(module_state)
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
        with guard(run_dir, trust_code, "repalign export"):
            desc["feature_dim"] = int(_build(mcfg, desc["channels"], desc["image_size"]).feature_dim)
    base.with_suffix(".json").write_text(json.dumps(desc, indent=1, default=str))
    return weights


def _build(mcfg: Mapping[str, Any], channels: int, image_size: int) -> nn.Module:
    from repalign.models import build_encoder, seeded_init

    with seeded_init(0):
        return build_encoder(mcfg, channels, image_size)


def with_objects(run_dir: Path, arm: str, mcfg: dict[str, Any], encoder: Any, command: str) -> dict[str, Any]:
    """The arm's model config with an in-memory encoder resolved (issue 20). ``model.encoder`` stored as
    ``python:<name>`` (an object given to :func:`repalign.train` that has no import reference) lives only
    in the process that trained: ``encoder`` (the same factory/class, or a reference string) is taken in
    its place; without it one line names the arm, the key and what to pass. Other encoders are returned
    unchanged (``encoder`` then overrides only when given)."""
    from repalign import plugins

    ref = mcfg["encoder"]
    if encoder is not None:
        if isinstance(encoder, str):
            return {**mcfg, "encoder": encoder}
        if isinstance(ref, str) and ref.startswith("python:"):
            plugins.IN_PROCESS[ref] = encoder
            return mcfg
        return {**mcfg, "encoder": plugins.register_in_process(encoder, "encoder")}
    if isinstance(ref, str) and ref.startswith("python:") and ref not in plugins.IN_PROCESS:
        raise UserError(f"arm {arm!r} of {str(run_dir)!r}: model.encoder {ref!r} was an in-memory object of the "
                        f"process that trained it and has no import reference; pass it again ({command}(..., "
                        "encoder=<the factory>)) or define it in an importable module or file")
    return mcfg


def load_encoder(run_dir: str | Path, arm: str, epoch: int | None = None, trust_code: bool | None = None,
                 encoder: Any = None) -> nn.Module:
    """The trained encoder ``f`` of ``arm`` (images ``[N, C, H, W]`` → features ``[N, F]``), in eval mode,
    from ``last.pt`` (``epoch=None``; a fallback to ``last.prev.pt`` is warned about on stderr, naming the
    step) or ``epoch_XXXX.pt``. Imports none of the run's objectives; a plug-in encoder only with
    ``trust_code=True`` or ``REPALIGN_TRUST_CODE=1``. ``encoder``: the encoder factory of a run trained
    with an in-memory object (:func:`with_objects`)."""
    from repalign.plugins import guard

    run_dir = Path(run_dir)
    cfg, a, meta = _arm_cfg(run_dir, arm)
    mcfg = with_objects(run_dir, arm, a.model_cfg(cfg["model"]), encoder, "repalign.load_encoder")
    _check_trust(run_dir, mcfg, trust_code, "repalign.load_encoder")
    module_state, _ep, _step = _module_state(run_dir, arm, epoch)
    if "channels" not in meta:
        raise UserError(f"{str(run_dir)!r}: meta.json lacks channels/image_size; cannot rebuild the encoder")
    with guard(run_dir, trust_code, "repalign.load_encoder"):
        enc = _build(mcfg, meta["channels"], meta["image_size"])
    prefix = "net.encoder."
    enc.load_state_dict({k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)})
    return enc.eval()


__all__ = ["export_encoder", "load_encoder", "encoder_state", "with_objects", "FORMAT"]
