"""Baselines as first-class controls (issue 8): the chaos-floor arm (``init_perturb``), the untrained
baseline, step-level evaluation schedules, weight-gap rows, relative values and margins."""
from __future__ import annotations

import json

import pytest
import torch

from repalign.config import ConfigError, load_config
from repalign.seeding import derive_seed
from repalign.training import CoupledTrainer
from repalign.training.evaluate import eval_steps, log_steps, relative_to_baseline
from repalign.training.rundir import read_metrics
from conftest import tiny_overrides

ARMS_EPS = "arms={cl: {objective: cl}, nscl: {objective: nscl}, cl_eps: {same_as: cl, init_perturb: 1.0e-6}, " \
           "cl_data: {same_as: cl, data_seed: 7}}"


def _cfg(*extra: str, **kw):
    return load_config(None, tiny_overrides(**kw) + list(extra))


def _rows(run, kinds=None):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "samples_per_s")} for r in read_metrics(run / "metrics.jsonl")
            if kinds is None or r["kind"] in kinds]


# --------------------------------------------------------------------------- config
def test_init_perturb_config_errors():
    with pytest.raises(ConfigError, match=r"arms\.x\.init_perturb.*>= 0"):
        _cfg("arms={cl: {objective: cl}, x: {same_as: cl, init_perturb: -1}}")
    with pytest.raises(ConfigError, match=r"arms\.x\.init_perturb.*init_seed"):
        _cfg("arms={cl: {objective: cl}, x: {same_as: cl, init_perturb: 0.1, init_seed: 3}}")
    with pytest.raises(ConfigError, match=r"arms\.x\.init_perturb"):
        _cfg("arms={cl: {objective: cl}, x: {same_as: cl, init_perturb: yes}}")
    cfg = _cfg(ARMS_EPS)
    from repalign.config import resolve_arms

    arms = {a.name: a for a in resolve_arms(cfg)}
    assert arms["cl_eps"].control == "chaos" and arms["cl_eps"].same_as == "cl"
    assert arms["cl_eps"].objective == "cl" and arms["cl_eps"].init_perturb == 1e-6
    assert arms["cl_data"].control == "noise_data" and arms["cl"].control is None


def test_eval_schedule_errors():
    with pytest.raises(ConfigError, match="eval.schedule"):
        _cfg("eval.schedule=sometimes")
    cfg = _cfg("eval.steps=[1, 999]")
    with pytest.raises(ValueError, match=r"eval\.steps.*999"):
        CoupledTrainer(cfg, None)


# --------------------------------------------------------------------------- chaos floor
def test_init_perturb_zero_is_bitwise_identical_after_training(tmp_path):
    cfg = _cfg("arms={cl: {objective: cl}, cl0: {same_as: cl, init_perturb: 0}}", **{"eval.every": "null"})
    tr = CoupledTrainer(cfg, tmp_path / "run")
    tr.fit()
    a, b = (s.module.state_dict() for s in tr.arm_states)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["arms"]["cl0"]["init_perturb"] == 0.0 and meta["arms"]["cl0"]["control"] == "chaos"


def test_init_perturb_is_the_seeded_relative_noise_and_shares_inputs(tmp_path):
    eps = 1e-6
    cfg = _cfg(ARMS_EPS, **{"eval.every": "null"})
    tr = CoupledTrainer(cfg, None)
    cl, eps_arm = tr.arm_states[0].module.net, tr.arm_states[2].module.net
    wa, wb = dict(cl.named_parameters()), dict(eps_arm.named_parameters())
    changed = 0
    for name, w in wa.items():
        d = (wb[name].detach().double() - w.detach().double())
        wn = float(w.detach().double().norm())
        if wn == 0:
            assert torch.equal(wb[name], w), f"{name}: zero tensor must stay unchanged"
            continue
        changed += 1
        # δ is the seeded Gaussian draw scaled to ‖δ‖ = eps·‖w‖ (naive reference, float64) ...
        g = torch.Generator().manual_seed(derive_seed(derive_seed(cfg["seed"], "init_perturb", "cl_eps"),
                                                      "init_perturb", name))
        n = torch.randn(w.shape, generator=g, dtype=torch.float64)
        want = n * (eps * wn / float(n.norm()))
        assert float(want.norm()) / wn == pytest.approx(eps, rel=1e-12)
        # ... and the arm's weights are exactly w + δ (one float32 addition)
        assert torch.equal(wb[name].detach(), w.detach() + want.to(w.dtype)), name
        # the float32 result differs from w by eps relative size up to rounding of w + δ
        assert float(d.norm()) / wn == pytest.approx(eps, rel=0.1), name
    assert changed > 5
    # buffers are not perturbed
    for (k, x), (_k2, y) in zip(cl.named_buffers(), eps_arm.named_buffers()):
        assert torch.equal(x, y), k
    # a second trainer from the same config draws the same noise; another seed draws another
    tr2 = CoupledTrainer(cfg, None)
    for x, y in zip(tr.arm_states[2].module.parameters(), tr2.arm_states[2].module.parameters()):
        assert torch.equal(x, y)
    cfg3 = _cfg(ARMS_EPS, **{"eval.every": "null", "seed": 5})
    tr3 = CoupledTrainer(cfg3, None)
    p3 = dict(tr3.arm_states[2].module.net.named_parameters())
    p3cl = dict(tr3.arm_states[0].module.net.named_parameters())
    name = next(n for n, w in wa.items() if w.dim() > 1)
    assert not torch.allclose(p3[name] - p3cl[name], wb[name] - wa[name])
    # every step feeds the very same input tensor to cl and its chaos twin
    seen: dict[str, list[torch.Tensor]] = {s.name: [] for s in tr.arm_states}
    for s in tr.arm_states:
        s.module.register_forward_pre_hook(lambda m, args, name=s.name: seen[name].append(args[0]))
    tr.fit()
    assert len(seen["cl"]) == tr.total_steps
    assert all(x is y for x, y in zip(seen["cl"], seen["cl_eps"]))
    assert not any(torch.equal(x, y) for x, y in zip(seen["cl"], seen["cl_data"]))


