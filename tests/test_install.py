"""Installability: bundled configs as package data, py.typed, a light and fully documented CLI, the wheel."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def test_help_is_light_and_fast():
    """``repalign --help`` and every subcommand's help import neither torch nor matplotlib."""
    code = ("import sys, contextlib, io\n"
            "from repalign.cli import build_parser\n"
            "p = build_parser()\n"
            "for cmd in [[]] + [[c] for c in ('train','align','configs','sweep','reproduce','report','export')]:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: p.parse_args(cmd + ['--help'])\n"
            "        except SystemExit: pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'torchvision'))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    # speed is what the import check above guarantees; wall time is not asserted (timed tests flake on a
    # loaded machine — measured: 0.1 s idle, 0.9–1.5 s with both cores busy)
    r = subprocess.run([sys.executable, "-m", "repalign", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout


def test_every_option_documented_in_plain_text():
    from repalign.cli import build_parser

    p = build_parser()
    subs = _subparsers(p)
    assert {"train", "align", "configs", "sweep", "reproduce", "report", "export"} <= set(subs)
    assert "``" not in (p.description or "")
    for name, sp in subs.items():
        assert sp.description and "``" not in sp.description, f"{name}: no plain-text description"
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help and "``" not in a.help, f"repalign {name} {a.option_strings or a.dest}: no help text"


def test_bundled_configs_are_package_data(tmp_path, monkeypatch, capsys):
    from repalign import load_config
    from repalign.cli import main
    from repalign.config import bundled_config_dir, bundled_configs

    monkeypatch.chdir(tmp_path)  # no ./configs here: names resolve to the package's copy
    assert bundled_config_dir().parent == Path(__import__("repalign").__file__).resolve().parent
    names = bundled_configs()
    assert {"demo", "cifar100_resnet50", "arms/temperature", "sweeps/temperature"} <= set(names)
    assert load_config("demo")["name"] == "demo"
    assert len(load_config("arms/temperature")["arms"]) == 6
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert "demo" in listed and "arms/noise_floor" in listed
    assert (Path(__import__("repalign").__file__).parent / "py.typed").is_file()


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the source tree (the checkout stays untouched)."""
    src = tmp_path / "src_copy"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    shutil.copytree(REPO / "src", src / "src", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", str(src), "-w", str(out)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("repalign-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_contains_configs_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "repalign/py.typed" in names
    want = {f"repalign/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")}
    assert want and want <= names, sorted(want - names)
    assert "repalign/cli.py" in names


@pytest.mark.slow
def test_wheel_installs_and_trains_demo(wheel, tmp_path):
    """A fresh venv (reusing this environment's torch through a .pth line) with the wheel installed,
    not editable: ``repalign train demo train.max_steps=2`` runs from a folder without configs/."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file() \
            and not os.environ.get("REPALIGN_DATA"):
        pytest.skip("Fashion-MNIST not installed (the demo's data)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages (torch, numpy, ...) after the venv's own; .pth files there are not run,
    # so the editable install of the checkout stays invisible
    Path(purelib, "_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: never uninstall the running environment's (editable) repalign
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    "--disable-pip-version-check", "--prefix", str(venv), str(wheel)], check=True)
    from importlib.metadata import distribution

    assert distribution("repalign") is not None  # still installed here
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([str(py), "-c", "import repalign; print(repalign.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where
    # the console script (its shebang names the installing interpreter, so run it with the venv's)
    r = subprocess.run([str(py), str(venv / "bin" / "repalign"), "train", "demo", "train.max_steps=2", "logging.progress=false",
                        "eval.max_train=64", "eval.max_test=64", "data.max_per_class=30", "data.test_max_per_class=10",
                        "--run-dir", str(work / "run")], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (work / "run" / "checkpoints" / "last.pt").is_file()
    assert "config file" not in r.stderr


def test_lazy_names_of_experiments_resolve():
    """Every name ``repalign.experiments`` exports lazily points at a module that exists."""
    import repalign.experiments as e

    for name in e.__all__:
        assert getattr(e, name) is not None, name
