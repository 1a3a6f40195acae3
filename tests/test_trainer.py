"""Coupled trainer: shared randomness, arms, resume, non-finite handling, run directory."""
from __future__ import annotations

import json

import pytest
import torch

from repalign.config import validate
from repalign.training import CoupledTrainer, NonFiniteError
from repalign.training.rundir import read_metrics


def _encoder_state(st):
    return {k: v for k, v in st.module.net.state_dict().items() if k.startswith("encoder.")}


def _record_inputs(trainer):
    seen: dict[str, list[torch.Tensor]] = {s.name: [] for s in trainer.arm_states}
    for s in trainer.arm_states:
        s.module.register_forward_pre_hook(lambda m, args, name=s.name: seen[name].append(args[0]))
    return seen


def test_shared_init_and_identical_inputs(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    states = [_encoder_state(s) for s in tr.arm_states]
    for st in states[1:]:
        assert all(torch.equal(states[0][k], st[k]) for k in states[0])
    seen = _record_inputs(tr)
    tr.fit()
    names = list(seen)
    assert len(seen[names[0]]) == tr.steps_per_epoch
    for step in range(tr.steps_per_epoch):
        x0 = seen[names[0]][step]
        for n in names[1:]:
            assert torch.equal(x0, seen[n][step])
            assert seen[n][step].data_ptr() == x0.data_ptr()  # the very same tensor, produced once


def test_identical_arms_stay_identical_temperature_diverges(tiny_cfg, tmp_path):
    arms = {"a": {"objective": "cl"}, "b": {"objective": "cl"}, "c": {"objective": "cl", "temperature": 0.2}}
    cfg = validate({**tiny_cfg(), "arms": arms})
    tr = CoupledTrainer(cfg, None, evaluator=None)
    tr.fit()
    a, b, c = (s.module.state_dict() for s in tr.arm_states)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_six_arm_temperature_run_shares_everything(tiny_cfg, tmp_path):
    arms = {f"{o}_t{t}".replace(".", ""): {"objective": o, "temperature": t}
            for o in ("cl", "nscl") for t in (0.1, 0.5, 1.0)}
    cfg = validate({**tiny_cfg(**{"train.epochs": 1}), "arms": arms})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    enc = [_encoder_state(s) for s in tr.arm_states]
    assert all(torch.equal(enc[0][k], e[k]) for e in enc[1:] for k in enc[0])
    seen = _record_inputs(tr)
    tr.fit()
    first = seen[tr.arm_states[0].name]
    for s in tr.arm_states[1:]:
        assert all(torch.equal(x, y) for x, y in zip(first, seen[s.name]))
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["arms"]["cl_t01"]["settings"]["loss.temperature"] == 0.1
    assert meta["arms"]["nscl_t10"]["overrides"] == {"loss.temperature": 1.0}
    assert all(meta["arms"][n]["shares_all_initial_weights"] for n in arms)


def test_projector_width_arm_shares_encoder_only(tiny_cfg, tmp_path):
    arms = {"cl": {"objective": "cl"}, "wide": {"objective": "cl", "projector_hidden": 32}}
    cfg = validate({**tiny_cfg(), "arms": arms})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    a, b = tr.arm_states
    assert all(torch.equal(v, _encoder_state(b)[k]) for k, v in _encoder_state(a).items())
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    unshared = meta["arms"]["wide"]["unshared_params"]
    assert unshared and all(k.startswith("projector.") for k in unshared)
    assert meta["arms"]["cl"]["shares_all_initial_weights"]


def test_control_arms_break_sharing_visibly(tiny_cfg, tmp_path):
    arms = {"cl": {"objective": "cl"}, "cl_init": {"same_as": "cl", "init_seed": 5},
            "cl_data": {"same_as": "cl", "data_seed": 9}}
    cfg = validate({**tiny_cfg(**{"train.epochs": 1}), "arms": arms})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    cl, ci, cd = tr.arm_states
    assert not torch.equal(cl.module.net.encoder.block1[0].weight, ci.module.net.encoder.block1[0].weight)
    assert torch.equal(cl.module.net.encoder.block1[0].weight, cd.module.net.encoder.block1[0].weight)
    seen = _record_inputs(tr)
    tr.fit()
    assert all(torch.equal(x, y) for x, y in zip(seen["cl"], seen["cl_init"]))
    assert not torch.equal(seen["cl"][0], seen["cl_data"][0])
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["arms"]["cl_init"]["init_seed"] == 5 and meta["arms"]["cl_data"]["stream"] == "data_seed=9"


def test_resume_is_bit_identical(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 3})
    full = CoupledTrainer(cfg, tmp_path / "full", evaluator=None)
    full.fit()
    part = CoupledTrainer(cfg, tmp_path / "part", evaluator=None)
    k = part.steps_per_epoch + 2  # stop mid-epoch
    part.fit(stop_after=k)
    assert part.step == k
    resumed = CoupledTrainer(cfg, tmp_path / "part", resume=True, evaluator=None)
    assert resumed.step == k
    resumed.fit()
    assert resumed.step == full.step
    for s_full, s_res in zip(full.arm_states, resumed.arm_states):
        sa, sb = s_full.module.state_dict(), s_res.module.state_dict()
        assert all(torch.equal(sa[key], sb[key]) for key in sa), s_full.name
        oa, ob = s_full.optimizer.state_dict()["state"], s_res.optimizer.state_dict()["state"]
        assert all(torch.equal(oa[i]["momentum_buffer"], ob[i]["momentum_buffer"]) for i in oa)
    rows_full = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl", "train")]
    rows_res = [r for r in read_metrics(tmp_path / "part" / "metrics.jsonl", "train")]
    assert [(r["step"], r["arm"], r["loss"]) for r in rows_full] == [(r["step"], r["arm"], r["loss"]) for r in rows_res]


