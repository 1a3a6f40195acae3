"""The *Findings* of a report: sentences computed from metric rows, each with its numbers.

For every condition (group of seeds) and representation (``h``, then normalised ``z``), at the
final evaluation on the test split:

1. **Order** — every pair of the reference arm (``cl``) by mean linear CKA, with the controls and
   the untrained baseline placed in that order (in brackets).
2. **Margins over the floors** — for every objective pair, its paired per-seed difference to each
   control pair of the same reference arm: the *chaos floor* (``init_perturb``: the reference arm
   from a tiny perturbation of the same initial weights, same batches and views) and the *noise
   floors* (``data_seed``: own batches/views; ``init_seed``: own initialisation too). The verdict
   says whether the 95 % interval lies above zero, below zero or contains it ("cannot tell apart"),
   or that one seed gives no interval.
3. **Objective vs objective** — the most aligned objective pair against each other one (paired).
4. **Untrained baseline** — the zero point, and each pair relative to it: ``(v − u)/(1 − u)``.

Nothing here is tuned per figure: the same rules apply to a run, a sweep and a reproduce output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from repalign.analysis.aggregate import final_step, pair_values
from repalign.analysis.stats import Summary, paired_difference, summarize, verdict

__all__ = ["Finding", "findings", "CONTROL_TEXT", "METRIC_NAME"]

CONTROL_TEXT = {
    "chaos": "chaos floor",
    "noise_data": "noise floor (own batches/views)",
    "noise_seed": "noise floor (own init, batches/views)",
}
CONTROL_WHY = {
    "chaos": "the same arm restarted from a tiny perturbation of the same initial weights, same batches and views",
    "noise_data": "the same arm with the same initial weights but its own batches and augmentations",
    "noise_seed": "the same arm with its own initialisation, batches and augmentations",
}
METRIC_NAME = {"linear_cka": "linear CKA", "rsa": "RSA"}
LAYER_NAME = {"h": "h (encoder output)", "z": "z (normalised projection, as the loss sees it)"}


@dataclass
class Finding:
    """One sentence of the Findings section; ``verdict`` ∈ {higher, lower, undecided, single, None}."""

    text: str
    kind: str
    verdict: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)


def _pair(a: str, b: str) -> str:
    return f"{a}–{b}"


def _n_text(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _margin_sentence(a: str, b: str, ctrl: tuple[str, str], kind: str, sv: Summary, sc: Summary,
                     d: Summary | None, metric: str) -> Finding:
    mname = METRIC_NAME.get(metric, metric)
    head = f"{_pair(a, b)} {sv.text()} vs {CONTROL_TEXT[kind]} {_pair(*ctrl)} {sc.text()}"
    v = verdict(d)
    if d is None:
        return Finding(head + " — no seed has both values.", "margin", None)
    marg = f"margin {d.text()}, {_n_text(d.n)}"
    if v == "higher":
        tail = f"→ {b} stays closer to {a} than the {CONTROL_TEXT[kind]} does ({marg})."
    elif v == "lower":
        tail = f"→ {b} is further from {a} than the {CONTROL_TEXT[kind]} ({marg})."
    elif v == "undecided":
        tail = (f"→ cannot tell {b}'s {mname} with {a} apart from the {CONTROL_TEXT[kind]} "
                f"(the 95 % interval of the margin contains 0: {marg}).")
    else:
        tail = f": margin {d.mean:+.3f} (single seed: no interval, no verdict)."
    sep = "" if v == "single" else " "
    return Finding(f"{head}{sep}{tail}", "margin", v, {"pair": f"{a}/{b}", "control": f"{ctrl[0]}/{ctrl[1]}",
                                                        "control_kind": kind, "value": sv.mean, "control_value": sc.mean,
                                                        "margin": d.mean, "ci_lo": d.lo, "ci_hi": d.hi, "n": d.n})


def _group_findings(rows: Sequence[Mapping[str, Any]], layers: Sequence[str], split: str,
                    metric: str) -> list[Finding]:
    out: list[Finding] = []
    steps = final_step(rows)
    if not steps:
        return out
    epochs = sorted({r.get("epoch") for r in rows if r.get("kind") == "align" and r.get("step") == steps.get(r.get("seed", 0))},
                    key=str)
    when = f"final evaluation (step {max(steps.values())}" + (f", epoch {epochs[-1]}" if epochs else "") + ")"
    mname = METRIC_NAME.get(metric, metric)
    for layer in layers:
        vals, base, ctrl = pair_values(rows, metric, split, layer)
        if not vals:
            continue
        ref_counts: dict[str, int] = {}
        for a, _b in vals:
            ref_counts[a] = ref_counts.get(a, 0) + 1
        ref = max(ref_counts, key=lambda k: ref_counts[k])
        mine = {p: v for p, v in vals.items() if p[0] == ref}
        summ = {p: summarize(list(v.values())) for p, v in mine.items()}
        n = max(s.n for s in summ.values())
        objectives = sorted((p for p in mine if not ctrl.get(p)), key=lambda p: -summ[p].mean)
        controls = {ctrl[p]: p for p in mine if ctrl.get(p)}
        where = f"{split.capitalize()} {mname}, layer {LAYER_NAME.get(layer, layer)}, {when}, {_n_text(n)}"
        # 1. order, with controls and baseline placed in it
        items = [(summ[p].mean, f"{p[1]} {summ[p].text()}") for p in objectives]
        items += [(summ[p].mean, f"[{CONTROL_TEXT[k]}: {p[1]} {summ[p].text()}]") for k, p in controls.items()]
        sb = summarize(list(base.values())) if base else None
        if sb is not None:
            items.append((sb.mean, f"[untrained baseline {sb.text()}]"))
        items.sort(key=lambda t: -t[0])
        out.append(Finding(f"{where}: order of alignment with {ref}: " + " > ".join(t[1] for t in items) + ".",
                           "order", None, {"layer": layer, "order": [t[1] for t in items]}))
        if layer == layers[0] and controls:
            out.append(Finding("Controls: " + "; ".join(f"{CONTROL_TEXT[k]} = {_pair(*p)}, {CONTROL_WHY[k]}"
                                                        for k, p in controls.items()) + ".", "controls"))
        if layer != layers[0]:  # the second representation: order and chaos margins only
            kinds = [k for k in ("chaos",) if k in controls]
        else:
            kinds = [k for k in ("chaos", "noise_data", "noise_seed") if k in controls]
        # 2. margins over the floors
        for p in objectives:
            for k in kinds:
                c = controls[k]
                out.append(_margin_sentence(ref, p[1], c, k, summ[p], summ[c], paired_difference(mine[p], mine[c]),
                                            metric))
        if layer != layers[0]:
            continue
        # 3. best objective vs the others
        if len(objectives) > 1:
            best = objectives[0]
            for p in objectives[1:]:
                d = paired_difference(mine[best], mine[p])
                v = verdict(d)
                if d is None:
                    continue
                if v == "higher":
                    t = f"{_pair(*best)} is more aligned than {_pair(*p)} (difference {d.text()}, {_n_text(d.n)})."
                elif v == "undecided":
                    t = (f"{_pair(*best)} and {_pair(*p)} cannot be told apart (difference {d.text()}, "
                         f"interval contains 0, {_n_text(d.n)}).")
                elif v == "single":
                    t = f"{_pair(*best)} − {_pair(*p)} = {d.mean:+.3f} (1 seed: no interval, no verdict)."
                else:  # pragma: no cover - best is the highest mean, so its difference is ≥ 0 on average
                    t = f"{_pair(*best)} is less aligned than {_pair(*p)} (difference {d.text()})."
                out.append(Finding(f"{where}: {t}", "objectives", v, {"pair": "/".join(best), "versus": "/".join(p),
                                                                      "diff": d.mean, "ci_lo": d.lo, "ci_hi": d.hi,
                                                                      "n": d.n}))
        # 4. untrained baseline
        if sb is not None:
            rel = ", ".join(f"{p[1]} {(summ[p].mean - sb.mean) / (1 - sb.mean):.2f}" for p in objectives
                            if sb.mean < 1)
            out.append(Finding(f"Untrained baseline ({split}, {mname}, layer {layer}): two independently initialised, "
                               f"untrained models already reach {sb.text()} — the zero point of this architecture "
                               f"and data. Relative to it, (v − u)/(1 − u): {rel}.", "baseline", None,
                               {"untrained": sb.mean}))
    return out


def findings(rows: Iterable[Mapping[str, Any]], group_keys: Sequence[str] = (), layers: Sequence[str] = ("h", "z"),
             split: str = "test", metric: str = "linear_cka") -> list[tuple[str, list[Finding]]]:
    """Findings per condition: ``[(group label, [Finding, …]), …]`` (label ``""`` for a single group).
    ``rows``: ``align``/``baseline`` rows, with a ``seed`` column when several seeds are pooled."""
    rows = [r for r in rows if r.get("kind") in ("align", "baseline")]
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), []).append(r)
    have = {r.get("layer", "h") for r in rows}
    lays = [x for x in layers if x in have] or sorted(have)
    out = []
    for g, rr in groups.items():
        label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(group_keys, g))
        out.append((label, _group_findings(rr, lays, split, metric)))
    return out
