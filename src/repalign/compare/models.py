"""Model specs of ``repalign compare A B``: a run and arm, an export folder, or a hub model with weights.

* ``RUN_DIR:ARM`` or ``RUN_DIR:ARM@EPOCH`` — the arm's encoder from ``last.pt`` or ``epoch_XXXX.pt``
  (:func:`repalign.export.load_encoder`);
* an export folder (``repalign export``) holding one ``*.json`` of format ``repalign-encoder-v1``, or
  that ``.json`` file itself;
* ``torchvision:NAME`` (``torchvision.models.NAME(weights=None)``, the first conv rebuilt for the data's
  channels when they differ) or ``timm:NAME`` (``pretrained=False``), with ``--weights-a/-b FILE``: a
  state_dict ``.pt`` loaded with ``weights_only=True`` or a ``.safetensors`` file (needs the
  ``safetensors`` package). Nothing is downloaded; without a weights file the model keeps its
  random initialisation, which the CLI states.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from repalign.errors import UserError

__all__ = ["load_model", "load_state_dict_file"]

_HEADS = ("fc", "classifier", "head", "heads")


def load_state_dict_file(path: str | Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """A state_dict from ``.pt``/``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{flag}: file {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UserError(f"{flag}: {p.name} is a .safetensors file; install `pip install safetensors`") from None
        return dict(load_file(str(p)))
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise UserError(f"{flag}: cannot load {str(p)!r} as a state_dict with weights_only=True: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{flag}: {str(p)!r} does not hold a state_dict (a dict of tensors)")
    return sd


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], flag: str, path: str) -> nn.Module:
    missing, unexpected = _diff(model, sd)
    if missing and not unexpected and all(k.split(".")[0] in _HEADS for k in missing):
        head = missing[0].split(".")[0]
        setattr(model, head, nn.Identity())  # an encoder saved without its classifier
        missing, unexpected = _diff(model, sd)
    if missing or unexpected:
        raise UserError(f"{flag}: {path!r} does not fit the model: missing {missing[:4]}{'…' if len(missing) > 4 else ''}, "
                        f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''}")
    own = model.state_dict()
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise UserError(f"{flag}: {path!r}: shape mismatch for {bad[0]}: file {tuple(sd[bad[0]].shape)}, "
                        f"model {tuple(own[bad[0]].shape)}")
    model.load_state_dict(sd)
    return model


def _diff(model: nn.Module, sd: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(sd)), sorted(set(sd) - own)


def _hub(spec: str, channels: int, weights: str | None, flag: str) -> nn.Module:
    kind, name = spec.split(":", 1)
    if kind == "torchvision":
        import torchvision

        fn = getattr(torchvision.models, name, None)
        if not callable(fn) or name.startswith("_"):
            raise UserError(f"torchvision.models has no model {name!r}")
        model = fn(weights=None)
        conv1 = getattr(model, "conv1", None)
        if isinstance(conv1, nn.Conv2d) and conv1.in_channels != channels:
            model.conv1 = nn.Conv2d(channels, conv1.out_channels, conv1.kernel_size, stride=conv1.stride,
                                    padding=conv1.padding, bias=conv1.bias is not None)
    else:
        try:
            import timm
        except ImportError:
            raise UserError(f"{spec}: install the extra `pip install repalign[timm]` for timm: models") from None
        model = timm.create_model(name, pretrained=False, in_chans=channels)
    if weights is not None:
        _load_into(model, load_state_dict_file(weights, flag), flag, weights)
    return model


def _export(path: Path, trust_code: bool | None = None) -> nn.Module:
    from repalign.export import FORMAT, _build
    from repalign.plugins import guard, require_trust

    if path.is_dir():
        descs = [p for p in sorted(path.glob("*.json")) if _is_export(p, FORMAT)]
        if len(descs) != 1:
            raise UserError(f"{str(path)!r}: expected one export description (*.json of {FORMAT}), found "
                            f"{len(descs)}{': ' + ', '.join(p.name for p in descs) if descs else ''}; pass the .json")
        path = descs[0]
    desc = json.loads(path.read_text())
    # an export received from someone else: its JSON may name a plug-in encoder, rebuilt only with consent
    require_trust([("model.encoder", desc["model"].get("encoder"))], trust_code, "repalign compare", path)
    with guard(path.parent, trust_code, "repalign compare"):
        enc = _build(desc["model"], int(desc["channels"]), int(desc["image_size"]))
    sd = load_state_dict_file(path.parent / desc["weights"], str(path))
    extra = desc.get("prefix", "net.encoder.")[len("net.encoder."):]
    return _load_into(enc, {extra + k: v for k, v in sd.items()}, str(path), str(path.parent / desc["weights"])).eval()


def _is_export(p: Path, fmt: str) -> bool:
    try:
        return json.loads(p.read_text()).get("format") == fmt
    except Exception:  # noqa: BLE001
        return False


def load_model(spec: str, channels: int, weights: str | None = None, flag: str = "--weights-a",
               trust_code: bool | None = None) -> tuple[nn.Module, str]:
    """(model, one-line description) of a CLI model spec (module docstring). A plug-in encoder named by a
    run's config.yaml or an export's JSON is rebuilt only with ``trust_code`` (``--trust-code``) or
    ``REPALIGN_TRUST_CODE=1`` (:mod:`repalign.plugins`); else one line names the key and the flag."""
    if spec.startswith(("torchvision:", "timm:")):
        m = _hub(spec, channels, weights, flag)
        return m, f"{spec} ({'weights ' + str(weights) if weights else 'random initialisation: no weights given'})"
    if weights is not None:
        raise UserError(f"{flag}: weights files go with torchvision:/timm: models, not with {spec!r}")
    p = Path(spec)
    if p.suffix == ".json" or (p.is_dir() and not (p / "config.yaml").is_file()):
        if not p.exists():
            raise UserError(f"model {spec!r}: no such export folder or file")
        return _export(p, trust_code), f"export {spec}"
    if ":" in spec:
        run, arm = spec.rsplit(":", 1)
        epoch = None
        if "@" in arm:
            arm, ep = arm.split("@", 1)
            if not ep.isdigit():
                raise UserError(f"model {spec!r}: the epoch after @ must be an integer, got {ep!r}")
            epoch = int(ep)
        if not (Path(run) / "config.yaml").is_file():
            raise UserError(f"model {spec!r}: {run!r} is not a run directory (no config.yaml)")
        from repalign.export import load_encoder

        return load_encoder(run, arm, epoch, trust_code=trust_code), f"run {run}, arm {arm}" + (f", epoch {epoch}" if epoch is not None else ", last checkpoint")
    raise UserError(f"model {spec!r}: expected RUN_DIR:ARM[@EPOCH], an export folder, torchvision:NAME or timm:NAME")
