"""Opening results never runs code (issue 17, items 5–7): a received run directory whose config names
marker-writing plug-in code is reported, summarised, aggregated and verdicted without the marker
appearing; align / export / resume rebuild plug-ins only with --trust-code (else one line, exit 2);
module references never resolve against the current or the run directory; CIFAR batches are read
with a restricted unpickler; reading a config imports no plug-in; a checkpoint fallback is warned
about by every command that loads one.

Each test here failed on the commit before issue 17's trust work (the old code imported and probed the
objective in ``report → theory_rows → resolve_arms → get_objective``, ``pickle.load``-ed CIFAR batches,
and loaded ``last.prev.pt`` in silence). Run alone with ``pytest -m faults``.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_overrides

from repalign.cli import main

pytestmark = pytest.mark.faults

FAST = {"train.epochs": 2, "eval.every": 1, "train.threads": 1, "eval.layers": "[h]",
        "eval.untrained_baseline": False}
ARMS = "arms={cl: {objective: cl}, nscl: {objective: nscl}}"


def _plugin_source(marker: Path) -> str:
    """A plug-in file that writes ``marker`` when imported and when its loss or encoder is called."""
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


def _set_config(run: Path, **changes: object) -> None:
    """Edit a run's config.yaml as someone shipping a run directory could (dotted keys)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for k, v in changes.items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A one-point sweep (cl, nscl; 2 epochs × 5 steps on digits): OUT/points/seed=0 is a finished run."""
    from repalign.experiments import sweep as sw

    out = tmp_path_factory.mktemp("trust") / "sweep"
    spec = sw.load_spec({"base": "demo", "overrides": tiny_overrides(**FAST) + [ARMS], "grid": {"seed": [0]},
                         "out": str(out)})
    sw.run_sweep(spec, log=lambda s: None)
    assert (out / "points" / "seed=0" / "checkpoints" / "last.pt").is_file()
    return out


@pytest.fixture
def received(sweep, tmp_path) -> Path:
    """A copy of the finished run, as received from someone else."""
    run = tmp_path / "received"
    shutil.copytree(sweep / "points" / "seed=0", run)
    return run


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """(plug-in file somewhere else, marker path)."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    marker = tmp_path / "MARKER"
    (d / "evil.py").write_text(_plugin_source(marker))
    return d / "evil.py", marker


@pytest.fixture(scope="module")
def plugin_encoder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained (by its owner, with consent) with a plug-in encoder from a marker-writing file."""
    base = tmp_path_factory.mktemp("trust_enc")
    marker = base / "MARKER"
    (base / "enc").mkdir()
    (base / "enc" / "enc.py").write_text(_plugin_source(marker))
    run = base / "run"
    assert main(["train", "demo", *tiny_overrides(**FAST, **{"model.encoder": f"{base / 'enc' / 'enc.py'}:tiny"}),
                 ARMS, "--run-dir", str(run)]) == 0
    assert marker.exists()
    return run, marker


def _one_line(err: str, only: str | None = None) -> str:
    """The one line of ``err`` (``only``: of its lines starting with it, progress lines aside)."""
    lines = [x for x in err.strip().splitlines() if x.strip() and (only is None or x.startswith(only))]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ results never import plug-ins
@pytest.mark.parametrize("how", ["absolute file elsewhere", "payload:fn inside the run dir"])
def test_report_of_a_received_run_runs_no_plugin(received, evil, tmp_path, monkeypatch, capsys, how):
    plug, marker = evil
    if how.startswith("absolute"):
        ref = f"{plug}:fn"
    else:  # shipped inside the run dir, opened from there with the current directory on the import path
        shutil.copy(plug, received / "payload.py")
        ref = "payload:fn"
        monkeypatch.chdir(received)
        monkeypatch.syspath_prepend(str(received))
        monkeypatch.syspath_prepend("")
    _set_config(received, **{"arms.nscl.objective": ref})
    assert main(["report", str(received)]) == 0
    assert not marker.exists(), marker.read_text()
    html = (received / "report" / "report.html").read_text()
    assert (received / "report" / "theory.png").is_file() and "Theory overlay unavailable" not in html
    from repalign.analysis.theory import run_theory_rows

    th = run_theory_rows(received)  # what figure regeneration computes per point
    assert th and th[0]["arm_b"] == "nscl" and th[0]["tau"] == 0.5
    assert not marker.exists()


