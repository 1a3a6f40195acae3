"""Theory overlays: the shape of the paper's main bound and the CKA lower bound.

Main bound (arXiv 2510.08852, Thm 1; paper-notes §2.2), up to unknown constants::

    ‖Σ^CL_T − Σ^NSCL_T‖_F ≲ e^{2/τ} / (τ C √B) · S_T · exp(S_T / (2 τ² B)),   S_T = Σ_{t<T} η_t

computed in log space (``e^{2/τ}`` is 4.9e8 at τ = 0.1 and ``exp(S_T/(2τ²B))`` overflows double
precision in realistic runs). Because the constants are unknown, the curve is only *normalised*
to the measured similarity gap at the first evaluation after epoch 0 and the *trend* is compared.

CKA lower bound (Cor. 1; paper-notes §2.3): for the centred similarity matrices ``a = HΣ_aH``, ``b = HΣ_bH``
with ``‖a − b‖_F ≤ ρ‖b‖_F``, ``cos(a, b) ≥ (1 − ρ)/(1 + ρ)``. So the bound is on the CKA *of the cosine
kernel* — ``CKA_cos = ⟨HΣ_aH, HΣ_bH⟩/(‖HΣ_aH‖‖HΣ_bH‖)`` = linear CKA of the unit-normalised rows =
``cos(repr_angle_deg)`` — with ``ρ = sim_gap_centred_rel = ‖H(Σ_a − Σ_b)H‖_F / ‖HΣ_bH‖_F``; it holds for any
two representations (a triangle inequality, no training assumption) and is a bound only when ρ < 1 (at
ρ ≥ 1 it is ≤ 0: vacuous). Issue 18: the overlay used to plot it with the *uncentred* relative gap
``sim_gap_rel = ‖Σ_a − Σ_b‖_F / ‖Σ_b‖_F`` against the linear CKA of the raw features h. ``‖Σ_b‖_F`` carries
the mean cosine similarity (all positive for ReLU features), so that ρ was many times too small and the
"bound" (0.94–0.96) sat above the measured raw-h CKA (0.85–0.93) — a different kernel, for which the
corollary says nothing. :func:`theory_rows` now returns ``rho`` (centred), ``cka_cos`` and the bound only
where ``ρ < 1`` (``bound_status``: ``bound`` / ``vacuous (rho >= 1)`` / ``rho not recorded``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

THEORY_NOTE = ("The bound's constants are unknown (the paper states it up to O(·)); the curve is "
               "normalised to the measured similarity gap at the first evaluation after epoch 0, so only "
               "the trend over training (and across C, τ, B) is compared, not the values.")


def log_bound_shape(S: np.ndarray | float, tau: float, num_classes: int, batch_size: int) -> np.ndarray:
    """``log[(e^{2/τ}/(τ C √B)) · S · exp(S/(2τ²B))]`` elementwise; ``-inf`` where ``S = 0``.

    Shapes: ``S`` any array of cumulative learning rates (≥ 0); returns the same shape.
    """
    if tau <= 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be > 0 and finite, got {tau!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    S = np.asarray(S, dtype=np.float64)
    if np.any(S < 0) or not np.all(np.isfinite(S)):
        raise ValueError("S (cumulative learning rate) must be finite and >= 0")
    with np.errstate(divide="ignore"):
        logS = np.log(S)
    return (2.0 / tau - math.log(tau) - math.log(num_classes) - 0.5 * math.log(batch_size)
            + logS + S / (2.0 * tau * tau * batch_size))


def normalised_bound(log_b: np.ndarray, anchor_index: int, anchor_value: float) -> np.ndarray:
    """``anchor_value · exp(log_b − log_b[anchor])`` (overflow → ``inf``, no warning)."""
    log_b = np.asarray(log_b, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return anchor_value * np.exp(log_b - log_b[anchor_index])


def cka_lower_bound(rho: np.ndarray | float) -> np.ndarray:
    """``(1 − ρ)/(1 + ρ)`` (Cor. 1); vacuous (≤ 0) when ρ ≥ 1. ``ρ`` must be ≥ 0."""
    rho = np.asarray(rho, dtype=np.float64)
    if np.any(rho < 0):
        raise ValueError("rho (relative similarity gap) must be >= 0")
    return (1.0 - rho) / (1.0 + rho)


def corollary_bound(row: Mapping[str, Any]) -> tuple[float, float, float, str]:
    """``(rho, cka_cos, bound, status)`` of one ``align`` row for Cor. 1: ``rho = sim_gap_centred_rel``,
    ``cka_cos = cos(repr_angle_deg)`` (the cosine-kernel CKA the corollary bounds), ``bound = (1 − rho)/(1 + rho)``
    when ``0 ≤ rho < 1`` else NaN; ``status`` ``bound`` / ``vacuous (rho >= 1)`` / ``rho not recorded``."""
    def num(k: str) -> float:
        v = row.get(k)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")

    rho, ang = num("sim_gap_centred_rel"), num("repr_angle_deg")
    cka_cos = math.cos(math.radians(ang)) if math.isfinite(ang) else float("nan")
    if not (math.isfinite(rho) and rho >= 0):
        return rho, cka_cos, float("nan"), "rho not recorded"
    if rho >= 1:
        return rho, cka_cos, float("nan"), "vacuous (rho >= 1)"
    return rho, cka_cos, float(cka_lower_bound(rho)), "bound"


def arm_settings(cfg: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                 arm: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(name, settings)`` of an arm (default: the first) — its per-arm dotted keys (``loss.temperature``,
    ``optim.lr``, …) — by *name only*: from ``meta.json`` (``arms.<name>.settings``, what the trainer
    used) when it records them, else from the config's arms resolved without importing anything
    (:func:`repalign.config.resolve_arms`). A plug-in objective is never imported or probed (issue 17)."""
    recorded = (meta or {}).get("arms") if isinstance(meta, Mapping) else None
    if isinstance(recorded, Mapping) and recorded:
        name = next(iter(recorded)) if arm is None else arm
        entry = recorded.get(name)
        if isinstance(entry, Mapping) and isinstance(entry.get("settings"), Mapping):
            return name, dict(entry["settings"])
    from repalign.config import resolve_arms

    arms = resolve_arms(cfg)
    a = arms[0] if arm is None else next((x for x in arms if x.name == arm), None)
    if a is None:
        raise ValueError(f"arm {arm!r} not in the config (arms: {[x.name for x in arms]})")
    return a.name, dict(a.settings)