# --------------------------------------------------------------------------- untrained baseline
def test_untrained_baseline_rows_present_and_reproducible(tmp_path):
    cfg = _cfg(ARMS_EPS, **{"eval.every": 1, "train.epochs": 2})
    CoupledTrainer(cfg, tmp_path / "a").fit()
    CoupledTrainer(cfg, tmp_path / "b").fit()
    ra, rb = _rows(tmp_path / "a", ("baseline",)), _rows(tmp_path / "b", ("baseline",))
    assert ra == rb and ra
    evals = sorted({r["step"] for r in _rows(tmp_path / "a", ("align",))})
    # one row per split and layer at every evaluation
    assert sorted((r["step"], r["split"], r["layer"]) for r in ra) == sorted(
        (s, sp, ly) for s in evals for sp in ("train", "test") for ly in ("h", "z"))
    for r in ra:
        assert r["baseline"] == "untrained"
        assert 0 < r["linear_cka"] < 1 and -1 <= r["rsa"] < 1
    # constant over training (the untrained models never change)
    by = {(r["split"], r["layer"]): r["linear_cka"] for r in ra}
    assert all(r["linear_cka"] == by[(r["split"], r["layer"])] for r in ra)
    # another seed gives other untrained models
    CoupledTrainer(_cfg(ARMS_EPS, **{"eval.every": 1, "train.epochs": 1, "seed": 3}), tmp_path / "c").fit()
    rc = _rows(tmp_path / "c", ("baseline",))
    assert rc[0]["linear_cka"] != ra[0]["linear_cka"]


def test_relative_values_and_margins(tmp_path):
    cfg = _cfg(ARMS_EPS, **{"eval.every": 1, "train.epochs": 2})
    CoupledTrainer(cfg, tmp_path / "run").fit()
    rows = _rows(tmp_path / "run")
    base = {(r["step"], r["split"], r["layer"]): r for r in rows if r["kind"] == "baseline"}
    align = {(r["step"], r["split"], r["layer"], r["arm_b"]): r for r in rows if r["kind"] == "align"}
    for (step, split, layer, b), r in align.items():
        u = base[(step, split, layer)]
        assert r["linear_cka_rel"] == pytest.approx((r["linear_cka"] - u["linear_cka"]) / (1 - u["linear_cka"]))
        assert r["rsa_rel"] == pytest.approx((r["rsa"] - u["rsa"]) / (1 - u["rsa"]))
        assert r["control"] == {"cl_eps": "chaos", "cl_data": "noise_data", "nscl": None}[b]
        if b == "nscl":
            chaos, noise = align[(step, split, layer, "cl_eps")], align[(step, split, layer, "cl_data")]
            assert r["linear_cka_over_chaos"] == pytest.approx(r["linear_cka"] - chaos["linear_cka"])
            assert r["linear_cka_over_noise_data"] == pytest.approx(r["linear_cka"] - noise["linear_cka"])
            assert r["rsa_over_chaos"] == pytest.approx(r["rsa"] - chaos["rsa"])
        if b == "cl_eps":
            assert "linear_cka_over_chaos" not in r  # a control has no margin over itself
    assert relative_to_baseline(0.9, 0.8) == pytest.approx(0.5)
    assert relative_to_baseline(0.8, 0.8) == 0.0 and relative_to_baseline(None, 0.8) is None
    assert relative_to_baseline(0.9, 1.0) is None


# --------------------------------------------------------------------------- step-level schedules
def test_log_steps_and_eval_steps():
    s = log_steps(1000, 30)
    assert s[0] == 0 and s[1] == 1 and s[-1] == 1000 and 25 <= len(s) <= 31
    ratios = [b / a for a, b in zip(s[1:], s[2:]) if a >= 10]
    assert max(ratios) == pytest.approx(1000 ** (1 / 29), abs=0.1)  # log-spaced: a constant ratio
    assert min(ratios) == pytest.approx(1000 ** (1 / 29), abs=0.1)
    assert log_steps(3, 30) == [0, 1, 2, 3]
    ev = {"every": None, "schedule": None, "steps": [0, 5, 7], "log_points": 30}
    assert eval_steps(ev, epochs=3, steps_per_epoch=4, total_steps=12) == {0, 5, 7, 12}
    ev = {"every": 1, "schedule": None, "steps": None}
    assert eval_steps(ev, epochs=3, steps_per_epoch=4, total_steps=12) == {0, 4, 8, 12}
    assert eval_steps(ev, epochs=3, steps_per_epoch=4, total_steps=6) == {0, 4, 6}  # max_steps cut
    assert eval_steps({"every": None, "schedule": None, "steps": None}, 3, 4, 12) == set()


