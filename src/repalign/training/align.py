"""``repalign align RUN_DIR``: alignment (and quality, layer-wise CKA) recomputed from a run's checkpoints.

Builds the run's :class:`~repalign.training.trainer.CoupledTrainer` (no evaluator, no run directory) to
get its arms, data and initial weights, loads every evaluation checkpoint and computes the rows with the
same :func:`~repalign.training.evaluate.alignment_rows` as training, so the numbers agree.
"""
from __future__ import annotations

import copy
import csv
import os
from pathlib import Path
from typing import Any

from torch import nn

from repalign.schema import align_fields
from repalign.training.evaluate import UntrainedBaseline, alignment_rows, make_eval_loaders


def model_checkpoints(ckpt_dir: Path, steps_per_epoch: int) -> list[Path]:
    """The evaluation checkpoints of a run (``epoch_XXXX.pt`` and mid-epoch ``step_XXXXXXXX.pt``),
    in step order."""
    paths = list(ckpt_dir.glob("epoch_*.pt")) + list(ckpt_dir.glob("step_*.pt"))

    def step_of(p: Path) -> int:
        kind, num = p.stem.split("_", 1)
        return int(num) * steps_per_epoch if kind == "epoch" else int(num)

    return sorted(paths, key=step_of)


def latest_state_warning(ckpt_dir: Path) -> str | None:
    """The one-line warning when the run's latest state is not ``last.pt`` (corrupt or missing, so
    ``last.prev.pt`` holds it — the file ``--resume`` and ``export`` would use, and its step), or when
    neither loads; ``None`` when ``last.pt`` verifies or the run has neither file. The evaluation
    checkpoints ``align`` reads are separate files and unaffected."""
    from repalign.training.checkpoint import CheckpointError, load_latest, prev_path

    last = ckpt_dir / "last.pt"
    if not (last.exists() or prev_path(last).exists()):
        return None
    try:
        state, used, problems = load_latest(last)
    except CheckpointError as e:
        return f"repalign: warning: {e}; the run cannot be resumed or exported from its latest state"
    from repalign.training.checkpoint import fallback_warning

    return fallback_warning(problems, used, state.get("step") if isinstance(state, dict) else None)


def align_run(run_dir: str | Path, max_train: int | None = None, max_test: int | None = None,
              layers: list[str] | None = None, rsa_corr: str | None = None, quality: bool = False,
              layerwise: bool = False, trust_code: bool | None = None, progress: bool | None = None) -> Path:
    """Recompute alignment rows from every ``checkpoints/epoch_XXXX.pt`` of a run → ``alignment.csv``.

    Options override the run's ``eval`` settings (more samples, more layers, Spearman RSA);
    ``quality=True`` also writes ``quality.csv`` (per arm and checkpoint: kNN, linear probe, few-shot,
    CDNV, directional CDNV); ``layerwise=True`` writes, for the last checkpoint and every arm pair,
    the block-by-block linear CKA matrix on the test evaluation set (``layerwise_<a>_<b>.csv`` + ``.png``).

    Rebuilding the run imports its plug-ins (objectives, encoder, source): a run whose config names any
    is refused with one line unless ``trust_code=True`` (``--trust-code``) or ``REPALIGN_TRUST_CODE=1``;
    module references never resolve inside the run directory (:mod:`repalign.plugins`). A corrupt
    ``last.pt`` is warned about on stderr (:func:`latest_state_warning`).

    ``progress``: one bar over the checkpoints on a terminal, else one line per finished checkpoint
    (``align N/M checkpoints (step S) · elapsed · ETA``, :mod:`repalign.progress`) on stderr; ``None``
    follows the run's ``logging.progress``.
    """
    import sys

    from repalign.config import check_references, code_references, load_config
    from repalign.plugins import guard, require_trust
    from repalign.training.rundir import RunDir

    run = RunDir(run_dir, write=False)
    overrides = [f"eval.max_train={max_train}"] if max_train else []
    overrides += [f"eval.max_test={max_test}"] if max_test else []
    overrides += [f"eval.layers=[{','.join(layers)}]"] if layers else []
    overrides += [f"eval.rsa_corr={rsa_corr}"] if rsa_corr else []
    cfg = load_config(run.path / "config.yaml", overrides, check_files=False)
    require_trust(code_references(cfg), trust_code, "repalign align", run.path)
    msg = latest_state_warning(run.ckpt_dir)
    if msg:
        print(msg, file=sys.stderr)
    with guard(run.path, trust_code, "repalign align"):
        check_references(cfg)
        return _align(run, cfg, quality, layerwise,
                      bool(cfg["logging"]["progress"]) if progress is None else bool(progress))