def lr_per_step(cfg: Mapping[str, Any], steps_per_epoch: int, total_steps: int | None = None,
                arm: str | None = None, meta: Mapping[str, Any] | None = None) -> np.ndarray:
    """Exact learning rate η_t of every optimiser step ``t = 0..T−1`` of an arm (default: the first).

    Recomputed from the config as the trainer does: peak = ``scaled_lr(lr, B, lr_rule)``,
    factor = ``warmup_cosine_factor(t, T, round(warmup_epochs · steps_per_epoch), final_fraction)``;
    the arm's settings by name (:func:`arm_settings`).
    """
    from repalign.training.optim import scaled_lr
    from repalign.training.schedule import warmup_cosine_factor

    _name, a = arm_settings(cfg, meta, arm)
    B = int(cfg["train"]["batch_size"])
    T = int(total_steps) if total_steps is not None else int(cfg["train"]["epochs"]) * int(steps_per_epoch)
    if cfg["train"].get("max_steps"):
        T = min(T, int(cfg["train"]["max_steps"]))
    peak = scaled_lr(a["optim.lr"], B, a["optim.lr_rule"])
    warm = int(round(a["optim.warmup_epochs"] * steps_per_epoch))
    fin = a["optim.final_lr_fraction"]
    return np.array([peak * warmup_cosine_factor(t, T, warm, fin) for t in range(T)], dtype=np.float64)


def cumulative_lr(cfg: Mapping[str, Any], steps_per_epoch: int, total_steps: int | None = None,
                  arm: str | None = None, meta: Mapping[str, Any] | None = None) -> np.ndarray:
    """``S[t] = Σ_{s<t} η_s`` for ``t = 0..T`` (``S[0] = 0``), shape ``[T + 1]``."""
    eta = lr_per_step(cfg, steps_per_epoch, total_steps, arm, meta)
    return np.concatenate([[0.0], np.cumsum(eta)])


def cumulative_lr_from_rows(train_rows: Sequence[Mapping[str, Any]], arm: str, steps: Sequence[int]) -> np.ndarray:
    """Fallback when the config cannot be resolved: integrate the logged ``lr`` of ``train`` rows
    piecewise-constant (a row's lr holds until the next logged row). Returns ``S`` at ``steps``."""
    pts = sorted((int(r["step"]), float(r["lr"])) for r in train_rows if r.get("arm") == arm and "lr" in r)
    if not pts:
        raise ValueError(f"no train rows with lr for arm {arm!r}")
    out = []
    for s in steps:
        total, prev_step, prev_lr = 0.0, 0, pts[0][1]
        for st, lr in pts:
            if st >= s:
                break
            total += prev_lr * (st - prev_step)
            prev_step, prev_lr = st, lr
        total += prev_lr * max(0, s - prev_step)
        out.append(total)
    return np.asarray(out)


