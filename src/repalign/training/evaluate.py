"""Alignment and quality tracked through training, and ``repalign align`` from checkpoints.

At each scheduled evaluation epoch, features of every arm are extracted **once** per split (fixed,
seeded, un-augmented train and test evaluation subsets) and all metrics are computed from them:
per arm pair CKA (linear, debiased), RSA, similarity gap, representation angle, weight gap and
angles; per arm kNN accuracy. The same function, :func:`alignment_rows`, serves training and
``repalign align``, so the two agree exactly.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from repalign.seeding import derive_seed

if TYPE_CHECKING:  # pragma: no cover
    from repalign.training.trainer import CoupledTrainer

PAPER_EPOCHS = tuple(range(0, 100, 10)) + tuple(range(100, 100_001, 100))


def eval_epochs(eval_cfg: Mapping[str, Any], epochs: int) -> set[int]:
    """Epochs (0 = before training) at which to evaluate.

    ``eval.every: n`` → 0, n, 2n, …; ``eval.schedule: paper`` → 0, 10, …, 90, 100, 200, 300, …;
    ``eval.schedule: [..]`` → that list. The final epoch is added whenever anything is scheduled.
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
            raise ValueError(f"config key 'eval.schedule': epochs {bad} outside 0..{epochs}")
        out |= set(sched)
    if out:
        out.add(epochs)
    return out


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
    return {split: extract_loader(src, tf, ev["batch_size"], indices=eval_indices(len(src), mx, cfg["seed"], split))
            for split, src, mx in (("train", train_source, ev["max_train"]), ("test", test_source, ev["max_test"]))}


def alignment_rows(nets: Mapping[str, nn.Module], init: Mapping[str, Mapping[str, torch.Tensor] | None],
                   pairs: Iterable[tuple[str, str]], loaders: Mapping[str, Any], cfg: Mapping[str, Any],
                   epoch: int, step: int, device: torch.device | str = "cpu",
                   quality: bool = False) -> list[dict[str, Any]]:
    """All alignment (``kind: align``) and quality (``kind: eval``) rows at one checkpoint.

    ``nets``: arm name → ``ContrastiveNet``; ``init``: arm name → initial state dict (``None`` for
    arms that do not share the run's initialisation). Features: one pass per split for all nets.
    ``quality=True`` adds linear-probe, few-shot and CDNV numbers to each arm's ``eval`` row.
    """
    from repalign.evaluation import extract_features, knn_accuracy
    from repalign.metrics import representation_metrics, rsa, weight_gap

    ev = cfg["eval"]
    layers = tuple(ev["layers"])
    feats: dict[str, tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]] = {}
    for split, loader in loaders.items():
        feats[split] = extract_features(dict(nets), loader, layers=layers, device=device)
    rows: list[dict[str, Any]] = []
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
                x, y = f[a][layer], f[b][layer]
                # two sets of d×d products give CKA, cosine/Pearson RSA, similarity gap and angle
                m = representation_metrics(x, y, debiased=True)
                if (ev["rsa_rdm"], ev["rsa_corr"]) != ("cosine", "pearson"):
                    m["rsa"] = _value(rsa(x, y, rdm=ev["rsa_rdm"], corr=ev["rsa_corr"]))
                rows.append({
                    "kind": "align", "epoch": epoch, "step": step, "split": split, "layer": layer,
                    "arm_a": a, "arm_b": b,
                    **{k: (float(m[k]) if m[k] is not None else None) for k in _ALIGN_KEYS},
                    "rsa_rdm": ev["rsa_rdm"], "rsa_corr": ev["rsa_corr"],
                    **wg_cache[(a, b)],
                })
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


_ALIGN_KEYS = ("linear_cka", "debiased_cka", "rsa", "sim_gap", "sim_gap_rel", "sim_gap_per_entry",
               "sim_gap_centred_rel", "repr_angle_deg")


def _value(r: Any) -> float:
    if isinstance(r, Mapping):
        return float(r["value"])
    return float(getattr(r, "value", r))


def _same_state(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    keys = set(a) & set(b)
    return bool(keys) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in keys
                              if k.startswith("encoder."))


class Evaluator:
    """The in-training evaluator: ``evaluator(trainer, epoch)`` appends rows to ``metrics.jsonl``."""

    def __init__(self, trainer: "CoupledTrainer") -> None:
        self.loaders = make_eval_loaders(trainer.cfg, trainer.train_source, trainer.test_source,
                                         trainer.image_size, trainer.channels)
        # Built before any training or resume, the nets hold the (deterministic) initial weights.
        self.init = {s.name: copy.deepcopy(s.module.net.state_dict()) for s in trainer.arm_states}

    def __call__(self, trainer: "CoupledTrainer", epoch: int) -> None:
        if not trainer.is_main:
            return
        nets = {s.name: s.module.net for s in trainer.arm_states}
        init = {s.name: (self.init[s.name] if s.arm.init_seed is None else None) for s in trainer.arm_states}
        for row in alignment_rows(nets, init, trainer.pairs, self.loaders, trainer.cfg, epoch, trainer.step,
                                  trainer.device):
            trainer._log(row)