def test_log_schedule_mid_epoch_rows_survive_kill_and_resume(tmp_path):
    kw = {"train.epochs": 3, "eval.every": "null"}
    extra = (ARMS_EPS, "eval.schedule=log", "eval.log_points=8", "eval.weight_every=1")
    cfg = _cfg(*extra, **kw)
    full = CoupledTrainer(cfg, tmp_path / "full")
    full.fit()
    spe = full.steps_per_epoch
    rows = _rows(tmp_path / "full")
    steps = sorted({r["step"] for r in rows if r["kind"] == "align"})
    assert steps == sorted(eval_steps(cfg["eval"], 3, spe, full.total_steps))
    assert any(0 < s < spe for s in steps), steps  # evaluations below one epoch
    assert any(isinstance(r["epoch"], float) for r in rows if r["kind"] == "align")
    assert sorted({r["step"] for r in rows if r["kind"] == "weight"}) == list(range(full.total_steps + 1))
    assert any(p.name.startswith("step_") for p in (tmp_path / "full" / "checkpoints").iterdir())
    # killed mid-epoch right after a mid-epoch evaluation, and once more between evaluations
    mid = next(s for s in steps if 0 < s < spe)
    part = CoupledTrainer(cfg, tmp_path / "part")
    part.fit(stop_after=mid)
    part2 = CoupledTrainer(cfg, tmp_path / "part", resume=True)
    part2.fit(stop_after=mid + spe + 1)
    CoupledTrainer(cfg, tmp_path / "part", resume=True).fit()
    got = [r for r in _rows(tmp_path / "part") if r["kind"] != "event"]
    want = [r for r in rows if r["kind"] != "event"]
    assert got == want  # nothing duplicated, nothing missing, same values


def test_kill_during_mid_epoch_evaluation_redoes_it(tmp_path):
    """A run killed after logging part of a mid-epoch evaluation (before its checkpoint) resumes from
    the previous checkpoint and rewrites that evaluation once."""
    cfg = _cfg(ARMS_EPS, "eval.steps=[3]", **{"train.epochs": 2, "eval.every": "null"})
    full = CoupledTrainer(cfg, tmp_path / "full")
    full.fit()
    want = [r for r in _rows(tmp_path / "full") if r["kind"] != "event"]

    class Killed(Exception):
        pass

    tr = CoupledTrainer(cfg, tmp_path / "part")
    tr.fit(stop_after=1)  # checkpoint at step 1
    tr = CoupledTrainer(cfg, tmp_path / "part", resume=True)
    real = tr.evaluator

    def dying(trainer, epoch):
        if trainer.step == 3:
            real(trainer, epoch)  # all rows of the evaluation written ...
            raise Killed  # ... then killed before the checkpoint
        real(trainer, epoch)

    tr.evaluator = dying
    with pytest.raises(Killed):
        tr.fit()
    CoupledTrainer(cfg, tmp_path / "part", resume=True).fit()
    got = [r for r in _rows(tmp_path / "part") if r["kind"] != "event"]
    assert got == want


def test_tiny_run_report_findings_name_nscl_and_floors(tmp_path):
    """Acceptance (issue 8): a tiny run with cl, nscl, scl, cl_eps (init_perturb 1e-6) and cl_data writes a
    report whose Findings name CL–NSCL, the chaos floor and the noise floor with numbers."""
    import re

    from repalign.report import write_report

    arms = ("arms={cl: {objective: cl}, nscl: {objective: nscl}, scl: {objective: scl}, "
            "cl_eps: {same_as: cl, init_perturb: 1.0e-6}, cl_data: {same_as: cl, data_seed: 7}}")
    cfg = _cfg(arms, "eval.schedule=log", "eval.log_points=6", "eval.weight_every=2", **{"train.epochs": 2})
    CoupledTrainer(cfg, tmp_path / "run").fit()
    html = write_report(tmp_path / "run").read_text()
    fnd = html[html.index("<h2>Findings"):html.index("<h2>Final alignment")]
    assert re.search(r"cl–nscl \d\.\d{3} vs chaos floor cl–cl_eps \d\.\d{3}: margin [+-]\d\.\d{3}", fnd), fnd[:500]
    assert re.search(r"cl–nscl \d\.\d{3} vs noise floor \(own batches/views\) cl–cl_data \d\.\d{3}", fnd)
    assert re.search(r"untrained baseline \d\.\d{3}", fnd) and "layer z" in fnd
    assert "Weight-gap growth" in html
