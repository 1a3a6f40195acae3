"""repalign reproduce FIG --scale cpu|paper [--out DIR] [--quick|--tiny] [--seeds N] [--run]."""
from __future__ import annotations

import argparse


def cmd_reproduce(args: argparse.Namespace) -> int:
    from repalign.experiments.reproduce import FIGS, reproduce

    scale = "tiny" if args.tiny else args.scale
    figs = list(FIGS) if args.fig == "all" else [args.fig]
    for f in figs:
        out = args.out if len(figs) == 1 or args.out is None else f"{args.out}/{f}"
        reproduce(f, scale, out, processes=args.processes, run=args.run, nproc=args.nproc, gpu=args.gpu,
                  seeds=args.seeds, redo_stale=args.redo_stale)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from repalign.experiments import FIGURES

    p = sub.add_parser("reproduce", help="build the runs of a paper figure and plot it (PNG + CSV + report.html)",
                       description="Run the sweeps behind one of the paper's figures at the chosen scale and write "
                                   "FIG.png, FIG.csv, reproduce.json and report.html. At paper scale it writes the "
                                   "sweep specs and prints the torchrun commands with a GPU-hour estimate.")
    p.add_argument("fig", choices=[*FIGURES, "all"], help="figure to reproduce, or all")
    p.add_argument("--scale", choices=["cpu", "paper", "tiny"], default="cpu",
                   help="cpu: the calibrated regime (configs/regime/cpu.yaml: strokes, small_cnn; <= 25 min per figure "
                        "on 2 cores); paper: ResNet-50 configs (GPU)")
    p.add_argument("--quick", "--tiny", dest="tiny", action="store_true",
                   help="smoke test: the seconds-long 'tiny' scale (2 seeds, tiny data and model); checks the pipeline, "
                        "decides nothing")
    p.add_argument("--out", help="output folder (default runs/reproduce/FIG-SCALE)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="train seeds 0..N-1 instead of the scale's default (tiny 2, cpu 4, paper 3); narrower "
                        "intervals, N/default times the cost; finished runs of the default seeds are reused")
    p.add_argument("--processes", type=int, default=1, help="local processes for the sweeps")
    p.add_argument("--redo-stale", action="store_true",
                   help="re-run finished points whose run was made with another config than the figure's plan asks "
                        "for (without it reproduce stops, naming them and the differing keys)")
    p.add_argument("--run", action="store_true", help="--scale paper: actually train here instead of printing commands")
    p.add_argument("--nproc", type=int, default=8, help="GPUs per run in the printed torchrun commands")
    p.add_argument("--gpu", default=None,
                   help="--scale paper: plan GPU-hours from this GPU's measured benchmarks/results/gpu/*.json "
                        "(make gpu-check; default $REPALIGN_GPU, else the only result present, else the FLOP estimate)")
    p.set_defaults(func=cmd_reproduce)
