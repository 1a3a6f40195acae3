"""The one reader of results: run directories, sweep directories and "the last row per key".

Run directory (``repalign train``)::

    RUN_DIR/config.yaml  meta.json  metrics.jsonl  checkpoints/last.pt …

Sweep directory (``repalign sweep``)::

    OUT/sweep.json  summary.csv  points/<slug>/ (a run directory, plus DONE when finished)

* :func:`read_rows`, :func:`read_config`, :func:`read_meta`, :func:`is_run_dir` — one run directory
  (``metrics.jsonl`` parsed by :func:`repalign.training.rundir.read_metrics`, which drops a torn last line);
* :func:`point_status`, :func:`load_sweep_state`, :func:`read_summary` — a sweep directory;
* :func:`latest_rows`, :func:`last_steps`, :func:`rows_at_last_step` — "last row per key" over rows of
  either (highest ``step``; of rows with the same step the later one wins, so on the step-ordered rows
  of a ``metrics.jsonl`` it is the last row written).

Pure reading: nothing here writes, and a missing file gives an empty result, not an error.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Mapping, TypeVar

__all__ = ["DONE", "ROW_IDENTITY", "row_identity", "read_rows", "read_config", "read_meta", "is_run_dir", "point_status", "load_sweep_state",
           "read_summary", "parse_cell", "latest_rows", "last_steps", "rows_at_last_step"]

#: marker file of a finished sweep point (``points/<slug>/DONE``)
DONE = "DONE"

Row = Mapping[str, Any]
R = TypeVar("R", bound=Mapping[str, Any])
K = TypeVar("K", bound=Hashable)


# ----------------------------------------------------------------------------------------------
# run directories
# ----------------------------------------------------------------------------------------------
def read_rows(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``RUN_DIR/metrics.jsonl`` in file order (only ``kind`` rows when given); ``[]`` when the
    file does not exist.

    Row identity (:data:`ROW_IDENTITY`: kind, step, arm / pair, baseline, split, layer, metric, …) is
    unique in a run: a row repeated exactly (a metrics.jsonl appended to itself by a bad merge or
    restore) is read once, and one warning names the run and the first duplicated row, so a duplicate
    never counts as a second seed or sample; two rows with the same identity but different values
    (two runs' files merged into one) are refused — :class:`~repalign.errors.RunDirError` naming the
    run and the first conflicting row (exit 2). ``event`` rows (messages, e.g. "resumed from …") are
    not results: never checked for conflicts, and read once without a warning when repeated exactly."""
    import warnings

    from repalign.errors import RunDirError
    from repalign.training.rundir import read_metrics

    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    by_id: dict[str, dict[str, Any]] = {}
    first_dup: dict[str, Any] | None = None
    n_dup = 0
    for r in read_metrics(p, kind):
        key = json.dumps(r, sort_keys=True, default=str)
        if key in seen:
            if r.get("kind") != "event":  # the same event twice (two resumes at one step): no warning
                n_dup += 1
                first_dup = first_dup or r
            continue
        seen.add(key)
        if r.get("kind") != "event":
            ident = row_identity(r)
            ik = json.dumps(ident, sort_keys=True, default=str)
            other = by_id.setdefault(ik, r)
            if other is not r:
                diff = sorted(k for k in set(r) | set(other) if _canon(r.get(k)) != _canon(other.get(k)))
                raise RunDirError(f"{p}: two rows with the same identity {ident} hold different values "
                                  f"({', '.join(diff[:4])}{' …' if len(diff) > 4 else ''}): results of two runs "
                                  "merged into one file? Each run's rows must be unique; split the file or re-run")
        rows.append(r)
    if first_dup is not None:
        warnings.warn(f"{p}: {n_dup} exact duplicate row(s) dropped (first: {row_identity(first_dup)})", stacklevel=2)
    return rows


#: The columns that identify a ``metrics.jsonl`` row (those a row has): no two rows of a run share them.
ROW_IDENTITY = ("kind", "step", "arm", "arm_a", "arm_b", "pair", "baseline", "embeddings", "split", "layer", "metric")


def row_identity(row: Row) -> dict[str, Any]:
    """``{column: value}`` of the :data:`ROW_IDENTITY` columns ``row`` has."""
    return {k: row[k] for k in ROW_IDENTITY if k in row}


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/config.yaml`` as a mapping (``{}`` when absent or empty)."""
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        return {}
    import yaml

    from repalign.errors import ConfigError

    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: not a mapping (a {type(cfg).__name__})")
    return cfg


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/meta.json`` (``{}`` when absent)."""
    p = Path(run_dir) / "meta.json"
    return json.loads(p.read_text()) if p.exists() else {}


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a ``metrics.jsonl``."""
    return (Path(path) / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# sweep directories
# ----------------------------------------------------------------------------------------------
def point_status(run_dir: str | Path) -> str:
    """``done`` (DONE marker), ``partial`` (checkpoint, no marker), ``stale`` (files, no checkpoint) or ``new``."""
    run_dir = Path(run_dir)
    if (run_dir / DONE).exists():
        return "done"
    ck = run_dir / "checkpoints"
    if (ck / "last.pt").exists() or (ck / "last.prev.pt").exists():
        return "partial"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "stale"
    return "new"


def load_sweep_state(out: str | Path) -> dict[str, Any]:
    """``OUT/sweep.json`` (spec, grid keys, points with their slugs, values and done flags); an empty
    state when absent."""
    p = Path(out) / "sweep.json"
    return json.loads(p.read_text()) if p.exists() else {"spec": {}, "grid_keys": [], "points": []}


def read_summary(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``summary.csv`` with numbers parsed (empty cells → ``None``, see :func:`parse_cell`)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append({k: parse_cell(v) for k, v in r.items()})
    return out


def parse_cell(v: str) -> Any:
    """A CSV cell as written by the sweep summary: ``""`` → ``None``, then int, float, bool, else the string."""
    if v == "":
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    if v in ("True", "False"):
        return v == "True"
    return v


# ----------------------------------------------------------------------------------------------
# last row per key
# ----------------------------------------------------------------------------------------------
def latest_rows(rows: Iterable[R], key: Callable[[R], K], step: str = "step") -> dict[K, R]:
    """``{key(row): the row with the highest step}`` (ties: the later row), in first-seen key order."""
    out: dict[K, R] = {}
    for r in rows:
        k = key(r)
        if k not in out or r[step] >= out[k][step]:
            out[k] = r
    return out


def last_steps(rows: Iterable[Row], key: Callable[[Row], K], step: str = "step") -> dict[K, Any]:
    """``{key(row): highest step among its rows}``."""
    out: dict[K, Any] = {}
    for r in rows:
        k = key(r)
        out[k] = r[step] if k not in out else max(out[k], r[step])
    return out


def rows_at_last_step(rows: Iterable[R], key: Callable[[R], K], step: str = "step") -> list[R]:
    """The rows whose step is the highest step of their key (all of them, in order)."""
    rows = list(rows)
    last = last_steps(rows, key, step)
    return [r for r in rows if r[step] == last[key(r)]]
