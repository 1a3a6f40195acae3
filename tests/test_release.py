"""Release identity: one version (pyproject → package metadata → ``__version__`` → ``--version``),
LICENSE, CITATION.cff valid against the official CFF 1.2.0 schema, CHANGELOG, the wheel's torch range,
and no untracked build output after ``pip wheel``."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The CFF 1.2.0 JSON schema, vendored from github.com/citation-file-format/citation-file-format
# (schema.json at version 1.2.0; CC BY 4.0) so the check needs no network.
CFF_SCHEMA = Path(__file__).parent / "data" / "cff-schema-1.2.0.json"


def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    assert m, "no version in pyproject.toml"
    return m.group(1)


def test_version_has_one_source():
    import repalign

    v = version("repalign")
    assert v == _pyproject_version(), "installed metadata differs from pyproject.toml: reinstall (make install)"
    assert repalign.__version__ == v
    assert re.fullmatch(r"\d+\.\d+\.\d+", v), f"{v!r} is not a release number (MAJOR.MINOR.PATCH)"
    assert v != "0.1.0"  # bumped to a release number for this round
    r = subprocess.run([sys.executable, "-m", "repalign", "--version"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"repalign {v}"


def test_license_is_mit_and_matches_pyproject():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c)" in text and "the repalign authors" in text
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(CFF_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$id"].endswith("/1.2.0/schema.json")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _cff() -> dict:
    # CFF is YAML; the schema validates its JSON form (dates as strings: safe_load would make datetime.date)
    text = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    data = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar a string, as cffconvert reads it
    # numbers the schema types as integers (year, month) back to int
    for ref in data.get("references", []):
        for k in ("year", "month"):
            if k in ref:
                ref[k] = int(ref[k])
    return data


def test_citation_cff_is_valid_cff_1_2():
    v = _validator()
    cff = _cff()
    errors = sorted(v.iter_errors(cff), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert cff["cff-version"] == "1.2.0"
    assert cff["version"] == version("repalign")
    assert cff["license"] == "MIT"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cff["date-released"])
    refs = {r["url"]: r for r in cff["references"]}
    paper = refs["https://arxiv.org/abs/2510.08852"]
    pred = refs["https://arxiv.org/abs/2506.04411"]
    assert paper["title"] == "On the Alignment Between Supervised and Self-Supervised Contrastive Learning"
    assert [a["family-names"] for a in paper["authors"]] == ["Luthra", "Mishra", "Galanti"]
    assert pred["title"] == "Self-Supervised Contrastive Learning is Approximately Supervised Contrastive Learning"
    assert [a["family-names"] for a in pred["authors"]] == ["Luthra", "Yang", "Galanti"]


def test_cff_check_can_fail():
    """The schema check rejects what CFF 1.2 rejects: an unknown key, a missing required key, a bad date."""
    v = _validator()
    good = _cff()
    bad_key = copy.deepcopy(good) | {"homepage": "x"}
    no_title = {k: val for k, val in copy.deepcopy(good).items() if k != "title"}
    bad_ref = copy.deepcopy(good)
    del bad_ref["references"][0]["authors"]
    bad_date = copy.deepcopy(good) | {"date-released": "2 Dec 2026"}
    for bad in (bad_key, no_title, bad_ref, bad_date):
        assert list(v.iter_errors(bad)), bad


def test_changelog_keep_a_changelog():
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog") and "Keep a Changelog" in text
    v = version("repalign")
    heads = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?", text, re.M)
    names = [h[0] for h in heads]
    assert names[0] == "Unreleased" and v in names and "0.1.0" in names
    assert all(date for name, date in heads if name != "Unreleased"), "a release section without a date"
    allowed = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
    subs = set(re.findall(r"^### (.+)$", text, re.M))
    assert subs and subs <= allowed, subs - allowed
    date = dict(heads)[v]
    assert _cff()["date-released"] == date  # the citation names the release it describes


def test_torch_requirement_is_an_open_range():
    from packaging.requirements import Requirement

    import torch

    reqs = {Requirement(r).name: Requirement(r) for r in requires("repalign") or [] if "extra ==" not in r}
    for name, current in (("torch", torch.__version__), ("torchvision", None)):
        spec = reqs[name].specifier
        assert not any(s.operator in ("<", "<=", "==", "~=") for s in spec), f"{name}: upper pin {spec}"
        assert spec.contains("99.0.0"), f"{name} {spec} blocks newer releases"
        if current is not None:
            assert spec.contains(current.split("+")[0])
    assert not reqs["torch"].specifier.contains("2.0.0")  # the lower bound stays


def test_pip_wheel_leaves_no_untracked_files(tmp_path):
    """``pip wheel .`` in a checkout writes build/ and *.egg-info; .gitignore covers them."""
    if shutil.which("git") is None:
        pytest.skip("git not available")
    src = tmp_path / "checkout"
    src.mkdir()
    for f in ("pyproject.toml", "README.md", "LICENSE", ".gitignore"):
        shutil.copy(REPO / f, src / f)
    shutil.copytree(REPO / "src", src / "src", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "tree"], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", ".", "-w", str(tmp_path / "wheel")],
                       cwd=src, capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp_path / "wheel").glob("repalign-*.whl")
    assert version("repalign") in whl.name
    assert (src / "build").exists()  # the litter exists (so the check below means something) ...
    status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=all"], capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status  # ... and git does not see it
    import zipfile

    names = zipfile.ZipFile(whl).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
