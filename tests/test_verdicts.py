"""Per-claim verdicts (issue 9): each rule decides correctly on synthetic figure CSVs with known effects."""
from __future__ import annotations

import csv

import pytest

from repalign.experiments import verdicts as vd

SEEDS = [0, 1, 2, 3]
NOISE = [0.004, -0.003, 0.002, -0.001]  # per-seed jitter, shared by the pairs of a seed


def _rows(pairs: dict[tuple[str, str], float], extra: dict | None = None, metric: str = "linear_cka",
          untrained: float = 0.6, jitter: float = 1.0) -> list[dict]:
    out = []
    for s, e in zip(SEEDS, NOISE):
        for step in (0, 10):
            for (a, b), v in pairs.items():
                val = v + jitter * e * (b in ("nscl", "cl_data")) if step == 10 else 0.99
                out.append({"kind": "align", "seed": s, "step": step, "split": "test", "layer": "h", "arm_a": a,
                            "arm_b": b, metric: val, **(extra or {})})
            out.append({"kind": "baseline", "baseline": "untrained", "seed": s, "step": step, "split": "test",
                        "layer": "h", "arm_a": "", "arm_b": "", metric: untrained, **(extra or {})})
    return out


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def test_judge_rules():
    from repalign.analysis.stats import summarize

    assert vd.judge([summarize([0.1, 0.12, 0.11])])[0] == vd.REPRODUCED
    assert vd.judge([summarize([-0.1, -0.12, -0.11])])[0] == vd.NOT_REPRODUCED
    assert vd.judge([summarize([0.1, -0.1, 0.05])])[0] == vd.INCONCLUSIVE
    assert vd.judge([summarize([0.1])])[0] == vd.INCONCLUSIVE  # one seed: no interval
    assert vd.judge([summarize([0.1, 0.12, 0.11]), summarize([-0.1, -0.12, -0.11])])[0] == vd.NOT_REPRODUCED
    assert vd.judge([summarize([0.1, 0.12, 0.11]), None])[0] == vd.INCONCLUSIVE


@pytest.mark.parametrize("scl,expect", [(0.80, vd.REPRODUCED), (0.95, vd.NOT_REPRODUCED)])
def test_nscl_most_aligned(tmp_path, scl, expect):
    rows = _rows({("cl", "nscl"): 0.90, ("cl", "scl"): scl, ("cl", "ce"): 0.85, ("cl", "cl_eps"): 0.97,
                  ("cl", "cl_data"): 0.88})
    _write(tmp_path / "fig2" / "fig2.csv", rows)
    v = vd.verdicts(tmp_path)
    assert v[0].verdict == expect, v[0]
    assert "untrained 0.600" in v[0].baselines and "chaos floor 0.970" in v[0].baselines
    assert v[1].verdict == vd.REPRODUCED  # 0.90 vs noise floor 0.88 on every seed
    assert "below the chaos floor" in v[1].reason
    assert v[2].verdict == vd.NOT_RUN and v[6].verdict == vd.NOT_RUN


def test_trend_needs_the_margin_over_the_noise_floor(tmp_path):
    # CL–NSCL rises with C, but the noise floor rises by the same amount → inconclusive, not reproduced
    rows = []
    for c, base in ((10, 0.80), (100, 0.90)):
        rows += _rows({("cl", "nscl"): base, ("cl", "cl_data"): base - 0.02}, {"num_classes": c}, jitter=0.0)
    for i, r in enumerate(rows):  # independent per-seed noise on the two pairs at each C
        if r["kind"] == "align" and r["step"] == 10:
            r["linear_cka"] += 0.003 * ((i * 7) % 5 - 2)
    _write(tmp_path / "fig3" / "fig3.csv", rows)
    v = vd.claim_grows_with_c(vd.read_rows(tmp_path / "fig3" / "fig3.csv"))
    assert v.numbers["raw"]["mean"] == pytest.approx(0.10, abs=0.01)
    assert v.verdict == vd.INCONCLUSIVE and "noise floor" in v.reason
    # with a margin that grows too, it is reproduced
    rows2 = []
    for c, base, gap in ((10, 0.80, 0.0), (100, 0.90, 0.05)):
        rows2 += _rows({("cl", "nscl"): base, ("cl", "cl_data"): base - gap}, {"num_classes": c})
    assert vd.claim_grows_with_c(rows2).verdict == vd.REPRODUCED
    # falling with τ → not reproduced
    rows3 = []
    for t, base in ((0.1, 0.95), (1.0, 0.85)):
        rows3 += _rows({("cl", "nscl"): base, ("cl", "cl_data"): 0.8}, {"tau": t})
    assert vd.claim_grows_with_tau(rows3).verdict == vd.NOT_REPRODUCED


