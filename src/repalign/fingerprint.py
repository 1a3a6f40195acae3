"""Config fingerprints: which configuration produced a run (issue 17).

``fingerprint(cfg)`` = SHA-256 of the canonical JSON of :func:`payload` — the resolved config flattened
to dotted keys (every default filled in; arms resolved to their objective, controls and the settings that
differ from the run-level value; arm order kept), minus the :data:`EXEMPT` keys that cannot change a
logged number, plus, for every plug-in reference (``model.encoder``, ``data.source``,
``arms.<name>.objective`` naming ``path/file.py:name`` or ``package.module:name``), the SHA-256 of the
bytes of the file it names (read, never imported; a module reference is looked up on ``sys.path``
without the current directory). ``fingerprint(cfg, seed=False)`` leaves out ``seed``: the key that
groups the seeds of one condition.

:func:`config_diff` lists ``(key, a, b)`` for every key whose value differs; :func:`describe_diff`
formats it as ``loss.temperature: run has 0.5, asked 0.1``. Nothing here imports a plug-in, a data source
or torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["EXEMPT", "VERSION", "payload", "fingerprint", "record", "config_diff", "describe_diff",
           "file_sha256", "reference_file", "run_payload", "stored_record", "check_resume", "MISSING"]

#: version of the payload layout (stored with the fingerprint in meta.json)
VERSION = 1

#: Keys that cannot change any number a run logs or saves, so they may differ on resume and between the
#: points of one condition. Everything else — including ``train.threads``, ``train.device``,
#: ``train.log_every``, ``train.checkpoint_every``, ``data.root`` and every ``eval.*`` key — counts.
EXEMPT: tuple[str, ...] = (
    "name",                        # the run's label (default run-directory name)
    "out_dir",                     # parent folder of run directories
    "logging.",                    # progress bar, TensorBoard, W&B: side outputs of the same rows
    "data.num_workers",            # batches identical to num_workers = 0 (tests/test_data.py, test_speed.py)
    "data.persistent_workers",     # idem, across epoch ends and resumes
    "data.pin_memory",             # page-locked copies of the same values
    "data.download",               # may fetch a missing dataset; the data are the same
    "train.nonfinite_check_every",  # results bitwise the same for every value (tests/test_speed.py)
)


class _Missing:
    def __repr__(self) -> str:
        return "(not set)"


#: value of a key absent on one side of :func:`config_diff`
MISSING: Any = _Missing()


def _exempt(key: str) -> bool:
    return any(key == e or (e.endswith(".") and key.startswith(e)) for e in EXEMPT)


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes, ``None`` when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def reference_file(ref: Any) -> Path | None:
    """The file a plug-in reference names, found without importing anything: ``path/file.py:name`` →
    that file; ``package.module:name`` → ``<entry>/package/module.py`` (or ``…/module/__init__.py``) for
    the first absolute ``sys.path`` entry holding it (never the current directory, neither as ``''`` nor as
    an absolute entry: :func:`repalign.plugins.safe_sys_path`). Built-in names and
    adapters (``torchvision:``, ``timm:``, ``hf:``, ``python:``) → ``None``."""
    if not isinstance(ref, str) or ":" not in ref or ref.startswith(":") or ref.endswith(":"):
        return None
    target = ref.rsplit(":", 1)[0]
    if target in ("torchvision", "timm", "hf", "python"):
        return None
    if target.endswith(".py") or "/" in target:
        return Path(target).expanduser()
    # the import path plug-ins resolve on: never the cwd, also not as an absolute entry (``python -m``)
    from repalign.plugins import safe_sys_path
    parts = target.split(".")
    for entry in safe_sys_path():
        base = Path(entry).joinpath(*parts)
        for cand in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if cand.is_file():
                return cand
    return None


def _ref_hash(ref: Any) -> str | None:
    """``sha256:<hex>`` of the file behind a reference, ``(file missing)`` when it names one that cannot
    be found, ``None`` for a built-in name or an adapter."""
    if not isinstance(ref, str) or ":" not in ref:
        return None
    target = ref.rsplit(":", 1)[0]
    if target in ("torchvision", "timm", "hf", "python"):
        return None
    f = reference_file(ref)
    h = file_sha256(f) if f is not None else None
    return f"sha256:{h}" if h else "(file missing)"


def _flat_dicts(key: str, v: Any, out: dict[str, Any]) -> None:
    if isinstance(v, Mapping) and v:
        for k in v:
            _flat_dicts(f"{key}.{k}", v[k], out)
    else:
        out[key] = v


def _arm_entries(cfg_flat: Mapping[str, Any], arms_raw: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical per-arm entries from :func:`repalign.config.resolve_arms` (names only, imports no
    objective): objective, control keys, and the per-arm settings whose value differs from the run's."""
    from repalign.config import resolve_arms, unflatten

    out: dict[str, Any] = {"arms#order": [str(n) for n in arms_raw]}
    for arm in resolve_arms({**unflatten(cfg_flat), "arms": arms_raw}):
        if arm.same_as is not None:
            out[f"arms.{arm.name}.same_as"] = arm.same_as
        out[f"arms.{arm.name}.objective"] = arm.objective
        for k in ("init_seed", "data_seed", "init_perturb", "label_groups", "label_map"):
            if getattr(arm, k) is not None:
                out[f"arms.{arm.name}.{k}"] = getattr(arm, k)
        if arm.label_map is not None:  # the file's content, not only its name (issue 18)
            from repalign.data.label_groups import resolve_label_map

            try:
                h = file_sha256(resolve_label_map(arm.label_map))
            except ValueError:  # an unknown bundled name: the trainer refuses it in one line
                h = None
            out[f"arms.{arm.name}.label_map#sha256"] = f"sha256:{h}" if h else "(file missing)"
        for dotted, v in arm.overrides.items():
            if dotted in cfg_flat and _canon(cfg_flat[dotted]) == _canon(v):
                continue  # the run-level value: the same arm as without the override
            _flat_dicts(f"arms.{arm.name}.{dotted}", v, out)
    return out