def test_resume_skips_truncated_checkpoint(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(**{"train.epochs": 3})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    tr.fit(stop_after=2 * tr.steps_per_epoch)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    resumed = CoupledTrainer(cfg, tmp_path / "run", resume=True, evaluator=None)
    assert "truncated" in capsys.readouterr().err
    assert resumed.step == tr.steps_per_epoch  # the previous checkpoint (end of epoch 1)


def test_nonfinite_stops_only_that_arm(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(**{"train.epochs": 1})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    bad = next(s for s in tr.arm_states if s.name == "nscl")
    real = bad.loss_fn.forward
    calls = {"n": 0}

    def poisoned(z, labels):
        calls["n"] += 1
        out = real(z, labels)
        return out * float("nan") if calls["n"] == 2 else out

    bad.loss_fn.forward = poisoned
    before = {}

    def snapshot(m, args):
        if calls["n"] == 1:
            before.update({k: v.clone() for k, v in bad.module.state_dict().items()})

    bad.module.register_forward_pre_hook(snapshot)
    summary = tr.fit()
    assert summary["arms"]["nscl"]["active"] is False
    assert all(summary["arms"][n]["active"] for n in ("cl", "scl", "ce"))
    err = capsys.readouterr().err
    assert "nscl" in err and "step 1" in err and "nan" in err
    events = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl", "event") if r["arm"] == "nscl"]
    assert events and "objective nscl" in events[0]["message"]
    after = bad.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # last good weights kept


def test_nonfinite_stop_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 1, "train.on_nonfinite": "stop_run"})
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    tr.arm_states[0].loss_fn.forward = lambda z, y: z.sum() * float("inf")
    with pytest.raises(NonFiniteError, match="objective cl"):
        tr.fit()