def test_batch_rule_and_weights_and_loss_gap():
    rows = []
    for opt in ("lars", "sgd"):
        for rule in ("linear", "sqrt"):
            for b, lin, sq in ((64, 0.95, 0.90), (256, 0.90, 0.95)):
                rows += _rows({("cl", "nscl"): lin if rule == "linear" else sq},
                              {"optimizer": opt, "lr_rule": rule, "batch_size": b})
    v = vd.claim_batch_rule(rows)
    assert v.verdict == vd.REPRODUCED and v.numbers["lars_linear"]["mean"] == pytest.approx(0.05, abs=1e-9)
    w = _rows({("cl", "nscl"): 80.0, ("cl", "cl_eps"): 60.0}, metric="weight_angle_deg")
    r = _rows({("cl", "nscl"): 20.0}, metric="repr_angle_deg")
    assert vd.claim_weights_diverge(w + r).verdict == vd.REPRODUCED
    gap = [{"gap": 0.1, "bound": 0.5}, {"gap": 0.0, "bound": 0.2}]
    assert vd.claim_loss_gap(gap).verdict == vd.REPRODUCED
    assert vd.claim_loss_gap(gap + [{"gap": 0.6, "bound": 0.5}]).verdict == vd.NOT_REPRODUCED


def test_batch_rule_names_cells_without_room():
    """A fig5 cell whose chaos and noise floors are not ≥ 0.02 apart (calibration rule 2) is named as having no
    room — in the baselines, and in the reason when it is a LARS cell the verdict rests on."""
    rows = []
    for rule in ("linear", "sqrt"):
        for b in (64, 256):
            noise = 0.999 if rule == "sqrt" else 0.90  # sqrt: both floors at the ceiling, no room
            rows += _rows({("cl", "nscl"): 0.95, ("cl", "cl_eps"): 1.0, ("cl", "cl_data"): noise},
                          {"optimizer": "lars", "lr_rule": rule, "batch_size": b})
    v = vd.claim_batch_rule(rows)
    assert "No room" in v.baselines and "LARS sqrt B = 64, LARS sqrt B = 256" in v.baselines
    assert "LARS linear B" not in v.baselines.split("No room")[1]
    assert "no room in LARS sqrt B = 64, LARS sqrt B = 256" in v.reason
    assert "LARS linear: chaos floor 1.000" in v.baselines and "noise floor 0.90" in v.baselines


def test_markdown_has_one_row_per_claim(tmp_path):
    text = vd.markdown(vd.verdicts(tmp_path))
    # 7 claims of issue 9 + claim 3's granularity design (3b) + the mechanism row (8), issue 18
    assert text.count("\n| ") == 9 and text.count("**not run**") == 9
    assert text.count("not run yet") == 2  # the issue-18 designs say so until their CSVs exist
    assert "Holm over the m = 0 primary tests" in text and "uncorrected and exploratory" in text


def test_figure_markdown_renders_findings_and_our_tables(tmp_path):
    import json

    man = {"findings": [{"label": "C = 10", "items": [{"text": "NSCL sits above the noise floor."}]}],
           "tables": [{"title": "Final values", "header": ["pair", "CKA"], "rows": [["cl vs nscl", 0.91234]],
                       "note": "n = 4 seeds"},
                      {"title": "Paper", "paper": True, "header": ["x"], "rows": [[1]]}]}
    (tmp_path / "reproduce.json").write_text(json.dumps(man))
    md = vd.figure_markdown(tmp_path, seconds=90)
    assert "1.5 min" in md and "- *C = 10*" in md and "NSCL sits above" in md
    assert "| cl vs nscl | 0.9123 |" in md and "n = 4 seeds" in md and "Paper" not in md
    assert "load not recorded" in md  # an old timing says it may have shared the machine
    md = vd.figure_markdown(tmp_path, seconds=90, load={"mean": 2.14, "max": 2.61, "samples": 4}, threads=2)
    assert "1-min load average 2.1 on average, 2.6 at most; the run itself accounts for ≈ 2" in md


# ---------------------------------------------------------------------------- issue 18
def _trend_rows(key: str, conds: dict, nscl_jitter=(0.004, -0.003, 0.002, -0.001),
                noise_jitter=(0.001, 0.002, -0.002, -0.001)) -> list[dict]:
    """CL–NSCL and the noise floor per condition: ``conds[x] = (nscl, noise)``; independent per-seed jitter."""
    rows = []
    for x, (nscl, noise) in conds.items():
        for s in SEEDS:
            for step in (0, 10):
                for b, val, j in (("nscl", nscl, nscl_jitter), ("cl_data", noise, noise_jitter),
                                  ("cl_eps", 0.99, (0, 0, 0, 0))):
                    v = val + j[s] * (1 + 0.5 * (x == max(conds))) if step == 10 else 1.0
                    rows.append({"kind": "align", "seed": s, "step": step, "split": "test", "layer": "h",
                                 "arm_a": "cl", "arm_b": b, "control": {"nscl": ""}.get(b, b), "linear_cka": v,
                                 key: x})
    return rows


