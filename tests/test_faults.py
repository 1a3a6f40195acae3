"""Fault injection (issue 10): nothing lost, nothing silently wrong.

Kill -9 at each phase of a run (mid-step, mid-update, mid-evaluation, inside every step of a
checkpoint write), torn metrics lines, missing and wrong checksums, concurrent writers, a full
disk, and every bad input. Each test asserts what must hold: the run resumes bitwise identical to
an uninterrupted one where the state was committed, nothing is duplicated, nothing silently
wrong, and the user gets one line and the documented exit code.

Killed runs are forked children (``REPALIGN_FAULT`` makes them ``SIGKILL`` themselves at a named
point, see ``repalign.faults``); concurrency and sweep tests use real ``python -m repalign``
subprocesses. Run alone with ``pytest -m faults``.
"""
from __future__ import annotations

import errno
import io
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state, tiny_overrides

from repalign import faults
from repalign.cli import main
from repalign.config import ConfigError, load_config, parse_override
from repalign.training import CoupledTrainer
from repalign.training.checkpoint import (FORMAT, CheckpointError, load_checkpoint, load_latest, prev_path,
                                          save_checkpoint)
from repalign.training.rundir import clear_run_dir, foreign_entries, read_metrics

pytestmark = pytest.mark.faults

EPOCHS = 2
FAST = {"train.epochs": EPOCHS, "eval.every": 1, "train.threads": 1, "eval.untrained_baseline": False,
        "eval.layers": "[h]"}
TIMING = ("wall_s", "samples_per_s")
GLOBAL_SEED = 123


def overrides(**extra: object) -> list[str]:
    return tiny_overrides(**{**FAST, **extra})


def sweep_args(**extra: object) -> list[str]:
    """overrides() for the sweep command line, where ``key=[..]`` would be a grid axis."""
    return [o for o in overrides(**extra) if "[" not in o]


def cfg_of(**extra: object) -> dict:
    """The config ``repalign train demo <overrides>`` resolves (so CLI runs compare bitwise)."""
    from repalign.config import resolve_config_path

    return load_config(resolve_config_path("demo"), overrides(**extra))


