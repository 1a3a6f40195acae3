"""Report, plots, theory overlay and reference data on synthetic run directories (no training)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from repalign.config import load_config
from repalign.analysis import theory
from repalign.report import plots, reference, write_report

ARMS = ("{cl: {objective: cl}, nscl: {objective: nscl}, scl: {objective: scl}, ce: {objective: ce}, "
        "cl_seed: {same_as: cl, init_seed: 1001, data_seed: 1001}, cl_data: {same_as: cl, data_seed: 1002}, "
        "cl_eps: {same_as: cl, init_perturb: 1.0e-6}}")
PAIRS = "[[cl, nscl], [cl, scl], [cl, ce], [cl, cl_seed], [cl, cl_data], [cl, cl_eps]]"
CONTROL = {"cl_seed": "noise_seed", "cl_data": "noise_data", "cl_eps": "chaos"}
#: synthetic final CKA per arm_b: NSCL above the chaos floor, SCL/CE below the noise floor
FINAL = {"nscl": 0.95, "cl_eps": 0.90, "cl_data": 0.85, "cl_seed": 0.80, "scl": 0.70, "ce": 0.75}


def make_run(path: Path, epochs: int = 4, spe: int = 5, seed: int = 0, log_every: int = 2) -> Path:
    """A synthetic run directory following docs/design.md (config.yaml, meta.json, metrics.jsonl)."""
    cfg = load_config("configs/demo.yaml", [f"train.epochs={epochs}", f"seed={seed}", f"arms={ARMS}",
                                             f"pairs={PAIRS}", f"train.log_every={log_every}", "eval.every=1"])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (path / "meta.json").write_text(json.dumps({
        "seed": seed, "versions": {"python": "3.x", "torch": "2.x"}, "git_revision": "abc123", "argv": ["repalign"],
        "world_size": 1, "steps_per_epoch": spe, "total_steps": epochs * spe, "num_classes": 10,
        "arms": {"cl": {"objective": "cl", "overrides": {}, "init_seed": None, "data_seed": None},
                 "cl_seed": {"objective": "cl", "overrides": {}, "init_seed": 1001, "data_seed": 1001}}}))
    rng = np.random.default_rng(seed)
    rows = []
    arms = ["cl", "nscl", "scl", "ce", "cl_seed", "cl_data", "cl_eps"]
    for step in range(0, epochs * spe, log_every):
        for a in arms:
            rows.append({"kind": "train", "step": step, "epoch": step / spe, "arm": a, "objective": a[:4].rstrip("_"),
                         "loss": 5.0 - 0.1 * step + rng.random() * 0.01, "lr": 0.3, "samples_per_s": 100.0})
            if a.startswith("cl"):
                rows.append({"kind": "lossgap", "step": step, "epoch": step / spe, "arm": a, "dcl": 5.0, "nscl": 4.9,
                             "gap": 0.1 + 0.01 * rng.random(), "bound": 1.2})
    for e in range(epochs + 1):
        for split in ("train", "test"):
            for b in arms[1:]:
                gap = 0.0 if e == 0 else 0.5 * e * (2 if b == "scl" else 1)
                cka = 1 - (1 - FINAL[b]) * e / epochs
                rows.append({"kind": "align", "epoch": e, "step": e * spe, "split": split, "layer": "h", "arm_a": "cl",
                             "arm_b": b, "control": CONTROL.get(b), "linear_cka": cka, "debiased_cka": cka - 0.01,
                             "rsa": 1 - 0.04 * e,
                             "sim_gap": gap, "sim_gap_rel": 0.05 * e, "sim_gap_per_entry": gap / 100,
                             "weight_gap_mean": 0.01 * math.exp(0.5 * e) if e else 0.0, "weight_gap_sum": 1.0,
                             "weight_rel_l2": 0.01 * e, "weight_angle_deg": 10.0 * e, "displacement_angle_deg": 20.0,
                             "repr_angle_deg": 3.0 * e})
            rows.append({"kind": "baseline", "baseline": "untrained", "epoch": e, "step": e * spe, "split": split,
                         "layer": "h", "linear_cka": 0.6, "rsa": 0.3, "sim_gap": 50.0, "sim_gap_rel": 0.5})
        for a in arms:
            rows.append({"kind": "eval", "epoch": e, "step": e * spe, "split": "test", "arm": a, "knn_acc": 0.5 + 0.05 * e})
    rows.append({"kind": "event", "step": 3, "arm": None, "message": "hello"})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_offline_html(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external link in report"
    assert "<script" not in html.lower()
    assert "@import" not in html and "@font-face" not in html
    imgs = re.findall(r"<img\b[^>]*>", html)
    for tag in imgs:
        assert re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', tag), tag[:80]


def test_run_report_self_contained(tmp_path):
    run = make_run(tmp_path / "run")
    path = write_report(run)
    assert path.exists() and path.name == "report.html"
    html = path.read_text()
    check_offline_html(html)
    pngs = sorted(path.parent.glob("*.png"))
    assert len(pngs) >= 7 and all(p.stat().st_size > 1000 for p in pngs)
    assert len(re.findall(r"<img\b", html)) == len(pngs)
    # config, versions; pair table with baselines; controls marked; paper values in their own section
    assert "abc123" in html and "torch" in html and "resolved config.yaml" in html
    assert "cl vs nscl" in html and "chaos floor" in html and "untrained baseline" in html
    assert html.index("Findings") < html.index("Final alignment with baselines") < html.index("Published values")
    paper = html[html.index("Published values"):]
    assert "CIFAR-100" in paper and "ResNet-50" in paper and "0.78" in paper
    assert "CIFAR-100" not in html[:html.index("Published values")]  # never beside our numbers
    # Findings: CL–NSCL vs chaos floor and noise floor, with numbers; the theory caption only once
    fnd = html[html.index("Findings"):html.index("Final alignment with baselines")]
    assert "cl–nscl 0.950 vs chaos floor cl–cl_eps 0.900: margin +0.050" in fnd
    assert "cl–nscl 0.950 vs noise floor (own batches/views) cl–cl_data 0.850: margin +0.100" in fnd
    assert "untrained baseline 0.600" in fnd and "single seed" in fnd
    assert html.count("constants are unknown") == 1
    for word in ("sim gap", "ρ", "CKA rel. untrained"):
        assert f"<dt>{word}" in html  # every column explained


def test_report_rejects_non_run(tmp_path):
    with pytest.raises(ValueError, match="neither a run directory"):
        write_report(tmp_path)


def test_plots_are_pure_and_labelled(tmp_path):
    run = make_run(tmp_path / "run")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for fn in (plots.plot_alignment, plots.plot_weight_gap, plots.plot_loss_gap, plots.plot_train_loss, plots.plot_knn,
               plots.plot_angles):
        fig = fn(rows)
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), fn.__name__
        handles = [h for ax in fig.axes for h in ax.get_legend_handles_labels()[1]]
        assert handles, fn.__name__
    # curves are labelled by arm name
    labels = plots.plot_alignment(rows).axes[0].get_legend_handles_labels()[1]
    assert any("cl vs nscl" in s for s in labels) and any("cl vs cl_seed" in s for s in labels)
    # empty input still gives a figure
    assert plots.plot_alignment([]).axes


def test_weight_growth_fits_use_dense_rows_and_window():
    rows = [{"kind": "weight", "step": s, "epoch": s / 10, "arm_a": "cl", "arm_b": "x",
             "weight_gap_mean": 0.1 / (1 + (0.1 / 1e-6 - 1) * math.exp(-0.5 * s))} for s in range(0, 80)]
    f = plots.weight_growth_fits(rows)[("cl", "x")]
    assert f.resolved and f.rate_per_step == pytest.approx(0.5, rel=0.05)
    assert f.rate_per_epoch == pytest.approx(10 * f.rate_per_step) and f.end_step < 30
    fig = plots.plot_weight_gap(rows)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("rate 0.4" in s or "rate 0.5" in s for s in labels) and not any("e^{" in s for s in labels)


def test_seed_aggregation_mean_and_ci_band():
    rows = [{"epoch": 1, "v": 1.0}, {"epoch": 1, "v": 3.0}, {"epoch": 2, "v": 5.0}, {"epoch": 2, "v": float("nan")}]
    x, m, lo, hi, n = plots.aggregate(rows, "epoch", "v")
    half = 12.706204736174707 * math.sqrt(2) / math.sqrt(2)  # t_{0.975,1} · s / √n
    assert list(x) == [1, 2] and list(m) == [2.0, 5.0] and n == 2
    assert lo[0] == pytest.approx(2.0 - half) and hi[0] == pytest.approx(2.0 + half)
    assert lo[1] == hi[1] == 5.0  # one value: no band


def test_alignment_axis_and_controls(tmp_path):
    run = make_run(tmp_path / "run")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    fig = plots.plot_alignment(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "epoch"  # epoch-boundary evaluations
    labels = ax.get_legend_handles_labels()[1]
    assert any(s.startswith("[chaos floor] cl vs cl_eps") for s in labels)
    assert any(s.startswith("untrained baseline") for s in labels)
    # mid-epoch evaluations → log steps with real step values
    for r in rows:
        if r.get("kind") == "align" and r["epoch"] == 1:
            r["step"], r["epoch"] = 3, 0.6
    ax = plots.plot_alignment(rows).axes[0]
    assert ax.get_xscale() == "symlog" and "optimiser step" in ax.get_xlabel() and "1 epoch = 5 steps" in ax.get_xlabel()


def test_final_vs_draws_each_groups_floors():
    """fig5's B plot: every rule's chaos and noise floors beside CL–NSCL, at their seed means."""
    rows = []
    for rule, base in (("linear", 0.90), ("sqrt", 0.95)):
        for b in (64, 256):
            for s, e in ((0, 0.01), (1, -0.01)):
                for (a, bb), ctl, v in ((("cl", "nscl"), "", base), (("cl", "cl_eps"), "chaos", 0.99),
                                        (("cl", "cl_data"), "noise_data", base - 0.1)):
                    rows.append({"kind": "align", "split": "test", "layer": "h", "epoch": 10, "arm_a": a, "arm_b": bb,
                                 "control": ctl, "lr_rule": rule, "batch_size": b, "seed": s,
                                 "linear_cka": v + e, "rsa": v})
    fig = plots.plot_final_vs(rows, "batch_size", "lr_rule", controls=[("cl", "cl_eps"), ("cl", "cl_data")],
                              title="mine")
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "lr_rule=sqrt: chaos floor (mean, n = 2)" in labels
    assert "lr_rule=linear: noise floor (own data) (mean, n = 2)" in labels
    assert "lr_rule=linear (mean ± 95 % CI, n = 2)" in labels and ax.get_title() == "mine"
    by = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert by["lr_rule=linear: noise floor (own data) (mean, n = 2)"] == pytest.approx([0.80, 0.80])
    assert by["lr_rule=sqrt: chaos floor (mean, n = 2)"] == pytest.approx([0.99, 0.99])
    assert len(plots.plot_final_vs(rows, "batch_size", "lr_rule").axes[0].get_lines()) == 2  # no controls asked


def test_bound_shape_log_space_matches_direct_formula():
    S = np.array([0.0, 0.5, 3.0, 10.0])
    tau, C, B = 0.5, 10, 256
    direct = np.exp(2 / tau) / (tau * C * math.sqrt(B)) * S * np.exp(S / (2 * tau ** 2 * B))
    lb = theory.log_bound_shape(S, tau, C, B)
    assert lb[0] == -np.inf
    np.testing.assert_allclose(np.exp(lb[1:]), direct[1:], rtol=1e-12)
    # no overflow where the direct formula overflows (tau = 0.1, huge S)
    big = theory.log_bound_shape(np.array([1e3, 3.5e4]), 0.1, 100, 1024)
    assert np.all(np.isfinite(big)) and big[1] > 700
    norm = theory.normalised_bound(big, 0, 0.2)
    assert norm[0] == pytest.approx(0.2) and norm[1] == np.inf
    with pytest.raises(ValueError, match="tau"):
        theory.log_bound_shape(S, 0.0, C, B)


def test_cka_lower_bound():
    np.testing.assert_allclose(theory.cka_lower_bound([0.0, 1 / 3, 1.0]), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="rho"):
        theory.cka_lower_bound(-0.1)


def test_cumulative_lr_exact_and_from_rows():
    cfg = load_config("configs/demo.yaml", ["train.epochs=3", "optim.warmup_epochs=1", "optim.lr=0.3",
                                            "train.batch_size=256", "optim.lr_rule=linear"])
    S = theory.cumulative_lr(cfg, steps_per_epoch=4)
    assert S.shape == (13,) and S[0] == 0
    # linear rule: peak 0.3·256/256 = 0.3; warm-up factors 1/4..4/4 → S after 4 steps = 0.3·2.5
    assert S[4] == pytest.approx(0.3 * 2.5)
    assert np.all(np.diff(S) >= 0)
    rows = [{"arm": "cl", "step": s, "lr": 0.1} for s in (0, 2)] + [{"arm": "cl", "step": 4, "lr": 0.3}]
    np.testing.assert_allclose(theory.cumulative_lr_from_rows(rows, "cl", [0, 4, 6]), [0.0, 0.4, 1.0])


def test_theory_rows_normalised_at_first_eval(tmp_path):
    run = make_run(tmp_path / "run")
    th = theory.run_theory_rows(run)
    assert [t["epoch"] for t in th] == [0, 1, 2, 3, 4]
    assert th[0]["bound_shape"] == 0.0 and th[1]["bound_shape"] == pytest.approx(th[1]["sim_gap"])
    assert all(th[i + 1]["S_T"] > th[i]["S_T"] for i in range(4))
    # issue 18: the uncentred sim_gap_rel is not Cor. 1's ρ — without the centred ρ there is no bound
    assert math.isnan(th[2]["cka_lower_bound"]) and th[2]["bound_status"] == "rho not recorded"
    assert th[0]["arm_b"] == "nscl" and th[0]["num_classes"] == 10 and th[0]["tau"] == 0.5
    # with the centred ρ (0.3·epoch here) the bound is (1 − ρ)/(1 + ρ) where ρ < 1 and vacuous elsewhere
    from repalign.results import read_meta, read_rows

    rows = [dict(r, sim_gap_centred_rel=0.3 * r["epoch"]) if r.get("kind") == "align" else r for r in read_rows(run)]
    th = theory.theory_rows(rows, yaml.safe_load((run / "config.yaml").read_text()), read_meta(run))
    assert th[2]["cka_lower_bound"] == pytest.approx((1 - 0.6) / (1 + 0.6)) and th[2]["bound_status"] == "bound"
    assert math.isnan(th[4]["cka_lower_bound"]) and th[4]["bound_status"] == "vacuous (rho >= 1)"
    assert th[2]["cka_cos"] == pytest.approx(math.cos(math.radians(6.0)))  # cos of the representation angle
    fig = plots.plot_theory(th)
    assert "vacuous (ρ ≥ 1) at 1 of 5 evaluations" in fig.axes[1].get_xlabel()


def test_corollary_bound_holds_for_the_cosine_kernel_cka_and_the_old_rho_did_not():
    """Cor. 1 with the centred ρ is a triangle inequality: on any two representations the cosine-kernel CKA is ≥
    (1 − ρ)/(1 + ρ). The uncentred ρ (sim_gap_rel) the overlay used before issue 18 gave a 'bound' above the
    measured CKA (the report's contradiction)."""
    import torch

    from repalign.metrics.similarity import representation_metrics

    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((300, 32)), 0) + 0.1  # ReLU-like features: all cosines positive
    old_violates = False
    for s in (0.05, 0.2, 0.5, 1.0, 3.0):
        Y = np.maximum(X + s * rng.standard_normal(X.shape), 0)
        m = representation_metrics(torch.tensor(X), torch.tensor(Y))
        rho, cka_cos, bound, status = theory.corollary_bound(m)
        assert rho == m["sim_gap_centred_rel"]
        if status == "bound":
            assert cka_cos >= bound - 1e-12
        else:
            assert status == "vacuous (rho >= 1)" and rho >= 1 and math.isnan(bound)
        old = (1 - m["sim_gap_rel"]) / (1 + m["sim_gap_rel"])
        old_violates |= old > m["linear_cka"]
    assert old_violates


def test_reference_values_from_paper_notes():
    assert reference.lookup("fig4", "linear_cka", "train", tau=0.1)["cifar100"] == 0.853
    assert reference.lookup("fig5", "rsa", "test", batch_size=1024, lr_rule="linear")["mini_imagenet"] == 0.857
    # the paper's fig 5 is LARS: an SGD run of ours has no paper value to stand beside
    assert reference.lookup("fig5", "rsa", "test", batch_size=1024, lr_rule="linear", optimizer="lars")
    assert reference.lookup("fig5", "rsa", "test", batch_size=1024, lr_rule="linear", optimizer="sgd") == {}
    assert reference.lookup("fig2", "linear_cka", "test", pair="cl/nscl", epoch=1200)["cifar100"] == 0.78
    f1 = {r["metric"]: r["value"] for r in reference.reference("fig1")}
    assert f1 == {"weight_angle_deg": 85.7, "repr_angle_deg": 27.8}
    assert len(reference.reference("fig4")) == 36 and len(reference.reference("fig5")) == 36