def payload(cfg: Mapping[str, Any], seed: bool = True,
            file_hashes: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The flattened, canonical content a fingerprint hashes (see the module docstring).

    ``cfg``: a resolved config (``config.yaml`` or :func:`repalign.config.load_config`); keys it lacks
    take their schema default. ``file_hashes``: ``{key: "sha256:…"}`` to use instead of hashing the
    files now (a run's stored hashes: the code it was started with)."""
    from repalign.config import DEFAULT_ARMS, SCHEMA, flatten

    flat: dict[str, Any] = {k: s.default for k, s in SCHEMA.items()}
    flat.update(flatten(dict(cfg)))
    arms_raw = flat.pop("arms", None) or DEFAULT_ARMS
    out: dict[str, Any] = {"#payload": VERSION}
    for k, v in flat.items():
        if _exempt(k) or (k == "seed" and not seed):
            continue
        _flat_dicts(k, v, out)
    if isinstance(arms_raw, Mapping):
        out.update(_arm_entries(flat, arms_raw))
    else:
        out["arms"] = arms_raw
    refs = [k for k in ("model.encoder", "data.source") if k in out] + \
        [k for k in out if k.startswith("arms.") and k.endswith(".objective")]
    for k in refs:
        h = (file_hashes or {}).get(k) if file_hashes and k in file_hashes else _ref_hash(out[k])
        if h is not None:
            out[f"{k}#file"] = h
    return out


def fingerprint(cfg: Mapping[str, Any] | None = None, seed: bool = True,
                file_hashes: Mapping[str, str | None] | None = None, *, of: Mapping[str, Any] | None = None) -> str:
    """SHA-256 hex of the canonical JSON of :func:`payload` (``of``: an already computed payload)."""
    p = of if of is not None else payload(cfg or {}, seed, file_hashes)
    if not seed and "seed" in p:
        p = {k: v for k, v in p.items() if k != "seed"}
    return hashlib.sha256(_canon(p).encode()).hexdigest()


def record(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What meta.json stores: ``{"sha256", "without_seed", "files": {key: "sha256:…"}, "version", "exempt"}``."""
    p = payload(cfg)
    return {"sha256": fingerprint(of=p), "without_seed": fingerprint(of=p, seed=False),
            "files": {k[:-len("#file")]: v for k, v in p.items() if k.endswith("#file")},
            "version": VERSION, "exempt": list(EXEMPT)}


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, a value, b value)`` for every key of two payloads (or configs) that differs, in ``a``'s
    key order then ``b``'s; a key absent on one side has the value :data:`MISSING`."""
    pa = a if _is_payload(a) else payload(a)
    pb = b if _is_payload(b) else payload(b)
    out = []
    for k in [k for k in pa if k != "#payload"] + [k for k in pb if k not in pa]:
        va, vb = pa.get(k, MISSING), pb.get(k, MISSING)
        if va is MISSING or vb is MISSING or _canon(va) != _canon(vb):
            out.append((k, va, vb))
    return out


def _is_payload(d: Mapping[str, Any]) -> bool:
    return "#payload" in d


def _show(v: Any) -> str:
    if v is MISSING:
        return "(not set)"
    if isinstance(v, str) and v.startswith("sha256:"):
        return f"file sha256 {v[7:19]}…"
    if isinstance(v, str):
        return v
    return _canon(v) if isinstance(v, (list, dict)) else ("null" if v is None else str(v).lower()
                                                          if isinstance(v, bool) else str(v))


def describe_diff(diff: Sequence[tuple[str, Any, Any]], a: str = "run has", b: str = "asked", limit: int = 6) -> str:
    """``loss.temperature: run has 0.5, asked 0.1; seed: run has 0, asked 1`` (at most ``limit`` keys)."""
    def name(k: str) -> str:
        return "arms (names in order)" if k == "arms#order" else k.replace("#file", " (plug-in file)")

    parts = [f"{name(k)}: {a} {_show(x)}, {b} {_show(y)}" for k, x, y in diff[:limit]]
    more = f"; … {len(diff) - limit} more" if len(diff) > limit else ""
    return "; ".join(parts) + more


def run_payload(run_dir: str | Path, seed: bool = True) -> dict[str, Any]:
    """The payload of a run directory: its ``config.yaml`` with the plug-in file hashes stored in its
    meta.json when there are any (the code it ran), else hashed now (runs from before fingerprints)."""
    from repalign.config import read_yaml_file

    run_dir = Path(run_dir)
    cfg = read_yaml_file(run_dir / "config.yaml", "run config")
    if not isinstance(cfg, Mapping):
        from repalign.config import ConfigError

        raise ConfigError(f"run config {str(run_dir / 'config.yaml')!r} must hold a mapping of keys")
    stored = stored_record(run_dir)
    return payload(cfg, seed, file_hashes=(stored or {}).get("files"))


def stored_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``meta.json``'s ``config_fingerprint`` record (``None`` when absent or unreadable)."""
    p = Path(run_dir) / "meta.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    rec = meta.get("config_fingerprint") if isinstance(meta, Mapping) else None
    return dict(rec) if isinstance(rec, Mapping) else None


def check_resume(run_dir: str | Path, asked: Mapping[str, Any]) -> None:
    """Refuse (one-line :class:`~repalign.config.ConfigError`, exit 2) to continue the run in ``run_dir``
    with a config that differs from its own ``config.yaml`` in any key that can change a result, naming
    each key with both values. A resumed run is the uninterrupted run of its ``config.yaml``: to change a
    setting (a longer ``train.epochs`` included) start a new run."""
    from repalign.config import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"--resume: {str(run_dir)!r} has no config.yaml (not a run directory)")
    diff = config_diff(run_payload(run_dir), payload(asked))
    if diff:
        raise ConfigError(f"--resume: the run in {str(run_dir)!r} was started with another config — "
                          f"{describe_diff(diff)}; a resumed run continues its own config.yaml, so start a new "
                          "run (another --run-dir, or --overwrite) to change it")
