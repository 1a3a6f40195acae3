"""``make gpu-check``: correctness and speed of repalign on one CUDA GPU, in ≤ 8 minutes.

Writes ``benchmarks/results/gpu/<gpu-slug>.json`` and ``<gpu-slug>.md`` (schema ``repalign-gpu-check-v1``):

* ``correctness`` — ``pytest -m cuda`` (``tests/test_cuda.py``: objectives at τ = 0.1 under bf16 and fp16 +
  GradScaler, coupled trainer CUDA = CPU, kill/resume on CUDA, metrics CUDA = CPU, SyncBatchNorm);
* ``speed`` — one coupled step of 4 arms (cl, nscl, scl, ce; K = 2 views, LARS, CIFAR-stem ResNet-50 at
  B = 256 and 512, ResNet-18 at B = 512, 32×32 inputs already on the device) through the trainer's own
  ``train_step``: images/s per arm, coupled overhead against one single-arm step, peak memory, achieved
  TFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) against the GPU's dense bf16 peak, for fp32,
  bf16, bf16 + channels_last and (ResNet-50, B = 512) + ``torch.compile``;
* ``data`` — the fraction of step time spent waiting for the next batch when the trainer's loader
  (``data.num_workers`` workers, simclr_cifar views; on the GPU when ``data.augment_device`` = auto
  picks it) feeds the ResNet-50 step;
* ``metrics`` — linear CKA and Pearson RSA at N = 50,000, d = 2048 on the GPU against one GEMM of the
  same shape (Xᵀ·Y, float32 and float64);
* ``cost_basis`` — the effective TFLOP/s (model step × (1 − data-wait fraction)) that
  ``repalign reproduce FIG --scale paper`` plans GPU-hours with.

``--dry-run`` runs the same code on the CPU with tiny sizes (small_cnn at 16 px, B = 8, N = 512; the cuda
tests with ``REPALIGN_CUDA_TEST_DEVICE=cpu``; no ``torch.compile``) into a temporary folder: the test
suite runs it so the script cannot rot. Every measurement that fails records its error and the rest go
on; measurements still to do when ``--budget-s`` is spent are recorded as skipped.

    python benchmarks/gpu_check.py [--dry-run] [--out DIR] [--budget-s 450]   (dry run: no budget)
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "repalign-gpu-check-v1"
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
ARMS = {"cl": {"objective": "cl"}, "nscl": {"objective": "nscl"}, "scl": {"objective": "scl"}, "ce": {"objective": "ce"}}

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s, matched in order against torch's device name.
PEAK_BF16_TFLOPS: list[tuple[str, float | None, str]] = [
    (r"H200", 989.4, "H200 SXM, dense bf16"),
    (r"H100.*PCIe", 756.0, "H100 PCIe, dense bf16"),
    (r"H100.*NVL", 835.0, "H100 NVL, dense bf16"),
    (r"H100", 989.4, "H100 SXM, dense bf16"),
    (r"A100", 312.0, "A100, dense bf16"),
    (r"L40S", 362.1, "L40S, dense bf16"),
    (r"\bA10\b", 125.0, "A10, dense bf16"),
    (r"V100", None, "V100 has no bf16 tensor cores (fp16 tensor peak 125 TFLOP/s SXM2): bf16 runs without them"),
    (r"RTX 4090", 165.2, "RTX 4090, dense bf16 with fp32 accumulation"),
]

FULL = {"image_size": 32, "models": [("resnet50", 256), ("resnet50", 512), ("resnet18", 512)], "projector": (2048, 128),
        "compile_for": ("resnet50", 512), "cost_for": ("resnet50", 256), "warmup": 3, "reps": 10,
        "data_steps": 40, "train_images": 50_000, "metrics_n": 50_000, "metrics_d": 2048, "metrics_reps": 3,
        "pytest": ["tests"], "pytest_timeout_s": 240}
DRY = {"image_size": 16, "models": [("small_cnn", 8)], "projector": (32, 16), "compile_for": None,
       "cost_for": ("small_cnn", 8), "warmup": 1,
       "reps": 2, "data_steps": 4, "train_images": 64, "metrics_n": 512, "metrics_d": 64, "metrics_reps": 1,
       "pytest": ["tests/test_cuda.py"], "pytest_timeout_s": 900}  # generous: a busy CI machine
VARIANTS = [  # name, precision, channels_last, compile
    ("fp32", "fp32", False, False),
    ("bf16", "bf16", False, False),
    ("bf16+channels_last", "bf16", True, False),
    ("bf16+channels_last+compile", "bf16", True, True),
]
COST_VARIANT = "bf16+channels_last"  # what the paper configs run (compile stays off until measured)


# ---------------------------------------------------------------------------- device facts
def gpu_slug(name: str) -> str:
    """File-name form of a device name: ``NVIDIA H100 80GB HBM3`` → ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def bf16_peak(name: str) -> tuple[float | None, str]:
    """Dense bf16 peak TFLOP/s of a device by name, and a note; ``(None, why)`` when unknown."""
    for pattern, peak, note in PEAK_BF16_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return peak, note
    return None, f"no bf16 peak on record for {name!r}: fraction_of_peak left null (add it to PEAK_BF16_TFLOPS)"