def rows_of(run: Path, events: bool = False) -> list[dict]:
    """metrics rows without timing fields (and without event rows unless asked)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")
            if events or r["kind"] != "event"]


def last_state(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted tiny run (2 epochs × 5 steps, evaluation at epochs 0, 1, 2)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    torch.manual_seed(GLOBAL_SEED)  # the checkpoint records the caller's global RNG: same start everywhere
    CoupledTrainer(cfg_of(), run).fit()
    return run


def _child(cfg: dict, run_dir: str, fault: str, resume: bool) -> None:  # runs in a forked process
    os.environ["REPALIGN_FAULT"] = fault
    faults.reset()
    torch.set_num_threads(1)
    torch.manual_seed(GLOBAL_SEED)
    try:
        CoupledTrainer(cfg, run_dir, resume=resume).fit()
    except BaseException:
        os._exit(1)
    os._exit(0)


def run_killed(run: Path, fault: str, resume: bool = False, **extra: object) -> int:
    """Train in a forked child that SIGKILLs itself at ``fault``; return its exit code."""
    p = mp.get_context("fork").Process(target=_child, args=(cfg_of(**extra), str(run), fault, resume))
    p.start()
    p.join(120)
    return p.exitcode


def resume_and_compare(run: Path, reference: Path) -> CoupledTrainer:
    torch.manual_seed(GLOBAL_SEED + 1)  # overwritten by the checkpoint's RNG state on resume
    tr = CoupledTrainer(cfg_of(), run, resume=True)
    tr.fit()
    assert_same_state(last_state(reference), last_state(run))
    got, want = rows_of(run), rows_of(reference)
    assert got == want  # nothing lost, nothing duplicated, same numbers
    assert not list(run.rglob(".*.tmp*")), "orphan temp files left"
    return tr


def _row_index(reference: Path, pred) -> int:
    """1-based index of the first reference row matching ``pred`` (the n-th ``metrics.row``)."""
    for i, r in enumerate(read_metrics(reference / "metrics.jsonl"), 1):
        if pred(r):
            return i
    raise AssertionError("no such row")


# ---------------------------------------------------------------- kill -9 at every phase
KILL_POINTS = [
    "step.forward@8",          # mid-step: every arm's forward/backward done, no update yet (epoch 1)
    "step.update@8",           # mid-update: the first arm stepped, the others not
    "ckpt.last.write@2",       # half of the second last.pt written into its temp file
    "ckpt.last.written@2",     # temp file complete, not renamed
    "ckpt.last.rotated@1",     # (2nd save) old last.pt moved to last.prev.pt, new one not yet in place
    "ckpt.last.committed@1",   # new last.pt in place, directory not yet synced
    "ckpt.epoch_0002.write",   # inside the final evaluation's weight file
]


@pytest.mark.parametrize("fault", KILL_POINTS)
def test_kill_at_each_phase_resumes_bitwise_identical(fault, reference, tmp_path):
    run = tmp_path / "run"
    assert run_killed(run, fault) == -signal.SIGKILL
    resume_and_compare(run, reference)


def test_kill_mid_evaluation_with_torn_row_resumes_identical(reference, tmp_path, capsys):
    # the third align row of the epoch-2 evaluation (after the epoch-1 checkpoint) is cut in half
    n = _row_index(reference, lambda r: r["kind"] == "align" and r["epoch"] == 2) + 2
    run = tmp_path / "run"
    assert run_killed(run, f"metrics.torn@{n}") == -signal.SIGKILL
    text = (run / "metrics.jsonl").read_bytes()
    assert not text.endswith(b"\n")  # a torn last line
    rows = list(read_metrics(run / "metrics.jsonl"))
    assert len(rows) == n - 1 and "torn last line" in capsys.readouterr().err
    assert main(["report", str(run)]) == 0  # report reads it too (and writes a complete report/)
    assert (run / "report" / "report.html").stat().st_size > 1000
    resume_and_compare(run, reference)


def test_resume_twice_after_kills_never_duplicates(reference, tmp_path):
    run = tmp_path / "run"
    assert run_killed(run, "step.forward@7") == -signal.SIGKILL
    assert run_killed(run, "step.update@2", resume=True) == -signal.SIGKILL  # killed again, resumed
    tr = resume_and_compare(run, reference)
    resumed = [r for r in rows_of(run, events=True) if r["kind"] == "event"]
    assert [r["message"] for r in resumed] == ["resumed from last.pt at step 5"] * 2
    assert tr.step == reference_steps(reference)


def reference_steps(reference: Path) -> int:
    return last_state(reference)["step"]


# ---------------------------------------------------------------- checkpoints
def _flip_inside(path: Path, needle: bytes) -> None:
    data = bytearray(path.read_bytes())
    i = data.find(needle)
    assert i >= 0
    data[i + len(needle) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_digest_is_inside_the_file(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.arange(1000, dtype=torch.float32)}, p)
    assert not (tmp_path / "last.pt.sha256").exists()  # no separate checksum to fall out of step
    raw = torch.load(io.BytesIO(p.read_bytes()), weights_only=True)
    assert raw["format"] == FORMAT and len(raw["sha256"]) == 64 and raw["state"]["step"] == 1


def test_flipped_bytes_without_sidecar_are_refused_and_prev_used(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.arange(1000, dtype=torch.float32)}, p)
    save_checkpoint({"step": 2, "w": torch.arange(1000, dtype=torch.float32) * 2}, p)
    _flip_inside(p, (torch.arange(1000, dtype=torch.float32) * 2).numpy().tobytes()[:400])
    torch.load(p, weights_only=True)  # still unpickles: only the digest can tell
    with pytest.raises(CheckpointError, match="do not match the stored SHA-256"):
        load_checkpoint(p)
    obj, used, problems = load_latest(p)
    assert obj["step"] == 1 and used == prev_path(p) and len(problems) == 1


def test_legacy_checkpoint_without_checksum_is_not_trusted(tmp_path):
    p = tmp_path / "last.pt"
    torch.save({"step": 3}, p)  # an older repalign's file whose .sha256 write was killed
    with pytest.raises(CheckpointError, match="carries no checksum"):
        load_checkpoint(p)


def _legacy_save(obj: dict, path: Path) -> None:
    """The previous save_checkpoint: bare file + ``.sha256`` sidecar, previous kept as .prev."""
    import hashlib

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if path.exists():
        os.replace(path, prev_path(path))
        side = path.with_name(path.name + ".sha256")
        if side.exists():
            os.replace(side, prev_path(path).with_name(prev_path(path).name + ".sha256"))
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {len(data)}\n")


def test_legacy_kill_between_the_two_renames_still_resumes(tmp_path):
    p = tmp_path / "last.pt"
    _legacy_save({"step": 1}, p)
    _legacy_save({"step": 2}, p)
    os.replace(p, prev_path(p))  # killed here: last.prev.pt (step 2) beside the older sidecar
    obj, used, _ = load_latest(p)
    assert obj["step"] == 2 and used == prev_path(p)
    save_checkpoint({"step": 3}, p)  # the new format takes over; the stale sidecar goes
    assert load_checkpoint(p)["step"] == 3 and load_checkpoint(prev_path(p))["step"] == 2
    assert not p.with_name("last.pt.sha256").exists()


def test_both_checkpoints_bad_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "demo", *overrides(), "--run-dir", str(run)]
    assert main(args) == 0
    for name in ("last.pt", "last.prev.pt"):
        f = run / "checkpoints" / name
        f.write_bytes(f.read_bytes()[:500])
    capsys.readouterr()
    n_rows = len(rows_of(run, events=True))
    assert main(args + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no loadable checkpoint" in err and "last.prev.pt" in err
    assert len(rows_of(run, events=True)) == n_rows  # nothing written


def test_flipped_epoch_file_align_fails_and_keeps_previous_csv(tmp_path, capsys):
    run = tmp_path / "run"
    CoupledTrainer(cfg_of(), run).fit()
    assert main(["align", str(run)]) == 0
    before = (run / "alignment.csv").read_bytes()
    ep = run / "checkpoints" / "epoch_0002.pt"
    state = load_checkpoint(ep)
    w = next(v for k, v in state["arms"]["cl"].items() if v.numel() > 100)
    _flip_inside(ep, w.numpy().tobytes()[:256])
    capsys.readouterr()
    # --quiet: align's per-checkpoint progress lines (issue 20) also go to stderr; the error itself is one line
    assert main(["align", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "epoch_0002.pt" in err and "corrupt" in err
    assert (run / "alignment.csv").read_bytes() == before  # the previous version, not a partial one
    assert not list(run.glob(".*tmp*"))


def test_orphan_temp_files_are_removed_on_next_start(tmp_path):
    run = tmp_path / "run"
    assert run_killed(run, "ckpt.last.written@1") == -signal.SIGKILL
    assert list((run / "checkpoints").glob(".last.pt.tmp*"))
    CoupledTrainer(cfg_of(), run, resume=False)  # the next start (holding the lock) cleans up
    assert not list((run / "checkpoints").glob(".*.tmp*"))


# ---------------------------------------------------------------- torn metrics
def test_read_metrics_drops_only_a_torn_last_line(tmp_path, capsys):
    p = tmp_path / "metrics.jsonl"
    good = [{"kind": "train", "step": i} for i in range(3)]
    p.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"kind": "tra')
    assert list(read_metrics(p)) == good
    assert "torn last line" in capsys.readouterr().err
    p.write_text(json.dumps(good[0]) + "\n" + '{"kind": "tra\n' + json.dumps(good[1]) + "\n")
    from repalign.errors import RunDirError

    with pytest.raises(RunDirError, match="line 2"):
        list(read_metrics(p))


def test_sweep_summary_tolerates_a_torn_line(tmp_path):
    from repalign.experiments import sweep as sw

    spec = sw.load_spec({"base": "demo", "overrides": overrides(), "grid": {"seed": [0]},
                         "out": str(tmp_path / "sw")})
    res = sw.run_sweep(spec, log=lambda s: None)
    want = res.summary.read_text()
    pt = tmp_path / "sw" / "points" / res.ran[0] / "metrics.jsonl"
    pt.write_bytes(pt.read_bytes() + b'{"kind": "align", "ep')
    assert sw.write_summary(tmp_path / "sw").read_text() == want


# ---------------------------------------------------------------- disk full
def test_disk_full_during_checkpoint_write(reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("REPALIGN_FAULT", "ckpt.last.write@2:enospc")
    faults.reset()
    torch.manual_seed(GLOBAL_SEED)
    assert main(["train", "demo", *overrides(), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("repalign: error: no space left") and "--resume" in err
    assert not list(run.rglob(".*.tmp*"))  # the half-written temp file is gone
    assert last_state(run)["step"] == 5  # the previous checkpoint is intact
    monkeypatch.delenv("REPALIGN_FAULT")
    resume_and_compare(run, reference)


def test_disk_full_mid_metrics_row(reference, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    n = _row_index(reference, lambda r: r["kind"] == "train" and r["step"] == 7)
    monkeypatch.setenv("REPALIGN_FAULT", f"metrics.torn@{n}:enospc")
    faults.reset()
    torch.manual_seed(GLOBAL_SEED)
    assert main(["train", "demo", *overrides(), "--run-dir", str(run)]) == 2
    assert "no space left" in capsys.readouterr().err
    monkeypatch.delenv("REPALIGN_FAULT")
    resume_and_compare(run, reference)


def test_disk_full_on_a_tiny_tmpfs(tmp_path, capsys):
    """A real full disk where mounting a tmpfs is permitted (root in a container), else skipped."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (the simulated ENOSPC tests cover this)")
    try:
        rc = main(["train", "demo", *overrides(), "--run-dir", str(mnt / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith("repalign: error: no space left")
        assert not list(mnt.rglob(".*.tmp*"))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ---------------------------------------------------------------- non-finite values
def test_diverging_arms_stop_and_run_finishes_with_report(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "demo", *overrides(**{"optim.lr": "1000000000", "train.on_nonfinite": "stop_arm"}),
               "--run-dir", str(run)])
    assert rc == 0
    events = [r for r in rows_of(run, events=True) if r["kind"] == "event" and r["arm"]]
    stopped = {r["arm"] for r in events}
    assert stopped and all("non-finite" in r["message"] for r in events)
    state = last_state(run)
    assert {a for a, s in state["arms"].items() if not s["active"]} == stopped
    for a in stopped:  # the last good weights: finite
        assert all(torch.isfinite(v).all() for v in state["arms"][a]["module"].values() if v.is_floating_point())
    assert main(["report", str(run)]) == 0 and (run / "report" / "report.html").exists()


def test_stop_run_is_one_line_exit_3_and_a_loadable_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "demo", *overrides(**{"optim.lr": "1e9", "train.on_nonfinite": "stop_run"}),
               "--run-dir", str(run)])
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("repalign:")]
    assert rc == 3 and len(err) == 1, err  # one line in all, not one per stopped arm
    assert err[0].startswith("repalign: error:") and "stop_run" in err[0] and "last.pt" in err[0]
    state = last_state(run)
    event = [r for r in rows_of(run, events=True) if r["kind"] == "event" and r["arm"]]
    assert event and state["step"] == event[0]["step"]  # the state before the bad step
    assert not state["arms"][event[0]["arm"]]["active"]
    for a in state["arms"].values():
        assert all(torch.isfinite(v).all() for v in a["module"].values() if v.is_floating_point())