def theory_rows(rows: Iterable[Mapping[str, Any]], cfg: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                pair: tuple[str, str] | None = None, split: str = "test", layer: str = "h") -> list[dict[str, Any]]:
    """Measured similarity gap / CKA of one arm pair over training with both theory curves.

    ``rows``: the run's metrics rows; ``cfg``: its resolved config; ``meta``: its ``meta.json``
    (``steps_per_epoch``, ``total_steps``, ``num_classes``). Returns one dict per evaluation epoch:
    ``epoch, step, S_T, sim_gap, sim_gap_rel, linear_cka, rsa, log_bound, bound_shape, cka_lower_bound,
    tau, num_classes, batch_size, arm_a, arm_b, split, layer`` and the corollary's quantities
    ``sim_gap_centred_rel`` (its ρ), ``cka_cos`` (= cos ``repr_angle_deg``) and ``bound_status``;
    ``cka_lower_bound`` = ``(1 − ρ)/(1 + ρ)`` where ``ρ < 1``, NaN elsewhere (:func:`corollary_bound`).
    """
    rows = list(rows)
    meta = dict(meta or {})
    align = [r for r in rows if r.get("kind") == "align" and r.get("split") == split and r.get("layer", "h") == layer]
    if pair is None:
        if not align:
            return []
        pair = (align[0]["arm_a"], align[0]["arm_b"])
        nscl = [r for r in align if r["arm_b"] == "nscl"]
        if nscl:
            pair = (nscl[0]["arm_a"], "nscl")
    align = sorted((r for r in align if (r["arm_a"], r["arm_b"]) == tuple(pair)), key=lambda r: r["step"])
    if not align:
        return []
    try:  # by name: meta.json's settings of the arm, else the config's (nothing imported)
        tau = float(arm_settings(cfg, meta, pair[0])[1]["loss.temperature"])
    except (ValueError, KeyError):
        tau = float(cfg["loss"]["temperature"])
    B = int(cfg["train"]["batch_size"])
    C = int(meta.get("num_classes") or cfg["data"].get("num_classes") or 0)
    if C < 1:
        raise ValueError("num_classes unknown: meta.json has no num_classes and data.num_classes is not set")
    steps = [int(r["step"]) for r in align]
    spe = meta.get("steps_per_epoch")
    S = None
    if spe:
        try:
            S_all = cumulative_lr(cfg, int(spe), meta.get("total_steps"), arm=pair[0], meta=meta)
            S = np.array([S_all[min(s, len(S_all) - 1)] for s in steps])
        except ImportError:  # training package unavailable: integrate the logged lr instead
            S = None
    if S is None:
        S = cumulative_lr_from_rows([r for r in rows if r.get("kind") == "train"], pair[0], steps)
    logb = log_bound_shape(S, tau, C, B)
    anchor = next((i for i, r in enumerate(align) if r["epoch"] > 0 and S[i] > 0), None)
    if anchor is not None:
        shape = normalised_bound(logb, anchor, float(align[anchor]["sim_gap"]))
    else:
        shape = np.full(len(align), np.nan)
    out = []
    for i, r in enumerate(align):
        rel = float(r.get("sim_gap_rel", float("nan")))
        rho, cka_cos, bound, status = corollary_bound(r)
        out.append({
            "epoch": r["epoch"], "step": r["step"], "arm_a": pair[0], "arm_b": pair[1], "split": split,
            "layer": layer, "tau": tau, "num_classes": C, "batch_size": B, "S_T": float(S[i]),
            "sim_gap": float(r["sim_gap"]), "sim_gap_rel": rel, "linear_cka": float(r["linear_cka"]),
            "rsa": float(r.get("rsa", float("nan"))),
            "log10_bound": float(logb[i] / math.log(10)) if np.isfinite(logb[i]) else float("-inf"),
            "bound_shape": float(shape[i]) if S[i] > 0 else 0.0,
            "cka_lower_bound": bound, "sim_gap_centred_rel": rho, "cka_cos": cka_cos, "bound_status": status,
        })
    return out


def run_theory_rows(run_dir: str | Path, **kw: Any) -> list[dict[str, Any]]:
    """:func:`theory_rows` of a run directory (reads config.yaml, meta.json, metrics.jsonl)."""
    import yaml

    from repalign.results import read_meta, read_rows

    d = Path(run_dir)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    return theory_rows(read_rows(d), cfg, read_meta(d), **kw)