def test_sweep_summary_aggregate_report_verdicts_run_no_plugin(sweep, evil, tmp_path, capsys):
    plug, marker = evil
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    _set_config(out / "points" / "seed=0", **{"arms.nscl.objective": f"{plug}:fn"})
    from repalign.experiments.sweep import write_summary
    from repalign.experiments.verdicts import main as verdicts_main

    write_summary(out)
    assert (out / "aggregate.csv").is_file() and (out / "comparisons.csv").is_file()
    assert main(["report", str(out)]) == 0
    # figure regeneration: a figure folder holding the point's theory rows, then the verdicts on it
    from repalign.analysis.theory import run_theory_rows

    th = run_theory_rows(out / "points" / "seed=0")
    figs = tmp_path / "figs"
    (figs / "fig3").mkdir(parents=True)
    cols = list(th[0])
    (figs / "fig3" / "fig3_theory.csv").write_text(
        ",".join(cols + ["seed"]) + "\n" + "".join(",".join(str(r[c]) for c in cols) + ",0\n" for r in th))
    assert verdicts_main([str(figs)]) == 0
    assert not marker.exists()


def test_reading_a_config_imports_no_plugin(evil, tmp_path):
    from repalign.config import ConfigError, load_config, validate

    plug, marker = evil
    ref = f"{plug}:fn"
    cfg = load_config(None, tiny_overrides(**{"model.encoder": f"{plug}:tiny", "data.source": f"{plug}:fn"})
                      + [f"arms={{cl: {{objective: cl}}, mine: {{objective: '{ref}'}}}}"])
    validate(cfg)
    assert cfg["arms"]["mine"]["objective"] == ref and not marker.exists()
    with pytest.raises(ConfigError, match=r"config key 'arms\.mine\.objective': file .* does not exist"):
        load_config(None, tiny_overrides() + [f"arms={{mine: {{objective: '{tmp_path}/gone.py:fn'}}}}"])


