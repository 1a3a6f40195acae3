"""Paper-scale cost planning: GPU-hours from a measured ``gpu_check.py`` result when one exists for the
chosen GPU, from the FLOP estimate otherwise — and the printout says which."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from repalign.cli import main
from repalign.config import ConfigError
from repalign.experiments import reproduce as rp


def _result(folder: Path, slug: str, name: str, tflops: float, dry_run: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"{slug}.json"
    p.write_text(json.dumps({
        "schema": "repalign-gpu-check-v1", "dry_run": dry_run, "gpu": {"name": name},
        "cost_basis": {"model": "resnet50", "arms": 4, "batch": 512, "image_size": 32,
                       "variant": "bf16+channels_last", "effective_tflops": tflops}}))
    return p


def _hours(text: str) -> float:
    m = re.search(r"≈ ([\d,]+) GPU-hours", text)
    assert m, text
    return float(m.group(1).replace(",", ""))


def _estimate(fig: str) -> float:
    return sum(p.gpu_hours or 0.0 for p in rp.FIGS[fig].plans("paper"))


def test_cost_basis_measured_or_estimate(tmp_path):
    d = tmp_path / "gpu"
    assert rp.cost_basis(dirs=[d]).source == "estimate"  # no folder
    _result(d, "nvidia-h100-80gb-hbm3", "NVIDIA H100 80GB HBM3", 60.0)
    only = rp.cost_basis(dirs=[d])
    assert only.source == "measured" and only.tflops == 60.0 and "H100" in only.note and only.gpu.startswith("NVIDIA H100")
    _result(d, "nvidia-a100-sxm4-80gb", "NVIDIA A100-SXM4-80GB", 30.0)
    several = rp.cost_basis(dirs=[d])
    assert several.source == "estimate" and several.tflops == rp.GPU_TFLOPS and "--gpu" in several.note
    a100 = rp.cost_basis("a100", dirs=[d])
    assert a100.source == "measured" and a100.tflops == 30.0
    assert rp.cost_basis("NVIDIA H100", dirs=[d]).tflops == 60.0  # matched on the recorded name too
    missing = rp.cost_basis("L40S", dirs=[d])
    assert missing.source == "estimate" and "'L40S'" in missing.note and "nvidia-a100-sxm4-80gb" in missing.note
    with pytest.raises(ConfigError, match="--gpu 'nvidia'"):
        rp.cost_basis("nvidia", dirs=[d])
    # a dry-run result (CPU, tiny sizes) never plans a cost
    e = tmp_path / "dry"
    _result(e, "cpu-dry-run", "cpu", 0.01, dry_run=True)
    dry = rp.cost_basis(dirs=[e])
    assert dry.source == "estimate" and "dry-run" in dry.note


def test_paper_plan_prints_measured_hours(tmp_path, monkeypatch, capsys):
    d = tmp_path / "gpu"
    _result(d, "nvidia-h200", "NVIDIA H200", 2 * rp.GPU_TFLOPS)
    monkeypatch.setenv(rp.GPU_RESULTS_ENV, str(d))
    monkeypatch.delenv(rp.GPU_ENV, raising=False)
    assert main(["reproduce", "fig4", "--scale", "paper", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    assert "from measured throughput" in text and "NVIDIA H200" in text and str(d / "nvidia-h200.json") in text
    assert _hours(text) == pytest.approx(_estimate("fig4") / 2, abs=0.5)
    assert "from measured throughput" in (tmp_path / "a" / "paper_plan.md").read_text()
    # a GPU without a measurement: the FLOP estimate, saying so
    assert main(["reproduce", "fig4", "--scale", "paper", "--gpu", "A10", "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "from the FLOP estimate" in text and "no measured result for GPU 'A10'" in text
    assert _hours(text) == pytest.approx(_estimate("fig4"), abs=0.5)


def test_paper_plan_prints_estimate_without_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(rp.GPU_RESULTS_ENV, str(tmp_path / "none"))
    assert main(["reproduce", "fig4", "--scale", "paper", "--out", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "from the FLOP estimate" in text and "no gpu_check result" in text
    assert _hours(text) == pytest.approx(_estimate("fig4"), abs=0.5)
