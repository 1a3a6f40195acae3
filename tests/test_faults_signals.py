"""SIGTERM and SIGUSR1 stop a run at the next optimiser-step boundary (issue 17, item 6).

``kill``, docker, systemd and SLURM send ``SIGTERM``; SLURM sends ``SIGUSR1`` before pre-empting a job
(``--signal=USR1@60``). Each test trains a real ``python -m repalign train`` subprocess, signals it while
it is inside a known step (held at the ``step.forward`` fault point, ``repalign.faults``) or at a moment
picked from its metrics, and asserts: exit code 128 + signal, one stderr line naming the signal and the
step, the lock record gone, ``last.pt`` at the step boundary right after the signal, and a ``--resume``
that ends bitwise where the uninterrupted run ends (weights, optimisers, schedules, metrics rows).
Before the fix the process died of the signal (return code −15 / −10), with no checkpoint of that step
and its lock record left behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state, tiny_overrides

from repalign.cli import main
from repalign.config import load_config, resolve_config_path
from repalign.errors import Interrupted
from repalign.training import CoupledTrainer
from repalign.training.checkpoint import load_checkpoint
from repalign.training.rundir import read_metrics

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 2, "eval.every": 1, "train.threads": 1, "eval.untrained_baseline": False,
        "eval.layers": "[h]"}  # 2 epochs × 5 steps, evaluations at steps 0, 5, 10 (as tests/test_faults.py)
TIMING = ("wall_s", "samples_per_s")


def overrides(**extra: object) -> list[str]:
    return tiny_overrides(**{**FAST, **extra})


def cfg_of(**extra: object) -> dict:
    return load_config(resolve_config_path("demo"), overrides(**extra))


def rows_of(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")
            if r["kind"] != "event"]


def state_of(run: Path) -> dict:
    """``last.pt`` without the global RNG state (a fresh process seeds it at random; the trainer never draws
    from it, so it is the only part that may differ between processes)."""
    st = load_checkpoint(run / "checkpoints" / "last.pt")
    st.pop("rng")
    return st


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted tiny run."""
    run = tmp_path_factory.mktemp("ref") / "run"
    CoupledTrainer(cfg_of(), run).fit()
    return run


def spawn(run: Path, release: Path | None = None, fault: str = "step.forward@3:wait") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("REPALIGN_FAULT", None)
    if release is not None:
        env.update(REPALIGN_FAULT=fault, REPALIGN_FAULT_RELEASE=str(release))
    return subprocess.Popen([sys.executable, "-m", "repalign", "train", "demo", *overrides(), "--run-dir", str(run)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    t_end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < t_end, f"{what}: never happened"
        time.sleep(0.02)


def assert_stopped(proc: subprocess.Popen, run: Path, sig: int) -> int:
    """The process exited 128 + sig with one stderr line, released its lock and checkpointed the step the
    line names; returns that step."""
    out, err = proc.communicate(timeout=120)
    lines = [x for x in err.splitlines() if x.strip()]
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert len(lines) == 1, err
    name = signal.Signals(sig).name
    assert lines[0].startswith(f"repalign: interrupted by {name} at step "), lines[0]
    assert f"--run-dir {run} --resume" in lines[0]
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert (run / ".lock").read_text() == ""  # released: no holder record left
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == step
    assert not list(run.rglob(".*.tmp*")), "orphan temp files left"
    return step


def resume_and_compare(run: Path, reference: Path, capsys) -> None:
    assert main(["train", "demo", *overrides(), "--run-dir", str(run), "--resume"]) == 0
    capsys.readouterr()
    assert_same_state(state_of(reference), state_of(run))
    assert rows_of(run) == rows_of(reference)  # nothing lost, nothing duplicated, same numbers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_inside_a_step_checkpoints_its_end_and_resumes_identical(sig, reference, tmp_path, capsys):
    run, release = tmp_path / "run", tmp_path / "release"
    proc = spawn(run, release)  # held inside the third step (after its forward/backward, before the update)
    try:
        wait_for(Path(str(release) + ".waiting").exists, proc, "reaching step 3")
        assert json.loads((run / ".lock").read_text())["pid"] == proc.pid
        proc.send_signal(sig)
    finally:
        release.write_text("go")
    assert assert_stopped(proc, run, sig) == 3  # the boundary after the step in progress: one step lost at most
    steps = {r["step"] for r in rows_of(run) if r["kind"] == "train"}
    assert steps == {0, 1, 2}  # the rows the checkpoint covers, no more
    resume_and_compare(run, reference, capsys)


def test_sigterm_at_a_moment_picked_from_the_metrics_resumes_identical(reference, tmp_path, capsys):
    """No fault point: the signal lands wherever the run is once its metrics show step 2 done."""
    run = tmp_path / "run"
    proc = spawn(run)

    def past_step_2() -> bool:
        try:
            return any(r.get("kind") == "train" and r.get("step", -1) >= 2 for r in read_metrics(run / "metrics.jsonl"))
        except (OSError, ValueError):
            return False

    wait_for(past_step_2, proc, "step 2 in metrics.jsonl")
    proc.send_signal(signal.SIGTERM)
    step = assert_stopped(proc, run, signal.SIGTERM)
    assert 3 <= step < 10
    ref = rows_of(reference)
    got = rows_of(run)
    assert got == ref[:len(got)] and max(r["step"] for r in got if r["kind"] == "train") == step - 1
    resume_and_compare(run, reference, capsys)


# ---------------------------------------------------------------- the handlers themselves (in-process)
class _Probe:
    """An evaluator that records the SIGTERM/SIGUSR1 handlers seen while ``fit`` runs."""

    def __init__(self, send: tuple[int, ...] = ()) -> None:
        self.seen: list[tuple] = []
        self.send = send

    def __call__(self, trainer, epoch) -> None:
        self.seen.append((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)))
        if epoch == 1:
            for s in self.send:
                assert signal.getsignal(s) is not signal.SIG_DFL  # else the signal would end this test process
                os.kill(os.getpid(), s)


def test_handlers_are_installed_only_while_fit_runs_and_restored(tmp_path):
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1))
    assert before == (signal.SIG_DFL, signal.SIG_DFL)
    probe = _Probe()
    CoupledTrainer(cfg_of(**{"train.epochs": 1}), tmp_path / "a", evaluator=probe).fit()
    assert probe.seen and all(h[0] not in (signal.SIG_DFL, None) and h[1] not in (signal.SIG_DFL, None)
                              for h in probe.seen)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before


