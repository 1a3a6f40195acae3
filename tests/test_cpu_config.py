"""CPU configuration of sweeps and the suite (issue 18, item 3): workers never oversubscribe the cores
(processes × threads ≤ cpu_count) and never spin (OMP_WAIT_POLICY=PASSIVE unless the user set it).
Measured: benchmarks/bench_cpu_config.py → benchmarks/results/cpu_config.md."""
from __future__ import annotations

import ast
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from repalign.experiments import sweep as sw

ROOT = Path(__file__).resolve().parents[1]


def test_worker_env_is_passive_and_takes_its_share():
    env = sw.worker_env(1, base={"OMP_NUM_THREADS": "8", "PATH": "/bin"})
    assert env["OMP_NUM_THREADS"] == "1"  # the inherited value was the sweep's own, not the worker's share
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["PATH"] == "/bin" and env[sw.PARENT_ENV] == str(os.getpid())
    assert sw.worker_env(2, base={"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 16])
def test_thread_budget_never_oversubscribes(cores):
    for procs in range(1, 2 * cores + 3):
        p, t = sw.thread_budget(procs, "local", cores)
        assert 1 <= p <= min(procs, cores) and t >= 1 and p * t <= cores, (procs, cores, p, t)
        assert p == min(procs, cores) and t == cores // p  # and the cores are used
        assert sw.thread_budget(procs, "inline", cores) == (1, cores)  # one point at a time
    assert sw.thread_budget(8, "slurm", cores) == (8, 0)  # the nodes' cores, not this machine's


def _spec(out: Path, **kw) -> sw.SweepSpec:
    raw = {"base": "configs/demo.yaml",
           "overrides": tiny_overrides(**{"train.epochs": 1, "train.threads": 1}) + ["arms={cl: {objective: cl}}"],
           "grid": {"seed": [0, 1]}, "out": str(out)}
    raw.update(kw)
    return sw.load_spec(raw)


def _threads_written(out: Path) -> list:
    return [yaml.safe_load(p.read_text())["train"]["threads"] for p in sorted((out / "configs").glob("*.yaml"))]


def test_oversubscribing_spec_is_clamped_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    logs: list[str] = []
    sw.run_sweep(_spec(tmp_path / "a", processes=2, threads_per_process=2), log=logs.append, dry_run=True)
    warn = [x for x in logs if "oversubscribe" in x]
    assert len(warn) == 1 and "threads_per_process=2" in warn[0] and "train.threads=1" in warn[0], logs
    assert _threads_written(tmp_path / "a") == [1, 1]  # the config (and fingerprint) says what runs
    assert any("2 processes × 1 thread(s)" in x for x in logs), logs
    # more processes than cores: clamped to the cores, one line (train.threads=1 fits)
    logs.clear()
    sw.run_sweep(_spec(tmp_path / "b", processes=5), log=logs.append, dry_run=True)
    assert [x for x in logs if "oversubscribe" in x] == ["  warning: 5 processes on 2 cores would oversubscribe them; running 2"]
    # the base config's own train.threads (e.g. the CPU regime's 2) under 2 processes; inline on 1 core
    logs.clear()
    sw.run_sweep(_spec(tmp_path / "c", processes=2, overrides=tiny_overrides() + ["train.threads=2"]),
                 log=logs.append, dry_run=True)
    assert [x for x in logs if "oversubscribe" in x] == [
        "  warning: 2 process(es) × train.threads=2 on 2 cores would oversubscribe them; points run with train.threads=1"]
    assert _threads_written(tmp_path / "c") == [1, 1]
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    sw.run_sweep(_spec(tmp_path / "d", overrides=tiny_overrides() + ["train.threads=2"]), log=logs.append, dry_run=True)
    assert _threads_written(tmp_path / "d") == [1, 1]


def test_fitting_spec_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    logs: list[str] = []
    sw.run_sweep(_spec(tmp_path / "a", processes=2, threads_per_process=2), log=logs.append, dry_run=True)
    assert not [x for x in logs if "oversubscribe" in x] and _threads_written(tmp_path / "a") == [2, 2]
    sw.run_sweep(_spec(tmp_path / "b", overrides=tiny_overrides() + ["train.threads=3"]), log=logs.append,
                 dry_run=True)
    assert not [x for x in logs if "oversubscribe" in x] and _threads_written(tmp_path / "b") == [3, 3]


def test_local_workers_run_passive_within_the_cores(tmp_path, monkeypatch):
    """End to end: two local workers of a spec asking 2 threads each on '2 cores' report (from inside the
    trainer process, via sitecustomize) OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=1 and torch threads 1."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import atexit, json, os, sys
        def _report():
            t = sys.modules.get("torch")
            with open({str(tmp_path / 'seen')!r} + "/" + str(os.getpid()), "w") as f:
                json.dump({{"policy": os.environ.get("OMP_WAIT_POLICY"), "omp": os.environ.get("OMP_NUM_THREADS"),
                           "torch": t.get_num_threads() if t else None, "argv": sys.argv}}, f)
        if os.environ.get("REPALIGN_PARENT_PID"):
            atexit.register(_report)
        """))
    (tmp_path / "seen").mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    logs: list[str] = []
    res = sw.run_sweep(_spec(tmp_path / "out", processes=2, threads_per_process=2), log=logs.append)
    assert sorted(res.ran) == ["seed=0", "seed=1"]
    seen = [json.loads(p.read_text()) for p in (tmp_path / "seen").iterdir()]
    assert len(seen) == 2 and all("train" in s["argv"] for s in seen), seen
    for s in seen:
        assert s["policy"] == "PASSIVE" and s["omp"] == "1" and s["torch"] == 1, s


def test_suite_sets_passive_before_torch():
    """tests/conftest.py sets OMP_WAIT_POLICY before its `import torch` (OpenMP reads it once, at start);
    the Makefile's test target and .ci/run set it for the whole suite."""
    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    first_torch = min(n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import)
                      and any(a.name == "torch" for a in n.names))
    sets = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and "OMP_WAIT_POLICY" in ast.unparse(n)]
    assert sets and min(sets) < first_torch
    assert os.environ.get("OMP_WAIT_POLICY")
    make = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "OMP_WAIT_POLICY" in make and "pytest" in make
    assert "OMP_WAIT_POLICY" in (ROOT / ".ci" / "run").read_text()


def test_cli_sets_passive_before_torch(tmp_path):
    """`repalign …` sets OMP_WAIT_POLICY=PASSIVE (unless set) before torch is imported, so an inline sweep or
    figure in the CLI process does not spin either."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); from repalign import cli; "
            "cli.build_parser = (lambda f: (lambda: (print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules),"
            " sys.exit(0))))(cli.build_parser); cli.main(['configs'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.split() == ["PASSIVE", "False"], out.stdout + out.stderr