# ------------------------------------------------------------------ rebuilding needs consent
def test_align_without_consent_one_line_with_consent_works(received, evil, capsys):
    plug, marker = evil
    _set_config(received, **{"arms.nscl.objective": f"{plug}:fn"})
    capsys.readouterr()
    assert main(["align", str(received)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'arms.nscl.objective'" in line and f"{plug}:fn" in line and "--trust-code" in line
    assert "REPALIGN_TRUST_CODE=1" in line
    assert not marker.exists() and not (received / "alignment.csv").exists()
    assert main(["align", str(received), "--trust-code"]) == 0
    assert marker.exists() and (received / "alignment.csv").is_file()  # consent: the plug-in was run


def test_align_consent_by_environment(received, evil, monkeypatch):
    plug, marker = evil
    _set_config(received, **{"arms.nscl.objective": f"{plug}:fn"})
    monkeypatch.setenv("REPALIGN_TRUST_CODE", "1")
    assert main(["align", str(received)]) == 0 and marker.exists()


def test_module_reference_never_resolves_in_the_run_dir(received, evil, monkeypatch, capsys):
    plug, marker = evil
    shutil.copy(plug, received / "payload.py")
    _set_config(received, **{"arms.nscl.objective": "payload:fn"})
    monkeypatch.chdir(received)
    monkeypatch.syspath_prepend(str(received))
    monkeypatch.syspath_prepend("")
    capsys.readouterr()
    assert main(["align", "."]) == 2  # no consent
    assert "--trust-code" in _one_line(capsys.readouterr().err)
    assert main(["align", ".", "--trust-code"]) == 2  # consent, but never from the current / run directory
    line = _one_line(capsys.readouterr().err)
    assert "cannot import 'payload'" in line and "never resolve against the current directory" in line
    assert not marker.exists() and "payload" not in sys.modules


def test_export_builtin_encoder_imports_no_objective(received, evil, capsys):
    plug, marker = evil
    _set_config(received, **{"arms.nscl.objective": f"{plug}:fn"})
    assert main(["export", str(received), "--arm", "nscl"]) == 0
    assert (received / "export" / "nscl.pt").is_file() and not marker.exists()
    plug.unlink()  # the objective's file need not even exist
    assert main(["export", str(received), "--arm", "cl", "--out", str(received / "e2" / "cl")]) == 0
    import repalign

    assert repalign.load_encoder(received, "nscl") is not None and not marker.exists()


def test_export_plugin_encoder_needs_consent(plugin_encoder_run, tmp_path, capsys):
    run, marker = plugin_encoder_run
    marker.unlink()
    got = tmp_path / "got"
    shutil.copytree(run, got)
    capsys.readouterr()
    assert main(["export", str(got), "--arm", "cl"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'model.encoder'" in line and "enc.py:tiny" in line and "--trust-code" in line
    assert not marker.exists() and not (got / "export").exists()
    import repalign
    from repalign.plugins import UntrustedCodeError

    with pytest.raises(UntrustedCodeError, match="model.encoder"):
        repalign.load_encoder(got, "cl")
    assert not marker.exists()
    # the run's own config.yaml: resuming it is rebuilding it, too
    assert main(["train", str(got / "config.yaml"), "--run-dir", str(got), "--resume"]) == 2
    assert "--trust-code" in _one_line(capsys.readouterr().err) and not marker.exists()
    assert main(["export", str(got), "--arm", "cl", "--trust-code"]) == 0
    desc = json.loads((got / "export" / "cl.json").read_text())
    assert desc["feature_dim"] == 8 and marker.exists()
    enc = repalign.load_encoder(got, "cl", trust_code=True)
    assert enc(__import__("torch").zeros(2, desc["channels"], desc["image_size"], desc["image_size"])).shape == (2, 8)


# ------------------------------------------------------------------ CIFAR batches
def _crafted(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"echo pwned > {marker}",))

    return pickle.dumps({"data": Payload(), "labels": [0]})


def test_cifar_batches_restricted_unpickler(tmp_path):
    from repalign.data.sources.cifar import _unpickle
    from repalign.errors import DataError

    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for proto in (2, 3, 4, 5):
        (tmp_path / "b").write_bytes(pickle.dumps({b"data": data, b"labels": [3, 7], b"batch_label": b"training 1",
                                                   b"filenames": [b"a.png", b"b.png"]}, protocol=proto))
        d = _unpickle(tmp_path / "b")
        assert np.array_equal(d["data"], data) and d["labels"] == [3, 7] and d["filenames"] == [b"a.png", b"b.png"]
    # the name numpy < 2 (and the original CIFAR files) use for the array constructor
    raw = pickle.dumps({"data": data, "labels": [1, 2]}, protocol=2).replace(b"numpy._core.multiarray",
                                                                               b"numpy.core.multiarray")
    (tmp_path / "old").write_bytes(raw)
    assert np.array_equal(_unpickle(tmp_path / "old")["data"], data)
    marker = tmp_path / "MARKER"
    for bad, why in ((_crafted(marker), "posix.system"),
                     (pickle.dumps({"data": np.array([1, "x"], dtype=object)}), "holds Python objects"),
                     (pickle.dumps({"data": Path("x")}), "pathlib"),
                     (pickle.dumps([1, 2]), "not a dict")):
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(DataError) as e:
            _unpickle(tmp_path / "bad")
        assert why in str(e.value) and "\n" not in str(e.value) and str(tmp_path / "bad") in str(e.value)
    assert not marker.exists()


def test_crafted_cifar_batch_under_data_root_is_refused_by_align(received, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "MARKER"
    folder = received / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(_crafted(marker))
    _set_config(received, **{"data.source": "cifar10", "data.root": "./data"})
    monkeypatch.chdir(received)
    capsys.readouterr()
    assert main(["align", str(received)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "data_batch_1" in line and "not a CIFAR batch" in line and "nothing in it was run" in line
    assert not marker.exists()


# ------------------------------------------------------------------ checkpoint fallback
def test_corrupt_last_pt_is_warned_by_export_load_encoder_and_align(received, capsys):
    from repalign.training.checkpoint import load_checkpoint

    ck = received / "checkpoints"
    prev_step = load_checkpoint(ck / "last.prev.pt")["step"]
    assert prev_step < load_checkpoint(ck / "last.pt")["step"]
    data = (ck / "last.pt").read_bytes()
    (ck / "last.pt").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["export", str(received), "--arm", "cl"]) == 0
    line = _one_line(capsys.readouterr().err)
    assert "last.pt" in line and "last.prev.pt" in line and f"step {prev_step}" in line and "warning" in line
    assert json.loads((received / "export" / "cl.json").read_text())["step"] == prev_step
    import repalign

    repalign.load_encoder(received, "cl")
    line = _one_line(capsys.readouterr().err)
    assert "last.prev.pt" in line and f"step {prev_step}" in line
    assert main(["align", str(received)]) == 0
    line = _one_line(capsys.readouterr().err, only="repalign: warning")
    assert "last.prev.pt" in line and f"step {prev_step}" in line
    # an intact last.pt: no warning
    (ck / "last.pt").write_bytes(data)
    assert main(["export", str(received), "--arm", "cl"]) == 0 and not capsys.readouterr().err.strip()


def test_sweep_of_own_spec_still_checks_plugins_before_any_point_runs(tmp_path):
    """Validation imports nothing, but a sweep trains the user's own spec: its plug-ins are imported and
    probed for every point before the first one runs (as when validation used to import them)."""
    from repalign.config import ConfigError
    from repalign.experiments import sweep as sw

    (tmp_path / "bad.py").write_text("def two(z, labels):\n    return z.sum()\n")
    spec = sw.load_spec({"base": "demo", "out": str(tmp_path / "out"), "grid": {"seed": [0, 1]},
                         "overrides": tiny_overrides(**FAST) + [f"arms={{cl: {{objective: cl}}, u: {{objective: "
                                                                f"'{tmp_path}/bad.py:two'}}}}"]})
    with pytest.raises(ConfigError, match=r"sweep point 'seed=0'.*'arms\.u\.objective'.*must take \(z, labels"):
        sw.run_sweep(spec, log=lambda s: None)
    assert not (tmp_path / "out" / "points").exists()
