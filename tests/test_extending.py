"""Plug-ins by name (objectives, encoders, data sources), the Python entry, export; docs/extending.md runs."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from repalign.cli import main
from repalign.config import ConfigError, load_config
from repalign.training import CoupledTrainer

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks() -> list[tuple[str, str]]:
    """(kind, text) of the doc's marked blocks: kind is a file name or 'run'."""
    pat = re.compile(r"<!-- (file: (\S+)|run) -->\n```\w*\n(.*?)```", re.S)
    return [(m.group(2) or "run", m.group(3)) for m in pat.finditer(DOC.read_text())]


@pytest.fixture
def plugdir(tmp_path, monkeypatch):
    """The doc's files written to a scratch folder that is the working directory and on sys.path."""
    for kind, text in _blocks():
        if kind != "run":
            (tmp_path / kind).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for m in ("my_losses", "my_encoder", "my_data"):
        sys.modules.pop(m, None)


def test_docs_extending_examples_run(plugdir):
    runs = [t for k, t in _blocks() if k == "run"]
    assert len(runs) >= 2 and any(k == "my_losses.py" for k, _ in _blocks())
    for code in runs:
        exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    rows = [json.loads(x) for x in (plugdir / "runs/mine/metrics.jsonl").read_text().splitlines()]
    objs = {r["arm"]: r["objective"] for r in rows if r["kind"] == "train"}
    assert objs == {"cl": "cl", "vic": "vicreg", "au": "align_uniform"}
    assert not any(r["kind"] == "lossgap" and r["arm"] != "cl" for r in rows)  # user objectives: no loss-gap row
    cfg_text = (plugdir / "runs/mine/config.yaml").read_text()
    assert f"{plugdir}/my_losses.py:vicreg" in cfg_text and f"{plugdir}/my_encoder.py:tiny_mlp" in cfg_text
    html = (plugdir / "runs/mine/report/report.html").read_text()
    assert "vicreg" in html and "align_uniform" in html
    assert (plugdir / "runs/mine/alignment.csv").read_text().count("vic") > 0


def _plugin_cfg(plugdir: Path, **extra):
    return load_config(None, tiny_overrides(**{"model.encoder": "my_encoder.py:tiny_mlp", "train.epochs": 3,
                                               "eval.every": 1, **extra})
                       + ["arms={cl: {objective: cl}, vic: {objective: my_losses.py:vicreg, options: {sim: 10.0}}}"])


def test_plugin_run_resumes_bit_identically_from_config_yaml(plugdir, tmp_path):
    cfg = _plugin_cfg(plugdir)
    full = CoupledTrainer(cfg, tmp_path / "full", evaluator=None)
    full.fit()
    part = CoupledTrainer(cfg, tmp_path / "part", evaluator=None)
    part.fit(stop_after=part.steps_per_epoch + 2)
    (tmp_path / "elsewhere").mkdir()
    import os

    os.chdir(tmp_path / "elsewhere")  # the stored absolute references are found from anywhere
    rcfg = load_config(tmp_path / "part" / "config.yaml")
    resumed = CoupledTrainer(rcfg, tmp_path / "part", resume=True, evaluator=None)
    resumed.fit()
    for a, b in zip(full.arm_states, resumed.arm_states):
        sa, sb = a.module.state_dict(), b.module.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), a.name


def test_bad_references_one_line_each(plugdir):
    (plugdir / "bad.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def two_args(z, labels):\n    return z.sum()\n"
        "def vector(z, labels, temperature):\n    return z.sum(-1)\n"
        "def image_out(channels, image_size):\n    return nn.Conv2d(channels, 4, 3)\n"
        "x = 3\n")
    cases = {
        "arms.u.objective": ("arms={u: {objective: nowhere_pkg.mod:f}}", "cannot import 'nowhere_pkg.mod'"),
        "arms.u.objective ": ("arms={u: {objective: bad.py:missing}}", "has no attribute 'missing'"),
        "arms.u.objective  ": ("arms={u: {objective: bad.py:two_args}}", "must take (z, labels, temperature)"),
        "arms.u.objective   ": ("arms={u: {objective: bad.py:vector}}", "must return a scalar loss tensor"),
        "arms.u.objective    ": ("arms={u: {objective: bad.py:x}}", "not an Objective or a loss function"),
        "arms.u.objective     ": ("arms={u: {objective: no_such.py:f}}", "does not exist"),
    }
    by_name = ("nowhere_pkg.mod:f", "no_such.py:f")  # refused when the config is read (name and file)
    for key, (ov, want) in cases.items():
        with pytest.raises(ConfigError) as e:
            if any(b in ov for b in by_name):
                load_config(None, tiny_overrides() + [ov])
            else:  # reading a config imports no plug-in (issue 17): the import checks run when the run is built
                CoupledTrainer(load_config(None, tiny_overrides() + [ov]), None, evaluator=None)
        msg = str(e.value)
        assert "\n" not in msg and f"config key '{key.strip()}'" in msg and want in msg, msg
    for ref, want in (("bad.py:image_out", "must map images [N, C, H, W] to features [N, F]"),
                      ("bad.py:x", "not a callable"), ("torchvision:no_such_net", "has no model")):
        cfg = load_config(None, tiny_overrides(**{"model.encoder": ref}))
        with pytest.raises(ConfigError) as e:
            CoupledTrainer(cfg, None, evaluator=None)
        assert "\n" not in str(e.value) and "config key 'model.encoder'" in str(e.value) and want in str(e.value)
    with pytest.raises(ConfigError, match="config key 'model.encoder'"):
        load_config(None, tiny_overrides(**{"model.encoder": "resnet99"}))
    cfg = load_config(None, tiny_overrides(**{"data.source": "bad.py:x"}))
    with pytest.raises(Exception) as e:
        CoupledTrainer(cfg, None, evaluator=None)
    assert "config key 'data.source'" in str(e.value) and "\n" not in str(e.value)