@pytest.mark.parametrize("sign", [+1, -1])
def test_trend_rule_is_symmetric_a_data_only_trend_is_inconclusive_either_way(tmp_path, sign):
    # CL–NSCL moves by 0.1 per decade in direction `sign`, and the noise floor moves with it: a trend of the data
    conds = {10: (0.85, 0.80), 100: (0.85 + sign * 0.1, 0.80 + sign * 0.1)}
    rows = _trend_rows("num_classes", conds)
    _write(tmp_path / "fig3" / "fig3.csv", rows)
    v = vd.claim_grows_with_c(vd.read_rows(tmp_path / "fig3" / "fig3.csv"))
    assert v.numbers["slope"]["ci_lo"] * sign > 0  # the raw slope is decided, in either direction
    assert v.verdict == vd.INCONCLUSIVE and "margin over the noise floor" in v.reason
    assert ("falls" if sign < 0 else "rises") in v.reason
    # the margin moves too → decided the same way as the raw slope
    conds2 = {10: (0.85, 0.80), 100: (0.85 + sign * 0.1, 0.80)}
    v2 = vd.claim_grows_with_c(_trend_rows("num_classes", conds2))
    assert v2.verdict == (vd.REPRODUCED if sign > 0 else vd.NOT_REPRODUCED)
    # raw decided one way, margin decided the other → inconclusive, not a verdict
    conds3 = {10: (0.85, 0.80), 100: (0.85 + sign * 0.1, 0.80 + sign * 0.2)}
    assert vd.claim_grows_with_c(_trend_rows("num_classes", conds3)).verdict == vd.INCONCLUSIVE


def test_trend_uses_every_condition_not_only_the_end_points():
    # end points equal, middle condition far above: the end-point difference is 0, the slope over log10(τ) is not
    # — and a slope that is 0 while the middle is high must stay undecided, never "reproduced"
    conds = {0.1: (0.90, 0.85), 0.3: (0.99, 0.85), 1.0: (0.90, 0.85)}
    v = vd.claim_grows_with_tau(_trend_rows("tau", conds))
    assert abs(v.numbers["raw"]["mean"]) < 0.01
    assert v.verdict == vd.INCONCLUSIVE
    # the slope is the per-seed OLS fit over all three conditions (reference: numpy polyfit per seed)
    import numpy as np

    up = {0.1: (0.80, 0.80), 0.2: (0.88, 0.80), 1.0: (0.90, 0.80)}
    v = vd.claim_grows_with_tau(_trend_rows("tau", up))
    jit = (0.004, -0.003, 0.002, -0.001)
    ref = np.mean([np.polyfit(np.log10(list(up)), [up[x][0] + jit[s] * (1 + 0.5 * (x == 1.0)) for x in up], 1)[0]
                   for s in SEEDS])
    assert v.numbers["slope"]["mean"] == pytest.approx(ref, rel=1e-9)
    assert v.verdict == vd.REPRODUCED


def test_verdict_table_has_raw_and_holm_p_mde_and_room(tmp_path):
    rows = _rows({("cl", "nscl"): 0.90, ("cl", "scl"): 0.80, ("cl", "ce"): 0.85, ("cl", "cl_eps"): 0.97,
                  ("cl", "cl_data"): 0.88})
    _write(tmp_path / "fig2" / "fig2.csv", rows)
    _write(tmp_path / "fig3" / "fig3.csv", _trend_rows("num_classes", {10: (0.85, 0.80), 100: (0.95, 0.80)}))
    vs = vd.verdicts(tmp_path)
    fam = [v for v in vs if v.p is not None]
    assert len(fam) == 3  # rows 1, 2 and 3a; lossgap is a deterministic count, not a test
    from repalign.analysis.stats import holm
    assert [v.p_holm for v in fam] == pytest.approx(holm([v.p for v in fam]))
    assert all(v.p_holm >= v.p for v in fam)
    text = vd.markdown(vs)
    assert "p raw / Holm" in text and "MDE" in text and "m = 3 primary tests" in text
    assert "room (rule 2" in text
    # the MDE is the closed form at the binding comparison's n and sd
    from repalign.analysis.stats import mde
    v1 = vs[0]
    d = [0.90 + e - 0.80 for e in NOISE]  # NSCL − SCL per seed (binding: the larger p)
    import statistics
    assert v1.mde.startswith(f"{mde(statistics.stdev(d), 4):.3g}")


