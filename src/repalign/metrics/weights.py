"""Weight-space distances and angles between two models (e.g. the CL and NSCL arms).

Parameter selection (``select_parameters``), applied identically to both models:

* ``nn.Module`` → its ``named_parameters()`` (buffers such as BN running stats are never used);
  ``Mapping[str, Tensor]`` (a ``state_dict``) → all floating-point entries except BN buffers
  (``running_mean``, ``running_var``, ``num_batches_tracked``).
* default rule: the name starts with ``prefix`` (default ``"encoder."``, i.e. the projector and
  any head are excluded; ``prefix=None``/``""`` keeps everything) and, unless ``include_bias``,
  the last name component does not end in ``bias`` (excludes conv/linear biases and BN β, keeps
  conv/linear weights and BN/LN γ). For a torchvision ResNet-50 encoder this is the 106 tensors
  (53 conv + 53 BN γ) the authors average over (paper-notes §3).
* ``include(name, tensor) -> bool`` replaces the default rule entirely.

Names selected in only one model, or whose shapes disagree (or that are missing / mis-shaped in
``init``), are skipped and listed in ``skipped`` with a reason in ``skip_reasons``.
All arithmetic is float64; model B's tensors are moved to A's device per tensor.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = ["weight_gap", "weight_angle", "select_parameters"]

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_F64 = torch.float64


def _named_tensors(model: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(model, nn.Module):
        return {k: v.detach() for k, v in model.named_parameters()}
    if isinstance(model, Mapping):
        out = {}
        for k, v in model.items():
            if not isinstance(k, str):
                raise ValueError(f"{what}: state_dict keys must be str, got {k!r}")
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"{what}: state_dict entry {k!r} is not a tensor ({type(v).__name__})")
            if k.rsplit(".", 1)[-1] in _BUFFERS or not v.is_floating_point():
                continue
            out[k] = v.detach()
        return out
    raise ValueError(f"{what} must be an nn.Module or a state_dict (Mapping[str, Tensor]), got {type(model).__name__}")


def select_parameters(model: Any, prefix: str | None = "encoder.", include_bias: bool = False,
                      include: Callable[[str, torch.Tensor], bool] | None = None,
                      what: str = "model") -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` selected by the rule in the module docstring (insertion order kept)."""
    if prefix is not None and not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str or None, got {prefix!r}")
    if include is not None and not callable(include):
        raise ValueError(f"include must be a callable (name, tensor) -> bool, got {include!r}")
    out = {}
    for k, v in _named_tensors(model, what).items():
        if include is not None:
            keep = bool(include(k, v))
        else:
            keep = (not prefix or k.startswith(prefix)) and (include_bias or not k.rsplit(".", 1)[-1].endswith("bias"))
        if keep:
            out[k] = v
    return out


def _angle_deg(sq_minus: float, sq_plus: float) -> float:
    """Angle between unit vectors u, v from ‖u − v‖² and ‖u + v‖² (stable near 0° and 180°)."""
    return math.degrees(2.0 * math.atan2(math.sqrt(max(sq_minus, 0.0)), math.sqrt(max(sq_plus, 0.0))))


