"""Run directory: resolved config, provenance (seed, versions, git revision), metrics.jsonl.

Layout (see docs/design.md)::

    RUN_DIR/config.yaml  meta.json  metrics.jsonl  checkpoints/  alignment.csv
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml


def git_revision(path: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` (with ``+dirty`` if the tree has changes) of the repalign checkout."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not rev:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    from repalign import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "repalign": __version__,
            "platform": platform.platform()}


def _clean(v: Any) -> Any:
    """JSON-safe: non-finite floats become strings ("nan", "inf") so files stay valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Mapping):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        return _clean(v.item())
    return v


class RunDir:
    """A run directory. ``log(row)`` appends one JSON line to ``metrics.jsonl`` (flushed)."""

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        self.write = write
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            self.ckpt_dir.mkdir(exist_ok=True)

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, cfg: Mapping[str, Any]) -> None:
        if self.write:
            (self.path / "config.yaml").write_text(yaml.safe_dump(dict(cfg), sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_meta(self, extra: Mapping[str, Any]) -> None:
        if not self.write:
            return
        meta = {"versions": versions(), "git_revision": git_revision(), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hostname": platform.node(),
                "pid": os.getpid(), **extra}
        (self.path / "meta.json").write_text(json.dumps(_clean(meta), indent=2))

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def log(self, row: Mapping[str, Any]) -> None:
        if not self.write:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")

    def truncate_metrics_after(self, step: int) -> None:
        """On resume from a checkpoint taken after ``step`` steps: drop rows written later.

        ``train``/``lossgap`` rows carry the 0-based index of their step, so those with
        ``step >= step`` are dropped; evaluation rows carry the number of steps done, so
        those with ``step > step`` are dropped. The resumed run rewrites them identically.
        """
        if not self.write or not self.metrics_path.exists():
            return

        def keep_row(row: Mapping[str, Any]) -> bool:
            s = row.get("step", 0)
            return s < step if row.get("kind") in ("train", "lossgap") else s <= step

        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and keep_row(json.loads(line))]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, self.metrics_path)

    def rows(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        return read_metrics(self.metrics_path, kind)


def read_metrics(path: str | Path, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Iterate the rows of a ``metrics.jsonl`` (optionally only one ``kind``)."""
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if kind is None or row.get("kind") == kind:
                    yield row
