"""The objective registry: the one vocabulary of training objectives that config, trainer, losses and
report read.

An :class:`Objective` says what an arm's loss needs and computes it::

    loss(z, labels, temperature, **options) -> scalar tensor

with ``z: [K, B, d]`` the K views of B samples (the projector output, not normalised: normalise
inside if the loss wants it), ``labels: [B]`` int64 (``None`` is never passed; objectives that do
not use labels ignore them), ``temperature: float`` (the arm's ``loss.temperature``) and
``options`` the arm's ``options:`` mapping (``loss.options``). An objective with
``needs_head=True`` gets a linear classifier on the normalised projection and receives its
``logits: [K, B, C]`` in place of ``z``.

``arms.X.objective`` accepts a registered name (or alias) or an import reference
``package.module:name`` / ``path/to/file.py:name`` naming an :class:`Objective` or a plain function
``(z, labels, temperature) → loss`` (treated as: needs labels, no head, no loss-gap row). A new
built-in objective is one :func:`register_objective` call in this file.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from repalign.errors import ConfigError
from repalign.plugins import is_reference, load_reference


@dataclass(frozen=True)
class Objective:
    """A training objective.

    ``name``: what meta.json, metrics rows and reports call it. ``loss``: see the module docstring.
    ``needs_labels``: uses class labels (supervised). ``needs_head``: trained through a linear head
    (gets logits). ``loss_gap``: the per-batch DCL − NSCL row (``kind: lossgap``) is logged for arms
    of this objective. ``kernel``: for the built-in contrastive losses, the name of the kernel in
    :mod:`repalign.losses.functional` (the trainer then gathers negatives across ranks under DDP;
    a user loss sees the local batch). ``reference``: the import reference it was loaded from.
    """

    name: str
    loss: Callable[..., Any]
    needs_labels: bool = True
    needs_head: bool = False
    loss_gap: bool = False
    kernel: str | None = None
    description: str = ""
    reference: str | None = None


#: registered name → objective; aliases map to the same object.
REGISTRY: dict[str, Objective] = {}
_BY_REFERENCE: dict[str, Objective] = {}


def register_objective(obj: Objective, aliases: tuple[str, ...] = (), replace_existing: bool = False) -> Objective:
    """Register ``obj`` under ``obj.name`` (and ``aliases``); return it."""
    if not isinstance(obj, Objective):
        raise TypeError(f"register_objective expects an Objective, got {type(obj).__name__}")
    for n in (obj.name, *aliases):
        if n in REGISTRY and not replace_existing and REGISTRY[n] is not obj:
            raise ValueError(f"objective {n!r} already registered")
        REGISTRY[n] = obj
    return obj


def objective_names() -> tuple[str, ...]:
    """Registered names and aliases, in registration order."""
    return tuple(REGISTRY)


def _kernel_loss(kernel: str) -> Callable[..., Any]:
    def loss(z: Any, labels: Any, temperature: float, include_positive: bool = False, **_: Any) -> Any:
        from repalign.losses.functional import contrastive_loss

        return contrastive_loss(kernel, z, labels, temperature, include_positive=include_positive)

    loss.__name__ = f"{kernel}_loss"
    return loss


def _ce(logits: Any, labels: Any, temperature: float, **_: Any) -> Any:
    from repalign.losses.functional import ce_loss

    return ce_loss(logits, labels)


register_objective(Objective("cl", _kernel_loss("dcl"), needs_labels=False, loss_gap=True, kernel="dcl",
                             description="decoupled contrastive loss (positive out of the denominator)"),
                   aliases=("dcl",))
register_objective(Objective("ntxent", _kernel_loss("ntxent"), needs_labels=False, loss_gap=True, kernel="ntxent",
                             description="SimCLR NT-Xent"))
register_objective(Objective("nscl", _kernel_loss("nscl"), kernel="nscl",
                             description="negatives-only supervised contrastive (same-class samples out of the denominator)"))
register_objective(Objective("scl", _kernel_loss("supcon"), kernel="supcon", description="SupCon"),
                   aliases=("supcon",))
register_objective(Objective("ce", _ce, needs_head=True, description="cross-entropy on a linear head"))


def _nscl_alpha(z: Any, labels: Any, temperature: float, alpha: Any = None, **_: Any) -> Any:
    from repalign.losses.functional import nscl_alpha_loss

    if alpha is None:
        raise ConfigError("objective 'nscl_alpha': loss.options.alpha is required (a number in [0, 1])")
    return nscl_alpha_loss(z, labels, temperature, alpha)


register_objective(Objective("nscl_alpha", _nscl_alpha, kernel="nscl_alpha",
                             description="α-family: same-class negatives weighted 1 − α (α=0: cl, α=1: nscl); "
                                         "loss.options.alpha"))


def kernels() -> dict[str, str]:
    """Built-in names and aliases → loss kernel of :mod:`repalign.losses.functional` (e.g. ``"cl" → "dcl"``)."""
    return {n: o.kernel for n, o in REGISTRY.items() if o.kernel}


def _from_object(obj: Any, ref: str, key: str) -> Objective:
    if isinstance(obj, Objective):
        return replace(obj, reference=ref)
    if callable(obj):
        try:
            params = list(inspect.signature(obj).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if params and len(positional) < 3 and not any(p.kind == p.VAR_POSITIONAL for p in params):
            raise ConfigError(f"config key {key!r}: {ref!r} must take (z, labels, temperature), "
                              f"takes ({', '.join(p.name for p in params)})")
        name = getattr(obj, "__name__", ref.rsplit(":", 1)[-1])
        return Objective(name, obj, needs_labels=True, needs_head=False, loss_gap=False, reference=ref)
    raise ConfigError(f"config key {key!r}: {ref!r} is a {type(obj).__name__}, not an Objective or a loss function")


def _probe(obj: Objective, ref: str, key: str) -> None:
    """Call the loss once on a seeded probe batch ``z [2, 4, 8]`` (two classes): a scalar finite tensor
    that depends on ``z`` is required."""
    import torch

    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 8, generator=g, requires_grad=not obj.needs_head)
    x = z if not obj.needs_head else torch.randn(2, 4, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    try:
        out = obj.loss(x, labels, 0.5)
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported on one line
        raise ConfigError(f"config key {key!r}: {ref!r} failed on a probe batch z [2, 4, 8]: "
                          f"{type(e).__name__}: {' '.join(str(e).split())}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 0:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"config key {key!r}: {ref!r} must return a scalar loss tensor, got {shape}")
    if not torch.isfinite(out) or not out.requires_grad:
        raise ConfigError(f"config key {key!r}: {ref!r} returned a non-finite loss or one without a gradient "
                          f"on a probe batch")


def get_objective(name: Any, key: str = "objective") -> Objective:
    """The :class:`Objective` for a registered name/alias or an import reference; one-line
    :class:`~repalign.config.ConfigError` naming ``key`` otherwise (unknown name, not importable,
    wrong signature, not a scalar loss on a probe batch).

    For a reference this imports the plug-in and calls it once on a probe batch: only the trainer (and
    the commands that rebuild a run, under :func:`repalign.plugins.guard`) call it — config validation,
    reports, summaries and verdicts use names (:func:`repalign.config.resolve_arms`, ``meta.json``)."""
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    if isinstance(name, str) and is_reference(name):
        if name not in _BY_REFERENCE:
            obj = _from_object(load_reference(name, key), name, key)
            _probe(obj, name, key)
            _BY_REFERENCE[name] = obj
        return _BY_REFERENCE[name]
    raise ConfigError(f"config key {key!r}: must be one of {', '.join(REGISTRY)} or an import reference "
                      f"'package.module:name' / 'path/to/file.py:name', got {name!r}")


def check_objectives(cfg: Mapping[str, Any]) -> None:
    """Import and probe every arm's objective of a resolved config (:func:`get_objective`), as the trainer
    will: for callers that train a config the user wrote (a sweep validates all its points before any
    runs). Never called on a run directory's config by commands that only read results."""
    from repalign.config import resolve_arms  # at call time: this module imports no config (issue 17)

    for a in resolve_arms(cfg):
        get_objective(a.objective, f"arms.{a.name}.objective")


def make_loss(obj: Objective, settings: Mapping[str, Any]) -> Callable[[Any, Any], Any]:
    """The arm's loss as ``fn(z_or_logits, labels) → scalar``: built-in kernels as
    :class:`~repalign.losses.ContrastiveLoss` (cross-rank gather), others as a closure over the arm's
    temperature and ``loss.options``."""
    tau = settings["loss.temperature"]
    if obj.kernel is not None:
        from repalign.losses import ContrastiveLoss

        if obj.kernel == "nscl_alpha":  # the α-family: its weight from loss.options, gathered like the others
            alpha = dict(settings.get("loss.options") or {}).get("alpha")
            if alpha is None:
                raise ConfigError("objective 'nscl_alpha': loss.options.alpha is required (a number in [0, 1])")
            return ContrastiveLoss("nscl_alpha", tau, alpha=alpha)
        return ContrastiveLoss(obj.kernel, tau, include_positive=settings["loss.include_positive"])
    options = dict(settings.get("loss.options") or {})
    fn = obj.loss
    return lambda x, labels: fn(x, labels, tau, **options)


__all__ = ["Objective", "REGISTRY", "register_objective", "objective_names", "get_objective", "check_objectives",
           "make_loss", "kernels"]
