"""The API reference (mkdocs + mkdocstrings, ``mkdocs build --strict`` offline) and the static types of the
public top-level names (mypy on a user script)."""
from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = ("losses", "metrics", "evaluation", "objectives")


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = _mkdocs(REPO / "mkdocs.yml", out)
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def _ids(html: Path) -> set[str]:
    return set(re.findall(r'id="(repalign\.[\w.]+)"', html.read_text(encoding="utf-8")))


def test_every_public_name_documented(site):
    for m in MODULES:
        ids = _ids(site / "reference" / f"{m}.html")
        mod = importlib.import_module(f"repalign.{m}")
        # a name that is also its submodule's name (metrics.rsa, evaluation.cdnv) is documented as m.name.name
        missing = [n for n in mod.__all__ if f"repalign.{m}.{n}" not in ids and not any(i.endswith(f".{n}.{n}") for i in ids)]
        assert not missing, f"repalign.{m}: not in the reference: {missing}"
    import repalign

    all_ids = set().union(*(_ids(p) for p in (site / "reference").glob("*.html")))
    missing = [n for n in repalign.__all__ if n != "__version__" and not any(i.split(".")[-1] == n for i in all_ids)]
    assert not missing, f"repalign: not in the reference: {missing}"


def test_config_page_lists_every_schema_key(site):
    from repalign.config import ARM_KEYS, SCHEMA

    html = (site / "reference" / "config.html").read_text(encoding="utf-8")
    missing = [k for k in SCHEMA if f"<code>{k}</code>" not in html]
    assert not missing, missing
    assert all(f"<code>{a}</code>" in html for a in ARM_KEYS)
    assert "<code>cpu</code>" in html and "<code>batched</code>" in html  # data.augment_device's choices


def test_cli_page_lists_every_command_and_option(site):
    import argparse

    from repalign.cli import build_parser

    html = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    p = build_parser()
    assert "--version" in html
    (sub,) = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sp in sub.choices.items():
        assert f"repalign {name}</h2>" in html, name
        for a in sp._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt in html, f"repalign {name} {opt}"


def test_existing_guides_are_pages(site):
    for md in REPO.glob("docs/*.md"):
        assert (site / md.with_suffix(".html").name).is_file(), md.name
    assert (site / "tutorial.ipynb").is_file()
    assert not (site / "gen_ref.py").exists()


def test_broken_reference_fails_the_build(tmp_path):
    """--strict turns an unresolvable ``:::`` identifier into a failed build."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# x\n\n::: repalign.metrics.no_such_function\n")
    cfg = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    cfg = cfg[:cfg.index("\nnav:")] + "\n"  # same plugins and hook, one page
    cfg = cfg.replace("docs_dir: docs", f"docs_dir: {docs}").replace("  - docs/gen_ref.py", f"  - {REPO / 'docs' / 'gen_ref.py'}")
    cfg = cfg.replace("paths: [src]", f"paths: [{REPO / 'src'}]")
    (tmp_path / "mkdocs.yml").write_text(cfg)
    r = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0 and "no_such_function" in r.stderr, r.stderr[-2000:]


USER_SCRIPT = '''
import torch
import repalign

x = torch.randn(32, 8)
reveal_type(repalign.linear_cka(x, x))
reveal_type(repalign.train)
reveal_type(repalign.rsa)
reveal_type(repalign.similarity_gap)
reveal_type(repalign.weight_gap)
reveal_type(repalign.load_encoder)
reveal_type(repalign.build_model)
reveal_type(repalign.build_source)
reveal_type(repalign.derive_seed(0, "a"))
reveal_type(repalign.CoupledTrainer)
reveal_type(repalign.ntxent_loss)
reveal_type(repalign.ContrastiveLoss)
reveal_type(repalign.compare)
reveal_type(repalign.load_config)
'''


def test_top_level_names_are_typed_for_mypy(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--no-incremental",
                        "--cache-dir", str(tmp_path / "cache"), "--python-executable", sys.executable,
                        "--no-error-summary", str(script)], capture_output=True, text=True, cwd=tmp_path)
    revealed = re.findall(r'Revealed type is "(.*)"', r.stdout)
    assert len(revealed) == USER_SCRIPT.count("reveal_type"), r.stdout + r.stderr
    assert not [t for t in revealed if t == "Any"], r.stdout
    expect = ["float", "-> pathlib.Path", "RSAResult", "dict[str, float]", "dict[str, Any]", "torch.nn.modules.module.Module",
              "repalign.models.ContrastiveNet", "ImageSource", "int", "CoupledTrainer", "torch._tensor.Tensor",
              "ContrastiveLoss", "repalign.compare.api.Comparison", "dict[str, Any]"]
    for i, (t, want) in enumerate(zip(revealed, expect)):
        assert want in t, f"reveal {i}: {t!r} lacks {want!r}"
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert not errors, "\n".join(errors)


def test_generated_pages_leave_no_files(site):
    assert not (REPO / "docs" / "reference" / "config.md").exists()
    assert not (REPO / "docs" / "reference" / "cli.md").exists()
    assert shutil.which("git") is None or not subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "site"], capture_output=True, text=True).stdout