ALIGN_FIELDS = ["epoch", "step", "split", "layer", "arm_a", "arm_b", "linear_cka", "debiased_cka", "rsa",
                "rsa_rdm", "rsa_corr", "sim_gap", "sim_gap_rel", "sim_gap_per_entry", "sim_gap_centred_rel", "repr_angle_deg",
                "weight_gap_mean", "weight_gap_sum", "weight_rel_l2", "weight_angle_deg", "displacement_angle_deg"]


def align_run(run_dir: str | Path, max_train: int | None = None, max_test: int | None = None,
              layers: list[str] | None = None, rsa_corr: str | None = None, quality: bool = False,
              layerwise: bool = False) -> Path:
    """Recompute alignment rows from every ``checkpoints/epoch_XXXX.pt`` of a run → ``alignment.csv``.

    Options override the run's ``eval`` settings (more samples, more layers, Spearman RSA);
    ``quality=True`` also writes ``quality.csv`` (per arm and checkpoint: kNN, linear probe, few-shot,
    CDNV, directional CDNV); ``layerwise=True`` writes, for the last checkpoint and every arm pair,
    the block-by-block linear CKA matrix on the test evaluation set (``layerwise_<a>_<b>.csv`` + ``.png``).
    """
    from repalign.config import load_config
    from repalign.training.checkpoint import load_checkpoint
    from repalign.training.rundir import RunDir
    from repalign.training.trainer import CoupledTrainer

    run = RunDir(run_dir, write=False)
    overrides = [f"eval.max_train={max_train}"] if max_train else []
    overrides += [f"eval.max_test={max_test}"] if max_test else []
    overrides += [f"eval.layers=[{','.join(layers)}]"] if layers else []
    overrides += [f"eval.rsa_corr={rsa_corr}"] if rsa_corr else []
    cfg = load_config(run.path / "config.yaml", overrides)
    trainer = CoupledTrainer(cfg, None, evaluator=None)
    ckpts = sorted(run.ckpt_dir.glob("epoch_*.pt"))
    if not ckpts:
        raise ValueError(f"{run.ckpt_dir} holds no epoch_XXXX.pt checkpoints (was evaluation enabled?)")
    loaders = make_eval_loaders(cfg, trainer.train_source, trainer.test_source, trainer.image_size,
                                trainer.channels)
    # A freshly built trainer holds the run's (deterministic) initial weights, as the Evaluator does.
    init_of = {s.name: (copy.deepcopy(s.module.net.state_dict()) if s.arm.init_seed is None else None)
               for s in trainer.arm_states}
    out = run.path / "alignment.csv"
    quality_rows: list[dict[str, Any]] = []
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ALIGN_FIELDS, extrasaction="ignore")
        w.writeheader()
        for path in ckpts:
            state = load_checkpoint(path)
            for s in trainer.arm_states:
                s.module.load_state_dict(state["arms"][s.name])
            nets = {s.name: s.module.net for s in trainer.arm_states}
            for row in alignment_rows(nets, init_of, trainer.pairs, loaders, cfg, state["epoch"], state["step"],
                                      trainer.device, quality=quality):
                if row["kind"] == "align":
                    w.writerow(row)
                else:
                    quality_rows.append(row)
    if layerwise:  # the trainer's modules now hold the last checkpoint's weights
        nets = {s.name: s.module.net for s in trainer.arm_states}
        for a, b in trainer.pairs:
            write_layerwise(nets[a], nets[b], loaders["test"], run.path / f"layerwise_{a}_{b}", (a, b))
    if quality:
        fields = list(dict.fromkeys(k for r in quality_rows for k in r if k != "kind"))
        with open(run.path / "quality.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([{k: v for k, v in r.items() if k != "kind"} for r in quality_rows])
    return out


def write_layerwise(net_a: nn.Module, net_b: nn.Module, loader: Any, stem: Path,
                    names: tuple[str, str]) -> Path:
    """Layer-wise linear CKA between every block of two nets → ``stem.csv`` and a heatmap ``stem.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repalign.metrics import layerwise_cka

    res = layerwise_cka(net_a, net_b, loader)
    m = res["matrix"].double()
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"{names[0]} \\ {names[1]}", *res["names_b"]])
        for name, row in zip(res["names_a"], m.tolist()):
            w.writerow([name, *[f"{v:.6f}" for v in row]])
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * m.shape[1], 1.0 + 0.6 * m.shape[0]))
    im = ax.imshow(m.numpy(), vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_xticks(range(m.shape[1]), res["names_b"], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(m.shape[0]), res["names_a"], fontsize=7)
    ax.set_xlabel(f"{names[1]} blocks")
    ax.set_ylabel(f"{names[0]} blocks")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if m[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="linear CKA (unitless)")
    ax.set_title(f"layer-wise CKA: {names[0]} vs {names[1]} (test split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    plt.close(fig)
    return stem.with_suffix(".csv")
