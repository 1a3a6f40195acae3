"""Issue 17, items 3 and 7 (part B): row identity and n = seeds, export under the run's lock, a deleted
meta.json recreated by --resume, disk-full messages per command, verdicts refusing mixed configs,
compare's consent, module references never found in the current directory (fingerprints), and opening a
received run with plug-in code and a crafted CIFAR pickle. Each check ends in one line or a correct
result, never a traceback, a second "seed" or code run without consent.

Every test here but the last section's failed on the code before it (the security tests are regression
guards of behaviour the trust work already had: they pass on that code and fail if report, aggregate or
verdicts ever import a plug-in or unpickle a batch)."""
from __future__ import annotations

import csv
import errno
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_overrides

from repalign.cli import main

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 2, "eval.every": 1, "train.threads": 1, "eval.layers": "[h]",
        "eval.untrained_baseline": False}
ARMS = "arms={cl: {objective: cl}, nscl: {objective: nscl}}"


def _args(**extra: object) -> list[str]:
    return [*tiny_overrides(**{**FAST, **extra}), ARMS]


def _one_line(err: str, only: str | None = None) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip() and (only is None or x.startswith(only))]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weak_b") / "run"
    torch.manual_seed(0)
    assert main(["train", "demo", *_args(), "--run-dir", str(d)]) == 0
    return d