def test_a_callers_own_handler_is_left_in_place(tmp_path):
    got: list[int] = []

    def mine(signum, frame):
        got.append(signum)

    old = signal.signal(signal.SIGTERM, mine)
    try:
        probe = _Probe(send=(signal.SIGTERM,))
        CoupledTrainer(cfg_of(**{"train.epochs": 2}), tmp_path / "a", evaluator=probe).fit()  # runs to the end
        assert got == [signal.SIGTERM] and all(h[0] is mine for h in probe.seen)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_fit_in_a_thread_installs_nothing(tmp_path):
    probe, errors = _Probe(), []

    def work() -> None:
        try:
            CoupledTrainer(cfg_of(**{"train.epochs": 1}), tmp_path / "a", evaluator=probe).fit()
        except BaseException as e:  # pragma: no cover - the failure is reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert not errors and probe.seen
    assert all(h == (signal.SIG_DFL, signal.SIG_DFL) for h in probe.seen)


def test_in_process_sigusr1_raises_interrupted_and_resumes_identical(reference, tmp_path):
    run = tmp_path / "run"
    from repalign.training.evaluate import Evaluator

    class Sender(Evaluator):
        def __call__(self, trainer, epoch):
            super().__call__(trainer, epoch)
            if epoch == 1:
                assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL  # else it would end this process
                os.kill(os.getpid(), signal.SIGUSR1)  # during the evaluation after step 5

    tr = CoupledTrainer(cfg_of(), run, evaluator=None)
    tr.evaluator = Sender(tr, log=tr.log_row)
    with pytest.raises(Interrupted) as e:
        tr.fit()
    assert (e.value.signum, e.value.step, e.value.checkpointed, e.value.exit_code) == (signal.SIGUSR1, 5, True, 138)
    assert "interrupted by SIGUSR1 at step 5" in str(e.value)
    assert (run / ".lock").read_text() == "" and signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 5
    CoupledTrainer(cfg_of(), run, resume=True).fit()
    assert_same_state(state_of(reference), state_of(run))
    assert rows_of(run) == rows_of(reference)


def test_a_second_signal_stops_at_once(tmp_path):
    run = tmp_path / "run"
    probe = _Probe(send=(signal.SIGTERM, signal.SIGUSR1))  # at the evaluation after step 5, before its checkpoint
    with pytest.raises(Interrupted) as e:
        CoupledTrainer(cfg_of(), run, evaluator=probe).fit()
    assert (e.value.signum, e.value.checkpointed, e.value.step, e.value.exit_code) == (signal.SIGUSR1, False, None, 138)
    assert str(e.value).startswith("interrupted by a second SIGUSR1: stopped at once")
    assert not (run / "checkpoints" / "last.pt").exists()
    assert (run / ".lock").read_text() == ""
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == (signal.SIG_DFL, signal.SIG_DFL)


# ---------------------------------------------------------------- DDP: the ranks stop at the same step
def _ddp_worker(rank: int, world: int, port: int, run: str, out: str) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        cfg = load_config(None, tiny_overrides(**{"model.norm": "none", "model.projector_norm": "none",
                                                  "train.epochs": 1, "eval.every": "null"}))
        tr = CoupledTrainer(cfg, run, evaluator=None)
        step = tr.train_step

        def train_step(*a, **k):
            if rank == 1 and tr.step == 1:  # only rank 1 is signalled, inside its second step
                os.kill(os.getpid(), signal.SIGUSR1)
            return step(*a, **k)

        tr.train_step = train_step
        try:
            tr.fit()
            got = {"step": tr.step, "signum": None}
        except Interrupted as e:
            got = {"step": e.step, "signum": e.signum}
        Path(f"{out}.{rank}").write_text(json.dumps(got))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_ddp_ranks_agree_on_the_stop_step(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, out = tmp_path / "run", tmp_path / "out"
    mp.spawn(_ddp_worker, args=(2, port, str(run), str(out)), nprocs=2, join=True)
    got = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    assert got == [{"step": 2, "signum": signal.SIGUSR1}] * 2  # rank 0 was not signalled, yet stops there too
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert (run / ".lock").read_text() == ""
