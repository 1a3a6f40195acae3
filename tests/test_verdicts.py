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
    assert text.count("\n| ") == 7 and text.count("not run") == 7


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
