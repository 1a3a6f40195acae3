"""`repalign reproduce FIG --tiny` runs the real pipeline (coupled training → sweep → figure) in seconds."""
from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

from repalign.cli import main
from repalign.config import ConfigError
from repalign.experiments import reproduce as rp

ALIGN = {"seed", "epoch", "split", "layer", "arm_a", "arm_b", "linear_cka", "rsa", "config_fingerprint"}
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
    "granularity": {"granularity": ALIGN | {"label_groups", "sim_gap"},
                    "granularity_lossgap": {"seed", "arm", "condition", "gap", "first_gap", "bound"},
                    "granularity_theory": {"label_groups", "S_T", "sim_gap", "bound_shape"}},
    "alpha": {"alpha": ALIGN | {"alpha", "sim_gap"}, "alpha_lossgap": {"seed", "arm", "condition", "gap", "bound"},
              "alpha_theory": {"alpha", "S_T", "sim_gap"}},
}
#: figures whose seeds were pre-declared from a power calculation (docs/figures/<fig>.md), not SEEDS
DECLARED_SEEDS = {"granularity": rp.GRANULARITY_SEEDS, "alpha": rp.ALPHA_SEEDS}


def seeds_of(fig, scale):
    return DECLARED_SEEDS[fig][scale] if fig in DECLARED_SEEDS else rp.SEEDS[scale]


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
            for c in cols & {"num_classes", "tau", "batch_size", "lr_rule", "seed", "config_fingerprint"}:
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


FLOORS = "cl nscl cl_data cl_eps"
CONTROLS = "cl nscl scl ce cl_seed cl_data cl_eps"
PAPER3 = "cifar100/cifar100 tiny_imagenet/tiny_imagenet mini_imagenet/mini_imagenet"
#: (figure, scale) → (sweeps as name/label, grid keys, arms of the first sweep, extra columns of the first sweep);
#: recorded before the split of reproduce.py into experiments/figures/ (issue 11) and unchanged by it
PLANS = {
    ("fig1", "tiny"): ("runs/digits", "seed", FLOORS, ""),
    ("fig1", "cpu"): ("runs/strokes", "seed", FLOORS, ""),
    ("fig1", "paper"): ("cifar100/cifar100", "seed", FLOORS, ""),
    ("fig2", "tiny"): ("runs/digits", "seed", CONTROLS, ""),
    ("fig2", "cpu"): ("runs/strokes", "seed", CONTROLS, ""),
    ("fig2", "paper"): (PAPER3, "seed", CONTROLS, ""),
    ("fig3", "tiny"): ("C3/strokes C6/strokes", "seed", FLOORS, "num_classes"),
    ("fig3", "cpu"): ("C10/strokes C50/strokes C100/strokes", "seed", FLOORS, "num_classes"),
    ("fig3", "paper"): ("mini_imagenet/mini_imagenet tiny_imagenet/tiny_imagenet imagenet/imagenet",
                        "data.num_classes seed", "cl nscl cl_seed cl_data cl_eps", ""),
    ("fig4", "tiny"): ("runs/digits", "loss.temperature seed", FLOORS, ""),
    ("fig4", "cpu"): ("runs/strokes", "loss.temperature seed", FLOORS, ""),
    ("fig4", "paper"): (PAPER3, "loss.temperature seed", FLOORS, ""),
    ("fig5", "tiny"): ("runs/digits", "optim.lr_rule seed train.batch_size", "cl nscl cl_eps", ""),
    ("fig5", "cpu"): ("lars/strokes sgd/strokes", "optim.lr_rule seed train.batch_size", FLOORS, "optim.type optimizer"),
    ("fig5", "paper"): ("mini_imagenet/mini_imagenet", "optim.lr_rule seed train.batch_size", FLOORS, ""),
    ("weights", "tiny"): ("runs/digits", "seed", "cl nscl scl ce cl_eps", ""),
    ("weights", "cpu"): ("runs/strokes", "seed", "", ""),  # the regime's own six arms
    ("weights", "paper"): ("cifar100/cifar100", "seed", "cl nscl scl ce cl_eps", ""),
    ("lossgap", "tiny"): ("C2/strokes C5/strokes", "seed", "cl", "num_classes"),
    ("lossgap", "cpu"): (" ".join(f"C{c}/strokes" for c in (2, 5, 10, 20, 50, 100, 200)), "seed", "cl", "num_classes"),
    ("lossgap", "paper"): ("cifar100/cifar100", "data.num_classes seed", "cl", ""),
    ("granularity", "tiny"): ("runs/digits", "seed", "cl nscl_k2 nscl_k5 nscl cl_eps cl_data", "num_classes"),
    ("granularity", "cpu"): ("runs/strokes", "seed", "cl nscl_k2 nscl_k5 nscl_k10 nscl_k25 nscl_k50 nscl cl_eps cl_data",
                             "num_classes"),
    ("granularity", "paper"): ("cifar100/cifar100", "seed",
                               "cl nscl_k2 nscl_k5 nscl_k10 nscl_k25 nscl_k50 nscl nscl_super20 cl_eps cl_data", ""),
    **{("alpha", s): ({"paper": "cifar100/cifar100"}.get(s, "runs/" + ("digits" if s == "tiny" else "strokes")), "seed",
                      "cl alpha_0 alpha_0p25 alpha_0p5 alpha_0p75 alpha_1 cl_eps cl_data", "") for s in ("tiny", "cpu", "paper")},
}


