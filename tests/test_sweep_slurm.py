"""``repalign sweep --launcher slurm`` end to end on CPU through submitit's local executor.

Each point is one submitit job of two processes that set up ``torch.distributed`` (gloo) from the
job environment, as on a SLURM node. Normalisation layers are off (``model.norm=none``): per-rank
BatchNorm statistics legitimately differ from global ones, so without them a two-process job must
reproduce the single-process run of the same point (same global batches, gradients averaged).
A pre-empted job (``USR2`` to rank 0, as SLURM sends before pre-emption) is requeued by submitit
and resumes from the point's last checkpoint, ending where an uninterrupted run ends.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from repalign.config import ConfigError
from repalign.experiments import sweep as sw

submitit = pytest.importorskip("submitit", reason="launcher slurm needs the extra `slurm` (submitit)")
pytestmark = pytest.mark.ddp

OVERRIDES = tiny_overrides(**{"model.norm": "none", "model.projector_norm": "none", "train.epochs": 2,
                              "train.threads": 1, "train.checkpoint_every": 1, "eval.every": 1}) + \
    ["arms={cl: {objective: cl}, nscl: {objective: nscl}}"]


def _spec(out: Path, grid: dict, slurm: dict | None = None, launcher: str = "slurm", extra: list | None = None) -> sw.SweepSpec:
    return sw.load_spec({"base": "configs/demo.yaml", "overrides": OVERRIDES + (extra or []), "grid": grid, "out": str(out),
                         "launcher": launcher,
                         "slurm": {"cluster": "local", "tasks_per_node": 2, "timeout_min": 30, "wait": True,
                                   **(slurm or {})}})


def _train_rows(run_dir: Path) -> list[tuple]:
    from repalign.training.rundir import read_metrics

    return [(r["step"], r["arm"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


def _final_state(run_dir: Path) -> dict:
    from repalign.training.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _assert_same_run(got: Path, want: Path) -> None:
    a, b = _train_rows(got), _train_rows(want)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x[:2] == y[:2] and x[2] == pytest.approx(y[2], rel=1e-5, abs=1e-6)
    sa, sb = _final_state(got), _final_state(want)
    assert sa["step"] == sb["step"] > 0
    for arm, sd in sb["arms"].items():
        for k, v in sd["module"].items():
            torch.testing.assert_close(sa["arms"][arm]["module"][k], v, rtol=1e-4, atol=1e-5, msg=f"{arm}:{k}")


def test_slurm_launcher_two_process_jobs_match_single_process(tmp_path):
    grid = {"loss.temperature": [0.5, 1.0]}
    one = ["train.epochs=1"]
    res = sw.run_sweep(_spec(tmp_path / "slurm", grid, extra=one), log=lambda s: None)
    assert len(res.submitted) == 2 and res.ran == []
    pts = tmp_path / "slurm" / "points"
    for p in sw.expand(_spec(tmp_path / "slurm", grid, extra=one)):
        done = json.loads((pts / p.slug / sw.DONE).read_text())
        assert done["values"] == p.values
        meta = json.loads((pts / p.slug / "meta.json").read_text())
        assert meta["world_size"] == 2  # really two processes per job
    assert res.summary.exists() and {r["point"] for r in sw.read_summary(res.summary)} == \
        {p.slug for p in sw.expand(_spec(tmp_path / "slurm", grid, extra=one))}
    # the same point trained in one process
    ref = sw.run_sweep(_spec(tmp_path / "inline", {"loss.temperature": [1.0]}, launcher="inline", extra=one),
                       log=lambda s: None)
    assert ref.ran == ["temperature=1.0"]
    _assert_same_run(pts / "temperature=1.0", tmp_path / "inline" / "points" / "temperature=1.0")
    # a second sweep run submits nothing and rewrites the same summary
    again = sw.run_sweep(_spec(tmp_path / "slurm", grid, extra=one), log=lambda s: None)
    assert again.submitted == [] and len(again.skipped) == 2
    assert again.summary.read_text() == res.summary.read_text()


def test_slurm_preempted_job_is_requeued_and_resumes(tmp_path, monkeypatch):
    release = tmp_path / "release"
    # rank 0 of every attempt stops right after its first checkpoint commit (end of epoch 1 of 2)
    monkeypatch.setenv("REPALIGN_FAULT", "ckpt.last.committed@1:wait")
    monkeypatch.setenv("REPALIGN_FAULT_RELEASE", str(release))
    grid = {"loss.temperature": [1.0]}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(sw.run_sweep, _spec(tmp_path / "s", grid), lambda s: None)
        waiting = Path(str(release) + ".waiting")
        first = _wait_for_pid(waiting, None, fut)
        os.kill(first, signal.SIGUSR2)  # what SLURM sends before pre-empting the job
        second = _wait_for_pid(waiting, first, fut)  # the requeued job reached the same place
        release.write_text("go\n")
        res = fut.result(timeout=120)
    rd = tmp_path / "s" / "points" / "temperature=1.0"
    assert (rd / sw.DONE).exists() and res.submitted
    from repalign.training.rundir import read_metrics

    events = [r["message"] for r in read_metrics(rd / "metrics.jsonl") if r["kind"] == "event"]
    assert any(m.startswith("resumed from last") for m in events), events
    monkeypatch.delenv("REPALIGN_FAULT")
    ref = sw.run_sweep(_spec(tmp_path / "inline", grid, launcher="inline"), log=lambda s: None)
    assert ref.ran
    _assert_same_run(rd, tmp_path / "inline" / "points" / "temperature=1.0")
    assert second != first


def _wait_for_pid(path: Path, not_pid: int | None, fut, timeout: float = 90.0) -> int:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if fut.done():
            fut.result()  # raises the sweep's error
            raise AssertionError("the sweep ended before the job reached the wait point")
        try:
            pid = int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            pid = None
        if pid is not None and pid != not_pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no process reached the wait point within {timeout} s")


def test_slurm_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="slurm.timeout_min"):
        sw.slurm_settings(_spec(tmp_path, {"seed": [0]}, {"cluster": "slurm", "timeout_min": None}))
    with pytest.raises(ConfigError, match="slurm.cluster"):
        sw.slurm_settings(_spec(tmp_path, {"seed": [0]}, {"cluster": "aws"}))
    with pytest.raises(ConfigError, match="slurm.tasks_per_node"):
        sw.slurm_settings(_spec(tmp_path, {"seed": [0]}, {"tasks_per_node": 0}))
    own, params = sw.slurm_settings(sw.load_spec({"base": "demo", "out": str(tmp_path), "launcher": "slurm",
                                                  "slurm": {"gpus_per_node": 4, "timeout_min": 600,
                                                            "slurm_partition": "gpu"}}))
    assert own == {"cluster": "slurm", "wait": False, "max_num_timeout": 3, "backend": None}
    assert params == {"gpus_per_node": 4, "timeout_min": 600, "slurm_partition": "gpu", "nodes": 1,
                      "tasks_per_node": 4}