def test_run_directory_contents(tiny_cfg, tmp_path):
    cfg = tiny_cfg(**{"train.epochs": 2, "eval.every": 1})
    tr = CoupledTrainer(cfg, tmp_path / "run")
    tr.fit()
    d = tmp_path / "run"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["seed"] == cfg["seed"] and meta["versions"]["torch"] == torch.__version__
    assert "git_revision" in meta and set(meta["arms"]) == {"cl", "nscl", "scl", "ce"}
    assert (d / "config.yaml").exists() and (d / "checkpoints" / "last.pt").exists()
    rows = list(read_metrics(d / "metrics.jsonl"))
    kinds = {r["kind"] for r in rows}
    assert {"train", "lossgap", "align", "eval"} <= kinds
    for r in rows:
        if r["kind"] == "lossgap":
            assert 0 <= r["gap"] <= r["bound"] + 1e-6
    align = [r for r in rows if r["kind"] == "align"]
    assert sorted({r["epoch"] for r in align}) == [0, 1, 2]
    assert {r["split"] for r in align} == {"train", "test"}
    assert {(r["arm_a"], r["arm_b"]) for r in align} == {("cl", "nscl"), ("cl", "scl"), ("cl", "ce")}
    at0 = [r for r in align if r["epoch"] == 0 and r["arm_b"] == "nscl"]
    assert all(r["linear_cka"] == pytest.approx(1.0) and r["weight_gap_mean"] == 0 for r in at0)
    assert sorted(p.name for p in (d / "checkpoints").glob("epoch_*.pt")) == [
        "epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]


def test_align_command_reproduces_training_rows(tiny_cfg, tmp_path):
    import csv

    from repalign.training.align import align_run

    cfg = tiny_cfg(**{"train.epochs": 2, "eval.every": 1})
    CoupledTrainer(cfg, tmp_path / "run").fit()
    out = align_run(tmp_path / "run")
    got = list(csv.DictReader(open(out)))
    want = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] in ("align", "baseline")]
    assert len(got) == len(want) > 0
    assert {r["kind"] for r in got} == {"align", "baseline"}
    key = lambda r: (r["kind"], int(r["epoch"]), r["split"], r["layer"], r.get("arm_a") or "",  # noqa: E731
                     r.get("arm_b") or "")
    got_by = {key(r): r for r in got}
    for w in want:
        g = got_by[key(w)]
        ms = ("linear_cka", "debiased_cka", "rsa", "sim_gap") + (
            ("weight_gap_mean", "linear_cka_rel", "rsa_rel") if w["kind"] == "align" else ())
        for m in ms:
            assert float(g[m]) == pytest.approx(w[m], rel=1e-6, abs=1e-9), m


def test_align_quality_csv(tiny_cfg, tmp_path):
    import csv

    from repalign.cli import main

    cfg = tiny_cfg(**{"train.epochs": 1, "eval.every": 1, "eval.max_train": 160})  # ≥ 5 per class
    CoupledTrainer(cfg, tmp_path / "run").fit()
    assert main(["align", str(tmp_path / "run"), "--quality", "--layerwise"]) == 0
    lw = list(csv.reader(open(tmp_path / "run" / "layerwise_cl_nscl.csv")))
    assert len(lw) == 1 + 5 and len(lw[0]) == 1 + 5  # 4 encoder blocks + projector, both models
    assert all(0 <= float(v) <= 1 + 1e-9 for row in lw[1:] for v in row[1:])
    assert (tmp_path / "run" / "layerwise_cl_ce.png").stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "quality.csv")))
    assert {r["arm"] for r in rows} == {"cl", "nscl", "scl", "ce"} and {r["epoch"] for r in rows} == {"0", "1"}
    for r in rows:
        for k in ("knn_acc", "probe_test_acc", "fewshot1_acc", "fewshot5_acc", "cdnv", "directional_cdnv"):
            assert 0 <= float(r[k]) < float("inf"), k
        assert float(r["directional_cdnv"]) <= float(r["cdnv"]) + 1e-9


def test_eval_schedules():
    from repalign.training.evaluate import eval_epochs, eval_indices

    assert eval_epochs({"every": None, "schedule": "paper"}, 1200) == (
        set(range(0, 100, 10)) | set(range(100, 1201, 100)))
    assert eval_epochs({"every": None, "schedule": "paper"}, 35) == {0, 10, 20, 30, 35}
    assert eval_epochs({"every": 4, "schedule": None}, 10) == {0, 4, 8, 10}
    assert eval_epochs({"every": None, "schedule": [0, 3]}, 5) == {0, 3, 5}
    assert eval_epochs({"every": None, "schedule": None}, 5) == set()
    with pytest.raises(ValueError, match="eval.schedule"):
        eval_epochs({"every": None, "schedule": [7]}, 5)
    a, b = eval_indices(100, 10, 0, "train"), eval_indices(100, 10, 0, "train")
    assert torch.equal(a, b) and len(set(a.tolist())) == 10
    assert not torch.equal(a, eval_indices(100, 10, 0, "test"))