def _align(run: Any, cfg: dict[str, Any], quality: bool, layerwise: bool, progress: bool = True) -> Path:
    from repalign.training.checkpoint import load_checkpoint
    from repalign.training.trainer import CoupledTrainer

    if not model_checkpoints(run.ckpt_dir, 1):  # before the data are loaded: nothing to align
        from repalign.errors import RunDirError

        raise RunDirError(f"run {str(run.path)!r} has no evaluation checkpoints (checkpoints/epoch_XXXX.pt, "
                          "step_XXXXXXXX.pt) to align: it has not reached an evaluation yet (eval.every, "
                          "eval.schedule, eval.steps) or they were deleted")
    trainer = CoupledTrainer(cfg, None, evaluator=None)
    ckpts = model_checkpoints(run.ckpt_dir, trainer.steps_per_epoch)
    baseline = UntrainedBaseline(cfg, trainer.channels, trainer.image_size) if cfg["eval"]["untrained_baseline"] else None
    arms = {s.name: s.arm for s in trainer.arm_states}
    loaders = make_eval_loaders(cfg, trainer.train_source, trainer.test_source, trainer.image_size,
                                trainer.channels)
    # A freshly built trainer holds the run's (deterministic) initial weights, as the Evaluator does.
    init_of = {s.name: (copy.deepcopy(s.module.net.state_dict()) if s.arm.init_seed is None else None)
               for s in trainer.arm_states}
    out = run.path / "alignment.csv"
    quality_rows: list[dict[str, Any]] = []
    align_rows: list[dict[str, Any]] = []
    from repalign.progress import Progress

    bar = Progress("align", len(ckpts), unit="checkpoints", enabled=progress)
    for path in ckpts:
        state = load_checkpoint(path)
        for s in trainer.arm_states:
            s.module.load_state_dict(state["arms"][s.name])
        nets = {s.name: s.module.net for s in trainer.arm_states}
        for row in alignment_rows(nets, init_of, trainer.pairs, loaders, cfg, state["epoch"], state["step"],
                                  trainer.device, quality=quality, arms=arms, baseline=baseline):
            (quality_rows if row["kind"] == "eval" else align_rows).append(row)
        bar.done(f"step {state['step']}")
    bar.close()
    align_rows = [r for r in align_rows if r["kind"] != "event"]
    # written under a temp name and renamed: a failure leaves the previous file (or none)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=align_fields(), extrasaction="ignore")
        w.writeheader()
        w.writerows(align_rows)
    os.replace(tmp, out)
    if layerwise:  # the trainer's modules now hold the last checkpoint's weights
        nets = {s.name: s.module.net for s in trainer.arm_states}
        for a, b in trainer.pairs:
            write_layerwise(nets[a], nets[b], loaders["test"], run.path / f"layerwise_{a}_{b}", (a, b))
    if quality:
        fields = list(dict.fromkeys(k for r in quality_rows for k in r if k != "kind"))
        tmp = run.path / f".quality.csv.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows([{k: v for k, v in r.items() if k != "kind"} for r in quality_rows])
        os.replace(tmp, run.path / "quality.csv")
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
