"""Plug-ins by name: import references for objectives, encoders and data sources.

A reference is ``package.module:name`` (imported) or ``path/to/file.py:name`` (loaded from the file;
a relative path is taken from the current directory and stored absolute in ``config.yaml``, so later
commands on the run find it from anywhere). Adapters: ``torchvision:<name>`` for encoders
(``torchvision.models.<name>`` without its classifier) and data sources
(``torchvision.datasets.<Class>``), ``timm:<name>`` for encoders (extra ``timm``), ``hf:<dataset>``
for data (extra ``hf``; a local directory or the cache, no download). In-process objects (the
Python entry :func:`repalign.train`) are registered under ``python:<name>``.

Trust model (issue 17; docs/design.md, "Trust model"). Importing a reference runs its code, so:

* :func:`check_reference` — what config validation calls — checks a reference by *name and file*
  only (syntax; the file exists; a module is found on the import path) and imports nothing.
* :func:`load_reference` — the only place a plug-in is imported — runs under the innermost
  :func:`guard`, if any. Commands that open a run directory someone else may have written
  (``align``, ``export``/:func:`repalign.load_encoder`, ``train --resume`` of the run's own
  ``config.yaml``) hold a guard: without consent (``--trust-code``, ``trust_code=True`` or
  ``REPALIGN_TRUST_CODE=1``) a file or module reference is refused with one line
  (:class:`UntrustedCodeError`, exit 2) naming the key, the reference and the flag. Without a guard
  (``repalign train`` of the user's own config, :func:`repalign.train`) references load as before.
* Module references ``package.module:name`` never resolve against the current directory or a
  guarded run directory: the import runs with a ``sys.path`` from which ``''``, ``'.'``, relative
  entries, the current directory and any entry inside a guarded run directory are removed
  (:func:`safe_sys_path`), and a module that is nevertheless found inside a guarded run directory
  is refused. A module already imported by this process (``sys.modules``) is returned as is: no code
  runs. File references name their file explicitly and load it (given consent where guarded).

Every failure is one line naming the config key. This module imports neither :mod:`repalign.config`
nor any data source or objective (the old import circle config ↔ data ↔ objectives ↔ plugins).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from repalign.errors import ConfigError, UserError

ADAPTERS = ("torchvision", "timm", "hf", "python")

#: the environment variable that gives consent to import a run's plug-in code (``1``/``true``/``yes``)
TRUST_ENV = "REPALIGN_TRUST_CODE"
#: the command-line flag that gives it
TRUST_FLAG = "--trust-code"

#: in-process objects registered by the Python entry: "python:<name>" → object
IN_PROCESS: dict[str, Any] = {}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UntrustedCodeError(UserError):
    """A command that only needed a run's names would have to import its plug-in code to go on, and no
    consent was given (one line naming the config key, the reference and ``--trust-code``)."""


def _error(msg: str) -> Exception:
    return ConfigError(msg)


def is_reference(value: Any) -> bool:
    """Whether ``value`` is an import reference or adapter name (``x:y``) rather than a built-in name."""
    return isinstance(value, str) and ":" in value and not value.startswith(":") and not value.endswith(":")


def adapter_of(ref: str) -> str | None:
    """``"torchvision"`` for ``torchvision:resnet18`` etc., else ``None`` (an import reference)."""
    head = ref.split(":", 1)[0]
    return head if head in ADAPTERS else None


def is_code_reference(value: Any) -> bool:
    """Whether importing ``value`` would run code named by a config: a file reference
    ``path/to/file.py:name`` or a module reference ``package.module:name`` (not a built-in name, not an
    adapter ``torchvision:``/``timm:``/``hf:``, not an in-process ``python:`` object)."""
    return is_reference(value) and adapter_of(value) is None


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target


def normalise_reference(ref: str) -> str:
    """A file reference with an absolute path (``./my.py:f`` → ``/abs/my.py:f``); others unchanged."""
    if not is_reference(ref) or adapter_of(ref):
        return ref
    target, name = ref.rsplit(":", 1)
    if _is_file_target(target):
        return f"{Path(target).expanduser().resolve()}:{name}"
    return ref


# ---------------------------------------------------------------------------------------------- consent
@dataclass(frozen=True)
class _Guard:
    trusted: bool
    command: str
    roots: tuple[Path, ...]


_GUARDS: list[_Guard] = []
_LOCK = threading.RLock()


def trust_from_env() -> bool:
    """Whether ``REPALIGN_TRUST_CODE`` gives consent (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def trusted(trust_code: bool | None = None) -> bool:
    """Consent given by the argument (``True``) or, when it is ``None``/``False``, by the environment."""
    return bool(trust_code) or trust_from_env()


def _resolved(p: str | Path) -> Path:
    try:
        return Path(p).expanduser().resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(os.path.expanduser(str(p))))


