"""Calibration selection rule (issue 9) on synthetic sweep rows."""
from __future__ import annotations

import pytest

from repalign.experiments.calibration import Rule, choose, closest, markdown, objective_rows, setting_rows


def _rows(lr, chaos, noise, knn_gain=0.1, spread=0.005, nscl=0.9, seeds=(0, 1, 2), steps=150):
    rows = []
    for s in seeds:
        e = spread * (s - 1)
        for b, v, c in (("cl_eps", chaos, "chaos"), ("cl_data", noise, "noise_data"), ("cl_seed", noise - 0.05, "noise_seed"),
                        ("nscl", nscl, None), ("scl", 0.7, None), ("ce", 0.6, None)):
            rows.append({"kind": "align", "lr": lr, "seed": s, "step": steps, "split": "test", "layer": "h",
                         "arm_a": "cl", "arm_b": b, "control": c, "linear_cka": v + e})
        rows.append({"kind": "baseline", "baseline": "untrained", "lr": lr, "seed": s, "step": steps,
                     "split": "test", "layer": "h", "linear_cka": 0.5})
        for arm in ("cl", "scl"):
            rows.append({"kind": "eval", "lr": lr, "seed": s, "step": 0, "arm": arm, "knn_acc": 0.5})
            rows.append({"kind": "eval", "lr": lr, "seed": s, "step": steps, "arm": arm, "knn_acc": 0.5 + knn_gain})
    return rows


def test_rule_and_choice():
    rows = (_rows(0.3, chaos=0.95, noise=0.95)                 # chaotic: no room
            + _rows(0.1, chaos=0.99, noise=0.90)               # room, learns
            + _rows(0.03, chaos=0.995, noise=0.85, steps=300)  # more room but more steps... and learns
            + _rows(0.01, chaos=0.999, noise=0.80, knn_gain=0.01))  # most room, but does not learn
    st = {s["lr"]: s for s in setting_rows(rows, ["lr"])}
    assert not st[0.3]["rule2_room"] and st[0.3]["rule1_learns"] and st[0.3]["rule3_precise"]
    assert st[0.1]["passes"] and st[0.03]["passes"]
    assert not st[0.01]["rule1_learns"] and not st[0.01]["passes"]
    assert st[0.1]["separation"].mean == pytest.approx(0.09)
    assert st[0.1]["untrained"].mean == pytest.approx(0.5) and st[0.1]["n_seeds"] == 3
    ch = choose(list(st.values()))
    assert ch["lr"] == 0.03  # largest separation (0.145 vs 0.09) wins
    # a tie within 0.01 goes to the cheaper setting
    tie = setting_rows(_rows(0.1, 0.99, 0.90) + _rows(0.03, 0.99, 0.895, steps=300), ["lr"])
    assert choose(tie)["lr"] == 0.1
    md = markdown(list(st.values()), ["lr"])
    assert md.count("\n") == 1 + 4 and "chaos floor" in md


def test_choice_never_reads_objective_pairs():
    a = setting_rows(_rows(0.1, 0.99, 0.90, nscl=0.2) + _rows(0.03, 0.98, 0.92, nscl=0.99), ["lr"])
    b = setting_rows(_rows(0.1, 0.99, 0.90, nscl=0.99) + _rows(0.03, 0.98, 0.92, nscl=0.2), ["lr"])
    assert choose(a)["lr"] == choose(b)["lr"] == 0.1
    # objective pairs only afterwards, with margins over both floors
    obj = {o["pair"]: o for o in objective_rows(_rows(0.1, 0.99, 0.90, nscl=0.95))}
    assert obj["cl–nscl"]["over_chaos"].mean == pytest.approx(-0.04)
    assert obj["cl–nscl"]["over_noise"].mean == pytest.approx(0.05)


def test_nothing_passes_reports_closest():
    st = setting_rows(_rows(0.3, 0.95, 0.95) + _rows(0.1, 0.95, 0.94, spread=0.05), ["lr"])
    assert choose(st) is None
    assert closest(st)["lr"] == 0.3  # passes rules 1 and 3
    assert Rule().min_separation == 0.02
