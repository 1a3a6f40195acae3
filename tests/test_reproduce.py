"""`repalign reproduce FIG --tiny` runs the real pipeline (coupled training → sweep → figure) in seconds."""
from __future__ import annotations

import csv
import json
import re

import pytest

from repalign.cli import main
from repalign.experiments import reproduce as rp

ALIGN = {"seed", "epoch", "split", "layer", "arm_a", "arm_b", "linear_cka", "rsa"}
EXPECT = {  # figure → {csv name: required columns}
    "fig1": {"fig1": ALIGN | {"weight_angle_deg", "repr_angle_deg"}},
    "fig2": {"fig2": ALIGN},
    "fig3": {"fig3": ALIGN | {"num_classes"}, "fig3_theory": {"num_classes", "S_T", "sim_gap", "bound_shape",
                                                             "cka_lower_bound", "linear_cka"},
             "fig3_gap_vs_C": {"num_classes", "gap", "bound"}},
    "fig4": {"fig4": ALIGN | {"tau"}, "fig4_theory": {"tau", "S_T", "sim_gap", "bound_shape", "cka_lower_bound"}},
    "fig5": {"fig5": ALIGN | {"batch_size", "lr_rule"}, "fig5_theory": {"batch_size", "lr_rule", "bound_shape"}},
    "weights": {"weights": ALIGN | {"weight_gap_mean"},
                "weights_fit": {"arm_a", "arm_b", "status", "rate_per_step", "rate_per_epoch", "start_step", "end_step"}},
    "lossgap": {"lossgap": {"num_classes", "seed", "step", "gap", "bound", "dcl", "nscl"},
                "lossgap_vs_C": {"num_classes", "seed", "gap", "bound"}},
}


@pytest.mark.parametrize("fig", rp.FIGURES)
def test_reproduce_tiny(fig, tmp_path, capsys):
    out = tmp_path / fig
    assert main(["reproduce", fig, "--scale", "cpu", "--tiny", "--out", str(out)]) == 0
    assert (out / f"{fig}.png").stat().st_size > 5000
    for name, cols in EXPECT[fig].items():
        with open(out / f"{name}.csv", newline="") as f:
            r = csv.DictReader(f)
            rows = list(r)
            assert cols <= set(r.fieldnames), (name, cols - set(r.fieldnames))
            assert rows, name
            for c in cols & {"num_classes", "tau", "batch_size", "lr_rule", "seed"}:
                assert all(r[c] != "" for r in rows), (name, c)
    if "seed" in EXPECT[fig][fig]:
        assert {r["seed"] for r in rows} >= {"0", "1"} or name != fig
    man = json.loads((out / "reproduce.json").read_text())
    pngs = sorted(out.glob("*.png"))
    assert len(man["figures"]) == len(pngs) and all(p.stat().st_size > 0 for p in pngs)
    html = (out / "report.html").read_text()
    assert len(re.findall(r"<img\b", html)) == len(pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    if fig == "fig2":  # noise-floor controls are arms of the same coupled run
        with open(out / "fig2.csv", newline="") as f:
            pairs = {(r["arm_a"], r["arm_b"]) for r in csv.DictReader(f)}
        assert pairs == {("cl", "nscl"), ("cl", "scl"), ("cl", "ce"), ("cl", "cl_eps"), ("cl", "cl_seed"),
                         ("cl", "cl_data"), ("", "")}  # ("", ""): the untrained-baseline rows
    # every figure: Findings first in the report; CI bands (n = 2 seeds) reach the CSV and the report
    assert man["findings"] and all(g["items"] for g in man["findings"])
    assert html.index("Findings") < html.index("Figures")
    if fig in ("fig1", "fig2", "fig3", "fig4", "fig5", "weights"):
        text = " ".join(i["text"] for g in man["findings"] for i in g["items"])
        assert "chaos floor" in text and "untrained baseline" in text, text[:300]
        assert "2 seeds" in text and "[" in text  # intervals over the two seeds
        with open(out / f"{fig}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["kind"] for r in rows} == {"align", "baseline"}
        assert any(r["control"] == "chaos" for r in rows)
        assert "95 % CI" in html
    if fig != "fig1":
        return
    # re-running reuses every finished run (nothing trains) and writes the same CSV; --quick is --tiny's name
    # for smoke use, so it resolves to the same runs
    before = (out / f"{fig}.csv").read_text()
    capsys.readouterr()
    assert main(["reproduce", fig, "--quick", "--out", str(out)]) == 0
    assert "0 to run" in capsys.readouterr().out
    assert (out / f"{fig}.csv").read_text() == before


@pytest.mark.parametrize("fig", ["fig3", "fig4", "fig5"])
def test_paper_scale_prints_plan(fig, tmp_path, capsys):
    out = tmp_path / f"{fig}-paper"
    assert main(["reproduce", fig, "--scale", "paper", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node=8 -m repalign train" in text and "GPU-hours" in text
    assert (out / "paper_plan.md").exists() and list(out.glob("sweep_*.yaml"))
    assert not list(out.rglob("metrics.jsonl"))  # nothing trained
    cfgs = list(out.rglob("configs/*.yaml"))
    assert cfgs and all("resnet50" in c.read_text() for c in cfgs)


def test_gpu_hours_estimate_scales():
    assert rp.gpu_hours("cifar100", 4, 1200) == pytest.approx(2 * rp.gpu_hours("cifar100", 2, 1200))
    assert 1 < rp.gpu_hours("cifar100", 2, 300) < 100
