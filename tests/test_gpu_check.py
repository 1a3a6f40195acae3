"""``benchmarks/gpu_check.py --dry-run``: the GPU check's own code paths on the CPU with tiny sizes,
so the script that the first GPU session runs cannot rot. Checks the JSON schema and the summary."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED_KEYS = {"model", "batch", "image_size", "arms", "views", "variant", "precision", "channels_last", "compile",
              "applied_via", "step_ms", "step_ms_p90", "first_step_s", "peak_mem_gib", "samples_per_s",
              "images_per_s_per_arm", "flops_per_step", "tflops", "fraction_of_peak", "single_arm_step_ms",
              "coupled_overhead"}


def test_gpu_check_dry_run_writes_the_schema(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)  # ≈ 35 s on 2 idle cores
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert res["schema"] == "repalign-gpu-check-v1" and res["dry_run"] is True
    assert {"schema", "dry_run", "created", "gpu", "software", "sizes", "notes", "skipped", "correctness", "speed",
            "data", "metrics", "cost_basis", "seconds"} <= set(res)
    assert res["skipped"] == []
    assert {"name", "slug", "memory_gib", "capability", "bf16_peak_tflops", "peak_note"} <= set(res["gpu"])
    c = res["correctness"]
    assert c["ok"] and c["failed"] == 0 and c["passed"] >= 10 and c["skipped"] == 0, c  # the cuda tests ran, on the CPU
    variants = {r["variant"] for r in res["speed"]}
    assert variants == {"fp32", "bf16", "bf16+channels_last"}  # compile: GPU only
    for r in res["speed"]:
        assert "error" not in r, r
        assert SPEED_KEYS <= set(r)
        assert r["step_ms"] > 0 and r["images_per_s_per_arm"] > 0 and r["flops_per_step"] > 0 and r["tflops"] > 0
        assert r["arms"] == 4 and r["coupled_overhead"] is not None and r["single_arm_step_ms"] > 0
        assert r["images_per_s_per_arm"] == round(2 * r["samples_per_s"], 1) or \
            abs(r["images_per_s_per_arm"] - 2 * r["samples_per_s"]) < 0.2
    d = res["data"]
    assert "error" not in d and 0 <= d["wait_fraction"] < 1 and d["steps"] > 0
    m = res["metrics"]
    assert "error" not in m and m["n"] == 512 and m["linear_cka_s"] > 0 and m["gemm_f64_s"] > 0
    assert 0 < m["values"]["linear_cka"] <= 1 and m["linear_cka_over_gemm_f64"] > 0
    b = res["cost_basis"]
    assert b["variant"] == "bf16+channels_last" and b["effective_tflops"] > 0
    assert 0 <= b["data_wait_fraction"] < 1
    md = (tmp_path / "cpu-dry-run.md").read_text()
    assert "# GPU check" in md and "dry run" in md and "| small_cnn | 8 | fp32 |" in md
    # a dry-run result never plans paper-scale costs
    from repalign.experiments.reproduce import cost_basis

    assert cost_basis(dirs=[tmp_path]).source == "estimate"


def test_bf16_peak_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check as g
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert g.bf16_peak("NVIDIA H100 80GB HBM3")[0] == 989.4
    assert g.bf16_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert g.bf16_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert g.bf16_peak("NVIDIA A10")[0] == 125.0 and g.bf16_peak("NVIDIA A10G")[0] is None  # A10 ≠ A10G ≠ A100
    assert g.bf16_peak("NVIDIA H200")[0] == 989.4 and g.bf16_peak("NVIDIA L40S")[0] == 362.1
    assert g.bf16_peak("NVIDIA GeForce RTX 4090")[0] == 165.2
    peak, note = g.bf16_peak("Tesla V100-SXM2-16GB")
    assert peak is None and "no bf16" in note
    peak, note = g.bf16_peak("Some Future GPU")
    assert peak is None and "no bf16 peak on record" in note
    assert g.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