def test_nonfinite_embeddings_trigger_the_policy_not_the_loss_check(tiny_cfg):
    """Before: the loss's input check raised ValueError('z contains ... non-finite entries')."""
    tr = CoupledTrainer(cfg_of(), None, evaluator=None)
    bad = tr.arm_states[1]
    bad.module.net.projector.register_forward_hook(lambda m, i, out: out * float("inf"))
    summary = tr.fit(stop_after=2)
    assert summary["arms"][bad.name]["active"] is False and "non-finite embeddings" in bad.stop_reason
    assert all(summary["arms"][s.name]["active"] for s in tr.arm_states if s is not bad)


def test_loss_functions_still_check_their_inputs():
    from repalign.losses import ce_loss, dcl_loss
    from repalign.losses.functional import unchecked_inputs

    z = torch.randn(2, 4, 3)
    z[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        dcl_loss(z, None, 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        ce_loss(torch.full((2, 4, 3), float("inf")), torch.zeros(4, dtype=torch.long))
    with unchecked_inputs():
        assert not torch.isfinite(dcl_loss(z, None, 0.5))
    with pytest.raises(ValueError):  # the checks are back outside the block
        dcl_loss(z, None, 0.5)


def test_one_host_transfer_per_step(monkeypatch):
    """No sync per arm: a non-logging step reads the device once (one ``tolist``), whatever the arms."""
    tr = CoupledTrainer(cfg_of(), None, evaluator=None)
    batches = {k: next(tr._batches(v, 0, 0)) for k, v in tr.streams.items()}
    tr.train_step(batches, log=False)  # warm-up
    counts = {"tolist": 0, "item": 0, "__bool__": 0, "__float__": 0, "__int__": 0}
    for name in counts:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    tr.train_step(batches, log=False)
    assert counts == {"tolist": 1, "item": 0, "__bool__": 0, "__float__": 0, "__int__": 0}


# ---------------------------------------------------------------- one writer per run directory
def _spawn_train(run: Path, release: Path, extra_env: dict | None = None, args: list[str] | None = None,
                 fault: str = "step.forward@3:wait") -> subprocess.Popen:
    env = {**os.environ, "REPALIGN_FAULT": fault, "REPALIGN_FAULT_RELEASE": str(release), **(extra_env or {})}
    cmd = args or ["train", "demo", *overrides(), "--run-dir", str(run)]
    return subprocess.Popen([sys.executable, "-m", "repalign", *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t_end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < t_end, f"{path} never appeared"
        time.sleep(0.05)


def test_second_writer_is_refused_while_a_run_is_going(reference, tmp_path, capsys):
    run, release = tmp_path / "run", tmp_path / "release"
    first = _spawn_train(run, release)
    try:
        _wait_for(Path(str(release) + ".waiting"), first)  # holding the lock at step 3
        for extra in ([], ["--resume"], ["--overwrite"], ["--overwrite=all"], ["--resume-if-possible"]):
            assert main(["train", "demo", *overrides(), "--run-dir", str(run), *extra]) == 4, extra
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"pid {first.pid}" in err and "in use" in err
        assert main(["align", str(run)]) == 4 and f"pid {first.pid}" in capsys.readouterr().err
        assert main(["report", str(run)]) == 4 and f"pid {first.pid}" in capsys.readouterr().err
        assert (run / "metrics.jsonl").exists() and not (run / "report").exists()
    finally:
        release.write_text("go")
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert rows_of(run) == rows_of(reference)  # no row written twice
    # a fresh process seeds its global RNG at random (the trainer never draws from it): compare the rest
    ref, got = last_state(reference), last_state(run)
    ref.pop("rng"), got.pop("rng")
    assert_same_state(ref, got)


def test_stale_lock_of_a_killed_writer_is_taken_over(reference, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_killed(run, "step.forward@7") == -signal.SIGKILL
    rec = json.loads((run / ".lock").read_text())
    assert rec["pid"] != os.getpid() and rec["host"]
    resume_and_compare(run, reference)
    err = capsys.readouterr().err
    assert "taking over the lock" in err and f"pid {rec['pid']}" in err
    assert (run / ".lock").read_text() == ""  # released cleanly: no record left


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in state


def test_killed_sweep_takes_its_workers_along_and_rerun_skips_busy_points(tmp_path):
    out, release = tmp_path / "sw", tmp_path / "release"
    args = ["sweep", "demo", *sweep_args(), "seed=[0]", "--out", str(out), "--launcher", "local"]
    sweep = _spawn_train(out, release, args=args)
    try:
        _wait_for(Path(str(release) + ".waiting"), sweep)
        worker = int(Path(str(release) + ".waiting").read_text())
        assert worker != sweep.pid
        sweep.kill()  # kill -9 the sweep parent
        sweep.wait(30)
        t_end = time.monotonic() + 20
        while not _process_gone(worker):
            assert time.monotonic() < t_end, "the orphaned trainer kept running"
            time.sleep(0.05)
    finally:
        release.write_text("go")
        if sweep.poll() is None:
            sweep.kill()


def _hold_lock(run_dir: str, conn) -> None:  # forked: hold the lock until told to stop
    from repalign.training.lock import RunLock

    lock = RunLock(run_dir, "holder").acquire()
    conn.send("held")
    conn.recv()
    lock.release()
    os._exit(0)


def test_rerun_sweep_does_not_start_a_point_whose_lock_is_held(tmp_path):
    from repalign.experiments import sweep as sw

    spec = sw.load_spec({"base": "demo", "overrides": overrides(), "grid": {"seed": [0, 1]}, "out": str(tmp_path / "sw")})
    busy = sw.expand(spec)[0].slug
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path / "sw" / "points" / busy), child))
    p.start()
    try:
        assert parent.recv() == "held"
        res = sw.run_sweep(spec, log=lambda s: None)
        assert res.busy == [busy] and res.ran == [sw.expand(spec)[1].slug]
        assert sorted(x.name for x in (tmp_path / "sw" / "points" / busy).iterdir()) == [".lock"]  # untouched
    finally:
        parent.send("stop")
        p.join(10)


# ---------------------------------------------------------------- --overwrite
def test_overwrite_deletes_only_what_repalign_wrote(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "demo", *overrides(**{"train.epochs": 1}), "--run-dir", str(run)]
    assert main(args) == 0 and main(["align", str(run)]) == 0
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "my_backup.pt").write_bytes(b"x")
    assert {p.relative_to(run).as_posix() for p in foreign_entries(run)} == {"notes.txt", "checkpoints/my_backup.pt"}
    capsys.readouterr()
    for flag in ("--overwrite", "--resume-if-possible"):
        if flag == "--resume-if-possible":
            for f in (run / "checkpoints").glob("last*.pt"):
                f.unlink()
        assert main(args + [flag]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "notes.txt" in err and "--overwrite=all" in err
        assert (run / "notes.txt").read_text() == "mine" and (run / "metrics.jsonl").exists()
    assert main(args + ["--overwrite=all"]) == 0
    assert not (run / "notes.txt").exists() and not (run / "alignment.csv").exists()
    assert (run / "metrics.jsonl").exists()


def test_clear_run_dir_keeps_the_lock_file(tmp_path):
    run = tmp_path / "run"
    CoupledTrainer(cfg_of(**{"train.epochs": 1}), run).fit()
    clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# ---------------------------------------------------------------- bad inputs: one line, exit 2
def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("repalign: error: ")
    return err


@pytest.mark.parametrize("content, expect", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not YAML text"),
    (b"train:\n  epochs: 3\n  batch_size: [1,\n", "line 4, column 1"),
    (b"train:\n  epochs: 3\n bad: indent\n", "line 3, column 2"),
    (b"", "is empty"),
    (b"# nothing here\n", "is empty"),
    (b"- a\n- b\n", "mapping of keys"),
])
def test_bad_config_files(content, expect, tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_bytes(content)
    assert main(["train", str(f), "--run-dir", str(tmp_path / "run")]) == 2
    err = _one_line(capsys)
    assert expect in err and "bad.yaml" in err
    assert not (tmp_path / "run").exists()


def test_numbers_in_exponent_form_are_floats(tmp_path):
    assert parse_override("optim.lr=1e9") == ("optim.lr", 1e9)
    assert parse_override("optim.lr=1e-3") == ("optim.lr", 1e-3)
    assert parse_override("x=-2E+5") == ("x", -2e5) and parse_override("x=12") == ("x", 12)
    assert load_config(None, ["optim.lr=1e-3"])["optim"]["lr"] == 1e-3
    f = tmp_path / "c.yaml"
    f.write_text("data: {source: digits}\noptim: {lr: 5e-2}\n")
    assert load_config(f)["optim"]["lr"] == 0.05


def test_arm_keys_are_named_with_their_arm(capsys, tmp_path):
    assert main(["train", "demo", "arms.cl.temperature=0", "--run-dir", str(tmp_path / "r")]) == 2
    err = _one_line(capsys)
    assert "'arms.cl.temperature'" in err and "loss.temperature" not in err


def test_nonexistent_data_root_leaves_no_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "demo", *overrides(**{"data.root": "/nonexistent"}), "--run-dir", str(run)]) == 2
    err = _one_line(capsys)
    assert "data.root" in err and "/nonexistent" in err
    assert not run.exists()


