"""Speed levers (issue 12): deferred non-finite checks without host syncs, channels_last, torch.compile,
bf16 on the CPU, pinned memory / persistent workers.

The deferred check must change nothing but the cost: every comparison below is against a reference run
(per-step checking, an uninterrupted run, or the run stopped just before the bad step), bitwise where the
arithmetic is the same and within a stated tolerance where a lever changes kernels (channels_last, compile,
bf16)."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state

from repalign.config import ConfigError, load_config
from repalign.training import CoupledTrainer, NonFiniteError
from repalign.training.checkpoint import load_checkpoint
from repalign.training.rundir import read_metrics

TIMING = ("wall_s", "samples_per_s")
BAD_ARM, BAD_STEP = "nscl", 6  # 5 steps per epoch: step 6 is the 2nd step of epoch 1


def _poison(tr: CoupledTrainer, arm: str, step: int) -> None:
    """NaN loss for ``arm`` at global step ``step`` (its ``step + 1``-th loss call; the calls before
    are the same under any checking interval)."""
    s = next(s for s in tr.arm_states if s.name == arm)
    real, calls = s.loss_fn.forward, {"n": 0}

    def poisoned(z, labels):
        calls["n"] += 1
        out = real(z, labels)
        return out * float("nan") if calls["n"] == step + 1 else out

    s.loss_fn.forward = poisoned


def _arm_state(s) -> dict:
    """Everything that makes up an arm: weights and buffers, optimiser state and groups, schedule, flags."""
    return {"module": s.module.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "active": s.active}


def _assert_equal(a, b, where: str = "") -> None:
    assert_same_state(a, b, where, ordered_keys=False)


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")]


def _run(cfg: dict, run: Path | None, poison: bool = True, stop_after: int | None = None):
    torch.manual_seed(0)  # the checkpoint records the caller's global RNG: same start everywhere
    tr = CoupledTrainer(cfg, run, evaluator=None)
    if poison:
        _poison(tr, BAD_ARM, BAD_STEP)
    try:
        tr.fit(stop_after=stop_after)
    except NonFiniteError:
        pass
    return tr


# ---------------------------------------------------------------- deferred non-finite check
def test_deferred_check_stop_arm_equals_per_step_check(tiny_cfg, tmp_path):
    """NaN in one arm at step 6, flags read every 4 steps (after step 7): the arm ends exactly where the
    per-step check leaves it — at its state after 6 good steps —, the event names step 6, the other arms
    are bitwise equal to an uninterrupted run, and metrics.jsonl is the same row for row."""
    base = {"train.epochs": 2, "train.log_every": 2}
    per_step = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 1}), tmp_path / "per_step")
    deferred = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 4}), tmp_path / "deferred")
    clean = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 4}), None, poison=False)
    before = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 4}), None, poison=False, stop_after=BAD_STEP)
    assert deferred.nonfinite_check_every == 4 and per_step.nonfinite_check_every == 1
    for d, p, c, b in zip(deferred.arm_states, per_step.arm_states, clean.arm_states, before.arm_states):
        _assert_equal(_arm_state(d), _arm_state(p), d.name)
        if d.name == BAD_ARM:
            assert not d.active
            want = {**_arm_state(b), "active": False}
            _assert_equal(_arm_state(d), want, f"{d.name} vs its state after {BAD_STEP} steps")
        else:
            assert d.active
            _assert_equal(_arm_state(d), _arm_state(c), f"{d.name} vs uninterrupted")
    rows_d, rows_p = _rows(tmp_path / "deferred"), _rows(tmp_path / "per_step")
    assert rows_d == rows_p
    events = [r for r in rows_d if r["kind"] == "event" and r["arm"]]
    assert [(r["arm"], r["step"]) for r in events] == [(BAD_ARM, BAD_STEP)]
    assert f"stopped at step {BAD_STEP}: non-finite loss (nan)" in events[0]["message"]
    assert not any(r["kind"] == "train" and r["arm"] == BAD_ARM and r["step"] >= BAD_STEP for r in rows_d)
    assert any(r["kind"] == "lossgap" for r in rows_d)  # deferred loss-gap rows are read too


def test_deferred_check_stop_run_rewinds_to_the_bad_step(tiny_cfg, tmp_path):
    """stop_run with the flags read 1 step after the bad one: one flag freezes every arm on the device, so
    the checkpoint holds every arm at the state before step 6 — bitwise the per-step check's checkpoint
    and the state of a run stopped after 6 steps —, and the error names step 6."""
    base = {"train.epochs": 2, "train.on_nonfinite": "stop_run"}
    per_step = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 1}), tmp_path / "per_step")
    deferred = _run(tiny_cfg(**base, **{"train.nonfinite_check_every": 8}), tmp_path / "deferred")
    assert deferred.step == per_step.step == BAD_STEP and deferred.pos_in_epoch == 1
    a = load_checkpoint(tmp_path / "deferred" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "per_step" / "checkpoints" / "last.pt")
    _assert_equal(a, b)
    before = _run(tiny_cfg(**base), None, poison=False, stop_after=BAD_STEP)
    for s in before.arm_states:
        _assert_equal(a["arms"][s.name]["module"], s.module.state_dict(), s.name)
        _assert_equal(a["arms"][s.name]["optimizer"], s.optimizer.state_dict(), s.name)
        assert a["arms"][s.name]["active"] is (s.name != BAD_ARM)
    assert _rows(tmp_path / "deferred") == _rows(tmp_path / "per_step")
    with pytest.raises(NonFiniteError, match=f"stopped at step {BAD_STEP}:.*checkpoint of step {BAD_STEP}"):
        tr = CoupledTrainer(tiny_cfg(**base, **{"train.nonfinite_check_every": 8}), None, evaluator=None)
        _poison(tr, BAD_ARM, BAD_STEP)
        tr.fit()


def test_deferred_check_first_step_bad_drops_new_optimiser_state(tiny_cfg):
    """Bad at step 0 (no optimiser state yet), read at step 3: the arm is back at its initial weights
    with no optimiser state and an unstepped schedule, as with the per-step check."""
    tr = CoupledTrainer(tiny_cfg(**{"train.epochs": 1, "train.nonfinite_check_every": 4}), None, evaluator=None)
    s = next(s for s in tr.arm_states if s.name == BAD_ARM)
    init = {k: v.clone() for k, v in s.module.state_dict().items()}
    _poison(tr, BAD_ARM, 0)
    tr.fit(stop_after=3)
    assert not s.active and "stopped at step 0" in s.stop_reason
    _assert_equal(s.module.state_dict(), init)
    assert not s.optimizer.state and s.scheduler.last_epoch == 0


def test_at_most_one_host_sync_per_log_interval(tiny_cfg, monkeypatch):
    """10 steps with train rows (and loss-gap rows of the CL arm) every 5 steps and the flags read every
    5 steps: 2 device→host transfers in all (``tolist``), no ``item``/``float``/``int``/``bool``/``numpy``."""
    tr = CoupledTrainer(tiny_cfg(**{"train.log_every": 5, "train.nonfinite_check_every": 5}), None, evaluator=None)
    batches = [{k: b for k, b in zip(tr.streams, bs)}
               for bs in zip(*(list(tr._batches(v, 0, 0)) for v in tr.streams.values()))]
    counts = {n: 0 for n in ("tolist", "item", "__bool__", "__float__", "__int__", "__index__", "numpy")}
    for name in counts:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    rows = []
    for _ in range(2):
        for b in batches:
            rows += tr.train_step(b, log=tr.step % 5 == 0)
            tr.step += 1
            tr.pos_in_epoch += 1
        tr.pos_in_epoch = 0
    monkeypatch.undo()
    assert counts == {**{n: 0 for n in counts}, "tolist": 2}, counts
    kinds = [(r["kind"], r["step"]) for r in rows]
    assert ("train", 0) in kinds and ("train", 5) in kinds and ("lossgap", 5) in kinds
    assert all(r["loss"] == r["loss"] for r in rows if r["kind"] == "train")


def test_nonfinite_check_every_key():
    assert load_config(None, ["train.device=cpu"])["train"]["nonfinite_check_every"] == "auto"
    for bad, msg in (("0", ">= 1"), ("true", "expected int/str"), ("often", "'auto' or an integer")):
        with pytest.raises(ConfigError, match=f"config key 'train.nonfinite_check_every'.*{msg}"):
            load_config(None, [f"train.nonfinite_check_every={bad}"])


def test_auto_check_interval_is_one_on_cpu(tiny_cfg, tmp_path):
    tr = CoupledTrainer(tiny_cfg(**{"train.log_every": 7}), tmp_path / "run", evaluator=None)
    assert tr.nonfinite_check_every == 1
    meta = __import__("json").loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["speed"] == {"nonfinite_check_every": 1, "channels_last": False, "compile": False,
                             "pin_memory": False, "persistent_workers": True}
    tr.close()


# ---------------------------------------------------------------- channels_last, compile, bf16
def _fit_states(cfg: dict) -> tuple[CoupledTrainer, dict]:
    torch.manual_seed(0)
    tr = CoupledTrainer(cfg, None, evaluator=None)
    tr.fit()
    return tr, {s.name: {k: v.clone() for k, v in s.module.state_dict().items()} for s in tr.arm_states}


def test_channels_last_equals_contiguous_run(tiny_cfg):
    """channels_last changes only the memory layout (and so the convolution kernels): after 5 steps every
    tensor of every arm agrees with the contiguous run to 1e-4 of its largest entry (measured ≤ 1e-5), and
    the layout really is channels_last (weights and inputs)."""
    base = {"train.epochs": 1}
    _, want = _fit_states(tiny_cfg(**base))
    tr, got = _fit_states(tiny_cfg(**base, **{"train.channels_last": True}))
    convs = [p for s in tr.arm_states for p in s.module.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                         for p in convs if p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1)
    seen = []
    tr.arm_states[0].module.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    tr.train_step({k: next(tr._batches(v, 0, 0)) for k, v in tr.streams.items()})
    assert seen and seen[0].is_contiguous(memory_format=torch.channels_last)
    for arm in want:
        assert list(got[arm]) == list(want[arm])  # state_dict names unchanged
        for k, w in want[arm].items():  # measured: ≤ 1e-5 of the tensor's largest entry
            err = (got[arm][k].double() - w.double()).abs().max()
            assert err <= 1e-4 * w.double().abs().max() + 1e-7, f"{arm}:{k}: {float(err)}"


def _inductor_works() -> str | None:
    """Why torch.compile cannot run here (None: it can)."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler for the inductor CPU backend"
    try:
        importlib.import_module("torch._inductor")
    except Exception as e:  # pragma: no cover
        return f"torch._inductor does not import: {e}"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_inductor_works() is not None, reason=str(_inductor_works()))
