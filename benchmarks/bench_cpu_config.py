"""Benchmark (issue 18, item 3): which CPU configuration runs multi-seed figure points fastest on 2 cores
without changing results.

Workload: two independent points (seeds 0 and 1) of a shortened CPU regime run
(``configs/regime/cpu.yaml`` with arms cl + nscl, ``train.max_steps`` steps of B = 128 and an
evaluation of 128 + 128 images at step 0 and the last), each a ``repalign train`` subprocess, as a sweep's local launcher
starts them. Configurations, interleaved (the order rotates every repetition, so all share the
machine's noise):

- ``2x1``: both points at once, 1 thread each (``OMP_NUM_THREADS=1``, ``train.threads=1``);
- ``1x2``: the same two points one after the other, 2 threads each;
- each with ``OMP_WAIT_POLICY=PASSIVE`` and with the OpenMP default (variable unset: threads spin).

Throughput = 2 points / wall time of the pair. ``train.channels_last`` on vs off is timed in this process
(1 thread, the trainer's own ``train_step`` on one pre-built regime batch, fresh trainers from the same
seed, interleaved), with the losses after the same steps compared bitwise. Reported: median and spread (min–max) per configuration
and the ratios of medians. "Results unchanged": metrics.jsonl of seed 0 (timing fields dropped) compared
between configurations — bitwise, else the largest absolute difference of any logged value.
The machine's load average is recorded at start, before every measurement and at the end (a background
figure sweep may share the cores).

    python benchmarks/bench_cpu_config.py [--reps 3] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "src" / "repalign" / "configs" / "regime" / "cpu.yaml"
TIMING = ("wall_s", "samples_per_s")
CONFIGS = {  # name: (processes at once, threads each, wait policy or None = unset, channels_last)
    "2x1_passive": (2, 1, "PASSIVE", False),
    "1x2_passive": (1, 2, "PASSIVE", False),
    "2x1_default": (2, 1, None, False),
    "1x2_default": (1, 2, None, False),
}


def _cmd(run_dir: Path, seed: int, threads: int, channels_last: bool, steps: int) -> list[str]:
    # torch (hence libgomp, which reads OMP_WAIT_POLICY when it loads) is imported before repalign's CLI, whose
    # main() sets OMP_WAIT_POLICY=PASSIVE when unset: the "default" configurations really run OpenMP's default
    return [sys.executable, "-c", "import sys, torch; from repalign.cli import main; sys.exit(main())",
            "train", str(BASE), "--run-dir", str(run_dir), "--overwrite",
            f"seed={seed}", "train.epochs=1", f"train.max_steps={steps}", f"train.threads={threads}",
            f"train.channels_last={'true' if channels_last else 'false'}", "eval.schedule=[0]",
            "eval.max_train=128", "eval.max_test=128",
            "train.log_every=1", "logging.progress=false", "arms={cl: {objective: cl}, nscl: {objective: nscl}}"]


def _env(threads: int, policy: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def measure(name: str, tmp: Path, rep: int, steps: int) -> float:
    """Wall seconds for the two points (seeds 0, 1) under configuration ``name``."""
    procs, threads, policy, cl = CONFIGS[name]
    env = _env(threads, policy)
    dirs = [tmp / f"{name}-r{rep}-s{s}" for s in (0, 1)]
    t0 = time.perf_counter()
    if procs == 2:
        ps = [subprocess.Popen(_cmd(d, s, threads, cl, steps), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True) for s, d in enumerate(dirs)]
        for p in ps:
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"bench_cpu_config: {name} failed: {err.strip().splitlines()[-1:]}")
    else:
        for s, d in enumerate(dirs):
            r = subprocess.run(_cmd(d, s, threads, cl, steps), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode:
                raise SystemExit(f"bench_cpu_config: {name} failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0


def channels_last(reps: int, steps: int) -> dict:
    """Seconds per coupled step (cl + nscl, B = 128, 1 thread) with ``train.channels_last`` off / on, and
    whether the losses after ``steps`` steps agree."""
    import torch

    from repalign.config import load_config
    from repalign.training import CoupledTrainer

    torch.set_num_threads(1)

    def trainer(on: bool, sources=None) -> CoupledTrainer:
        cfg = load_config(str(BASE), ["train.threads=1", f"train.channels_last={'true' if on else 'false'}",
                                      "logging.progress=false", "arms={cl: {objective: cl}, nscl: {objective: nscl}}"])
        return CoupledTrainer(cfg, None, evaluator=None, sources=sources)

    off = trainer(False)
    on = trainer(True, (off.train_source, off.test_source))  # same data, same seed → same initial weights
    g = torch.Generator().manual_seed(0)
    b = off.batch_size
    views = torch.rand(off.num_views, b, off.channels, off.image_size, off.image_size, generator=g)
    batch = {k: (views, torch.randint(0, off.num_classes, (b,), generator=g), torch.arange(b)) for k in off.streams}
    losses: dict[str, list[float]] = {}
    for mode, t in (("off", off), ("on", on)):  # the first steps: losses compared (also the warm-up)
        rows = [t.train_step(batch, log=True) for _ in range(steps)] + [t.check_nonfinite()]
        losses[mode] = [r["loss"] for rs in rows for r in rs if r.get("kind") == "train"]
    secs: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(reps):
        for mode in (("off", "on") if rep % 2 == 0 else ("on", "off")):
            t = off if mode == "off" else on
            t0 = time.perf_counter()
            for _ in range(steps):
                t.train_step(batch)
            secs[mode].append((time.perf_counter() - t0) / steps)
    a, c = losses["off"], losses["on"]
    return {"s_per_step": {k: [round(x, 4) for x in v] for k, v in secs.items()},
            "median_s_per_step": {k: round(statistics.median(v), 4) for k, v in secs.items()},
            "losses_off": a, "losses_on": c, "bitwise_identical": a == c and bool(a),
            "max_abs_loss_diff": max((abs(x - y) for x, y in zip(a, c)), default=None)}


def _rows(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMING})
    return out


def compare(a: Path, b: Path) -> dict:
    """Bitwise equality of two runs' metrics.jsonl (timing fields dropped), else the largest difference."""
    ra, rb = _rows(a), _rows(b)
    if len(ra) != len(rb):
        return {"identical": False, "note": f"{len(ra)} vs {len(rb)} rows"}
    worst, worst_rel, worst_key, worst_loss, n_diff = 0.0, 0.0, "", 0.0, 0
    for x, y in zip(ra, rb):
        for k in x:
            vx, vy = x[k], y.get(k)
            if isinstance(vx, float) and isinstance(vy, float):
                if vx != vy:
                    n_diff += 1
                    rel = abs(vx - vy) / max(abs(vx), abs(vy))
                    if rel > worst_rel:
                        worst_rel, worst_key = rel, f"{x['kind']}.{k}"
                    worst = max(worst, abs(vx - vy))
                    if x["kind"] == "train" and k == "loss":
                        worst_loss = max(worst_loss, abs(vx - vy))
            elif vx != vy:
                return {"identical": False, "note": f"row {x.get('kind')} key {k}: {vx!r} vs {vy!r}"}
    final = [r["loss"] for r in ra if r["kind"] == "train"][-2:], [r["loss"] for r in rb if r["kind"] == "train"][-2:]
    return {"identical": n_diff == 0, "values_differing": n_diff, "max_abs_diff": worst,
            "max_rel_diff": worst_rel, "max_rel_diff_key": worst_key,
            "max_abs_diff_train_loss": worst_loss, "last_losses": final}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cl-steps", type=int, default=4, help="coupled steps per channels_last measurement")
    ap.add_argument("--budget", type=float, default=600.0,
                    help="seconds: no repetition beyond the third starts after this (a loaded machine)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_config"))
    args = ap.parse_args()
    import torch

    load_start = os.getloadavg()
    t_all = time.perf_counter()
    times: dict[str, list[float]] = {n: [] for n in CONFIGS}
    loads: list[dict] = []
    names = list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="bench_cpu_config-") as td:
        tmp = Path(td)
        for rep in range(args.reps):
            if rep >= 3 and time.perf_counter() - t_all > args.budget:
                print(f"budget {args.budget:.0f} s spent: stopping after {rep} repetitions", flush=True)
                break
            order = names[rep % len(names):] + names[:rep % len(names)]
            for n in order:
                la = os.getloadavg()[0]
                secs = measure(n, tmp, rep, args.steps)
                times[n].append(secs)
                loads.append({"rep": rep, "config": n, "load1_before": la, "seconds": round(secs, 2)})
                print(f"rep {rep} {n}: {secs:.1f} s (load {la:.2f})", flush=True)
        ref = tmp / "1x2_passive-r0-s0"
        same = {f"{n} vs 1x2_passive": compare(tmp / f"{n}-r0-s0", ref) for n in names if n != "1x2_passive"}
        same["1x2_default vs 1x2_passive"] = compare(tmp / "1x2_default-r0-s0", ref)
        same["2x1_default vs 2x1_passive"] = compare(tmp / "2x1_default-r0-s0", tmp / "2x1_passive-r0-s0")
        same["2x1_passive rep 0 vs rep 1 (1 thread, repeatability)"] = compare(
            tmp / "2x1_passive-r0-s0", tmp / "2x1_passive-r1-s0") if args.reps > 1 else {}
        print("channels_last on / off (in this process, 1 thread) ...", flush=True)
        chl = channels_last(max(args.reps, 5), args.cl_steps)
    med = {n: statistics.median(v) for n, v in times.items()}
    thr = {n: 2 / med[n] for n in med}  # points per second

    def ratio(a: str, b: str) -> float:
        return round(thr[a] / thr[b], 3)

    ratios = {
        "2x1 / 1x2 throughput (PASSIVE)": ratio("2x1_passive", "1x2_passive"),
        "2x1 / 1x2 throughput (default wait policy)": ratio("2x1_default", "1x2_default"),
        "PASSIVE / default throughput, 2 processes x 1 thread": ratio("2x1_passive", "2x1_default"),
        "PASSIVE / default throughput, 1 process x 2 threads": ratio("1x2_passive", "1x2_default"),
        "2x1 PASSIVE / 1x2 default throughput": ratio("2x1_passive", "1x2_default"),
    }
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "workload": f"2 points (seeds 0, 1) of configs/regime/cpu.yaml, arms cl+nscl, train.max_steps={args.steps} "
                    f"(B = 128), evaluations (128 train / 128 test images) at step 0 and {args.steps}; each a `repalign train` subprocess",
        "reps": args.reps, "seconds": {n: [round(x, 2) for x in v] for n, v in times.items()},
        "median_s": {n: round(v, 2) for n, v in med.items()},
        "spread_s": {n: [round(min(v), 2), round(max(v), 2)] for n, v in times.items()},
        "ratios": ratios, "results_unchanged": same, "channels_last": chl,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "load_per_measurement": loads, "total_s": round(time.perf_counter() - t_all, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = [f"# CPU configuration benchmark (issue 18, item 3)", "",
          f"- date: {res['date']}; {res['cpu_count']} cores ({res['machine']}), torch {res['torch']}",
          f"- workload: {res['workload']}",
          f"- {args.reps} interleaved repetitions; load average (1/5/15 min) at start {res['loadavg_start']}, "
          f"at end {res['loadavg_end']} (the cores may be shared with a background figure sweep)", "",
          "| configuration | median s (2 points) | spread s | points / min |", "|---|---|---|---|"]
    for n in names:
        md.append(f"| {n} | {med[n]:.1f} | {min(times[n]):.1f}–{max(times[n]):.1f} | {60 * thr[n]:.2f} |")
    table_at = len(md)
    m = chl["median_s_per_step"]
    md += ["", f"channels_last (1 thread, in-process coupled step cl + nscl, B = 128, median of {len(chl['s_per_step']['off'])} × {args.cl_steps} steps): "
           f"off {1000 * m['off']:.0f} ms, on {1000 * m['on']:.0f} ms per step — throughput on / off "
           f"{m['off'] / m['on']:.2f}; losses after {args.cl_steps} steps "
           + ("bitwise identical" if chl["bitwise_identical"] else f"differ by ≤ {chl['max_abs_loss_diff']:.3g}")]
    res["ratios"]["channels_last on / off throughput (1 thread, coupled step)"] = round(m["off"] / m["on"], 3)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md += ["", "Results unchanged (metrics.jsonl of seed 0, timing fields dropped):", ""]
    for k, v in same.items():
        if v:
            desc = "bitwise identical" if v.get("identical") else (
                v.get("note") or f"{v['values_differing']} values differ, max |Δ| {v['max_abs_diff']:.3g} "
                                 f"(largest relative {v['max_rel_diff']:.2g} in {v['max_rel_diff_key']}; "
                                 f"train loss max |Δ| {v['max_abs_diff_train_loss']:.3g})")
            md.append(f"- {k}: {desc}")
    md[table_at:table_at] = ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