def _vector_angle(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Angle (degrees) between the concatenations of the a's and of the b's; 0.0 if either is zero."""
    na = math.sqrt(sum(float((a * a).sum()) for a, _ in pairs))
    nb = math.sqrt(sum(float((b * b).sum()) for _, b in pairs))
    if na == 0 or nb == 0:
        return 0.0
    sm = sp = 0.0
    for a, b in pairs:
        u, v = a / na, b / nb
        sm += float(((u - v) ** 2).sum())
        sp += float(((u + v) ** 2).sum())
    return _angle_deg(sm, sp)


def weight_gap(model_a: Any, model_b: Any, init: Any = None, *, prefix: str | None = "encoder.",
               include_bias: bool = False,
               include: Callable[[str, torch.Tensor], bool] | None = None) -> dict[str, Any]:
    """Weight-space gap between two models (``nn.Module`` or ``state_dict``) over the selected
    tensors ``l`` (see module docstring)::

        r_l            = ‖W_a^l − W_b^l‖_F / (½(‖W_a^l‖_F + ‖W_b^l‖_F))     (0 if both are zero)
        mean, sum      = mean / sum of r_l over the layers (the authors' curve is the mean)
        rel_l2         = ‖θ_a − θ_b‖ / (½(‖θ_a‖ + ‖θ_b‖))                    (θ = all selected tensors)
        angle_deg      = ∠(θ_a, θ_b)
        displacement_angle_deg = ∠(θ_a − θ_0, θ_b − θ_0) with θ_0 from ``init`` (None without init)

    Angles are in degrees in [0, 180], computed as ``2·atan2(‖û − v̂‖, ‖û + v̂‖)`` (exactly 0 for
    identical vectors); an angle involving a zero vector (e.g. a model that has not moved from
    ``init``) is defined as 0.0. Also returns ``per_layer`` {name: r_l}, ``n_layers``,
    ``n_params``, ``skipped`` (names) and ``skip_reasons`` {name: reason}.
    Raises ``ValueError`` if no tensor is common to both models after selection.
    """
    pa = select_parameters(model_a, prefix, include_bias, include, "model_a")
    pb = select_parameters(model_b, prefix, include_bias, include, "model_b")
    p0 = _named_tensors(init, "init") if init is not None else None
    reasons: dict[str, str] = {}
    names = []
    for k, v in pa.items():
        if k not in pb:
            reasons[k] = "missing in model_b"
        elif tuple(pb[k].shape) != tuple(v.shape):
            reasons[k] = f"shape mismatch {tuple(v.shape)} vs {tuple(pb[k].shape)}"
        elif p0 is not None and k not in p0:
            reasons[k] = "missing in init"
        elif p0 is not None and tuple(p0[k].shape) != tuple(v.shape):
            reasons[k] = f"shape mismatch with init {tuple(v.shape)} vs {tuple(p0[k].shape)}"
        else:
            names.append(k)
    for k in pb:
        if k not in pa:
            reasons[k] = "missing in model_a"
    if not names:
        raise ValueError(f"weight_gap: no parameter tensor common to model_a and model_b after selection "
                         f"(prefix={prefix!r}, include_bias={include_bias}); skipped: {reasons or 'none selected'}")

    per_layer: dict[str, float] = {}
    pairs, disp = [], []
    d2 = a2 = b2 = 0.0
    n_params = 0
    for k in names:
        wa = pa[k].to(_F64)
        wb = pb[k].to(device=wa.device, dtype=_F64)
        dd = float(((wa - wb) ** 2).sum())
        na2, nb2 = float((wa * wa).sum()), float((wb * wb).sum())
        den = 0.5 * (math.sqrt(na2) + math.sqrt(nb2))
        per_layer[k] = math.sqrt(dd) / den if den > 0 else 0.0
        d2, a2, b2 = d2 + dd, a2 + na2, b2 + nb2
        n_params += wa.numel()
        pairs.append((wa, wb))
        if p0 is not None:
            w0 = p0[k].to(device=wa.device, dtype=_F64)
            disp.append((wa - w0, wb - w0))
    den = 0.5 * (math.sqrt(a2) + math.sqrt(b2))
    vals = list(per_layer.values())
    return {
        "mean": sum(vals) / len(vals), "sum": sum(vals), "n_layers": len(vals), "n_params": n_params,
        "rel_l2": math.sqrt(d2) / den if den > 0 else 0.0,
        "angle_deg": _vector_angle(pairs),
        "displacement_angle_deg": _vector_angle(disp) if p0 is not None else None,
        "per_layer": per_layer, "skipped": list(reasons), "skip_reasons": reasons,
    }


def weight_angle(model_a: Any, model_b: Any, init: Any = None, **selection: Any) -> float:
    """Weight-space angle in degrees (Fig 1 reading): ``∠(θ_a − θ_0, θ_b − θ_0)`` if ``init`` is given,
    else ``∠(θ_a, θ_b)``. ``selection``: ``prefix``, ``include_bias``, ``include`` as in
    :func:`weight_gap`."""
    g = weight_gap(model_a, model_b, init, **selection)
    return g["displacement_angle_deg"] if init is not None else g["angle_deg"]
