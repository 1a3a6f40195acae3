"""Benchmark (a): one coupled step of K = 4 arms vs the sum of 4 single-arm steps on the same batch.

Goal (issue 2): coupling overhead ≤ 10 %. Both sides run the trainer's own ``train_step`` on an
identical pre-built batch of K = 2 views (the view production, shared by design in a coupled run,
is excluded from both sides so only the model work is compared). Each measurement is the median
over repetitions after warm-up; the two sides are interleaved to share the machine's noise.

    python benchmarks/bench_coupled.py [--batch 256] [--reps 15] [--encoder small_cnn]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from repalign.config import load_config, validate
from repalign.training import CoupledTrainer

ARMS = {"cl": {"objective": "cl"}, "nscl": {"objective": "nscl"}, "scl": {"objective": "scl"},
        "ce": {"objective": "ce"}}


def _trainer(arms: dict, args: argparse.Namespace) -> CoupledTrainer:
    cfg = load_config(None, [
        "data.source=fashion_mnist", "data.max_per_class=60", "data.test_max_per_class=10",
        f"model.encoder={args.encoder}", "model.projector_hidden=256", "model.projector_out=64",
        f"train.batch_size={args.batch}", "train.epochs=1000", "train.device=cpu", "logging.progress=false",
        "train.threads=2"])
    cfg = validate({**cfg, "arms": arms})
    return CoupledTrainer(cfg, None, evaluator=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--encoder", default="small_cnn")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "coupled.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    views = torch.randn(2, args.batch, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch,))
    batch = {"shared": (views, labels, torch.arange(args.batch))}
    coupled = _trainer(ARMS, args)
    singles = {n: _trainer({n: spec}, args) for n, spec in ARMS.items()}

    def timed(tr: CoupledTrainer) -> float:
        t0 = time.perf_counter()
        tr.train_step(batch)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        timed(coupled)
        for tr in singles.values():
            timed(tr)
    t_coupled, t_sum = [], []
    per_arm = {n: [] for n in singles}
    for _ in range(args.reps):
        t_coupled.append(timed(coupled))
        s = 0.0
        for n, tr in singles.items():
            t = timed(tr)
            per_arm[n].append(t)
            s += t
        t_sum.append(s)
    mc, ms = statistics.median(t_coupled), statistics.median(t_sum)
    overhead = mc / ms - 1
    lines = [
        "# Coupled-step benchmark: 4 arms in lockstep vs 4 single-arm steps",
        "",
        f"- date: {time.strftime('%Y-%m-%d')}; machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}",
        f"- setting: {args.encoder}, K = 2 views × B = {args.batch} (28×28×1), arms cl/nscl/scl/ce, fp32, "
        f"SGD; median of {args.reps} interleaved repetitions after {args.warmup} warm-up",
        "",
        "| measurement | median ms |",
        "|---|---|",
        f"| coupled step (4 arms) | {1e3 * mc:.1f} |",
        *[f"| single-arm step: {n} | {1e3 * statistics.median(v):.1f} |" for n, v in per_arm.items()],
        f"| sum of single-arm steps | {1e3 * ms:.1f} |",
        "",
        f"**Coupling overhead: {100 * overhead:+.1f} %** (goal ≤ 10 %: {'met' if overhead <= 0.10 else 'NOT met'}).",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