def test_missing_dataset_names_data_download_and_the_debian_package(tmp_path, capsys, monkeypatch):
    from repalign.data.sources import download

    monkeypatch.setattr(download, "system_dirs", lambda: [tmp_path / "none"])
    monkeypatch.setattr(download, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.delenv("REPALIGN_DATA", raising=False)
    monkeypatch.delenv("REPALIGN_DOWNLOAD", raising=False)
    run = tmp_path / "run"
    assert main(["train", "demo", *overrides(**{"data.source": "fashion_mnist", "data.augment": "auto"}),
                 "--run-dir", str(run)]) == 2
    err = _one_line(capsys)
    assert "data.download=true" in err and "dataset-fashion-mnist" in err and "Debian package" in err
    assert not run.exists()


def test_corrupt_image_is_named(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.new("L", (8, 8), color=40 * i + (100 if c == "b" else 0)).save(d / f"{i}.png")
    bad = root / "train" / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    args = ["train", "demo", *overrides(**{"data.source": "imagefolder", "data.root": str(root), "data.image_size": 8,
                                           "data.options": "{channels: 1}", "train.batch_size": 8,
                                           "data.max_per_class": 4, "data.test_max_per_class": 4}),
            "--run-dir", str(tmp_path / "run")]
    assert main(args) == 2
    err = _one_line(capsys)
    assert str(bad) in err and "cannot read image" in err


def test_read_only_run_directory(tmp_path, capsys, monkeypatch):
    run = tmp_path / "ro"
    run.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: make the lock file's open fail as a read-only fs does
        import repalign.training.lock as lk

        real_open = os.open

        def ro_open(path, flags, *a):
            if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *a)

        monkeypatch.setattr(lk.os, "open", ro_open)
    else:
        run.chmod(0o555)
    try:
        assert main(["train", "demo", *overrides(), "--run-dir", str(run)]) == 2
    finally:
        run.chmod(0o755)
    err = _one_line(capsys)
    assert str(run) in err and "not writable" in err


def test_invalid_sweep_point_is_refused_before_any_point_runs(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "demo", *sweep_args(), "optim.lr=[0.1,-1]", "--out", str(out)]) == 2
    err = _one_line(capsys)
    assert "sweep point" in err and "lr=-1" in err and "optim.lr" in err
    assert not (out / "points").exists() or not any((out / "points").iterdir())
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: demo\ngrid: {seed: [0, 1]}\nprocesses: two\n")
    assert main(["sweep", str(spec), "--out", str(out)]) == 2
    assert "'processes'" in _one_line(capsys)


def test_failed_report_keeps_the_previous_report(tmp_path, monkeypatch, capsys):
    from repalign.report import html

    run = tmp_path / "run"
    CoupledTrainer(cfg_of(**{"train.epochs": 1}), run).fit()
    assert main(["report", str(run)]) == 0
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}

    def broken(d, out):
        (Path(out) / "report.html").write_text("<html>half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out) / "x.png"))

    monkeypatch.setattr(html, "run_report", broken)
    assert main(["report", str(run)]) == 2 and "no space left" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "report").iterdir()} == before
    assert not list(run.glob(".report*"))