def device_info(dry_run: bool) -> dict[str, Any]:
    import torch

    if dry_run or not torch.cuda.is_available():
        name = f"cpu ({platform.processor() or platform.machine()})"
        peak, note = None, "CPU dry run: no peak"
        return {"name": name, "slug": "cpu-dry-run", "memory_gib": None, "capability": None, "count": 0,
                "bf16_peak_tflops": peak, "peak_note": note}
    p = torch.cuda.get_device_properties(0)
    peak, note = bf16_peak(p.name)
    return {"name": p.name, "slug": gpu_slug(p.name), "memory_gib": round(p.total_memory / 2 ** 30, 1),
            "capability": f"{p.major}.{p.minor}", "count": torch.cuda.device_count(), "bf16_peak_tflops": peak,
            "peak_note": note}


def software() -> dict[str, Any]:
    import torch

    import repalign

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "repalign": getattr(repalign, "__version__", None), "git": rev, "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------------------- correctness
def correctness(dry_run: bool, sizes: dict[str, Any], work: Path) -> dict[str, Any]:
    """``pytest -m cuda``; counts from its JUnit XML. Dry run: the same tests on the CPU."""
    xml = work / "pytest-cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q", "-rs",
           f"--junitxml={xml}", *sizes["pytest"]]
    env = dict(os.environ)
    if dry_run:
        env["REPALIGN_CUDA_TEST_DEVICE"] = "cpu"
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=sizes["pytest_timeout_s"])
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = None, f"timed out after {sizes['pytest_timeout_s']} s\n{(e.stdout or b'')!s}"
    res: dict[str, Any] = {"command": "pytest -m cuda " + " ".join(sizes["pytest"]), "device":
                           "cpu (REPALIGN_CUDA_TEST_DEVICE=cpu)" if dry_run else "cuda", "returncode": rc,
                           "seconds": round(time.perf_counter() - t0, 1), "tests": 0, "passed": 0, "failed": 0,
                           "skipped": 0, "failures": []}
    if xml.exists():
        root = ET.parse(xml).getroot()
        for case in root.iter("testcase"):
            res["tests"] += 1
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                res["failed"] += 1
                res["failures"].append(f"{case.get('name')}: {(bad.get('message') or '').splitlines()[0][:300]}")
            elif case.find("skipped") is not None:
                res["skipped"] += 1
            else:
                res["passed"] += 1
    res["ok"] = rc == 0 and res["failed"] == 0 and res["passed"] > 0
    res["tail"] = "\n".join(out.strip().splitlines()[-8:])
    return res