@contextlib.contextmanager
def guard(run_dir: str | Path | None, trust_code: bool | None = None, command: str = "this command") -> Iterator[None]:
    """While active, :func:`load_reference` refuses file and module references unless consent was given
    (``trust_code=True`` or ``REPALIGN_TRUST_CODE=1``), and module references never resolve inside
    ``run_dir``. ``command`` names the command in the refusal (e.g. ``"repalign align"``)."""
    roots = (_resolved(run_dir),) if run_dir is not None else ()
    g = _Guard(trusted(trust_code), command, roots)
    with _LOCK:
        _GUARDS.append(g)
    try:
        yield
    finally:
        with _LOCK:
            _GUARDS.remove(g)


def _current_guard() -> _Guard | None:
    with _LOCK:
        if not _GUARDS:
            return None
        roots = tuple(r for g in _GUARDS for r in g.roots)
        top = _GUARDS[-1]
        return _Guard(all(g.trusted for g in _GUARDS), top.command, roots)


def untrusted_message(key: str, ref: str, command: str, where: str | Path | None = None) -> str:
    """The one-line refusal: ``config key 'arms.nscl.objective' of RUN names plug-in code '…'; …``."""
    of = f" of {str(where)!r}" if where is not None else ""
    return (f"config key {key!r}{of} names plug-in code {ref!r}: {command} would import and run it; pass "
            f"{TRUST_FLAG} (trust_code=True in Python, or set {TRUST_ENV}=1) only if you trust where this run "
            "came from")


def require_trust(refs: list[tuple[str, str]], trust_code: bool | None, command: str,
                  where: str | Path | None = None) -> None:
    """Raise :class:`UntrustedCodeError` naming the first ``(key, reference)`` of ``refs`` that is plug-in
    code (:func:`is_code_reference`) unless consent was given; nothing is imported."""
    if trusted(trust_code):
        return
    for key, ref in refs:
        if is_code_reference(ref):
            raise UntrustedCodeError(untrusted_message(key, ref, command, where))


# ------------------------------------------------------------------------------------ module resolution
def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _cwd() -> Path | None:
    try:
        return Path.cwd().resolve()
    except OSError:  # the working directory was deleted
        return None


def safe_sys_path(exclude: tuple[Path, ...] = ()) -> list[str]:
    """``sys.path`` without the entries through which a module reference could resolve against the current
    directory or a run directory: ``''``, ``'.'``, relative entries, the current directory itself, and any
    entry equal to or inside a directory of ``exclude``. (Entries *below* the current directory — a
    source checkout's ``src/``, a virtual environment — stay.)"""
    cwd = _cwd()
    out = []
    for e in sys.path:
        if not isinstance(e, str) or e in ("", ".") or not os.path.isabs(e):
            continue
        rp = _resolved(e)
        if (cwd is not None and rp == cwd) or any(_under(rp, r) for r in exclude):
            continue
        out.append(e)
    return out


def _skipped_dirs(exclude: tuple[Path, ...]) -> list[Path]:
    cwd = _cwd()
    return ([cwd] if cwd is not None else []) + list(exclude)


def _find_top(top: str, path: list[str]) -> Any:
    """The spec of top-level module ``top`` found without executing it: built-in / frozen modules, other
    meta-path finders (editable installs), then the path finder over ``path``."""
    if top in sys.modules:
        return getattr(sys.modules[top], "__spec__", None) or True
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = importlib.machinery.PathFinder.find_spec(top, path)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(top, None)
            else:  # pragma: no cover - legacy finder
                continue
        except Exception:  # noqa: BLE001 - a broken third-party finder: treat as not found by it
            continue
        if spec is not None:
            return spec
    return None


def _not_found(target: str, key: str, exclude: tuple[Path, ...]) -> Exception:
    top = target.split(".")[0]
    hint = ""
    for d in _skipped_dirs(exclude):
        if (d / f"{top}.py").is_file() or (d / top / "__init__.py").is_file():
            hint = (f"; {top!r} exists in {str(d)!r}, but module references never resolve against the current "
                    "directory or a run directory — use a file reference path/to/file.py:name, or install it")
            break
    return _error(f"config key {key!r}: cannot import {target!r} (no module {top!r} on the import path{hint})")


def _check_syntax(ref: str, key: str) -> tuple[str, str]:
    target, name = ref.rsplit(":", 1)
    if not name or not all(_IDENT.match(p) for p in name.split(".")):
        raise _error(f"config key {key!r}: {ref!r} must end in ':name' with a Python name (dotted names allowed)")
    if not _is_file_target(target) and not all(_IDENT.match(p) for p in target.split(".")):
        raise _error(f"config key {key!r}: {ref!r} must be 'package.module:name' or 'path/to/file.py:name'")
    return target, name


