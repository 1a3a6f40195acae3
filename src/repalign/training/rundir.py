"""Run directory: resolved config, provenance (seed, versions, git revision), metrics.jsonl.

Layout (see docs/design.md)::

    RUN_DIR/.lock  config.yaml  meta.json  metrics.jsonl  checkpoints/  alignment.csv  report/
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from repalign.errors import RunDirError, name_file
from repalign.faults import fault_point
from repalign.training.lock import RunLock


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
    """A run directory. ``log(row)`` appends one JSON line to ``metrics.jsonl`` (flushed per row).

    ``write=True`` takes the directory's exclusive lock (:class:`~repalign.training.lock.RunLock`;
    re-entrant within a process, released by :meth:`close`), creates ``checkpoints/``, removes temp
    files a killed writer left behind and drops a torn last line of ``metrics.jsonl`` so that
    appended rows never glue onto it.
    """

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        self.write = write
        self.lock: RunLock | None = None
        if write:
            self.lock = RunLock(self.path).acquire()
            try:
                self.ckpt_dir.mkdir(exist_ok=True)
                self.remove_orphans()
                self._repair_tail()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Release the lock taken by ``write=True`` (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def remove_orphans(self) -> list[Path]:
        """Delete temp files (``.<name>.tmp<pid>``) of killed writers in the run directory and
        ``checkpoints/``; only call while holding the lock."""
        from repalign.training.checkpoint import remove_orphan_temps

        return remove_orphan_temps(self.path) + remove_orphan_temps(self.ckpt_dir)

    def _repair_tail(self) -> None:
        p = self.metrics_path
        if not p.exists() or p.stat().st_size == 0:
            return
        with open(p, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
        self._rewrite(list(read_metrics(p)))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        from repalign.training.checkpoint import write_atomic

        write_atomic(self.metrics_path, "".join(json.dumps(_clean(r)) + "\n" for r in rows).encode())

    def write_config(self, cfg: Mapping[str, Any]) -> None:
        """Write ``config.yaml``; its fingerprint (:func:`repalign.fingerprint.record`) goes into the
        meta.json :meth:`write_meta` writes next."""
        if self.write:
            from repalign.fingerprint import record

            self._fingerprint = record(cfg)
            try:
                (self.path / "config.yaml").write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
            except OSError as e:
                raise name_file(e, self.path / "config.yaml")

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_meta(self, extra: Mapping[str, Any]) -> None:
        if not self.write:
            return
        meta = {"versions": versions(), "git_revision": git_revision(), "argv": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hostname": platform.node(),
                "pid": os.getpid(), **extra}
        if getattr(self, "_fingerprint", None) is not None and "config_fingerprint" not in meta:
            meta["config_fingerprint"] = self._fingerprint
        try:
            (self.path / "meta.json").write_text(json.dumps(_clean(meta), indent=2))
        except OSError as e:
            raise name_file(e, self.path / "meta.json")

    def read_meta(self) -> dict[str, Any]:
        return json.loads((self.path / "meta.json").read_text())

    def recreate_meta(self, meta: Callable[[], Mapping[str, Any]], checkpoint: Path, step: int,
                      stored: Any = None) -> bool:
        """On ``--resume``: write a missing ``meta.json`` again (else the run stays unexportable), from
        ``meta()`` (the trainer's provenance, rebuilt from ``config.yaml``) and the fingerprint of
        ``config.yaml`` recomputed now — checked against ``stored``, the fingerprint the checkpoint holds
        if it holds one (``state["config_fingerprint"]``; a mismatch: :class:`~repalign.errors.RunDirError`).
        One warning on stderr says so. Returns whether it wrote one."""
        p = self.path / "meta.json"
        if not self.write or p.exists():
            return False
        from repalign.fingerprint import record

        fp = record(self.read_config())
        if isinstance(stored, Mapping):
            stored = stored.get("sha256")
        if stored is not None and stored != fp.get("sha256"):
            raise RunDirError(f"{p} is missing and {checkpoint.name} was written under config fingerprint "
                              f"{str(stored)[:12]}…, not that of config.yaml now ({fp['sha256'][:12]}…); "
                              "config.yaml was changed — restore it, or start a new run")
        self._fingerprint = fp
        self.write_meta({**meta(), "meta_recreated": f"on resume from {checkpoint.name} at step {step}"})
        print(f"repalign: warning: {p} was missing; recreated from config.yaml and {checkpoint.name} (step {step}); "
              "its config fingerprint is recomputed (plug-in file hashes are those of the files now), its "
              "provenance (versions, git revision, host, start time) is this resume's", file=sys.stderr)
        return True

    def log(self, row: Mapping[str, Any]) -> None:
        if not self.write:
            return
        line = json.dumps(_clean(row)) + "\n"
        try:
            fault_point("metrics.row")
            with open(self.metrics_path, "a") as f:
                if os.environ.get("REPALIGN_FAULT"):  # tests: a kill or a full disk half-way through a row
                    f.write(line[: len(line) // 2])
                    f.flush()
                    fault_point("metrics.torn")
                    line = line[len(line) // 2:]
                f.write(line)
        except OSError as e:  # a full disk: the one line names metrics.jsonl
            raise name_file(e, self.metrics_path)

    def sync(self) -> None:
        """fsync ``metrics.jsonl`` (called before each checkpoint, so the rows it covers are on disk)."""
        if self.write and self.metrics_path.exists():
            with open(self.metrics_path, "rb+") as f:
                os.fsync(f.fileno())

    def truncate_metrics_after(self, step: int) -> None:
        """On resume from a checkpoint taken after ``step`` steps: drop rows written later.

        ``train``/``lossgap`` rows carry the 0-based index of their step, so those with
        ``step >= step`` are dropped; evaluation rows carry the number of steps done, so
        those with ``step > step`` are dropped. The resumed run rewrites them identically.
        A torn last line (a writer killed mid-row) is dropped with a warning.
        """
        if not self.write or not self.metrics_path.exists():
            return

        def keep_row(row: Mapping[str, Any]) -> bool:
            s = row.get("step", 0)
            return s < step if row.get("kind") in ("train", "lossgap") else s <= step

        self._rewrite([r for r in read_metrics(self.metrics_path) if keep_row(r)])

    def rows(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        return read_metrics(self.metrics_path, kind)


def read_metrics(path: str | Path, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Iterate the rows of a ``metrics.jsonl`` (optionally only one ``kind``).

    The one reader of metrics files (resume, report, align, sweep summaries). A torn *last* line
    — a writer killed or out of disk space in the middle of a row — is dropped with a warning on
    stderr; a bad line anywhere else raises :class:`~repalign.errors.RunDirError` naming the file
    and line.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    last = max((i for i, x in enumerate(lines) if x.strip()), default=-1)
    for i, raw in enumerate(lines[: last + 1]):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if i == last:
                print(f"repalign: warning: {path}: dropped a torn last line ({len(raw)} bytes; a writer was "
                      "killed or ran out of disk space mid-row)", file=sys.stderr)
                return
            raise RunDirError(f"{path}: line {i + 1} is not a valid JSON row ({str(e).splitlines()[0]})") from None
        if kind is None or row.get("kind") == kind:
            yield row


#: What repalign writes into a run directory (``--overwrite`` deletes these and nothing else).
#: Directory entries map to the patterns allowed inside them (``None``: anything).
RUN_FILES: dict[str, tuple[str, ...] | None] = {
    "config.yaml": (), "meta.json": (), "metrics.jsonl": (), "alignment.csv": (), "quality.csv": (),
    "DONE": (), ".lock": (), "layerwise_*.csv": (), "layerwise_*.png": (), ".*.tmp*": (), "metrics.tmp": (),
    "checkpoints": ("last.pt", "last.prev.pt", "*.sha256", "epoch_*.pt", "step_*.pt", ".*.tmp*"),
    "report": ("report.html", "*.png", ".*.tmp*"), ".report.tmp*": None, ".report.old*": None,
    "export": ("*.pt", "*.safetensors", "*.json"),  # repalign export's default RUN_DIR/export/<arm>
    "tensorboard": None, "wandb": None,
}


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    for pat in patterns:
        if fnmatch.fnmatchcase(name, pat):
            return pat
    return None


def foreign_entries(path: str | Path) -> list[Path]:
    """Files and folders in a run directory that repalign did not write (see :data:`RUN_FILES`)."""
    path = Path(path)
    out: list[Path] = []
    if not path.is_dir():
        return out
    for p in sorted(path.iterdir()):
        pat = _matches(p.name, RUN_FILES)
        if pat is None:
            out.append(p)
            continue
        inner = RUN_FILES[pat]
        if p.is_dir():
            if inner == ():
                out.append(p)
            elif inner is not None:
                out += [q for q in sorted(p.rglob("*")) if q.is_file() and _matches(q.name, inner) is None
                        or q.is_dir()]
        elif inner:  # a file where repalign writes a folder
            out.append(p)
    return out


def clear_run_dir(path: str | Path, everything: bool = False) -> None:
    """Delete what repalign wrote into ``path`` (keeping the lock file). Anything else makes it
    refuse with :class:`~repalign.errors.RunDirError` unless ``everything`` (``--overwrite=all``)."""
    path = Path(path)
    if not path.is_dir():
        return
    if not everything:
        foreign = foreign_entries(path)
        if foreign:
            names = ", ".join(str(p.relative_to(path)) for p in foreign[:3]) + (" …" if len(foreign) > 3 else "")
            raise RunDirError(f"run directory {str(path)!r} holds files repalign did not write ({names}); "
                              "move them, or pass --overwrite=all to delete them too")
    for p in path.iterdir():
        if p.name == ".lock":
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def atomic_output_dir(final: str | Path, build: Callable[[Path], Any]) -> Any:
    """Build an output folder under a temp name and swap it in: ``build(tmp_dir)`` writes into an
    empty sibling ``.<name>.tmp<pid>``; on success it replaces ``final`` (the old one is removed),
    on failure it is deleted and ``final`` is left as it was. Returns ``build``'s result with
    ``tmp_dir`` replaced by ``final`` where it is a path inside it."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    old = final.with_name(f".{final.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result = build(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        if isinstance(e, OSError):  # the one line names the folder (a file in it: its name inside it)
            fn = str(e.filename or "")
            e.filename = str(final / Path(fn).relative_to(tmp)) if fn and Path(fn).is_relative_to(tmp) else (fn or None)
            raise name_file(e, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if isinstance(result, Path) and tmp in result.parents:
        return final / result.relative_to(tmp)
    return result


def write_locked_output(folder: str | Path, name: str, build: Callable[[Path, Path], Any]) -> Any:
    """Write the output folder ``folder/name`` (e.g. a run's ``report/``) as its one writer: under
    ``folder``'s lock, built by ``build(folder, tmp_dir)`` in a temp folder and swapped in by
    :func:`atomic_output_dir`, so a failure leaves the previous version (or nothing)."""
    folder = Path(folder)
    with RunLock(folder):
        return atomic_output_dir(folder / name, lambda tmp: build(folder, tmp))
