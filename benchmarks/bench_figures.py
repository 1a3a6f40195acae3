"""Time every `repalign reproduce FIG --scale cpu` on this machine (issue 9: ≤ 25 min per figure on 2 cores).

Usage::

    PYTHONPATH=src python benchmarks/bench_figures.py [fig1 fig2 ...] [--scale cpu|tiny] [--out runs/bench-figures]

Writes ``benchmarks/results/figures-<scale>.json`` (seconds per figure, the headline numbers from each
figure's tables) and prints a Markdown table. Finished runs are reused, so an interrupted benchmark
can be re-run (the time then only covers what was left; pass a fresh ``--out`` for a clean timing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from repalign.experiments.reproduce import FIGURES, reproduce  # noqa: E402
from repalign.training.checkpoint import write_atomic  # noqa: E402

LIMIT_S = 25 * 60


class LoadSampler:
    """Samples the 1-minute load average every ``every`` seconds while a figure runs, so a timing says
    whether it had the cores to itself (the figure's own process accounts for ≈ its thread count)."""

    def __init__(self, every: float = 30.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"mean": round(sum(self.samples) / len(self.samples), 2), "max": round(max(self.samples), 2),
                "samples": len(self.samples)}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figs", nargs="*", default=list(FIGURES), help=f"figures (default all: {', '.join(FIGURES)})")
    ap.add_argument("--scale", default="cpu", choices=["cpu", "tiny"])
    ap.add_argument("--out", default="runs/bench-figures")
    args = ap.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "scale": args.scale, "figures": {}}
    res_dir = Path(__file__).resolve().parent / "results"
    res_dir.mkdir(exist_ok=True)
    path = res_dir / f"figures-{args.scale}.json"
    if path.exists():
        old = json.loads(path.read_text())
        results["figures"].update(old.get("figures", {}))
    for fig in args.figs:
        t0 = time.perf_counter()
        with LoadSampler() as load:
            out = reproduce(fig, args.scale, Path(args.out) / fig, log=lambda s: print(s, flush=True))
        secs = time.perf_counter() - t0
        man = json.loads((out / "reproduce.json").read_text())
        results["figures"][fig] = {"seconds": round(secs, 1), "within_limit": secs <= LIMIT_S, "out": str(out),
                                   "cpus": os.cpu_count(), "threads": torch_threads(), "load_1min": load.summary(),
                                   "tables": man.get("tables", [])}
        write_atomic(path, json.dumps(results, indent=2, default=str).encode())  # kill -9 leaves the old file
        print(f"{fig}: {secs / 60:.1f} min", flush=True)
    print("\n| figure | CPU time (min) | ≤ 25 min |\n|---|---|---|")
    for fig, r in results["figures"].items():
        print(f"| {fig} | {r['seconds'] / 60:.1f} | {'yes' if r['within_limit'] else 'NO'} |")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