def check_reference(ref: str, key: str) -> None:
    """Check a reference by name and file, importing nothing: ``python:<name>`` is registered in this
    process (only warned about later if not), an adapter's name is syntactically fine, a file reference's
    file exists, a module reference's top-level module is found on :func:`safe_sys_path` (or already
    imported). One-line :class:`~repalign.errors.ConfigError` naming ``key`` otherwise."""
    if not is_reference(ref):
        raise _error(f"config key {key!r}: {ref!r} is not a reference 'package.module:name' / 'path/to/file.py:name'")
    if adapter_of(ref):
        return
    target, _name = _check_syntax(ref, key)
    if _is_file_target(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise _error(f"config key {key!r}: file {str(path)!r} does not exist")
        return
    if target in sys.modules:
        return
    g = _current_guard()
    exclude = g.roots if g is not None else ()
    if _find_top(target.split(".")[0], safe_sys_path(exclude)) is None:
        raise _not_found(target, key, exclude)


def _load_file(path: Path, key: str) -> Any:
    if not path.is_file():
        raise _error(f"config key {key!r}: file {str(path)!r} does not exist")
    mod_name = "repalign_plugin_" + path.stem.replace("-", "_") + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise _error(f"config key {key!r}: cannot load {str(path)!r} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - user code: report on one line
        del sys.modules[mod_name]
        raise _error(f"config key {key!r}: importing {str(path)!r} failed: {type(e).__name__}: "
                     f"{' '.join(str(e).split())}") from None
    return mod


def _import_module(target: str, key: str, exclude: tuple[Path, ...]) -> Any:
    """``importlib.import_module(target)`` with ``sys.path`` = :func:`safe_sys_path` for the duration of
    the import (entries the module adds are kept); refused when the module lies in an excluded directory."""
    if target in sys.modules:  # already imported by this process: returning it runs no code
        return sys.modules[target]
    with _LOCK:
        saved = list(sys.path)
        safe = safe_sys_path(exclude)
        if _find_top(target.split(".")[0], safe) is None:
            raise _not_found(target, key, exclude)
        sys.path[:] = safe
        try:
            mod = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise _error(f"config key {key!r}: cannot import {target!r} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None
        finally:
            added = [p for p in sys.path if p not in safe and p not in saved]
            sys.path[:] = saved + added
    f = getattr(mod, "__file__", None)
    if f and any(_under(_resolved(f), r) for r in exclude):  # defence in depth
        raise _error(f"config key {key!r}: {target!r} resolved to {f!r} inside the run directory; module "
                     "references never resolve there")
    return mod


def load_reference(ref: str, key: str) -> Any:
    """The object named by ``package.module:name`` or ``path/to/file.py:name`` (dotted names allowed
    after the colon), or registered in-process as ``python:<name>``. Under a :func:`guard` without
    consent a file or module reference raises :class:`UntrustedCodeError` before anything is imported."""
    if ref.startswith("python:"):
        if ref not in IN_PROCESS:
            raise _error(f"config key {key!r}: {ref!r} was registered in another Python process; pass the "
                         "object again to repalign.train/align, or use an import reference package.module:name")
        return IN_PROCESS[ref]
    g = _current_guard()
    if g is not None and not g.trusted:
        raise UntrustedCodeError(untrusted_message(key, ref, g.command))
    exclude = g.roots if g is not None else ()
    target, name = ref.rsplit(":", 1)
    if _is_file_target(target):
        mod = _load_file(Path(target).expanduser(), key)
    else:
        mod = _import_module(target, key, exclude)
    obj: Any = mod
    for part in name.split("."):
        if not hasattr(obj, part):
            raise _error(f"config key {key!r}: {target!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def register_in_process(obj: Any, kind: str) -> str:
    """A reference for a Python object that later processes can rebuild (issue 20): ``module:qualname``
    when that imports back to ``obj``; ``/abs/path/file.py:qualname`` when ``obj`` is a module-level name
    of a module loaded from a file that is not importable by name (never ``__main__``: importing a
    script again would run it); else ``python:<name>`` registered in this process only — a later
    process is then told in one line to pass the object again (``load_encoder(..., encoder=...)``).
    Rebuilding a recorded module/file reference in a later process is a plug-in import (consent:
    :func:`require_trust`)."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual and mod != "__main__" and "<" not in qual:
        try:
            if load_reference(f"{mod}:{qual}", kind) is obj:
                return f"{mod}:{qual}"
        except Exception:  # noqa: BLE001
            pass
        m = sys.modules.get(mod)
        f = getattr(m, "__file__", None)
        if m is not None and f and str(f).endswith(".py"):
            o: Any = m
            for part in qual.split("."):
                o = getattr(o, part, None)
            if o is obj:
                return f"{_resolved(f)}:{qual}"
    name = getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__
    ref = f"python:{name}"
    IN_PROCESS[ref] = obj
    return ref


__all__ = ["is_reference", "is_code_reference", "adapter_of", "normalise_reference", "check_reference",
           "load_reference", "register_in_process", "guard", "require_trust", "trusted", "trust_from_env",
           "safe_sys_path", "untrusted_message", "UntrustedCodeError", "IN_PROCESS", "ADAPTERS", "TRUST_ENV",
           "TRUST_FLAG"]
