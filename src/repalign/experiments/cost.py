"""Paper-scale cost: GPU-hours of the ResNet-50 sweeps (FLOP estimate, or measured throughput from a
``benchmarks/gpu_check.py`` result), the paper-scale plans, the ``torchrun`` commands and the plan text that
``repalign reproduce FIG --scale paper`` writes."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from repalign.config import ConfigError
from repalign.experiments.figures.common import SweepPlan, _spec
from repalign.experiments.sweep import expand, load_spec, run_sweep
from repalign.results import point_status

PAPER_DATA = {  # config, train images, fwd GFLOPs per image, total classes
    "cifar100": ("cifar100_resnet50", 50_000, 1.3, 100),
    "tiny_imagenet": ("tiny_imagenet_resnet50", 100_000, 0.34, 200),
    "mini_imagenet": ("mini_imagenet_resnet50", 50_000, 4.1, 100),
    "imagenet": ("imagenet_resnet50", 1_281_167, 4.1, 1000),
}
#: Effective throughput assumed for the GPU-hour estimates: one A100-class GPU sustaining ≈ 25 TFLOP/s
#: end to end (≈ 8 % of bf16 peak — small images, augmentation and data loading dominate; in line with
#: public SimCLR ResNet timings); evaluation adds ≈ 10 %. A rough planning figure, not a measurement.
GPU_TFLOPS = 25.0


def gpu_hours(dataset: str, arms: int, epochs: int, fraction: float = 1.0, views: int = 2,
              tflops: float = GPU_TFLOPS) -> float:
    """Estimated GPU-hours of one coupled paper-scale run: arms × epochs × N × views × 3 × GFLOPs / throughput
    (``tflops``: effective TFLOP/s of the whole step; +10 % for evaluation)."""
    _cfg, n, gf, _c = PAPER_DATA[dataset]
    flops = arms * epochs * n * fraction * views * 3 * gf * 1e9
    return 1.1 * flops / (tflops * 1e12) / 3600


#: Folder of ``benchmarks/gpu_check.py`` results (``<gpu-slug>.json``); ``$REPALIGN_GPU_RESULTS`` overrides it.
GPU_RESULTS_ENV = "REPALIGN_GPU_RESULTS"
#: GPU whose measurement plans the cost when several are present (``--gpu``); ``$REPALIGN_GPU`` sets a default.
GPU_ENV = "REPALIGN_GPU"


@dataclass
class CostBasis:
    """Throughput behind a GPU-hour figure: ``source`` is ``measured`` (a ``gpu_check.py`` result) or
    ``estimate`` (:data:`GPU_TFLOPS`); ``tflops`` the effective TFLOP/s of a whole coupled step (data wait
    included); ``note`` says where it came from, in one sentence."""

    source: str
    tflops: float
    note: str
    gpu: str | None = None
    path: str | None = None


def gpu_results_dirs() -> list[Path]:
    """Where measured GPU results are looked for: ``$REPALIGN_GPU_RESULTS``, else ``benchmarks/results/gpu``
    under the working directory and under the repalign checkout (when installed from one)."""
    if os.environ.get(GPU_RESULTS_ENV):
        return [Path(os.environ[GPU_RESULTS_ENV])]
    here = Path("benchmarks/results/gpu")
    repo = Path(__file__).resolve().parents[3] / "benchmarks" / "results" / "gpu"
    return list(dict.fromkeys([here.resolve(), repo]))


def _gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _measured(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(result, "")`` for a usable gpu_check result, else ``(None, why not)``."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name}: unreadable ({e.__class__.__name__})"
    basis = d.get("cost_basis") if isinstance(d, dict) else None
    if not isinstance(basis, dict):
        return None, f"{path.name}: no cost_basis"
    if d.get("dry_run"):
        return None, f"{path.name}: a --dry-run result (CPU, tiny sizes)"
    t = basis.get("effective_tflops")
    if not isinstance(t, (int, float)) or not t > 0:
        return None, f"{path.name}: cost_basis.effective_tflops missing or not positive"
    return d, ""


def cost_basis(gpu: str | None = None, dirs: Sequence[Path] | None = None) -> CostBasis:
    """The throughput to plan paper-scale GPU-hours with.

    Measured when a ``gpu_check.py`` result (``<slug>.json``, not a dry run) exists for the chosen GPU:
    ``gpu`` (else ``$REPALIGN_GPU``) matched against the file name and the recorded GPU name
    (case-insensitive, punctuation-insensitive substring), or — with no GPU chosen — the only result
    present. Otherwise the FLOP estimate (:data:`GPU_TFLOPS`), with a note saying why.
    """
    gpu = gpu or os.environ.get(GPU_ENV) or None
    dirs = list(dirs) if dirs is not None else gpu_results_dirs()
    found: dict[str, Path] = {}
    for d in dirs:
        for f in sorted(Path(d).glob("*.json")) if Path(d).is_dir() else []:
            found.setdefault(f.name, f)
    usable, skipped = [], []
    for f in found.values():
        res, why = _measured(f)
        if res is None:
            skipped.append(why)
        else:
            usable.append((f, res))
    est = f"FLOP estimate at {GPU_TFLOPS:.0f} effective TFLOP/s (A100-class assumption, not a measurement)"
    if gpu:
        want = _gpu_slug(gpu)
        match = [(f, r) for f, r in usable if want in _gpu_slug(f.stem) or want in _gpu_slug(str(r.get("gpu", {}).get("name", "")))]
        if not match:
            have = ", ".join(f.stem for f, _ in usable) or "none"
            return CostBasis("estimate", GPU_TFLOPS, f"{est}: no measured result for GPU {gpu!r} (measured: {have})")
        if len(match) > 1:
            names = ", ".join(f.stem for f, _ in match)
            raise ConfigError(f"reproduce --gpu {gpu!r}: matches several measured results ({names}); give a longer name")
        f, r = match[0]
    elif len(usable) == 1:
        f, r = usable[0]
    elif usable:
        names = ", ".join(f.stem for f, _ in usable)
        return CostBasis("estimate", GPU_TFLOPS, f"{est}: several measured GPUs ({names}); choose one with --gpu")
    else:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        return CostBasis("estimate", GPU_TFLOPS, f"{est}: no gpu_check result in {', '.join(map(str, dirs))}{why}")
    b = r["cost_basis"]
    name = str(r.get("gpu", {}).get("name") or f.stem)
    note = (f"measured on {name} by benchmarks/gpu_check.py ({f}): {b['effective_tflops']:.1f} effective TFLOP/s for a "
            f"coupled {b.get('arms', '?')}-arm {b.get('model', 'resnet50')} step at B = {b.get('batch', '?')}, "
            f"{b.get('image_size', '?')} px, {b.get('variant', '?')}, data wait included; other image sizes scaled by "
            "their FLOPs per image")
    return CostBasis("measured", float(b["effective_tflops"]), note, name, str(f))


def paper_plan(name: str, dataset: str, grid: dict[str, list], overrides: list[str], arms: int, epochs: int,
               fraction: Callable[[dict], float] | None = None) -> SweepPlan:
    cfg = PAPER_DATA[dataset][0]
    spec = {"base": cfg, "overrides": [f"train.epochs={epochs}", *overrides], "grid": grid}
    pts = expand(load_spec(dict(spec, out="unused")))
    hours = sum(gpu_hours(dataset, arms, epochs, fraction(p.values) if fraction else 1.0) for p in pts)
    return SweepPlan(name, dataset, spec, hours)


def paper_commands(fig: str, out: Path, nproc: int = 8, log: Callable[[str], None] = print,
                   plans: Sequence[SweepPlan] | None = None) -> tuple[list[str], float, bool]:
    """Write the paper-scale sweep specs/configs of ``plans`` (default: the figure's paper plans); return
    (commands, GPU-hours, all points done)."""
    import yaml

    from repalign.experiments.figures import FIGS

    cmds: list[str] = []
    hours = 0.0
    all_done = True
    for plan in (FIGS[fig].plans("paper") if plans is None else plans):
        spec = _spec(plan, out, 1)
        sw = out / plan.name
        sw.mkdir(parents=True, exist_ok=True)
        (out / f"sweep_{plan.name}.yaml").write_text(yaml.safe_dump(dict(plan.spec, out=str(sw)), sort_keys=False))
        run_sweep(spec, log=lambda s: None, dry_run=True)
        hours += plan.gpu_hours or 0.0
        for p in expand(spec):
            rd = sw / "points" / p.slug
            st = point_status(rd)
            if st == "done":
                continue
            all_done = False
            cmds.append(f"torchrun --nproc_per_node={nproc} -m repalign train {sw / 'configs' / (p.slug + '.yaml')} "
                        f"--run-dir {rd} --resume-if-possible && touch {rd / 'DONE'}")
    return cmds, hours, all_done


def paper_plan_text(fig: str, out: Path, cmds: Sequence[str], hours: float, nproc: int,
                    basis: CostBasis | None = None) -> str:
    """The paper-scale plan: sweep specs, GPU-hours (saying whether from a measurement or the FLOP
    estimate), the commands."""
    from repalign.experiments.figures import FIGS

    d = FIGS[fig]
    basis = basis or CostBasis("estimate", GPU_TFLOPS, f"FLOP estimate at {GPU_TFLOPS:.0f} effective TFLOP/s")
    what = "from measured throughput" if basis.source == "measured" else "from the FLOP estimate"
    lines = [f"# {d.title} — paper scale", "", d.description, "",
             f"Sweep specs: {', '.join(str(p) for p in sorted(out.glob('sweep_*.yaml')))}",
             f"Cost: ≈ {hours:,.0f} GPU-hours {what} (+10 % evaluation; ResNet-50 FLOPs × 3 for forward+backward × "
             f"2 views × arms). Source: {basis.note}.", "",
             f"Run every point (torchrun on {nproc} GPUs per run; `--resume-if-possible` continues an interrupted run "
             "from its last checkpoint; re-running this command lists only unfinished points):", "",
             "```"] + list(cmds) + ["```", "",
                                    "Or run a sweep on SLURM: `repalign sweep SPEC --launcher slurm` (extra `slurm`).",
                                    f"Afterwards plot with: `repalign reproduce {fig} --scale paper --out {out}`", ""]
    return "\n".join(lines)
