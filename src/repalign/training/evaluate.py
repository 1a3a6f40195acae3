"""Alignment and quality tracked through training, and ``repalign align`` from checkpoints.

At each scheduled evaluation epoch, features of every arm are extracted **once** per split (fixed,
seeded, un-augmented train and test evaluation subsets) and all metrics are computed from them:
per arm pair CKA (linear, debiased), RSA, similarity gap, representation angle, weight gap and
angles; per arm kNN accuracy. The same function, :func:`alignment_rows`, serves training and
``repalign align``, so the two agree exactly.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch
from torch import nn

from repalign.errors import ConfigError
from repalign.schema import ALIGN_METRICS, relative_names, representation_names
from repalign.seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from repalign.training.trainer import CoupledTrainer

PAPER_EPOCHS = tuple(range(0, 100, 10)) + tuple(range(100, 100_001, 100))


def eval_epochs(eval_cfg: Mapping[str, Any], epochs: int) -> set[int]:
    """Epochs (0 = before training) at which to evaluate, from the epoch-based keys.

    ``eval.every: n`` → 0, n, 2n, …; ``eval.schedule: paper`` → 0, 10, …, 90, 100, 200, 300, …;
    ``eval.schedule: [..]`` → that list. The final epoch is added whenever anything is scheduled.
    (``eval.schedule: log`` and ``eval.steps`` are step-based: see :func:`eval_steps`.)
    """
    out: set[int] = set()
    if eval_cfg.get("every"):
        out |= set(range(0, epochs + 1, eval_cfg["every"]))
    sched = eval_cfg.get("schedule")
    if sched == "paper":
        out |= {e for e in PAPER_EPOCHS if e <= epochs}
    elif isinstance(sched, list):
        bad = [e for e in sched if not 0 <= e <= epochs]
        if bad:
            raise ConfigError(f"config key 'eval.schedule': epochs {bad} outside 0..{epochs}")
        out |= set(sched)
    if out:
        out.add(epochs)
    return out


def log_steps(total_steps: int, points: int = 30) -> list[int]:
    """≈ ``points`` log-spaced global steps from 1 to ``total_steps`` (both included), plus step 0
    (before training); duplicates after rounding are merged, so short runs get fewer points."""
    if total_steps < 1:
        return [0]
    import numpy as np

    xs = np.geomspace(1, total_steps, num=max(2, points))
    return sorted({0, total_steps, *(int(round(x)) for x in xs)})


def eval_steps(eval_cfg: Mapping[str, Any], epochs: int, steps_per_epoch: int, total_steps: int) -> set[int]:
    """Global steps (number of optimiser steps done; 0 = before training) at which to evaluate.

    Epoch-based keys (:func:`eval_epochs`) map epoch ``e`` to step ``e · steps_per_epoch``;
    ``eval.schedule: log`` adds :func:`log_steps`; ``eval.steps: [..]`` adds those steps. Steps past
    ``total_steps`` (e.g. cut by ``train.max_steps``) are dropped; the last step is added whenever
    anything is scheduled, so every run ends with an evaluation.
    """
    out = {e * steps_per_epoch for e in eval_epochs(eval_cfg, epochs)}
    if eval_cfg.get("schedule") == "log":
        out |= set(log_steps(total_steps, int(eval_cfg.get("log_points") or 30)))
    if eval_cfg.get("steps"):
        bad = [s for s in eval_cfg["steps"] if not 0 <= s <= total_steps]
        if bad:
            raise ConfigError(f"config key 'eval.steps': steps {bad} outside 0..{total_steps} (the run's last step)")
        out |= set(eval_cfg["steps"])
    out = {s for s in out if s <= total_steps}
    if out:
        out.add(total_steps)
    return out


def epoch_of(step: int, steps_per_epoch: int) -> int | float:
    """The epoch value recorded for an evaluation after ``step`` steps: an ``int`` at an epoch
    boundary, else the fractional epoch ``step / steps_per_epoch`` (rounded to 6 decimals)."""
    if step % steps_per_epoch == 0:
        return step // steps_per_epoch
    return round(step / steps_per_epoch, 6)


def eval_indices(n: int, max_n: int, seed: int, split: str) -> torch.Tensor:
    """Fixed seeded evaluation subset of a split: all of it when ``n <= max_n`` (sorted indices)."""
    if n <= max_n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(derive_seed(seed, "eval-subset", split))
    return torch.randperm(n, generator=g)[:max_n].sort().values


def make_eval_loaders(cfg: Mapping[str, Any], train_source: Any, test_source: Any, image_size: int,
                      channels: int) -> dict[str, torch.utils.data.DataLoader]:
    """Fixed, seeded, un-augmented train and test evaluation loaders (see :func:`eval_indices`)."""
    from repalign.data import eval_transform, extract_loader

    ev = cfg["eval"]
    tf = eval_transform(image_size, channels, mean=train_source.mean, std=train_source.std)
    idx = {split: eval_indices(len(src), mx, cfg["seed"], split)
           for split, src, mx in (("train", train_source, ev["max_train"]), ("test", test_source, ev["max_test"]))}
    bank = len(idx["train"])  # the kNN bank: the train evaluation set (config.validate checks k <= eval.max_train)
    if int(ev["knn_k"]) > bank:
        raise ConfigError(f"config key 'eval.knn_k': {ev['knn_k']} exceeds the kNN bank size {bank} (the train "
                          f"evaluation set: min(eval.max_train = {ev['max_train']}, {len(train_source)} train "
                          f"images)); set eval.knn_k <= {bank}")
    return {split: extract_loader(src, tf, ev["batch_size"], indices=idx[split])
            for split, src in (("train", train_source), ("test", test_source))}


def _layer_features(f: Mapping[str, torch.Tensor], layer: str) -> torch.Tensor:
    """Features of one layer as the metrics see them: ``h`` as extracted, ``z`` L2-normalised per
    row — the representation the contrastive losses act on (cosine similarities)."""
    x = f[layer]
    return torch.nn.functional.normalize(x.double(), dim=1).to(x.dtype) if layer == "z" else x


def pair_metrics(x: torch.Tensor, y: torch.Tensor, ev: Mapping[str, Any]) -> dict[str, float | None]:
    """The representation metrics of one ``align``/``baseline`` row (:func:`repalign.schema.representation_names`,
    in that order) for features ``x, y [N, d]`` of the same N samples: the built-ins from one
    :func:`~repalign.metrics.representation_metrics` call, schema entries with ``compute`` from it."""
    from repalign.metrics import representation_metrics, rsa

    m = representation_metrics(x, y, debiased=True)
    if (ev["rsa_rdm"], ev["rsa_corr"]) != ("cosine", "pearson"):
        m["rsa"] = _value(rsa(x, y, rdm=ev["rsa_rdm"], corr=ev["rsa_corr"]))
    for metric in ALIGN_METRICS:
        if metric.source == "representation" and metric.compute is not None:
            m[metric.name] = _value(metric.compute(x, y))
    return {k: (float(m[k]) if m[k] is not None else None) for k in representation_names()}


def relative_to_baseline(v: float | None, base: float | None) -> float | None:
    """``(v − u) / (1 − u)``: 0 at the untrained baseline ``u``, 1 at identical representations."""
    if v is None or base is None or not (base < 1.0):
        return None
    return (v - base) / (1.0 - base)


def add_relative_and_margins(rows: list[dict[str, Any]], baseline: Mapping[tuple[str, str], Mapping[str, Any]],
                             arms: Mapping[str, Any]) -> None:
    """In place: each ``align`` row gets ``<metric>_rel`` (relative to the untrained baseline of its
    split/layer, see :func:`relative_to_baseline`), ``control`` (the control kind of ``arm_b`` —
    ``chaos``/``noise_data``/``noise_seed`` — when ``arm_b`` is a control of ``arm_a``) and, for every
    control arm ``c`` of ``arm_a`` whose pair ``(arm_a, c)`` is among the rows, the margin
    ``<metric>_over_<kind> = v(arm_a, arm_b) − v(arm_a, c)`` (same split, layer and step).

    ``arms``: name → :class:`repalign.config.Arm` (``control``, ``same_as``)."""
    def ctrl_of(a: str, b: str) -> str | None:
        arm = arms.get(b)
        kind = getattr(arm, "control", None)
        return kind if kind is not None and getattr(arm, "same_as", None) == a else None

    by_key = {(r["split"], r["layer"], r["arm_a"], r["arm_b"]): r for r in rows if r.get("kind") == "align"}
    for (split, layer, a, b), r in by_key.items():
        base = baseline.get((split, layer)) or {}
        for m in relative_names():
            r[f"{m}_rel"] = relative_to_baseline(r.get(m), base.get(m))
        r["control"] = ctrl_of(a, b)
        for (s2, l2, a2, c), rc in by_key.items():
            kind = ctrl_of(a2, c)
            if (s2, l2, a2) != (split, layer, a) or kind is None or c == b:
                continue
            for m in relative_names():
                key = f"{m}_over_{kind}"
                if key not in r and r.get(m) is not None and rc.get(m) is not None:
                    r[key] = r[m] - rc[m]


class UntrainedBaseline:
    """The zero point of CKA/RSA for this architecture and data: two untrained models of the run's
    base architecture, initialised with ``derive_seed(seed, "untrained", 0)`` and ``(…, 1)``, compared
    on the evaluation sets. Computed once (the models never change) and logged as ``kind: baseline``
    rows at every evaluation."""

    def __init__(self, cfg: Mapping[str, Any], channels: int, image_size: int) -> None:
        from repalign.models import build_model, seeded_init

        self.nets = {}
        for i in (0, 1):
            with seeded_init(derive_seed(int(cfg["seed"]), "untrained", i)):
                self.nets[f"untrained_{i}"] = build_model(cfg["model"], channels, image_size)
        self.cfg = cfg
        self._cache: dict[tuple[str, str], dict[str, Any]] | None = None

    def metrics(self, loaders: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[tuple[str, str], dict[str, Any]]:
        """``(split, layer) → {metric: value}`` (cached after the first call)."""
        from repalign.evaluation import extract_features

        if self._cache is None:
            ev = self.cfg["eval"]
            layers = tuple(ev["layers"])
            self._cache = {}
            for split, loader in loaders.items():
                f, _y = extract_features({k: v.to(device) for k, v in self.nets.items()}, loader, layers=layers,
                                         device=device)
                for layer in layers:
                    self._cache[(split, layer)] = pair_metrics(_layer_features(f["untrained_0"], layer),
                                                               _layer_features(f["untrained_1"], layer), ev)
        return self._cache

    def rows(self, loaders: Mapping[str, Any], epoch: int | float, step: int,
             device: torch.device | str = "cpu") -> list[dict[str, Any]]:
        return [{"kind": "baseline", "baseline": "untrained", "epoch": epoch, "step": step, "split": split,
                 "layer": layer, **m} for (split, layer), m in self.metrics(loaders, device).items()]


def alignment_rows(nets: Mapping[str, nn.Module], init: Mapping[str, Mapping[str, torch.Tensor] | None],
                   pairs: Iterable[tuple[str, str]], loaders: Mapping[str, Any], cfg: Mapping[str, Any],
                   epoch: int | float, step: int, device: torch.device | str = "cpu",
                   quality: bool = False, arms: Mapping[str, Any] | None = None,
                   baseline: UntrainedBaseline | None = None) -> list[dict[str, Any]]:
    """All alignment (``kind: align``), baseline (``kind: baseline``) and quality (``kind: eval``)
    rows at one checkpoint.

    ``nets``: arm name → ``ContrastiveNet``; ``init``: arm name → initial state dict (``None`` for
    arms that do not share the run's initialisation). Features: one pass per split for all nets;
    layer ``z`` is L2-normalised (as the loss sees it). ``arms`` (name → :class:`~repalign.config.Arm`)
    and ``baseline`` add the control kind, the values relative to the untrained baseline and the
    margins over the control pairs (:func:`add_relative_and_margins`). ``quality=True`` adds
    linear-probe, few-shot and CDNV numbers to each arm's ``eval`` row.
    """
    from repalign.evaluation import extract_features, knn_accuracy
    from repalign.metrics import weight_gap

    ev = cfg["eval"]
    layers = tuple(ev["layers"])
    feats: dict[str, tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]] = {}
    for split, loader in loaders.items():
        feats[split] = extract_features(dict(nets), loader, layers=layers, device=device)
    rows: list[dict[str, Any]] = []
    # An arm stopped on non-finite values keeps its last good weights, whose features can still
    # overflow: leave it out of the metrics (an event row says so) instead of failing or logging NaN.
    bad = [n for n in nets if any(not bool(torch.isfinite(t).all()) for f, _y in feats.values() for t in f[n].values())]
    if bad:
        rows.append({"kind": "event", "epoch": epoch, "step": step, "arm": None,
                     "message": f"non-finite features of {', '.join(bad)}: left out of the metrics at step {step}"})
        nets = {n: m for n, m in nets.items() if n not in bad}
        pairs = [(a, b) for a, b in pairs if a in nets and b in nets]
    base_rows = baseline.rows(loaders, epoch, step, device) if baseline is not None else []
    rows += base_rows
    wg_cache: dict[tuple[str, str], dict[str, Any]] = {}
    for a, b in pairs:
        shared_init = init.get(a) is not None and init.get(b) is not None and _same_state(init[a], init[b])
        wg = weight_gap(nets[a], nets[b], init=init[a] if shared_init else None)
        wg_cache[(a, b)] = {
            "weight_gap_mean": wg["mean"], "weight_gap_sum": wg["sum"], "weight_rel_l2": wg["rel_l2"],
            "weight_angle_deg": wg["angle_deg"],
            "displacement_angle_deg": wg.get("displacement_angle_deg") if shared_init else None,
        }
    for split, (f, _labels) in feats.items():
        for layer in layers:
            for a, b in pairs:
                m = pair_metrics(_layer_features(f[a], layer), _layer_features(f[b], layer), ev)
                rows.append({
                    "kind": "align", "epoch": epoch, "step": step, "split": split, "layer": layer,
                    "arm_a": a, "arm_b": b, **m, "rsa_rdm": ev["rsa_rdm"], "rsa_corr": ev["rsa_corr"],
                    **wg_cache[(a, b)],
                })
    add_relative_and_margins(rows, {(r["split"], r["layer"]): r for r in base_rows}, arms or {})
    if "train" in feats and "test" in feats:
        (ftr, ytr), (fte, yte) = feats["train"], feats["test"]
        for name in nets:
            xtr, xte = ftr[name][layers[0]], fte[name][layers[0]]
            row = {"kind": "eval", "epoch": epoch, "step": step, "split": "test", "arm": name, "layer": layers[0],
                   "knn_acc": float(knn_accuracy(xtr, ytr, xte, yte, k=ev["knn_k"], temperature=ev["knn_temperature"]))}
            if quality:
                row.update(quality_metrics(xtr, ytr, xte, yte, seed=int(cfg["seed"])))
            rows.append(row)
    return rows


def weight_rows(nets: Mapping[str, nn.Module], pairs: Iterable[tuple[str, str]], epoch: int | float,
                step: int) -> list[dict[str, Any]]:
    """``kind: weight`` rows: the weight gap of every pair (``eval.weight_every``; no features)."""
    from repalign.metrics import weight_gap

    out = []
    for a, b in pairs:
        wg = weight_gap(nets[a], nets[b])
        out.append({"kind": "weight", "epoch": epoch, "step": step, "arm_a": a, "arm_b": b,
                    "weight_gap_mean": wg["mean"], "weight_gap_sum": wg["sum"], "weight_rel_l2": wg["rel_l2"],
                    "weight_angle_deg": wg["angle_deg"]})
    return out


def quality_metrics(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor,
                    seed: int = 0, shots: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Linear probe (train/test accuracy), nearest-class-centre few-shot accuracy (mean ± std over
    5 seeded episodes) and CDNV / directional CDNV (test split) of one arm's frozen features."""
    from repalign.evaluation import cdnv, directional_cdnv, fewshot_ncc, linear_probe

    out: dict[str, float] = {}
    probe = linear_probe(xtr, ytr, xte, yte, seed=seed)
    out["probe_train_acc"], out["probe_test_acc"] = float(probe["train_acc"]), float(probe["test_acc"])
    min_count = int(torch.bincount(ytr).min())
    for m, (mean, std) in fewshot_ncc(xtr, ytr, xte, yte, shots=tuple(s for s in shots if s <= min_count),
                                      seed=seed).items():
        out[f"fewshot{m}_acc"], out[f"fewshot{m}_std"] = float(mean), float(std)
    out["cdnv"], out["directional_cdnv"] = float(cdnv(xte, yte)), float(directional_cdnv(xte, yte))
    return out


def _value(r: Any) -> float:
    if isinstance(r, Mapping):
        return float(r["value"])
    return float(getattr(r, "value", r))


def _same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    keys = set(a) & set(b)
    return bool(keys) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in keys
                              if k.startswith("encoder."))


