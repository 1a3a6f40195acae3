"""Benchmark of repalign.compare (issue 19), ratios measured in one run.

Job: two torchvision ResNet-18s (weights=None, seeds 0/1) on N random 32×32 images, 8 × 8 layers
(the eight BasicBlocks layer1.0 … layer4.1), pool="flatten" (widths 4096, 4096, 2048, 2048, 1024,
1024, 512, 512), metric linear_cka, batch 256, CPU float64 moments.

Reference cost = the two models' forward passes (with the same hooks' pooling) + one float64 GEMM
``X_iᵀ Y_j`` per layer pair on the full features. Each N runs in its own subprocess so its peak RSS
(``ru_maxrss``) is its own. torch_cka (minibatch HSIC, if installed) runs the same job for time
and value side by side.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_compare.py --n 2000 10000 --out benchmarks/results/compare.json
    OMP_NUM_THREADS=1 nice python benchmarks/bench_compare.py --memory --n 2000 10000 --out benchmarks/results/compare_memory.json

(the first run's ``peak_rss_mib`` includes the references' full feature matrices, N·Σd·12 bytes; the
``--memory`` run measures compare() alone.)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

LAYERS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


def one(n: int, torch_cka: bool) -> dict:
    import torch
    import torchvision

    from repalign.compare import compare

    torch.manual_seed(0)
    a = torchvision.models.resnet18(weights=None).eval()
    torch.manual_seed(1)
    b = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    bs = 256
    # reference 1: forward passes collecting the flattened features
    feats_a, feats_b = [[] for _ in LAYERS], [[] for _ in LAYERS]

    def hook(store, k):
        return lambda m, i, o: store[k].append(o.detach().flatten(1))
    hs = [a.get_submodule(l).register_forward_hook(hook(feats_a, k)) for k, l in enumerate(LAYERS)]
    hs += [b.get_submodule(l).register_forward_hook(hook(feats_b, k)) for k, l in enumerate(LAYERS)]
    t = time.perf_counter()
    with torch.no_grad():
        for s in range(0, n, bs):
            a(x[s:s + bs])
            b(x[s:s + bs])
    t_fwd = time.perf_counter() - t
    for h in hs:
        h.remove()
    # reference 2: one float64 GEMM per layer pair (X_iᵀ Y_j, [d_i, d_j]), features cast once
    t = time.perf_counter()
    Xa = [torch.cat(f).double() for f in feats_a]
    Xb = [torch.cat(f).double() for f in feats_b]
    t_cast = time.perf_counter() - t
    t = time.perf_counter()
    for X in Xa:
        for Y in Xb:
            _ = X.T @ Y
    t_gemm = time.perf_counter() - t
    del Xa, Xb, feats_a, feats_b, _
    t = time.perf_counter()
    c = compare(a, b, x, layers_a=LAYERS, layers_b=LAYERS, metrics=("linear_cka",), pool="flatten",
                batch_size=bs, progress=False, method="moments")
    t_cmp = time.perf_counter() - t
    out = {"n": n, "forward_s": round(t_fwd, 2), "gemm_s": round(t_gemm, 2), "cast_s": round(t_cast, 2),
           "compare_s": round(t_cmp, 2), "ratio_compare_over_forward_plus_gemm": round(t_cmp / (t_fwd + t_gemm), 3),
           "linear_cka": c.matrix("linear_cka").round(4).tolist()}
    mb = compare(a, b, x, layers_a=LAYERS, layers_b=LAYERS, metrics=("minibatch_cka",), pool="flatten",
                 batch_size=bs, progress=False)
    out["minibatch_cka"] = mb.matrix("minibatch_cka").round(4).tolist()
    if torch_cka:
        try:
            import torch_cka as tc
        except ImportError:
            out["torch_cka"] = "skipped: torch-cka not installed (pip install torch-cka)"
        else:
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(n)), batch_size=bs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = tc.CKA(a, b, model1_name="a", model2_name="b", model1_layers=LAYERS, model2_layers=LAYERS)
                t = time.perf_counter()
                ref.compare(loader)
                out["torch_cka_s"] = round(time.perf_counter() - t, 2)
            theirs = ref.export()["CKA"].double().numpy()
            out["torch_cka"] = theirs.round(4).tolist()
            import numpy as np

            out["max_abs_diff_minibatch_vs_torch_cka"] = float(np.abs(theirs - mb.matrix("minibatch_cka")).max())
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def memory_only(n: int) -> dict:
    """compare() alone in a fresh process: its peak RSS (models, inputs and compare's state)."""
    import torch
    import torchvision

    from repalign.compare import compare

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a, b = torchvision.models.resnet18(weights=None).eval(), torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    t = time.perf_counter()
    compare(a, b, x, layers_a=LAYERS, layers_b=LAYERS, metrics=("linear_cka",), pool="flatten", batch_size=256,
            progress=False, method="moments")
    return {"n": n, "compare_s": round(time.perf_counter() - t, 2), "input_mib": round(x.numel() * 4 / 2 ** 20, 1),
            "rss_after_imports_mib": round(base, 1),
            "peak_rss_compare_only_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--out", default=None)
    p.add_argument("--child", type=int, default=None)
    p.add_argument("--torch-cka", action="store_true", default=True)
    p.add_argument("--memory-child", type=int, default=None)
    p.add_argument("--memory", action="store_true", help="only compare's peak RSS per N (own processes)")
    a = p.parse_args()
    if a.memory_child is not None:
        print(json.dumps(memory_only(a.memory_child)))
        return
    if a.memory:
        res = {"job": "compare() alone, same job", "threads": os.environ.get("OMP_NUM_THREADS"), "runs": []}
        for n in a.n:
            r = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                               check=True)
            res["runs"].append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(res["runs"][-1]), flush=True)
        if a.out:
            from pathlib import Path

            from repalign.training.checkpoint import write_atomic

            write_atomic(Path(a.out), json.dumps(res, indent=1).encode())
        return
    if a.child is not None:
        print(json.dumps(one(a.child, a.torch_cka)))
        return
    res = {"job": "ResNet-18 ×2, 32×32, 8×8 BasicBlock outputs, pool=flatten, linear_cka, batch 256, CPU",
           "threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_start": os.getloadavg(), "runs": []}
    for n in a.n:
        r = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
        res["runs"].append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps({k: v for k, v in res["runs"][-1].items() if not isinstance(v, list)}), flush=True)
    res["load_avg_end"] = os.getloadavg()
    if a.out:
        from pathlib import Path

        from repalign.training.checkpoint import write_atomic

        write_atomic(Path(a.out), json.dumps(res, indent=1).encode())


if __name__ == "__main__":
    main()