@pytest.mark.parametrize("fig,scale", list(PLANS))
def test_plan_snapshot(fig, scale):
    plans = rp.FIGS[fig].plans(scale)
    arms = [o for o in plans[0].spec["overrides"] if o.startswith("arms=")]
    got = (" ".join(f"{p.name}/{p.label}" for p in plans), " ".join(sorted(plans[0].spec["grid"])),
           " ".join(yaml.safe_load(arms[-1].split("=", 1)[1])) if arms else "", " ".join(sorted(plans[0].extra)))
    assert got == PLANS[fig, scale]
    assert all(p.spec["grid"]["seed"] == seeds_of(fig, scale) for p in plans)


def test_figure_modules_are_the_registry():
    """One module per figure under experiments/figures/, registered through repalign.experiments.FIGURES."""
    import pkgutil

    from repalign.experiments import figures

    mods = {m.name for m in pkgutil.iter_modules(figures.__path__)} - {"common", "designs"}
    assert mods == set(rp.FIGURES) and tuple(rp.FIGS) == rp.FIGURES and set(PLANS) == {(f, s) for f in rp.FIGURES
                                                                                          for s in rp.SCALES}
    for name, d in rp.FIGS.items():
        assert d.name == name and d.plans is getattr(rp, f"plans_{name}") and d.make is getattr(rp, f"make_{name}")


def test_gpu_hours_estimate_scales():
    assert rp.gpu_hours("cifar100", 4, 1200) == pytest.approx(2 * rp.gpu_hours("cifar100", 2, 1200))
    assert 1 < rp.gpu_hours("cifar100", 2, 300) < 100


@pytest.mark.parametrize("fig,scale", list(PLANS))
def test_with_seeds_replaces_only_the_seed_grid(fig, scale):
    """``reproduce --seeds N``: every plan trains seeds 0…N−1, nothing else changes, GPU-hours scale with N."""
    plans = rp.FIGS[fig].plans(scale)
    more = [rp.with_seeds(p, range(6)) for p in plans]
    for old, new in zip(plans, more):
        assert new.spec["grid"]["seed"] == list(range(6))
        assert {k: v for k, v in new.spec["grid"].items() if k != "seed"} == \
               {k: v for k, v in old.spec["grid"].items() if k != "seed"}
        assert list(new.spec["grid"]) == list(old.spec["grid"])  # same point slugs for the shared seeds
        assert new.spec["overrides"] == old.spec["overrides"] and new.extra == old.extra
        assert old.spec["grid"]["seed"] == seeds_of(fig, scale)  # the figure's own plan is not mutated
        if old.gpu_hours is not None:
            assert new.gpu_hours == pytest.approx(old.gpu_hours * 6 / len(seeds_of(fig, scale)))


def test_with_seeds_rejects_bad_requests():
    plan = rp.FIGS["fig1"].plans("cpu")[0]
    with pytest.raises(ConfigError, match="at least 2 distinct seeds"):
        rp.with_seeds(plan, [0])
    nogrid = rp.SweepPlan("x", "y", {"base": "b", "overrides": [], "grid": {"loss.temperature": [0.5]}})
    with pytest.raises(ConfigError, match="'x' has no seed grid"):
        rp.with_seeds(nogrid, range(3))


def test_reproduce_more_seeds_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "fig1"
    assert main(["reproduce", "fig1", "--tiny", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["reproduce", "fig1", "--tiny", "--seeds", "3", "--out", str(out)]) == 0
    assert "2 done, 1 to run" in capsys.readouterr().out  # seeds 0 and 1 reused, seed 2 trained
    with open(out / "fig1.csv", newline="") as f:
        assert {r["seed"] for r in csv.DictReader(f)} == {"0", "1", "2"}
    man = json.loads((out / "reproduce.json").read_text())
    assert "3 seeds" in " ".join(i["text"] for g in man["findings"] for i in g["items"])
    assert man["settings"]["sweeps"][0]["grid"]["seed"] == [0, 1, 2]


def test_paper_plan_hours_follow_seeds(tmp_path, capsys):
    def hours(*extra):
        out = tmp_path / f"p{len(extra)}"
        assert main(["reproduce", "fig1", "--scale", "paper", "--out", str(out), *extra]) == 0
        text = (out / "paper_plan.md").read_text()
        return float(re.search(r"≈ ([\d,.]+) GPU-hours", text).group(1).replace(",", ""))

    assert hours("--seeds", "6") == pytest.approx(2 * hours(), rel=0.02)