class Evaluator:
    """The in-training evaluator: ``evaluator(trainer, epoch)`` computes the ``align``/``baseline``/
    ``eval`` rows of the trainer's arms and hands each to ``log`` (the trainer's
    :meth:`~repalign.training.trainer.CoupledTrainer.log_row`, which appends it to ``metrics.jsonl``
    and the TensorBoard/W&B loggers). The trainer is only read, never imported here."""

    def __init__(self, trainer: "CoupledTrainer", log: Callable[[Mapping[str, Any]], None]) -> None:
        self.log = log
        self.loaders = make_eval_loaders(trainer.cfg, trainer.train_source, trainer.test_source,
                                         trainer.image_size, trainer.channels)
        # Built before any training or resume, the nets hold the (deterministic) initial weights.
        self.init = {s.name: copy.deepcopy(s.module.net.state_dict()) for s in trainer.arm_states}
        self.baseline = (UntrainedBaseline(trainer.cfg, trainer.channels, trainer.image_size)
                         if trainer.cfg["eval"].get("untrained_baseline", True) else None)

    def __call__(self, trainer: "CoupledTrainer", epoch: int | float) -> None:
        if not trainer.is_main:
            return
        nets = {s.name: s.module.net for s in trainer.arm_states}
        init = {s.name: (self.init[s.name] if s.arm.init_seed is None else None) for s in trainer.arm_states}
        for row in alignment_rows(nets, init, trainer.pairs, self.loaders, trainer.cfg, epoch, trainer.step,
                                  trainer.device, arms={s.name: s.arm for s in trainer.arm_states},
                                  baseline=self.baseline):
            self.log(row)
