"""repalign sweep SPEC [key=[v1,v2] ...]: a resumable grid of coupled runs → OUT/summary.csv."""
from __future__ import annotations

import argparse


def cmd_sweep(args: argparse.Namespace) -> int:
    from repalign.experiments.sweep import load_spec, run_sweep

    spec = load_spec(args.spec, args.grid, out=args.out, processes=args.processes, launcher=args.launcher)
    res = run_sweep(spec, dry_run=args.dry_run, redo_stale=args.redo_stale)
    if not args.dry_run:
        print(f"summary: {res.summary}")
        if args.report:
            from repalign.report import write_report

            print(f"report: {write_report(res.out)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of coupled runs (resumable) and aggregate summary.csv",
                       description="SPEC is a sweep YAML ({base, overrides, grid, product, out, processes}) or a "
                                   "config (path or bundled name) followed by grid strings such as "
                                   "data.num_classes=[5,10] seed=[0,1] (key=value without a list is a fixed override).")
    p.add_argument("spec", help="sweep spec YAML, or a config path / bundled name")
    p.add_argument("grid", nargs="*", help="key=[v1,v2,...] grid axes or key=value fixed overrides")
    p.add_argument("--out", help="sweep directory (default: spec's out, else runs/sweep)")
    p.add_argument("--processes", type=int, default=None, help="local processes running points in parallel")
    p.add_argument("--launcher", choices=["auto", "inline", "local", "slurm"], default=None,
                   help="inline (this process), local (subprocesses) or slurm (submitit, extra `slurm`)")
    p.add_argument("--dry-run", action="store_true", help="write configs and print the commands; train nothing")
    p.add_argument("--report", action="store_true", help="write OUT/report/report.html afterwards")
    p.add_argument("--redo-stale", action="store_true",
                   help="re-run the finished or partial points whose run was made with another config than the "
                        "spec now asks for (without it the sweep stops, listing them and the differing keys)")
    p.set_defaults(func=cmd_sweep)
