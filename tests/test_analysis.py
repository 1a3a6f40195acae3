"""Uncertainty, growth fits, aggregation and Findings (issue 8 §2–4) on known data."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

from repalign.analysis import (aggregate_rows, bootstrap_interval, comparison_rows, findings, fit_exponential_phase,
                               paired_difference, summarize, t_interval, verdict)


# --------------------------------------------------------------------------- intervals
def test_t_interval_known_values():
    # mean 2.5, std 1.2910, n 4 → t_{0.975,3} = 3.182446305
    lo, hi = t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    assert lo == pytest.approx(2.5 - half, rel=1e-9) and hi == pytest.approx(2.5 + half, rel=1e-9)
    # n = 2: t_{0.975,1} = 12.7062047
    lo, hi = t_interval([0.9, 0.8])
    assert hi - lo == pytest.approx(2 * 12.706204736174707 * 0.07071067811865482 / math.sqrt(2), rel=1e-9)
    assert t_interval([1.0]) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=25), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_t_interval_equals_scipy(xs, level):
    v = np.array(xs)
    got = t_interval(xs, level)
    se = sstats.sem(v)
    if se == 0:
        assert got[0] == pytest.approx(v.mean()) and got[1] == pytest.approx(v.mean())
        return
    want = sstats.t.interval(level, df=len(v) - 1, loc=v.mean(), scale=se)
    assert got[0] == pytest.approx(want[0], rel=1e-9, abs=1e-12)
    assert got[1] == pytest.approx(want[1], rel=1e-9, abs=1e-12)


def test_summary_text_keeps_tiny_decided_differences_visible():
    s = summarize([-2e-5, -3e-5, -2.5e-5, -1.5e-5])
    assert s.hi < 0 and s.text() == f"{s.mean:.2g} [{s.lo:.2g}, {s.hi:.2g}]" and "-0.000" not in s.text()
    assert summarize([0.0, 0.0]).text() == "0.000 [0.000, 0.000]"  # exact zeros stay plain
    assert summarize([0.001, 0.002, 0.003]).text() == "0.002 [-0.000, 0.004]"  # one visible number: fixed digits
    assert summarize([0.5]).text(1) == "0.5"


def test_summarize_and_bootstrap():
    s = summarize([0.5])
    assert (s.n, s.lo, s.hi, s.std, s.method) == (1, None, None, None, "none") and s.text() == "0.500"
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.method == "t" and s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=400)
    s = summarize(x)
    assert s.method == "bootstrap"
    t_lo, t_hi = t_interval(x)
    assert s.lo == pytest.approx(t_lo, abs=0.05) and s.hi == pytest.approx(t_hi, abs=0.05)
    assert bootstrap_interval(x, seed=3) == bootstrap_interval(x, seed=3)  # seeded
    with pytest.raises(ValueError, match="non-finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


def test_paired_difference_uses_common_seeds():
    a = {0: 0.90, 1: 0.80, 2: 0.85, 3: 0.70}
    b = {0: 0.85, 1: 0.76, 2: 0.80, 9: 0.1}
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx(np.mean([0.05, 0.04, 0.05]))
    lo, hi = t_interval([0.05, 0.04, 0.05])
    assert (d.lo, d.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert verdict(d) == "higher" and verdict(paired_difference(b, a)) == "lower"
    assert verdict(paired_difference({0: 1.0, 1: 0.0}, {0: 0.5, 1: 0.5})) == "undecided"
    assert verdict(paired_difference({0: 1.0}, {0: 0.5})) == "single"
    assert paired_difference({0: 1.0}, {1: 0.5}) is None


# --------------------------------------------------------------------------- growth
def _logistic(t, g0=1e-6, gmax=0.1, r=0.5):
    return gmax / (1 + (gmax / g0 - 1) * np.exp(-r * np.asarray(t, dtype=float)))


@pytest.mark.parametrize("r", [0.05, 0.5, 2.0])
def test_exponential_phase_recovers_known_rate_and_window(r):
    t = np.arange(0, int(60 / r) + 1) if r < 1 else np.linspace(0, 30, 121)
    g = _logistic(t, r=r)
    f = fit_exponential_phase(t, g, steps_per_epoch=10)
    assert f.resolved and f.saturates
    assert f.rate_per_step == pytest.approx(r, rel=0.05)
    assert f.rate_per_epoch == pytest.approx(10 * f.rate_per_step)
    # the window ends before the curve reaches its ceiling: log(gmax/g0)/r is where e^{rt}·g0 = gmax
    t_sat = math.log(0.1 / 1e-6) / r
    assert f.start_step == 0 and 0.5 * t_sat < f.end_step < 1.2 * t_sat
    # one exponential through everything would be far off — the point of the window
    slope_all = np.polyfit(t, np.log(g), 1)[0]
    assert slope_all < 0.6 * r


def test_exponential_phase_log_spaced_and_noise():
    ts = np.r_[0, np.unique(np.round(np.geomspace(1, 100, 30)))]
    f = fit_exponential_phase(ts, _logistic(ts))
    assert f.resolved and f.rate_per_step == pytest.approx(0.5, rel=0.05)
    rng = np.random.default_rng(1)
    t = np.arange(0, 80)
    noisy = _logistic(t) * np.exp(rng.normal(0, 0.1, size=t.size))
    f = fit_exponential_phase(t, noisy)
    assert f.resolved and f.rate_per_step == pytest.approx(0.5, rel=0.1)


def test_exponential_phase_unresolved_when_sampled_per_epoch():
    ts = [0, 27, 54, 81, 108]
    f = fit_exponential_phase(ts, _logistic(ts))
    assert not f.resolved and "not resolved" in f.text()
    assert fit_exponential_phase([0, 1], [1e-6, 1e-5]) is None
    assert fit_exponential_phase([0, 1, 2, 3], [0.0, 0.0, 1e-6, float("nan")]) is None


# --------------------------------------------------------------------------- aggregation + findings
def _rows(seeds=(0, 1, 2, 3), nscl=0.95, chaos=0.90, noise=0.80, scl=0.85, untrained=0.6, spread=0.01):
    rows = []
    for s in seeds:
        e = spread * (s - 1.5)
        for b, v, c in (("nscl", nscl, None), ("scl", scl, None), ("cl_eps", chaos, "chaos"),
                        ("cl_data", noise, "noise_data")):
            for layer in ("h", "z"):
                rows.append({"kind": "align", "seed": s, "step": 40, "epoch": 4, "split": "test", "layer": layer,
                             "arm_a": "cl", "arm_b": b, "control": c, "linear_cka": v + e, "rsa": v - 0.1 + e})
                rows.append({"kind": "align", "seed": s, "step": 0, "epoch": 0, "split": "test", "layer": layer,
                             "arm_a": "cl", "arm_b": b, "control": c, "linear_cka": 1.0, "rsa": 1.0})
        for layer in ("h", "z"):
            rows.append({"kind": "baseline", "baseline": "untrained", "seed": s, "step": 40, "epoch": 4,
                         "split": "test", "layer": layer, "linear_cka": untrained + e / 2, "rsa": 0.3})
    return rows


def test_aggregate_rows_mean_std_ci():
    rows = _rows()
    agg = aggregate_rows(rows)
    cell = next(r for r in agg if r["arm_b"] == "nscl" and r["step"] == 40 and r["layer"] == "h"
                and r["metric"] == "linear_cka")
    vals = [0.95 + 0.01 * (s - 1.5) for s in range(4)]
    lo, hi = t_interval(vals)
    assert cell["n"] == 4 and cell["mean"] == pytest.approx(np.mean(vals))
    assert cell["std"] == pytest.approx(np.std(vals, ddof=1))
    assert (cell["ci_lo"], cell["ci_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert cell["control"] is None and cell["method"] == "t"
    base = [r for r in agg if r["kind"] == "baseline" and r["metric"] == "linear_cka"]
    assert len(base) == 2 and all(r["n"] == 4 for r in base)


def test_comparison_rows_paired():
    comp = comparison_rows(_rows())
    c = next(r for r in comp if r["pair"] == "cl/nscl" and r["versus"] == "cl/cl_eps" and r["step"] == 40
             and r["layer"] == "h" and r["metric"] == "linear_cka")
    assert c["diff_mean"] == pytest.approx(0.05) and c["verdict"] == "higher" and c["n"] == 4
    assert c["versus_role"] == "chaos"
    u = next(r for r in comp if r["pair"] == "cl/nscl" and r["versus"] == "untrained/untrained" and r["step"] == 40
             and r["layer"] == "h" and r["metric"] == "linear_cka")
    assert u["verdict"] == "higher"
    assert not any(r["pair"] == "cl/cl_eps" for r in comp)  # controls are references, not subjects


def test_findings_name_pairs_floors_and_verdicts():
    (label, fs), = findings(_rows())
    assert label == ""
    text = "\n".join(f.text for f in fs)
    order = next(f for f in fs if f.kind == "order" and f.numbers["layer"] == "h")
    assert order.text.index("nscl") < order.text.index("chaos floor") < order.text.index("scl 0.8")
    assert order.text.index("noise floor") < order.text.index("untrained baseline")
    m = next(f for f in fs if f.kind == "margin" and f.numbers["pair"] == "cl/nscl" and f.numbers["control_kind"] == "chaos")
    assert m.verdict == "higher" and "stays closer to cl than the chaos floor" in m.text
    assert m.numbers["margin"] == pytest.approx(0.05) and m.numbers["n"] == 4
    assert "4 seeds" in m.text and "[" in m.text
    s = next(f for f in fs if f.kind == "margin" and f.numbers["pair"] == "cl/scl" and f.numbers["control_kind"] == "chaos")
    assert s.verdict == "lower"
    assert "Untrained baseline" in text and "layer z" in text
    # indistinguishable from the chaos floor → the sentence says so
    (_, fs2), = findings(_rows(nscl=0.90, chaos=0.90, spread=0.02), layers=("h",))
    m2 = next(f for f in fs2 if f.kind == "margin" and f.numbers["pair"] == "cl/nscl" and f.numbers["control_kind"] == "chaos")
    # identical per-seed offsets → zero-width interval at 0: undecided
    assert m2.verdict == "undecided" and "cannot tell" in m2.text
    # one seed → no interval, no verdict
    (_, fs1), = findings(_rows(seeds=(0,)), layers=("h",))
    m1 = next(f for f in fs1 if f.kind == "margin" and f.numbers["pair"] == "cl/nscl" and f.numbers["control_kind"] == "chaos")
    assert m1.verdict == "single" and "single seed" in m1.text


def test_findings_group_keys():
    rows = [dict(r, tau=0.1) for r in _rows()] + [dict(r, tau=0.5) for r in _rows(nscl=0.99)]
    out = findings(rows, group_keys=["tau"], layers=("h",))
    assert [lab for lab, _ in out] == ["tau=0.1", "tau=0.5"]