def test_data_source_reference_from_file(plugdir, tmp_path):
    cfg = load_config(None, tiny_overrides(**{"data.source": "my_data.py:blobs", "data.max_per_class": "null",
                                              "data.test_max_per_class": "null", "train.batch_size": 16})
                      + ["data.options={n: 48}"])
    tr = CoupledTrainer(cfg, None, evaluator=None)
    assert len(tr.train_source) == 48 and tr.train_source.class_names == ["tl", "tr", "bl", "br"]
    assert tr.channels == 1 and tr.image_size == 8


def test_torchvision_resnet18_encoder_exports_into_torchvision(tmp_path):
    import torchvision

    cfg = load_config(None, tiny_overrides(**{"model.encoder": "torchvision:resnet18", "model.cifar_stem": True,
                                              "train.epochs": 1, "train.batch_size": 16, "data.max_per_class": 4,
                                              "data.test_max_per_class": 2, "eval.max_train": 16, "eval.max_test": 16})
                      + ["arms={cl: {objective: cl}, nscl: {objective: nscl}}"])
    tr = CoupledTrainer(cfg, tmp_path / "run", evaluator=None)
    tr.fit()
    assert main(["export", str(tmp_path / "run"), "--arm", "nscl"]) == 0
    w = tmp_path / "run" / "export" / "nscl.pt"
    desc = json.loads(w.with_suffix(".json").read_text())
    assert desc["torchvision"] == "resnet18" and desc["feature_dim"] == 512 and desc["cifar_stem"]
    sd = torch.load(w, weights_only=True)
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = torch.nn.Conv2d(desc["channels"], 64, 3, 1, 1, bias=False)  # the documented stem change
    net.maxpool = torch.nn.Identity()
    res = net.load_state_dict(sd, strict=False)
    assert sorted(res.missing_keys) == ["fc.bias", "fc.weight"] and not res.unexpected_keys
    assert w.stat().st_size < 0.3 * (tmp_path / "run" / "checkpoints" / "last.pt").stat().st_size
    import repalign

    enc = repalign.load_encoder(tmp_path / "run", "nscl")
    x = torch.rand(3, desc["channels"], desc["image_size"], desc["image_size"])
    net.fc = torch.nn.Identity()
    net.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), net(x), atol=1e-6)
        trained = tr.arm_states[1].module.eval().net.encoder
        assert torch.equal(enc(x), trained(x))


def test_python_entry_in_memory_dataset(plugdir, tmp_path):
    import repalign
    from my_data import Blobs
    from my_losses import align_uniform

    run = repalign.train({"data": {"augment": "simclr_gray"}, "arms": {"cl": {"objective": "cl"}}},
                         objectives={"au": align_uniform}, sources=(Blobs("train", 32), Blobs("test", 16)),
                         run_dir=tmp_path / "nb",
                         overrides=["train.epochs=1", "train.batch_size=16", "train.device=cpu", "eval.every=1",
                                    "eval.max_train=16", "eval.max_test=16", "eval.knn_k=3", "logging.progress=false",
                                    "model.width=4", "model.projector_hidden=8", "model.projector_out=4"])
    assert run == tmp_path / "nb"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["arms"]["au"]["objective"] == "align_uniform" and meta["train_size"] == 32
    assert "my_losses:align_uniform" in (run / "config.yaml").read_text()  # importable: stored as a reference