# ---------------------------------------------------------------------------- speed
def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def synthetic_sources(n: int, image_size: int, classes: int = 100) -> tuple[Any, Any]:
    """In-memory CIFAR-shaped sources of random uint8 images (no download, same pipeline)."""
    import torch

    from repalign.data import ImageSource

    g = torch.Generator().manual_seed(0)

    def make(split: str, m: int) -> Any:
        return ImageSource(name="synthetic", split=split, labels=torch.arange(m) % classes,
                           class_names=[f"c{i}" for i in range(classes)], channels=3, image_size=image_size,
                           images=torch.randint(0, 256, (m, 3, image_size, image_size), dtype=torch.uint8, generator=g),
                           mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

    return make("train", n), make("test", min(n, 256))


def build_trainer(model: str, batch: int, precision: str, channels_last: bool, compile_: bool, arms: dict,
                  device: str, sources: tuple[Any, Any], num_workers: int = 0,
                  projector: tuple[int, int] = (2048, 128)) -> tuple[Any, str]:
    """A :class:`CoupledTrainer` for the benchmark; returns it and how channels_last/compile were applied
    (``config``: through ``train.channels_last``/``train.compile``; ``direct``: the keys are missing, so on
    the modules here)."""
    from repalign.config import SCHEMA, load_config, validate
    from repalign.training import CoupledTrainer

    over = [f"model.encoder={model}", f"model.projector_hidden={projector[0]}", f"model.projector_out={projector[1]}",
            "data.augment=simclr_cifar", f"data.num_workers={num_workers}", f"train.batch_size={batch}",
            "train.epochs=1000", f"train.device={device}", f"train.precision={precision}", "train.log_every=20",
            "logging.progress=false", "optim.type=lars", "optim.lr=0.3", "loss.temperature=0.1"]
    if model.startswith("resnet"):
        over.append("model.cifar_stem=true")
    via = "config" if "train.channels_last" in SCHEMA and "train.compile" in SCHEMA else "direct"
    if via == "config":
        over += [f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile_).lower()}"]
    cfg = validate({**load_config(None, over), "arms": arms})
    tr = CoupledTrainer(cfg, None, evaluator=None, sources=sources)
    if via == "direct":
        import torch

        for s in tr.arm_states:
            if channels_last:
                s.module.to(memory_format=torch.channels_last)
            if compile_:
                s.module.compile()
    return tr, via


def count_flops(tr: Any, x: Any, rows: int = 64) -> float:
    """FLOPs of one arm's forward + backward on ``x [N, C, H, W]`` (``torch.utils.flop_counter``), counted
    on its first ``rows`` images and scaled by N / rows (every counted op is linear in the batch; the
    fp32 pass on a slice keeps memory small). The loss's own FLOPs (≈ 2·(2B)²·d) are negligible."""
    from torch.utils.flop_counter import FlopCounterMode

    s = tr.arm_states[-1]  # the CE arm if present: encoder + projector + head
    n = min(rows, x.shape[0])
    with FlopCounterMode(display=False) as fc:
        h, z, logits = s.module(x[:n])
        out = (z.float().square().mean() + (logits.float().square().mean() if logits is not None else 0.0))
        out.backward()
    s.module.zero_grad(set_to_none=True)
    return float(fc.get_total_flops()) * x.shape[0] / n


def time_steps(tr: Any, batch: dict[str, Any], warmup: int, reps: int) -> tuple[list[float], float]:
    """Seconds of ``reps`` timed coupled steps after ``warmup`` (the first one's seconds returned too:
    it includes cuDNN autotuning / compilation). Steps advance ``tr.step`` as ``fit`` does, so deferred
    non-finite reads happen at their normal cadence."""
    dev = tr.device
    out, first = [], 0.0
    for i in range(warmup + reps):
        _sync(dev)
        t0 = time.perf_counter()
        tr.train_step(batch)
        tr.step += 1
        _sync(dev)
        dt_ = time.perf_counter() - t0
        if i == 0:
            first = dt_
        if i >= warmup:
            out.append(dt_)
    if hasattr(tr, "check_nonfinite"):
        tr.check_nonfinite()
    if not all(s.active for s in tr.arm_states):
        raise RuntimeError("an arm stopped on a non-finite value during the benchmark")
    return out, first


def speed_one(model: str, batch: int, variant: tuple[str, str, bool, bool], sizes: dict[str, Any], device: str,
              sources: tuple[Any, Any], peak: float | None) -> dict[str, Any]:
    import torch

    name, precision, cl, comp = variant
    S, K = sizes["image_size"], 2
    row: dict[str, Any] = {"model": model, "batch": batch, "image_size": S, "arms": len(ARMS), "views": K,
                           "variant": name, "precision": precision, "channels_last": cl, "compile": comp}
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    tr, via = build_trainer(model, batch, precision, cl, comp, ARMS, device, sources, projector=sizes["projector"])
    row["applied_via"] = via
    g = torch.Generator().manual_seed(1)
    views = torch.randn(K, batch, 3, S, S, generator=g).to(dev)
    labels = (torch.arange(batch) % 100).to(dev)
    data = {"shared": (views, labels, torch.arange(batch))}
    times, first = time_steps(tr, data, sizes["warmup"], sizes["reps"])
    step = statistics.median(times)
    row["step_ms"] = round(1e3 * step, 2)
    row["step_ms_p90"] = round(1e3 * sorted(times)[max(0, math.ceil(0.9 * len(times)) - 1)], 2)
    row["first_step_s"] = round(first, 2)
    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 2) if dev.type == "cuda" else None
    flops_arm = count_flops(tr, views.flatten(0, 1))
    del tr
    row["samples_per_s"] = round(batch / step, 1)
    row["images_per_s_per_arm"] = round(K * batch / step, 1)
    row["flops_per_step"] = len(ARMS) * flops_arm
    row["tflops"] = float(f"{row['flops_per_step'] / step / 1e12:.4g}")
    row["fraction_of_peak"] = float(f"{row['tflops'] / peak:.4g}") if peak else None
    if not comp:  # one arm alone on the same batch: what coupling costs per arm
        one, _ = build_trainer(model, batch, precision, cl, comp, {"cl": ARMS["cl"]}, device, sources,
                               projector=sizes["projector"])
        t1, _ = time_steps(one, data, sizes["warmup"], sizes["reps"])
        del one
        single = statistics.median(t1)
        row["single_arm_step_ms"] = round(1e3 * single, 2)
        row["coupled_overhead"] = round(step / (len(ARMS) * single) - 1, 4)
    else:
        row["single_arm_step_ms"] = row["coupled_overhead"] = None
    return row


