"""Benchmark: repalign NT-Xent / DCL vs a naive (2B)²×d cosine-tensor implementation on CPU.

Setting: K = 2 views, B = 1024 (2B = 2048 embeddings), d = 128, τ = 0.1, float32, forward + backward.

Method
------
Each variant runs in its **own fresh subprocess** (``--child VARIANT``), so allocator caches and
peak memory of one variant cannot leak into another:

* time: ``warmup`` untimed forward+backward passes, then ``reps`` timed ones
  (``time.perf_counter``); the median and min are reported.
* peak extra memory: after the inputs are built (and before any loss is computed) the child reads
  its resident set size ``VmRSS`` from ``/proc/self/status`` and resets the kernel's peak-RSS
  counter by writing ``5`` to ``/proc/self/clear_refs``; after all passes it reads ``VmHWM``
  (peak RSS since the reset). ``peak extra = VmHWM − VmRSS(baseline)``. This counts every byte the
  process touched (torch's CPU allocator is invisible to ``tracemalloc``), including temporaries
  freed within a pass. If ``clear_refs`` is not writable, ``ru_maxrss`` is used instead (peak since
  process start, an upper bound because the baseline includes import-time peaks).

Run:  ``PYTHONPATH=src python benchmarks/bench_loss.py`` → writes ``benchmarks/results/loss.md``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

K, B, D, TAU = 2, 1024, 128, 0.1
VARIANTS = {
    # name: (objective, implementation, warmup, reps)
    "ours_ntxent": ("ntxent", "repalign", 2, 20),
    "ours_dcl": ("dcl", "repalign", 2, 20),
    # the naive variants need ~12.5 GiB and ~40 s per pass on 2 cores: no warm-up, 2 timed passes
    "naive_ntxent": ("ntxent", "naive", 0, 2),
    "naive_dcl": ("dcl", "naive", 0, 2),
}


NAIVE_MIN_AVAILABLE_GIB = 16


def _meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/meminfo")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _naive_loss(objective, z, tau):
    """Naive reference: full [(2B), (2B), d] broadcast cosine tensor, then masked cross-entropy."""
    import torch
    import torch.nn.functional as F

    n = z.shape[1]
    zf = torch.cat([z[0], z[1]], dim=0)  # [2B, d]
    sim = F.cosine_similarity(zf[:, None, :], zf[None, :, :], dim=-1) / tau  # via [2B, 2B, d]
    idx = torch.arange(2 * n)
    pos = (idx + n) % (2 * n)
    if objective == "ntxent":
        logits = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, pos)
    same = (idx[:, None] % n) == (idx[None, :] % n)
    return (-sim[idx, pos] + torch.logsumexp(sim.masked_fill(same, float("-inf")), dim=1)).mean()


def child(name: str) -> dict:
    import torch

    from repalign.losses import contrastive_loss

    objective, impl, warmup, reps = VARIANTS[name]
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(K, B, D, generator=g).requires_grad_(True)
    labels = torch.randint(0, 100, (B,), generator=g)

    def step():
        z.grad = None
        if impl == "repalign":
            loss = contrastive_loss(objective, z, labels, TAU)
        else:
            loss = _naive_loss(objective, z, TAU)
        loss.backward()
        return loss.item()

    base_kib = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "VmHWM-after-clear_refs"
    except OSError:
        method = "ru_maxrss"
    times, cpu_times = [], []
    for it in range(warmup + reps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if it >= warmup:
            times.append(dt)
            cpu_times.append(dc)
    peak_kib = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "name": name,
        "objective": objective,
        "impl": impl,
        "reps": reps,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "median_cpu_s": statistics.median(cpu_times),
        "peak_extra_mib": (peak_kib - base_kib) / 1024,
        "mem_method": method,
        "loss": loss,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=sorted(VARIANTS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loss.md"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return

    avail_gib = _meminfo_kib("MemAvailable") / 2**20
    if avail_gib < NAIVE_MIN_AVAILABLE_GIB:
        sys.exit(
            f"only {avail_gib:.1f} GiB available; the naive variants need ~13 GiB "
            f"(refusing below {NAIVE_MIN_AVAILABLE_GIB} GiB so as not to OOM a shared machine)"
        )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = {}
    for name in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", name], env=env, check=True, capture_output=True, text=True
        ).stdout
        res[name] = json.loads(out.strip().splitlines()[-1])
        r = res[name]
        print(f"{name:14s} median {1e3 * r['median_s']:9.2f} ms   peak extra {r['peak_extra_mib']:8.1f} MiB   loss {r['loss']:.6f}")

    lines = [
        "# Loss benchmark: repalign vs naive (2B)²×d cosine tensor",
        "",
        f"- date: {_dt.date.today().isoformat()}",
        f"- machine: 2-core CPU ({_cpu_model()}), {os.cpu_count()} logical CPUs visible, "
        f"torch threads = {res['ours_ntxent']['threads']}",
        f"- torch {res['ours_ntxent']['torch']}, python {platform.python_version()}, {platform.system()} {platform.machine()}",
        f"- setting: K = {K}, B = {B} (2B = {K * B}), d = {D}, τ = {TAU}, float32, forward + backward",
        "- time: median (min) over the timed reps after warm-up (repalign: 2 warm-up + 20 timed; naive: "
        "0 + 2), each variant in a fresh subprocess",
        f"- load average at the end of the run: {os.getloadavg()[0]:.1f} (other jobs shared the 2 cores, "
        "so absolute times are noisy; wall min and process CPU time (`time.process_time`, summed over "
        "threads) are the less-disturbed figures)",
        "- peak extra memory: VmHWM − VmRSS(before the first pass), peak counter reset via "
        "`/proc/self/clear_refs` (method: " + res["ours_ntxent"]["mem_method"] + ")",
        "",
        "| objective | implementation | reps | wall ms: median (min) | CPU ms: median | peak extra MiB "
        "| speed-up: wall median / wall min / CPU | memory ratio | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for obj in ("ntxent", "dcl"):
        ours, naive = res[f"ours_{obj}"], res[f"naive_{obj}"]
        for r in (ours, naive):
            speed = naive["median_s"] / r["median_s"]
            speed_min = naive["min_s"] / r["min_s"]
            speed_cpu = naive["median_cpu_s"] / r["median_cpu_s"]
            memr = naive["peak_extra_mib"] / max(r["peak_extra_mib"], 1e-9)
            lines.append(
                f"| {obj} | {r['impl']} | {r['reps']} | {1e3 * r['median_s']:.1f} ({1e3 * r['min_s']:.1f}) | {1e3 * r['median_cpu_s']:.0f} | "
                f"{r['peak_extra_mib']:.1f} | {speed:.0f}× / {speed_min:.0f}× / {speed_cpu:.0f}× | {memr:.0f}× | {r['loss']:.6f} |"
            )
        if abs(ours["loss"] - naive["loss"]) > 1e-3:
            lines.append(f"\n**WARNING**: {obj} losses differ: {ours['loss']} vs {naive['loss']}")
    lines += [
        "",
        "Speed-up and memory ratio are relative to the naive implementation of the same objective.",
        "Goal: ≥ 100× faster and ≤ 0.3 GiB (307 MiB) peak extra memory for repalign.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