def test_compile_equals_eager(tiny_cfg, tmp_path):
    """train.compile: 3 steps of one CL arm agree with eager to 1e-4 (inductor fuses differently), and the
    checkpoint keeps the original names (no ``_orig_mod.`` prefix). About a minute on 2 CPU cores."""
    cfg = lambda **kw: {**tiny_cfg(**kw), "arms": {"cl": {"objective": "cl"}}}  # noqa: E731
    from repalign.config import validate

    _, want = _fit_states(validate(cfg(**{"train.epochs": 1, "train.max_steps": 3})))
    torch.manual_seed(0)
    tr = CoupledTrainer(validate(cfg(**{"train.epochs": 1, "train.max_steps": 3, "train.compile": True})),
                        tmp_path / "run", evaluator=None)
    assert tr.arm_states[0].compiled is not None
    tr.fit()
    got = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["arms"]["cl"]["module"]
    assert list(got) == list(want["cl"])
    for k in want["cl"]:
        torch.testing.assert_close(got[k], want["cl"][k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_runs_on_cpu(tiny_cfg):
    """train.precision=bf16 on the CPU: convolutions really run in bf16, the losses stay finite and the
    first step's loss is within bf16 rounding (2 %) of fp32's."""
    losses = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        tr = CoupledTrainer(tiny_cfg(**{"train.epochs": 1, "train.precision": prec}), None, evaluator=None)
        dtypes = []
        conv = next(m for m in tr.arm_states[0].module.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        rows = []
        tr.log_row = rows.append
        tr.fit()
        assert dtypes[0] == (torch.bfloat16 if prec == "bf16" else torch.float32)
        losses[prec] = [r["loss"] for r in rows if r["kind"] == "train"]
        assert losses[prec] and all(torch.isfinite(torch.tensor(x)) for x in losses[prec])
        assert all(s.active for s in tr.arm_states)
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=2e-2)
    assert losses["bf16"] != losses["fp32"]  # the lever did something


# ---------------------------------------------------------------- loaders
def test_pin_memory_and_persistent_workers_keys(tiny_cfg):
    cfg = tiny_cfg(**{"data.pin_memory": "auto", "data.persistent_workers": False})
    tr = CoupledTrainer(cfg, None, evaluator=None)
    assert tr.pin_memory is False and tr.persistent_workers is False  # auto: pinned only for CUDA
    assert CoupledTrainer(tiny_cfg(**{"data.pin_memory": False}), None, evaluator=None).pin_memory is False
    with pytest.raises(ConfigError, match="config key 'data.pin_memory': true needs a CUDA device"):
        CoupledTrainer(tiny_cfg(**{"data.pin_memory": True}), None, evaluator=None)
    with pytest.raises(ConfigError, match="config key 'data.pin_memory': must be auto, true or false"):
        tiny_cfg(**{"data.pin_memory": "sometimes"})
    with pytest.raises(ConfigError, match="config key 'data.persistent_workers': expected bool"):
        tiny_cfg(**{"data.persistent_workers": 2})


def test_persistent_workers_equal_main_process_across_epochs_and_resume(tiny_cfg, tmp_path, monkeypatch):
    """num_workers=2 with persistent workers (one loader per stream for the whole run, reused across the
    epoch boundaries), killed mid-epoch 2 and resumed: bitwise the num_workers=0 run, rows included."""
    base = {"train.epochs": 3}
    ref = _run(tiny_cfg(**base), tmp_path / "ref", poison=False)
    cfg = tiny_cfg(**base, **{"data.num_workers": 2, "data.persistent_workers": True})
    import repalign.training.trainer as trainer_mod

    made = []
    real = trainer_mod.make_train_loader
    monkeypatch.setattr(trainer_mod, "make_train_loader", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    torch.manual_seed(0)
    part = CoupledTrainer(cfg, tmp_path / "part", evaluator=None)
    seen = []
    part.arm_states[0].module.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    part.fit(stop_after=ref.steps_per_epoch + 2)
    assert len(made) == 1 and made[0].loader.persistent_workers  # one loader for epochs 0 and 1
    assert next(iter(part.streams.values())).get("loader") is None  # released (workers shut down) by fit
    resumed = CoupledTrainer(cfg, tmp_path / "part", resume=True, evaluator=None)
    resumed.fit()
    assert len(made) == 2  # the resumed run: one more, for epochs 1 and 2
    for a, b in zip(ref.arm_states, resumed.arm_states):
        _assert_equal(_arm_state(a), _arm_state(b), a.name)
    assert [r for r in _rows(tmp_path / "ref") if r["kind"] != "event"] == \
        [r for r in _rows(tmp_path / "part") if r["kind"] != "event"]
    assert len(seen) == ref.steps_per_epoch + 2


# ---------------------------------------------------------------- on a GPU (make gpu-check runs -m cuda)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_host_sync_in_the_step_on_cuda(tiny_cfg):
    """On CUDA (auto: flags read every train.log_every steps) a step that does not read the flags makes no
    host synchronisation at all — torch's sync debug mode raises on any — including the logged step 0
    with its train and loss-gap rows; the read step (4) makes its one transfer."""
    tr = CoupledTrainer(tiny_cfg(**{"train.device": "cuda", "train.log_every": 5}), None, evaluator=None)
    assert tr.nonfinite_check_every == 5 and tr.pin_memory
    batches = [{k: b for k, b in zip(tr.streams, bs)}
               for bs in zip(*(list(tr._batches(v, 0, 0))[:5] for v in tr.streams.values()))]
    torch.cuda.synchronize()
    rows = []
    for b in batches:
        read = (tr.step + 1) % tr.nonfinite_check_every == 0
        torch.cuda.set_sync_debug_mode("default" if read else "error")
        try:
            rows += tr.train_step(b, log=tr.step % 5 == 0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert bool(rows) == read
        tr.step += 1
        tr.pos_in_epoch += 1
    assert {(r["kind"], r["step"]) for r in rows} >= {("train", 0), ("lossgap", 0)}