def data_wait(model: str, batch: int, sizes: dict[str, Any], device: str, num_workers: int) -> dict[str, Any]:
    """Fraction of step time spent in ``next(batches)`` when the trainer's own loader (its
    ``_batches``: workers, pinned memory, views on the augment device) feeds the coupled step."""
    import torch

    src = synthetic_sources(max(sizes["train_images"], batch * (sizes["data_steps"] + 2)), sizes["image_size"])
    tr, _ = build_trainer(model, batch, "bf16", True, False, ARMS, device, src, num_workers=num_workers,
                          projector=sizes["projector"])
    stream = tr.streams["shared"]
    it = tr._batches(stream, 0, 0)
    dev = torch.device(device)
    waits, totals = [], []
    for i in range(sizes["data_steps"] + 2):
        _sync(dev)
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        tr.train_step({"shared": b})
        tr.step += 1
        _sync(dev)
        t2 = time.perf_counter()
        if i >= 2:  # worker start-up excluded
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    if hasattr(tr, "check_nonfinite"):
        tr.check_nonfinite()
    return {"model": model, "batch": batch, "variant": COST_VARIANT, "num_workers": num_workers,
            "augment_device": str(getattr(tr, "augment_device", None) or "cpu"), "steps": len(totals),
            "step_ms": round(1e3 * sum(totals) / len(totals), 2), "wait_ms": round(1e3 * sum(waits) / len(waits), 2),
            "wait_fraction": round(sum(waits) / sum(totals), 4)}


# ---------------------------------------------------------------------------- metrics
def metrics_speed(n: int, d: int, reps: int, device: str) -> dict[str, Any]:
    import torch

    from repalign import metrics as M

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, d, generator=g).to(dev)
    Y = (X[:, :d] * 0.5 + torch.randn(n, d, generator=g).to(dev))

    def timed(fn: Callable[[], Any]) -> float:
        fn()  # warm-up
        ts = []
        for _ in range(reps):
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    Xd, Yd = X.double(), Y.double()
    out = {"n": n, "d": d, "device": str(dev),
           "linear_cka_s": timed(lambda: M.linear_cka(X, Y)),
           "rsa_pearson_s": timed(lambda: M.rsa(X, Y).value),
           "gemm_f32_s": timed(lambda: X.T @ Y),
           "gemm_f64_s": timed(lambda: Xd.T @ Yd)}
    for k in ("linear_cka", "rsa_pearson"):
        out[f"{k}_over_gemm_f64"] = round(out[f"{k}_s"] / out["gemm_f64_s"], 2)
        out[f"{k}_over_gemm_f32"] = round(out[f"{k}_s"] / out["gemm_f32_s"], 2)
    for k in ("linear_cka_s", "rsa_pearson_s", "gemm_f32_s", "gemm_f64_s"):
        out[k] = round(out[k], 5)
    out["values"] = {"linear_cka": M.linear_cka(X, Y), "rsa_pearson": M.rsa(X, Y).value}
    return out