def test_equivalence_to_the_chaos_floor_needs_a_tost():
    # NSCL 0.005 below the chaos floor on every seed, band 0.1 → margin 0.05: equivalent
    close = _rows({("cl", "nscl"): 0.965, ("cl", "cl_eps"): 0.97, ("cl", "cl_data"): 0.87})
    v = vd.claim_above_noise(close)
    assert v.numbers["tost_chaos"]["equivalent"] and "equivalent to the chaos floor within ±0.05" in v.reason
    # noisy: the interval contains 0 but the TOST fails → "not decidably different", never "equals"
    noisy = _rows({("cl", "nscl"): 0.96, ("cl", "cl_eps"): 0.97, ("cl", "cl_data"): 0.955}, jitter=8.0)
    v = vd.claim_above_noise(noisy)
    assert not v.numbers["tost_chaos"]["equivalent"]
    assert "not decidably different from the chaos floor" in v.reason and "equivalent to" not in v.reason


def test_two_stage_follow_up_is_labelled(tmp_path):
    rows = _rows({("cl", "nscl"): 0.90, ("cl", "scl"): 0.80, ("cl", "ce"): 0.85})
    _write(tmp_path / "fu" / "fig2.csv", rows)
    vs = vd.verdicts(tmp_path, follow_up={"fig2": tmp_path / "fu"})
    assert "two-stage follow-up" in vs[0].stage and "two-stage follow-up" in vs[1].stage
    assert "two-stage follow-up" in vd.markdown(vs)


def test_granularity_and_mechanism_rows_appear_when_their_csvs_exist(tmp_path):
    rows, gaps = [], []
    for s, e in zip(SEEDS, NOISE):
        for k, cka, gap in ((2, 0.90, 0.7), (10, 0.93, 0.12), (100, 0.95, 0.02)):
            for step in (0, 10):
                rows.append({"kind": "align", "seed": s, "step": step, "split": "test", "layer": "h", "arm_a": "cl",
                             "arm_b": f"nscl_k{k}", "control": "", "label_groups": k, "num_classes": 100,
                             "linear_cka": cka + e if step else 1.0, "sim_gap": (10 * gap + e) if step else 0.0})
            gaps.append({"seed": s, "arm": f"nscl_k{k}", "gap": gap + e / 10})
        for b, val in (("cl_eps", 0.97), ("cl_data", 0.85)):
            for step in (0, 10):
                rows.append({"kind": "align", "seed": s, "step": step, "split": "test", "layer": "h", "arm_a": "cl",
                             "arm_b": b, "control": b, "num_classes": 100, "linear_cka": val + e if step else 1.0})
    _write(tmp_path / "granularity" / "granularity.csv", rows)
    _write(tmp_path / "granularity" / "granularity_lossgap.csv", gaps)
    vs = {v.key: v for v in vd.verdicts(tmp_path)}
    assert vs["3b"].verdict == vd.REPRODUCED and vs["3b"].numbers["K"] == [2.0, 10.0, 100.0]
    m = vs["8"]
    assert m.verdict == vd.INCONCLUSIVE and "only one design" in m.reason  # the α design is missing
    assert "monotone increasing" in m.baselines and m.p is not None


def test_mechanism_reads_loss_gaps_keyed_by_condition_and_needs_both_designs(tmp_path):
    """Loss-gap rows may name the condition (label_groups / alpha) instead of the arm; with both designs present
    and alignment falling as the gap grows, the mechanism row is reproduced and the structure fit is reported."""
    def design(fig, column, conds):
        rows, gaps = [], []
        for s, e in zip(SEEDS, NOISE):
            for c, arm, cka, gap in conds:
                for step in (0, 10):
                    rows.append({"kind": "align", "seed": s, "step": step, "split": "test", "layer": "h",
                                 "arm_a": "cl", "arm_b": arm, "control": "", column: c,
                                 "linear_cka": cka + e if step else 1.0, "sim_gap": 20 * gap * (1 + e) if step else 0.0})
                for step in range(3):
                    gaps.append({"seed": s, "step": step, column: c, "arm": "cl", "gap": gap * (1 + e)})
        _write(tmp_path / fig / f"{fig}.csv", rows)
        _write(tmp_path / fig / f"{fig}_lossgap.csv", gaps)

    design("granularity", "label_groups", [(2, "nscl_k2", 0.90, 0.7), (10, "nscl_k10", 0.93, 0.12),
                                           (100, "nscl", 0.95, 0.02)])
    design("alpha", "alpha", [(0.25, "nscl_a0p25", 0.96, 0.005), (0.5, "nscl_a0p5", 0.95, 0.01),
                              (1.0, "nscl", 0.93, 0.02)])
    m = {v.key: v for v in vd.verdicts(tmp_path)}["8"]
    assert m.verdict == vd.REPRODUCED and "both designs" in m.reason, m
    assert "granularity: ‖Σ_CL − Σ_X‖_F vs loss gap over 3 arms" in m.baselines
    assert "alpha:" in m.baselines and m.p is not None and m.p_holm is not None
