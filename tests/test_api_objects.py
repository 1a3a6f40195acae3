"""Issue 20, item 4: objects given to ``repalign.train`` across processes — an importable encoder is
recorded as an import reference and rebuilt by a later process (with consent); an in-memory one is
named in one line by ``export``/``load_encoder`` of the arm concerned, and taken back with ``encoder=``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

TINY = ["train.epochs=1", "train.batch_size=16", "train.device=cpu", "eval.every=1", "eval.max_train=16",
        "eval.max_test=16", "eval.knn_k=3", "logging.progress=false", "model.projector_hidden=8",
        "model.projector_out=4", "data.max_per_class=8", "data.test_max_per_class=4"]

ENC_SRC = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyEnc(nn.Module):
        def __init__(self, channels, image_size, **kw):
            super().__init__()
            self.conv = nn.Conv2d(channels, 4, 3, 2, 1)
            self.feature_dim = 4

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    def my_loss(z, labels, temperature):
        zn = torch.nn.functional.normalize(z, dim=-1)
        return -(zn[0] * zn[1]).sum(-1).mean()
''')


def _config() -> dict:
    return {"data": {"source": "strokes", "num_classes": 2}, "arms": {"cl": {"objective": "cl"}}}


def _sub(code: str, tmp_path: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def _trained_encoder_state(run: Path, arm: str) -> dict[str, torch.Tensor]:
    from repalign.training.checkpoint import load_latest

    state, _u, _p = load_latest(run / "checkpoints" / "last.pt")
    pre = "net.encoder."
    return {k[len(pre):]: v for k, v in state["arms"][arm]["module"].items() if k.startswith(pre)}


def test_importable_objects_rebuilt_in_a_subprocess(tmp_path, monkeypatch):
    import repalign

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "nb_plug.py").write_text(ENC_SRC)
    monkeypatch.syspath_prepend(str(mods))
    import nb_plug  # noqa: E402

    run = repalign.train(_config(), encoder=nb_plug.TinyEnc, objectives={"mine": nb_plug.my_loss},
                         run_dir=tmp_path / "run", overrides=TINY)
    text = (run / "config.yaml").read_text()
    assert "nb_plug:TinyEnc" in text and "nb_plug:my_loss" in text and "python:" not in text
    ref = _trained_encoder_state(run, "mine")
    torch.save(ref, tmp_path / "ref.pt")
    code = textwrap.dedent(f'''
        import sys, torch, repalign
        from repalign.export import export_encoder
        run = {str(run)!r}
        enc = repalign.load_encoder(run, "mine", trust_code=True)
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        sd = enc.state_dict()
        assert sorted(sd) == sorted(ref), (sorted(sd), sorted(ref))
        assert all(torch.equal(sd[k], ref[k]) for k in ref)
        w = export_encoder(run, "mine", out={str(tmp_path / "exp" / "mine")!r}, trust_code=True)
        ex = torch.load(w)
        plain = {{k[4:] if k.startswith("net.") else k: v for k, v in ref.items()}}  # the wrapper's net. removed
        assert sorted(ex) == sorted(plain) and all(torch.equal(ex[k], plain[k]) for k in plain)
        print("OK", type(enc.net).__name__)
    ''')
    r = _sub(code, tmp_path, {"PYTHONPATH": str(mods) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "OK TinyEnc" in r.stdout
    desc = json.loads((tmp_path / "exp" / "mine.json").read_text())
    assert desc["feature_dim"] == 4
    # a later process without consent is refused in one line naming model.encoder (a plug-in import)
    r = _sub(f"import repalign; repalign.load_encoder({str(run)!r}, 'mine')", tmp_path,
             {"PYTHONPATH": str(mods), "REPALIGN_TRUST_CODE": "0"})
    assert r.returncode != 0 and "model.encoder" in r.stderr and "trust" in r.stderr.lower()


def test_in_memory_objects_named_then_taken_back(tmp_path):
    import repalign

    class Enc(nn.Module):  # a local class: no import reference
        def __init__(self, channels, image_size, **kw):
            super().__init__()
            self.lin = nn.Linear(channels * image_size * image_size, 3)
            self.feature_dim = 3

        def forward(self, x):
            return self.lin(x.flatten(1))

    def local_loss(z, labels, temperature):
        zn = torch.nn.functional.normalize(z, dim=-1)
        return -(zn[0] * zn[1]).sum(-1).mean()

    cfg = {"data": {"source": "strokes", "num_classes": 2},
           "arms": {"cl": {"objective": "cl"}, "barlow": {"objective": "nscl"}}}
    run = repalign.train(cfg, encoder=Enc, objectives={"mine": local_loss}, run_dir=tmp_path / "run",
                         overrides=TINY)
    assert "python:Enc" in (run / "config.yaml").read_text()
    ref = _trained_encoder_state(run, "cl")
    # another process: one line naming the arm asked for and model.encoder, never another arm's key
    r = subprocess.run([sys.executable, "-m", "repalign", "export", str(run), "--arm", "cl",
                        "--out", str(tmp_path / "e" / "cl")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("repalign: error")]
    assert len(err) == 1 and "'cl'" in err[0] and "model.encoder" in err[0] and "encoder=" in err[0]
    assert "barlow" not in r.stderr and "mine" not in r.stderr
    r = _sub(f"import repalign; repalign.load_encoder({str(run)!r}, 'cl')", tmp_path, {})
    assert r.returncode != 0 and "encoder=" in r.stderr.strip().splitlines()[-1]
    # the objects given back: the trained weights, exactly (this process still has them registered,
    # so clear the registry to act as a later process)
    from repalign import plugins

    plugins.IN_PROCESS.pop("python:Enc", None)
    enc = repalign.load_encoder(run, "cl", encoder=Enc)
    sd = enc.state_dict()
    assert sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    with pytest.raises(Exception, match="model.encoder"):
        plugins.IN_PROCESS.pop("python:Enc", None)
        repalign.load_encoder(run, "cl")