# ---------------------------------------------------------------------------- driver
def cost_basis(speed: list[dict[str, Any]], data: dict[str, Any] | None, want: tuple[str, int] | None) -> dict[str, Any] | None:
    """The planning throughput: the ``COST_VARIANT`` step of ``want`` (else the first that ran) times
    (1 − the measured data-wait fraction)."""
    ok = [r for r in speed if r.get("variant") == COST_VARIANT and r.get("tflops") is not None]
    pick = next((r for r in ok if want and (r["model"], r["batch"]) == tuple(want)), ok[0] if ok else None)
    if pick is None:
        return None
    wait = data.get("wait_fraction") if data and "wait_fraction" in data else None
    eff = pick["tflops"] * (1 - (wait or 0.0))
    return {"model": pick["model"], "batch": pick["batch"], "image_size": pick["image_size"], "arms": pick["arms"],
            "views": pick["views"], "variant": COST_VARIANT, "model_tflops": pick["tflops"], "data_wait_fraction": wait,
            "effective_tflops": float(f"{eff:.4g}"), "samples_per_s_per_arm": round(pick["samples_per_s"] * pick["arms"], 1),
            "note": "effective = model-step TFLOP/s × (1 − data-wait fraction); one GPU, no DDP communication"}


def run(dry_run: bool, out_dir: Path, budget_s: float, log: Callable[[str], None] = print) -> Path:
    import torch

    t_start = time.perf_counter()
    sizes = DRY if dry_run else FULL
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU")
    device = "cpu" if dry_run else "cuda"
    if not dry_run:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True  # what fp32 training uses on Ampere+ (torch default for cuDNN)
    info = device_info(dry_run)
    res: dict[str, Any] = {"schema": SCHEMA, "dry_run": dry_run, "created": dt.datetime.now(dt.timezone.utc)
                           .strftime("%Y-%m-%dT%H:%M:%SZ"), "gpu": info, "software": software(),
                           "sizes": {k: v for k, v in sizes.items() if k != "pytest"}, "notes": [], "skipped": []}
    if info["bf16_peak_tflops"] is None:
        res["notes"].append(info["peak_note"])
    if dry_run:
        res["notes"].append("dry run on the CPU with tiny sizes: checks that the script runs; its numbers mean nothing")
    else:
        res["notes"].append("fp32 rows allow TF32 tensor cores (matmul and cuDNN), as fp32 training on Ampere+ does; "
                            "cudnn.benchmark on; inputs already on the device (data loading is the data section)")

    def left() -> float:
        return budget_s - (time.perf_counter() - t_start)

    def guarded(what: str, fn: Callable[[], Any], need_s: float = 0.0) -> Any:
        if left() < need_s:
            res["skipped"].append(f"{what}: time budget spent ({budget_s:.0f} s)")
            log(f"  skip {what} (budget)")
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # record and go on: one failing measurement must not lose the rest
            msg = " ".join(f"{type(e).__name__}: {e}".split())[:400]
            log(f"  {what}: ERROR {msg}")
            return {"error": msg}
        log(f"  {what}: {time.perf_counter() - t0:.1f} s")
        return out

    log(f"gpu_check on {info['name']} ({'dry run' if dry_run else 'full'}), budget {budget_s:.0f} s")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    res["correctness"] = guarded("pytest -m cuda", lambda: correctness(dry_run, sizes, work))
    sources = synthetic_sources(max(1024, 2 * max(b for _, b in sizes["models"])), sizes["image_size"])
    speed: list[dict[str, Any]] = []
    order = [(m, b, v) for m, b in sizes["models"] for v in VARIANTS]
    cost = tuple(sizes["cost_for"]) if sizes["cost_for"] else None
    order.sort(key=lambda t: (0 if (t[0], t[1]) == cost and t[2][0] in (COST_VARIANT, "fp32") else 1))
    for m, b, v in order:
        if v[3] and (sizes["compile_for"] is None or (m, b) != tuple(sizes["compile_for"])):
            continue
        what = f"speed {m} B={b} {v[0]}"
        r = guarded(what, lambda: speed_one(m, b, v, sizes, device, sources, info["bf16_peak_tflops"]),
                    need_s=150 if v[3] else 20)
        if r is None:
            continue
        if "error" in r:
            r = {"model": m, "batch": b, "variant": v[0], **r}
        speed.append(r)
        gc.collect()  # trainers hold reference cycles: free their GPU memory before the next one
        if device == "cuda":
            torch.cuda.empty_cache()
    res["speed"] = speed
    nw = 0 if dry_run else max(1, min(8, (os.cpu_count() or 2) - 1))
    res["data"] = guarded("data wait", lambda: data_wait(*(cost or sizes["models"][0]), sizes, device, nw), need_s=20)
    res["metrics"] = guarded("metrics", lambda: metrics_speed(sizes["metrics_n"], sizes["metrics_d"],
                                                               sizes["metrics_reps"], device), need_s=15)
    res["cost_basis"] = cost_basis(speed, res["data"], cost)
    if any(r.get("applied_via") == "direct" for r in speed):
        res["notes"].append("train.channels_last / train.compile not in this config schema: applied to the modules "
                            "directly (module.to(channels_last), module.compile())")
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{info['slug']}.json"
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(res))
    log(f"wrote {path} and {path.with_suffix('.md')} ({res['seconds']} s)")
    return path


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "–"
    return format(v, spec) if spec else str(v)


