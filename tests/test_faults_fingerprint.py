"""Issue 17, failures 1 and 2: numbers that describe a run that never happened.

1. ``--resume`` (and ``--resume-if-possible``) with a config other than the run's own — an override, a
   different positional file, an added arm, a longer schedule — stops before training with one line
   naming each differing key and both values (exit 2); nothing is written.
2. A sweep re-run with another config never counts the old points as done: it stops before running
   anything, listing the stale points and keys; ``--redo-stale`` re-runs them; aggregates, comparisons and
   the report refuse a condition whose points have different config fingerprints.

Each test fails on the code before issue 17 (which resumed/pooled silently).
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

from repalign.cli import main
from repalign.config import ConfigError, load_config, resolve_config_path
from repalign.training import CoupledTrainer
from repalign.training.rundir import read_metrics

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 2, "eval.every": 1, "train.threads": 1, "eval.untrained_baseline": False,
        "eval.layers": "[h]"}


def overrides(**extra: object) -> list[str]:
    return tiny_overrides(**{**FAST, **extra})


def cfg_of(**extra: object) -> dict:
    """What ``repalign train demo <overrides>`` resolves."""
    return load_config(resolve_config_path("demo"), overrides(**extra))


def snapshot(run: Path) -> dict[str, bytes]:
    """Bytes of everything training writes (metrics rows, checkpoints, config, meta)."""
    files = [run / "metrics.jsonl", run / "config.yaml", run / "meta.json", *sorted((run / "checkpoints").glob("*.pt"))]
    return {str(f.relative_to(run)): f.read_bytes() for f in files if f.exists()}


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> Path:
    """A run of 2 epochs × 5 steps stopped (checkpointed) at step 7, as a killed run would be."""
    run = tmp_path_factory.mktemp("partial") / "run"
    CoupledTrainer(cfg_of(), run).fit(stop_after=7)
    return run


@pytest.fixture
def run(partial, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(partial, dst)
    return dst


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("repalign: error:"), err
    return err


# ---------------------------------------------------------------- failure 1: resume with another config
CHANGES = [  # (override, the words the one line must hold)
    ("loss.temperature=0.1", "loss.temperature: run has 0.5, asked 0.1"),
    ("seed=1", "seed: run has 0, asked 1"),
    ("train.batch_size=16", "train.batch_size: run has 32, asked 16"),
    ("optim.lr=0.05", "optim.lr: run has 0.5, asked 0.05"),
    ("model.width=8", "model.width: run has 4, asked 8"),
    ("train.epochs=4", "train.epochs: run has 2, asked 4"),  # extending a run is refused: start a new one
    ("arms.extra.objective=cl", "arms.extra.objective: run has (not set), asked cl"),  # an added arm
    ("arms.nscl.temperature=0.2", "arms.nscl.loss.temperature: run has (not set), asked 0.2"),
]


@pytest.mark.parametrize("flag", ["--resume", "--resume-if-possible"])
@pytest.mark.parametrize("change,words", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_with_another_config_is_one_line_and_writes_nothing(run, change, words, flag, capsys):
    before = snapshot(run)
    rc = main(["train", "demo", *overrides(), change, "--run-dir", str(run), flag])
    err = one_error_line(capsys)
    assert rc == 2, err
    assert words in err and "start a new run" in err
    assert snapshot(run) == before  # no training step, no row, no checkpoint, config.yaml as it was


def test_resume_with_another_positional_file_is_refused_identical_content_resumes(run, tmp_path, capsys):
    own = yaml.safe_load((run / "config.yaml").read_text())
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**own, "loss": {**own["loss"], "temperature": 0.1}}, sort_keys=False))
    before = snapshot(run)
    assert main(["train", str(other), "--run-dir", str(run), "--resume"]) == 2
    assert "loss.temperature: run has 0.5, asked 0.1" in one_error_line(capsys)
    assert snapshot(run) == before
    same = tmp_path / "copy_of_its_config.yaml"  # another name, identical content: fine (name is exempt)
    same.write_text((run / "config.yaml").read_text())
    assert main(["train", str(same), "--run-dir", str(run), "--resume"]) == 0
    msgs = [r["message"] for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "event"]
    assert msgs == ["resumed from last.pt at step 7"]
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl", "train")) == 9  # finished its 10 steps


def test_resume_with_exempt_keys_only_continues(run, capsys):
    """Keys that cannot change a number (logging, loader workers, the non-finite read interval) may differ."""
    rc = main(["train", "demo", *overrides(), "logging.tensorboard=false", "data.num_workers=0",
               "train.nonfinite_check_every=3", "--run-dir", str(run), "--resume"])
    assert rc == 0, capsys.readouterr().err


def test_trainer_resume_refuses_another_config(run):
    """The Python entry and the sweep/SLURM workers resume through the trainer: the same check."""
    before = snapshot(run)
    with pytest.raises(ConfigError, match=r"optim\.lr: run has 0\.5, asked 0\.05"):
        CoupledTrainer(cfg_of(**{"optim.lr": 0.05}), run, resume=True)
    assert snapshot(run) == before


def test_fingerprint_in_meta_and_old_runs_without_it(run, capsys):
    from repalign.fingerprint import fingerprint

    meta = json.loads((run / "meta.json").read_text())
    fp = meta["config_fingerprint"]
    cfg = load_config(run / "config.yaml")
    assert fp["sha256"] == fingerprint(cfg) and fp["without_seed"] == fingerprint(cfg, seed=False)
    assert fingerprint(cfg) != fingerprint(cfg_of(**{"loss.temperature": 0.1}))
    assert fingerprint(cfg, seed=False) == fingerprint(cfg_of(seed=1), seed=False) != fingerprint(cfg_of(seed=1))
    del meta["config_fingerprint"]  # a run from before fingerprints: computed from its config.yaml
    (run / "meta.json").write_text(json.dumps(meta))
    assert main(["train", "demo", *overrides(), "loss.temperature=0.1", "--run-dir", str(run), "--resume"]) == 2
    assert "loss.temperature: run has 0.5, asked 0.1" in one_error_line(capsys)


def test_plugin_file_content_is_part_of_the_fingerprint(tmp_path):
    """A plug-in objective is fingerprinted by the bytes of its file (read, not imported)."""
    from repalign.fingerprint import config_diff, describe_diff, payload

    plug = tmp_path / "myobj.py"
    plug.write_text("raise SystemExit('imported!')\n")  # importing it would end the test process
    cfg = {"arms": {"cl": {"objective": "cl"}, "mine": {"objective": f"{plug}:loss"}}}
    a = payload(cfg)
    plug.write_text("raise SystemExit('imported, changed!')\n")
    diff = config_diff(a, payload(cfg))
    assert [k for k, _, _ in diff] == ["arms.mine.objective#file"]
    assert "arms.mine.objective (plug-in file): run has file sha256" in describe_diff(diff)


# ---------------------------------------------------------------- failure 2: sweeps never pool configs
def sweep_args(**extra: object) -> list[str]:
    return [o for o in overrides(**{"train.epochs": 1, **extra}) if "[" not in o]


def aggregate_n(out: Path) -> set[int]:
    with open(out / "aggregate.csv", newline="") as f:
        return {int(r["n"]) for r in csv.DictReader(f)}


def test_rerun_sweep_with_another_config_stops_and_redo_stale_redoes(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(["sweep", "demo", *sweep_args(), "seed=[0,1]", "--out", str(out)]) == 0
    assert aggregate_n(out) == {2}
    capsys.readouterr()
    files = {p: (out / p).read_bytes() for p in ("spec.yaml", "summary.csv", "aggregate.csv", "sweep.json")}
    old_seed0 = tmp_path / "old_seed0"
    shutil.copytree(out / "points" / "seed=0", old_seed0)

    # seeds 0-1 were trained at lr 0.5: with lr 0.05 they are stale, not done; nothing runs
    assert main(["sweep", "demo", *sweep_args(), "optim.lr=0.05", "seed=[0,1,2]", "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "2 point(s)" in err and "seed=0" in err and "seed=1" in err and "--redo-stale" in err
    assert "optim.lr: point has 0.5, spec asks 0.05" in err
    assert not (out / "points" / "seed=2").exists()
    # every point "done" but run at τ = 0.5: spec.yaml must not start claiming τ = 0.1
    assert main(["sweep", "demo", *sweep_args(), "loss.temperature=0.1", "seed=[0,1]", "--out", str(out)]) == 2
    assert "loss.temperature: point has 0.5, spec asks 0.1" in one_error_line(capsys)
    assert {p: (out / p).read_bytes() for p in files} == files

    # --redo-stale: the stale points are re-run with the spec's config; all three pooled at lr 0.05
    assert main(["sweep", "demo", *sweep_args(), "optim.lr=0.05", "seed=[0,1,2]", "--out", str(out),
                 "--redo-stale"]) == 0
    for s in (0, 1, 2):
        assert yaml.safe_load((out / "points" / f"seed={s}" / "config.yaml").read_text())["optim"]["lr"] == 0.05
    assert aggregate_n(out) == {3}
    capsys.readouterr()

    # a report on a summary whose rows of one condition carry two fingerprints refuses (one line)
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    good = out / "summary.good.csv"
    shutil.copy(out / "summary.csv", good)
    for r in rows:
        if r["point"] == "seed=2":
            r["config_fingerprint"] = "0" * 64
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["report", str(out)]) == 2
    assert "mixes 2 configurations" in one_error_line(capsys)
    shutil.copy(good, out / "summary.csv")

    # a point of another config put back in place (a copy, a bad merge): the aggregation refuses it
    shutil.rmtree(out / "points" / "seed=0")
    shutil.copytree(old_seed0, out / "points" / "seed=0")
    from repalign.analysis.aggregate import MixedConfigError
    from repalign.experiments.sweep import write_summary

    agg = (out / "aggregate.csv").read_bytes()
    with pytest.raises(MixedConfigError, match=r"optim\.lr: first has 0\.5, second has 0\.05"):
        write_summary(out)
    assert (out / "aggregate.csv").read_bytes() == agg  # not rewritten with n = 3 over two configs


def test_aggregate_and_comparisons_refuse_a_condition_mixing_fingerprints():
    from repalign.analysis.aggregate import MixedConfigError, aggregate_rows, comparison_rows

    def row(seed: int, fp: str, cka: float) -> dict:
        return {"kind": "align", "seed": seed, "point": f"seed={seed}", "tau": 0.5, "config_fingerprint": fp,
                "split": "test", "layer": "h", "arm_a": "cl", "arm_b": "nscl", "step": 10, "epoch": 1,
                "linear_cka": cka}

    same = [row(0, "a" * 64, 0.5), row(1, "a" * 64, 0.6)]
    assert [r["n"] for r in aggregate_rows(same, ["tau"]) if r["metric"] == "linear_cka"] == [2]
    mixed = same + [row(2, "b" * 64, 0.9)]
    with pytest.raises(MixedConfigError, match=r"tau=0\.5 mixes 2 configurations"):
        aggregate_rows(mixed, ["tau"])
    with pytest.raises(MixedConfigError):
        comparison_rows(mixed, ["tau"])
    other_condition = same + [{**row(2, "b" * 64, 0.9), "tau": 0.1}]  # different condition: fine
    assert {r["n"] for r in aggregate_rows(other_condition, ["tau"]) if r["metric"] == "linear_cka"} == {1, 2}


def test_reproduce_reuses_a_finished_run_only_with_its_config(tmp_path, monkeypatch, capsys):
    """`repalign reproduce` reuses finished points only when their config is the one the plan asks for."""
    from dataclasses import replace

    from repalign.experiments import reproduce as rp

    out = tmp_path / "fig1"
    assert main(["reproduce", "fig1", "--tiny", "--out", str(out)]) == 0
    d = rp.FIGS["fig1"]

    def changed(scale: str) -> list:  # the same plan with another learning rate (e.g. an edited base config)
        return [replace(p, spec=dict(p.spec, overrides=[*(p.spec.get("overrides") or []), "optim.lr=0.05"]))
                for p in d.plans(scale)]

    monkeypatch.setitem(rp.FIGS, "fig1", replace(d, plans=changed))
    csv_before = (out / "fig1.csv").read_bytes()
    capsys.readouterr()
    assert main(["reproduce", "fig1", "--tiny", "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "optim.lr: point has" in err and "spec asks 0.05" in err and "--redo-stale" in err
    assert (out / "fig1.csv").read_bytes() == csv_before
    assert main(["reproduce", "fig1", "--tiny", "--out", str(out), "--redo-stale"]) == 0
    pts = sorted((out).glob("*/points/*/config.yaml"))
    assert pts and all(yaml.safe_load(p.read_text())["optim"]["lr"] == 0.05 for p in pts)
