"""Tests of issue 18's decision tools in repalign.analysis.stats: TOST, Holm, MDE, per-seed slopes — each
against a reference written here (scipy's one-sample t-tests, a hand-computed Holm table, the closed form)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from repalign.analysis import stats

# the committed fig2 16-seed per-seed NSCL − chaos-floor differences are not needed: known data suffice
DATA = [-0.031, 0.004, -0.012, -0.020, 0.009, -0.025, -0.003, 0.001, -0.018, -0.007, 0.012, -0.016, -0.022,
        0.002, -0.011, -0.019]


def _tost_reference(x, margin):
    """Two one-sided one-sample t-tests with scipy: H0 μ ≤ −δ (alternative greater) and H0 μ ≥ δ (less)."""
    x = np.asarray(x)
    p_lo = sps.ttest_1samp(x + margin, 0.0, alternative="greater").pvalue
    p_hi = sps.ttest_1samp(x - margin, 0.0, alternative="less").pvalue
    return p_lo, p_hi, max(p_lo, p_hi)


@pytest.mark.parametrize("margin", [0.005, 0.01, 0.02, 0.025, 0.05])
def test_tost_equals_two_one_sided_scipy_t_tests(margin):
    t = stats.tost(DATA, margin)
    p_lo, p_hi, p = _tost_reference(DATA, margin)
    assert t.p_lower == pytest.approx(p_lo, rel=1e-10) and t.p_upper == pytest.approx(p_hi, rel=1e-10)
    assert t.p == pytest.approx(p, rel=1e-10)
    # equivalent at α = 0.05 ⇔ the 90 % t-interval lies inside (−δ, δ)
    lo, hi = stats.t_interval(DATA, 0.90)
    assert t.equivalent(0.05) == (-margin < lo and hi < margin)


def test_tost_decides_both_ways_and_refuses_bad_margin():
    assert stats.tost([0.001, -0.002, 0.0015, -0.0005, 0.0], 0.01).equivalent()
    assert not stats.tost([0.03, 0.05, 0.04, 0.045], 0.01).equivalent()  # clearly outside
    assert not stats.tost([0.001, -0.02, 0.02, 0.0], 0.01).equivalent()  # too noisy to show it
    assert stats.tost([0.1], 0.01) is None
    with pytest.raises(ValueError, match="margin"):
        stats.tost(DATA, 0.0)


def test_t_test_matches_scipy():
    r = stats.t_test(DATA)
    ref = sps.ttest_1samp(DATA, 0.0)
    assert r.t == pytest.approx(ref.statistic, rel=1e-12) and r.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert stats.t_test([0.1]).p is None
    assert stats.t_test([0.1, 0.1]).p == 0.0 and stats.t_test([0.0, 0.0]).p == 1.0


def test_holm_on_known_p_values():
    # hand computation, m = 4: sorted 0.01, 0.02, 0.03, 0.04 → 4·0.01 = 0.04, 3·0.02 = 0.06,
    # max(0.06, 2·0.03) = 0.06, max(0.06, 1·0.04) = 0.06
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # monotonicity carried forward and capped at 1: 0.001·3 = 0.003, 0.2·2 = 0.4, max(0.4, 0.9) = 0.9
    assert stats.holm([0.9, 0.001, 0.2]) == pytest.approx([0.9, 0.003, 0.4])
    assert stats.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    # None entries are not in the family: m = 2 here
    assert stats.holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    # the example: the 16-seed follow-up's p-values survive Holm over 7 tests
    adj = stats.holm([0.0064, 7.6e-7, 2.1e-4, 0.3, 0.5, 0.08, 0.6])
    assert adj[0] == pytest.approx(0.0064 * 5) and all(a < 0.05 for a in adj[:3])
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([1.5])


def test_mde_closed_form_and_seeds_needed():
    sd, n = 0.03, 16
    q = sps.t.ppf(0.975, 15) + sps.t.ppf(0.8, 15)
    assert stats.mde(sd, n) == pytest.approx(q * sd / 4.0, rel=1e-12)
    assert stats.mde(sd, 1) is None
    # seeds_needed is the first n whose MDE reaches the effect
    need = stats.seeds_needed(sd, 0.02)
    assert stats.mde(sd, need) <= 0.02 < stats.mde(sd, need - 1)
    # the closed form's power is ≈ 0.8 by the noncentral t (a check that the formula means what it says)
    ncp = stats.mde(sd, need) / (sd / math.sqrt(need))
    crit = sps.t.ppf(0.975, need - 1)
    power = sps.nct.sf(crit, need - 1, ncp) + sps.nct.cdf(-crit, need - 1, ncp)
    assert 0.77 < power < 0.83
    assert stats.seeds_needed(0.0, 0.01) == 2 and stats.seeds_needed(sd, 0.0) is None


def test_per_seed_slopes_use_every_condition():
    # seed 0: y = 2x exactly; seed 1: a middle point that an end-point difference would ignore
    vals = {1.0: {0: 2.0, 1: 0.0}, 2.0: {0: 4.0, 1: 3.0}, 3.0: {0: 6.0, 1: 0.0}}
    sl = stats.per_seed_slopes(vals)
    assert sl[0] == pytest.approx(2.0)
    assert sl[1] == pytest.approx(np.polyfit([1, 2, 3], [0, 3, 0], 1)[0])  # 0: the end points agree, the fit too
    sl_log = stats.per_seed_slopes({10: {0: 1.0}, 100: {0: 2.0}}, transform=math.log10)
    assert sl_log[0] == pytest.approx(1.0)
    assert stats.per_seed_slopes({1.0: {0: 1.0}}) == {}  # one condition: no slope


def test_structure_fit_relation_slope_monotone_and_proportional():
    from repalign.analysis import structure

    jit = {0: 1.00, 1: 1.02, 2: 0.98, 3: 1.01}
    xs = {"k2": 0.7, "k10": 0.12, "k50": 0.03, "k100": 0.015}
    prop = {a: {s: (x, 3.0 * x * j * (1 + 0.02 * (i - 1.5) * (-1) ** s)) for s, j in jit.items()} for i, (a, x) in enumerate(xs.items())}
    f = structure.fit_relation(prop)
    ref = np.mean([np.polyfit([p[s][0] for p in prop.values()], [p[s][1] for p in prop.values()], 1)[0] for s in jit])
    assert f["slope"].mean == pytest.approx(ref, rel=1e-9) and f["monotone"]
    assert f["elasticity"].lo <= 1 <= f["elasticity"].hi and f["proportional"] == "consistent"
    sq = {a: {s: (x, x * x * j) for s, j in jit.items()} for a, x in xs.items()}
    assert structure.fit_relation(sq)["proportional"] == "faster"
    down = {a: {s: (x, 1 - x * j) for s, j in jit.items()} for a, x in xs.items()}
    fd = structure.fit_relation(down)
    assert not fd["monotone"] and fd["slope"].hi < 0 and fd["spearman"].mean == pytest.approx(-1.0)
    assert "not decided monotone" in structure.relation_text(fd)
    rows = [{"seed": s, "S_T": S, "sim_gap": (S ** 2) * j, "tau": 0.5} for s, j in jit.items() for S in (0.0, 0.5, 1, 2)]
    g = structure.growth_over_training(rows, "tau")
    assert g[0.5].mean == pytest.approx(2.0)