def markdown(res: dict[str, Any]) -> str:
    """The Markdown summary written next to the JSON."""
    g = res["gpu"]
    c = res.get("correctness") or {}
    lines = [f"# GPU check: {g['name']}", "",
             f"- {res['created']}; torch {res['software']['torch']}, CUDA {res['software']['cuda']}, "
             f"repalign {res['software']['repalign']} ({res['software']['git']}); {res['seconds']} s in all"
             + ("; **dry run on the CPU (numbers mean nothing)**" if res["dry_run"] else ""),
             f"- bf16 peak: {_fmt(g['bf16_peak_tflops'])} TFLOP/s ({g['peak_note']})", "",
             "## Correctness (`pytest -m cuda`)", "",
             f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped "
             f"({c.get('device', '?')}, {c.get('seconds', '?')} s)" if "error" not in c else f"error: {c['error']}"]
    lines += [f"- FAILED {f}" for f in c.get("failures", [])]
    lines += ["", "## Coupled step (4 arms, K = 2 views, LARS)", "",
              "| model | B | variant | step ms | images/s per arm | coupled overhead | peak GiB | TFLOP/s | of peak |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in res.get("speed", []):
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | error: {r['error'][:120]} | | | | | |")
            continue
        ov, fp = r.get("coupled_overhead"), r.get("fraction_of_peak")
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['step_ms']:.1f} | "
                     f"{r['images_per_s_per_arm']:,.0f} | {_fmt(None if ov is None else f'{100 * ov:+.1f} %')} | "
                     f"{_fmt(r['peak_mem_gib'])} | {r['tflops']:.1f} | {_fmt(None if fp is None else f'{100 * fp:.1f} %')} |")
    d = res.get("data") or {}
    lines += ["", "## Data loading", "",
              (f"{d['model']} B = {d['batch']}, {d['num_workers']} workers, views on {d['augment_device']}: "
               f"{100 * d['wait_fraction']:.1f} % of the step spent waiting for data ({d['wait_ms']:.1f} of "
               f"{d['step_ms']:.1f} ms)") if "wait_fraction" in d else f"{d.get('error', 'not measured')}"]
    m = res.get("metrics") or {}
    lines += ["", "## Metrics", "",
              (f"N = {m['n']:,}, d = {m['d']}: linear CKA {m['linear_cka_s']:.3f} s, Pearson RSA {m['rsa_pearson_s']:.3f} s; "
               f"one GEMM Xᵀ·Y {m['gemm_f32_s'] * 1e3:.1f} ms (fp32) / {m['gemm_f64_s'] * 1e3:.1f} ms (fp64) → "
               f"CKA = {m['linear_cka_over_gemm_f64']}× the fp64 GEMM") if "linear_cka_s" in m else f"{m.get('error', 'not measured')}"]
    b = res.get("cost_basis")
    lines += ["", "## Cost basis (`repalign reproduce --scale paper`)", "",
              (f"{b['model']} B = {b['batch']} {b['variant']}: {b['model_tflops']:.1f} TFLOP/s in the step, data wait "
               f"{_fmt(b['data_wait_fraction'])} → **{b['effective_tflops']:.1f} effective TFLOP/s**") if b else "none"]
    if res["notes"] or res["skipped"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]] + [f"- skipped: {s}" for s in res["skipped"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, temporary output folder")
    ap.add_argument("--out", default=None, help=f"output folder (default {RESULTS.relative_to(ROOT)}; dry run: a temp folder)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop starting measurements after this many seconds (default 450; dry run: no limit)")
    args = ap.parse_args(argv)
    budget = args.budget_s if args.budget_s is not None else (math.inf if args.dry_run else 450.0)
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="gpu-check-dry-")) if args.dry_run else RESULTS)
    path = run(args.dry_run, out, budget)
    res = json.loads(path.read_text())
    c = res.get("correctness") or {}
    return 0 if c.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