@pytest.fixture
def copy(run, tmp_path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(run, d)
    return d


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A finished two-seed sweep (cl, nscl; 2 epochs on digits)."""
    from repalign.experiments import sweep as sw

    out = tmp_path_factory.mktemp("weak_b_sweep") / "sweep"
    spec = sw.load_spec({"base": "demo", "overrides": _args(), "grid": {"seed": [0, 1]}, "out": str(out)})
    sw.run_sweep(spec, log=lambda s: None)
    assert (out / "summary.csv").is_file()
    return out


# ------------------------------------------------------------------ 1. row identity, n = seeds
def test_same_identity_different_values_is_refused(copy, capsys):
    from repalign.errors import RunDirError
    from repalign.results import read_rows

    m = copy / "metrics.jsonl"
    rows = [json.loads(x) for x in m.read_text().splitlines() if x.strip()]
    first = next(r for r in rows if r["kind"] == "align")
    other = dict(first, linear_cka=first["linear_cka"] / 2 + 0.01)  # the same row of another run's file
    m.write_text(m.read_text() + json.dumps(other) + "\n")
    with pytest.raises(RunDirError) as e:
        read_rows(copy)
    msg = str(e.value)
    assert str(m) in msg and "'kind': 'align'" in msg and f"'step': {first['step']}" in msg and "linear_cka" in msg
    assert "\n" not in msg
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(m) in line and "same identity" in line
    # event rows are messages, not results: two resumes at one step log two different "resumed" events
    m.write_text(m.read_text().rsplit(json.dumps(other), 1)[0])
    ev = {"kind": "event", "step": 5, "arm": None}
    m.write_text(m.read_text() + json.dumps({**ev, "message": "resumed from last.pt at step 5"}) + "\n"
                 + json.dumps({**ev, "message": "resumed from last.prev.pt at step 5"}) + "\n")
    assert sum(r["kind"] == "event" for r in read_rows(copy)) == 2


def test_two_runs_with_one_seed_pooled_count_once_or_refuse(run, tmp_path):
    """n counts seeds, never rows: a run pooled with itself is n = 1; two different runs that share seed 0
    cannot be pooled as two seeds (nor silently as one: a value would be dropped) — refused, one line."""
    from repalign.analysis import aggregate_rows, findings
    from repalign.analysis.aggregate import SeedConflictError, comparison_rows
    from repalign.results import read_rows

    other = tmp_path / "other"
    torch.manual_seed(0)
    assert main(["train", "demo", *_args(**{"optim.lr": 0.2}), "--run-dir", str(other)]) == 0
    a = [dict(r, seed=0) for r in read_rows(run)]
    b = [dict(r, seed=0) for r in read_rows(other)]
    agg = aggregate_rows(a + a)
    assert agg and all(r["n"] == 1 for r in agg)
    assert {(r["metric"], r["step"]): r["mean"] for r in agg} == {(r["metric"], r["step"]): r["mean"]
                                                                   for r in aggregate_rows(a)}
    for fn in (aggregate_rows, comparison_rows, findings):
        with pytest.raises(SeedConflictError) as e:
            fn(a + b)
        assert "seed 0" in str(e.value) and "\n" not in str(e.value)


def _final_table(html: str) -> list[dict[str, str]]:
    from repalign.report.html import _TABLE, table_csv

    for t in _TABLE.findall(html):
        rows = list(csv.DictReader(table_csv(f"<table>{t}</table>").splitlines()))
        if rows and "linear CKA" in rows[0] and "n" in rows[0]:
            return rows
    raise AssertionError("no final-values table")


def test_sweep_report_n_counts_seeds_not_rows(sweep, tmp_path, capsys):
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    summ = out / "summary.csv"
    text = summ.read_text()
    header, *body = text.splitlines(keepends=True)
    summ.write_text(header + "".join(body) * 2)  # every point's rows twice (the same seed, the same values)
    assert main(["report", str(out)]) == 0
    fin = _final_table((out / "report" / "report.html").read_text())
    assert fin and {r["n"] for r in fin} == {"2"}, fin
    # seed 1's rows relabelled seed 0: two runs of one seed, different values — refused, one line
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0])
    with open(summ, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "seed": "0"})
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "seed 0" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ 2. export: the run's lock, --overwrite
def _hold_lock(run_dir: str, conn) -> None:  # forked: hold the lock until told to stop
    from repalign.training.lock import RunLock

    lock = RunLock(run_dir, "holder").acquire()
    conn.send("held")
    conn.recv()
    lock.release()
    os._exit(0)


def test_export_takes_the_run_lock(copy, tmp_path, capsys):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_hold_lock, args=(str(copy), child))
    p.start()
    try:
        assert parent.recv() == "held"
        capsys.readouterr()
        assert main(["export", str(copy), "--arm", "cl"]) == 4
        line = _one_line(capsys.readouterr().err)
        assert "in use by" in line and "holder" in line and not (copy / "export").exists()
        # written elsewhere, the run is only read: no lock needed
        assert main(["export", str(copy), "--arm", "cl", "--out", str(tmp_path / "e" / "cl")]) == 0
        assert (tmp_path / "e" / "cl.pt").is_file()
    finally:
        parent.send("stop")
        p.join(10)
    assert main(["export", str(copy), "--arm", "cl"]) == 0 and (copy / "export" / "cl.pt").is_file()


def test_overwrite_recognises_the_runs_own_export(copy, capsys):
    from repalign.training.rundir import foreign_entries

    assert main(["export", str(copy), "--arm", "cl"]) == 0
    assert main(["export", str(copy), "--arm", "nscl", "--format", "pt", "--epoch", "1"]) == 0
    assert (copy / "export" / "nscl_epoch1.pt").is_file() and foreign_entries(copy) == []
    assert main(["train", "demo", *_args(**{"train.epochs": 1}), "--run-dir", str(copy), "--overwrite"]) == 0
    assert not (copy / "export").exists()
    # a file of the user's own inside export/ is still foreign
    (copy / "export").mkdir()
    (copy / "export" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["train", "demo", *_args(**{"train.epochs": 1}), "--run-dir", str(copy), "--overwrite"]) == 2
    assert "notes.txt" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------------ 3. a deleted meta.json
def test_resume_recreates_a_deleted_meta_json(copy, capsys):
    from repalign.fingerprint import record

    old = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").unlink()
    capsys.readouterr()
    assert main(["train", "demo", *_args(), "--run-dir", str(copy), "--resume"]) == 0
    line = _one_line(capsys.readouterr().err, only="repalign: warning")
    assert "meta.json" in line and "recreated" in line and "last.pt" in line
    meta = json.loads((copy / "meta.json").read_text())
    for k in ("channels", "image_size", "num_classes", "pairs", "seed", "total_steps"):
        assert meta[k] == old[k], k
    assert meta["arms"].keys() == old["arms"].keys()
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    assert meta["config_fingerprint"]["sha256"] == old["config_fingerprint"]["sha256"] == record(cfg)["sha256"]
    assert "meta_recreated" in meta
    # exportable again
    assert main(["export", str(copy), "--arm", "cl"]) == 0
    assert json.loads((copy / "export" / "cl.json").read_text())["feature_dim"] is not None
    import repalign

    assert repalign.load_encoder(copy, "cl") is not None
    # an intact meta.json is left alone, with no warning
    assert main(["train", "demo", *_args(), "--run-dir", str(copy), "--resume"]) == 0
    assert "meta.json" not in capsys.readouterr().err
    assert json.loads((copy / "meta.json").read_text())["started"] == meta["started"]


# ------------------------------------------------------------------ 4. a full disk, per command
def test_disk_full_names_metrics_jsonl_and_resume_for_train(tmp_path, monkeypatch, capsys):
    from repalign import faults

    run = tmp_path / "run"
    monkeypatch.setenv("REPALIGN_FAULT", "metrics.row@3:enospc")
    faults.reset()
    assert main(["train", "demo", *_args(), "--run-dir", str(run)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("repalign: error: no space left writing") and str(run / "metrics.jsonl") in line
    assert "--resume" in line and "<fault" not in line


def _full(*_a: object, **_k: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as f.write raises it: no file name


def test_disk_full_in_report_names_the_folder_and_no_resume(copy, monkeypatch, capsys):
    from repalign.report import html

    monkeypatch.setattr(html, "run_report", _full)
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no space left" in line and str(copy / "report") in line
    assert "--resume" not in line and "repalign report again" in line


def test_disk_full_in_sweep_summary_names_the_csv_and_no_resume(sweep, tmp_path, monkeypatch, capsys):
    from repalign.experiments import sweep as sw

    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)

    class FullWriter(csv.DictWriter):
        def writeheader(self):
            _full()

    monkeypatch.setattr(sw.csv, "DictWriter", FullWriter)
    capsys.readouterr()
    assert main(["sweep", str(out / "spec.yaml"), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err, only="repalign: error")
    assert "no space left" in line and str(out / "summary.csv") in line
    assert "--resume" not in line and "repalign sweep again" in line
    assert not list(out.glob("*.tmp"))


# ------------------------------------------------------------------ 5. verdicts: one configuration per condition
def test_verdicts_refuse_a_condition_mixing_configs(sweep, tmp_path, capsys):
    from repalign.experiments.verdicts import main as verdicts_main

    src = Path(__file__).resolve().parents[1] / "docs" / "figures" / "cpu" / "fig2" / "fig2.csv"
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    figs = tmp_path / "figs"
    (figs / "fig2").mkdir(parents=True)

    def write(fp):
        with open(figs / "fig2" / "fig2.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[*rows[0], "config_fingerprint"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "config_fingerprint": fp(r)})

    write(lambda r: "a" * 64)
    assert verdicts_main([str(figs)]) == 0
    write(lambda r: "a" * 64 if r["seed"] != "3" else "b" * 64)
    capsys.readouterr()
    assert verdicts_main([str(figs)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "fig2.csv" in line and "mixes 2 configurations" in line


# ------------------------------------------------------------------ 7. compare: consent for plug-in encoders
def _plugin_source(marker: Path) -> str:
    return (
        "import pathlib\n"
        "import torch\n"
        f"MARK = pathlib.Path({str(marker)!r})\n"
        "MARK.write_text('imported')\n"
        "def fn(z, labels, temperature):\n"
        "    MARK.write_text('called')\n"
        "    return (z.float() ** 2).mean()\n"
        "def tiny(channels, image_size):\n"
        "    MARK.write_text('called')\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(channels * image_size * image_size, 8),\n"
        "                               torch.nn.ReLU())\n"
    )


@pytest.fixture(scope="module")
def plugin_encoder_run(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("weak_b_enc")
    marker = base / "MARKER"
    (base / "enc").mkdir()
    (base / "enc" / "enc.py").write_text(_plugin_source(marker))
    run = base / "run"
    assert main(["train", "demo", *_args(**{"model.encoder": f"{base / 'enc' / 'enc.py'}:tiny"}),
                 "--run-dir", str(run)]) == 0
    assert marker.exists()
    return run, marker


def test_compare_of_a_plugin_encoder_needs_consent(plugin_encoder_run, tmp_path, monkeypatch, capsys):
    run, marker = plugin_encoder_run
    marker.unlink()
    monkeypatch.delenv("REPALIGN_TRUST_CODE", raising=False)
    common = ["--data", "digits", "--max-samples", "40", "--no-progress", "--metrics", "linear_cka"]
    capsys.readouterr()
    assert main(["compare", f"{run}:cl", f"{run}:nscl", *common, "--out", str(tmp_path / "c0")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'model.encoder'" in line and "enc.py:tiny" in line and "--trust-code" in line
    assert not marker.exists()
    assert main(["compare", f"{run}:cl", f"{run}:nscl", *common, "--trust-code", "--out", str(tmp_path / "c1")]) == 0
    assert marker.exists() and (tmp_path / "c1" / "compare.csv").is_file()
    # an export folder received from someone: its JSON names the plug-in encoder — consent too
    exp = tmp_path / "exp"
    assert main(["export", str(run), "--arm", "cl", "--out", str(exp / "cl"), "--trust-code"]) == 0
    marker.unlink()
    capsys.readouterr()
    assert main(["compare", str(exp), str(exp), *common, "--out", str(tmp_path / "c2")]) == 2
    assert "--trust-code" in _one_line(capsys.readouterr().err) and not marker.exists()
    monkeypatch.setenv("REPALIGN_TRUST_CODE", "1")
    assert main(["compare", str(exp), str(exp), *common, "--out", str(tmp_path / "c3")]) == 0 and marker.exists()


# ------------------------------------------------------------------ 8. fingerprints: never the current directory
def test_reference_file_skips_the_absolute_current_directory(tmp_path, monkeypatch):
    from repalign.fingerprint import payload, reference_file

    here = tmp_path / "here"
    here.mkdir()
    (here / "payload_b17.py").write_text("def fn(z, labels, temperature):\n    return z.sum()\n")
    monkeypatch.chdir(here)
    monkeypatch.syspath_prepend(str(here))  # what `python -m` puts first: the cwd as an absolute entry
    assert reference_file("payload_b17:fn") is None
    cfg = {"arms": {"cl": {"objective": "cl"}, "mine": {"objective": "payload_b17:fn"}}}
    assert payload(cfg)["arms.mine.objective#file"] == "(file missing)"
    # the same folder on the path while the current directory is elsewhere: found (an ordinary entry)
    monkeypatch.chdir(tmp_path)
    assert reference_file("payload_b17:fn") == here / "payload_b17.py"


# ------------------------------------------------------------------ 6. security: a received run with code in it
def _set_config(run: Path, **changes: object) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for k, v in changes.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _crafted(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {marker}",))

    return pickle.dumps({"data": Payload(), "labels": [0]})


def _poison(run: Path, marker: Path, where: str) -> dict[str, str]:
    """Plug-in objective and encoder files (inside the run dir or elsewhere) and crafted CIFAR batches under a
    data.root inside the run dir; returns the config changes naming them."""
    plug = run / "evil.py" if where == "inside" else run.parent.parent / "elsewhere" / "evil.py"
    plug.parent.mkdir(exist_ok=True)
    plug.write_text(_plugin_source(marker))
    folder = run / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(_crafted(marker))
    return {"arms.nscl.objective": f"{plug}:fn", "data.source": "cifar10", "data.root": str(run / "data")}


@pytest.mark.parametrize("where", ["inside", "elsewhere"])
def test_received_sweep_with_plugin_and_crafted_cifar_runs_nothing(sweep, tmp_path, where, monkeypatch, capsys):
    from repalign.experiments.sweep import write_summary
    from repalign.experiments.verdicts import main as verdicts_main

    monkeypatch.delenv("REPALIGN_TRUST_CODE", raising=False)
    marker = tmp_path / "MARKER"
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    pt = out / "points" / "seed=0"
    changes = _poison(pt, marker, where)
    for p in (out / "points").iterdir():  # every point names the same code and data (one condition)
        _set_config(p, **changes)
    ref = changes["arms.nscl.objective"]
    assert main(["report", str(pt)]) == 0 and not marker.exists()
    write_summary(out)  # summary, aggregate.csv, comparisons.csv: fingerprints hash the file, never import it
    assert (out / "aggregate.csv").is_file() and (out / "comparisons.csv").is_file() and not marker.exists()
    assert main(["report", str(out)]) == 0 and not marker.exists()
    from repalign.analysis.theory import run_theory_rows

    th = run_theory_rows(pt)
    figs = tmp_path / "figs"
    (figs / "fig3").mkdir(parents=True)
    cols = list(th[0])
    (figs / "fig3" / "fig3_theory.csv").write_text(
        ",".join(cols + ["seed"]) + "\n" + "".join(",".join(str(r[c]) for c in cols) + ",0\n" for r in th))
    assert verdicts_main([str(figs)]) == 0 and not marker.exists()
    capsys.readouterr()
    assert main(["align", str(pt)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'arms.nscl.objective'" in line and ref in line and "--trust-code" in line
    assert not marker.exists()
    # export of a plug-in encoder named by the received config: one line, nothing imported
    _set_config(pt, **{"model.encoder": ref.replace(":fn", ":tiny")})
    assert main(["export", str(pt), "--arm", "cl"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'model.encoder'" in line and "--trust-code" in line and not (pt / "export").exists()
    assert not marker.exists() and "evil" not in sys.modules
