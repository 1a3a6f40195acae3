"""Plug-ins by name: import references for objectives, encoders and data sources.

A reference is ``package.module:name`` (imported) or ``path/to/file.py:name`` (loaded from the file;
a relative path is taken from the current directory and stored absolute in ``config.yaml``, so later
commands on the run find it from anywhere). Adapters: ``torchvision:<name>`` for encoders
(``torchvision.models.<name>`` without its classifier) and data sources
(``torchvision.datasets.<Class>``), ``timm:<name>`` for encoders (extra ``timm``), ``hf:<dataset>``
for data (extra ``hf``; a local directory or the cache, no download). In-process objects (the
Python entry :func:`repalign.train`) are registered under ``python:<name>``.

Every failure is one line naming the config key.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

ADAPTERS = ("torchvision", "timm", "hf", "python")

#: in-process objects registered by the Python entry: "python:<name>" → object
IN_PROCESS: dict[str, Any] = {}


def _error(msg: str) -> Exception:
    from repalign.config import ConfigError

    return ConfigError(msg)


def is_reference(value: Any) -> bool:
    """Whether ``value`` is an import reference or adapter name (``x:y``) rather than a built-in name."""
    return isinstance(value, str) and ":" in value and not value.startswith(":") and not value.endswith(":")


def adapter_of(ref: str) -> str | None:
    """``"torchvision"`` for ``torchvision:resnet18`` etc., else ``None`` (an import reference)."""
    head = ref.split(":", 1)[0]
    return head if head in ADAPTERS else None


def normalise_reference(ref: str) -> str:
    """A file reference with an absolute path (``./my.py:f`` → ``/abs/my.py:f``); others unchanged."""
    if not is_reference(ref) or adapter_of(ref):
        return ref
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py") or "/" in target:
        return f"{Path(target).expanduser().resolve()}:{name}"
    return ref


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


def load_reference(ref: str, key: str) -> Any:
    """The object named by ``package.module:name`` or ``path/to/file.py:name`` (dotted names allowed
    after the colon), or registered in-process as ``python:<name>``."""
    if ref.startswith("python:"):
        if ref not in IN_PROCESS:
            raise _error(f"config key {key!r}: {ref!r} was registered in another Python process; pass the "
                         "object again to repalign.train/align, or use an import reference package.module:name")
        return IN_PROCESS[ref]
    target, name = ref.rsplit(":", 1)
    if target.endswith(".py") or "/" in target:
        mod = _load_file(Path(target).expanduser(), key)
    else:
        try:
            mod = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise _error(f"config key {key!r}: cannot import {target!r} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())})") from None
    obj: Any = mod
    for part in name.split("."):
        if not hasattr(obj, part):
            raise _error(f"config key {key!r}: {target!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    return obj


def register_in_process(obj: Any, kind: str) -> str:
    """A reference for a Python object: ``module:qualname`` when that imports back to ``obj`` (works in
    later processes), else ``python:<name>`` registered in this process."""
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if mod and qual and mod != "__main__" and "<" not in qual:
        try:
            if load_reference(f"{mod}:{qual}", kind) is obj:
                return f"{mod}:{qual}"
        except Exception:  # noqa: BLE001
            pass
    name = getattr(obj, "name", None) or getattr(obj, "__name__", None) or type(obj).__name__
    ref = f"python:{name}"
    IN_PROCESS[ref] = obj
    return ref


__all__ = ["is_reference", "adapter_of", "normalise_reference", "load_reference", "register_in_process",
           "IN_PROCESS", "ADAPTERS"]
