"""Atomic checkpoints: write to a temp file, fsync, rename; verify size + SHA-256 on load.

``save_checkpoint(obj, path)`` writes ``path`` and a sidecar ``path.sha256`` (``"<hex>  <size>"``).
The previous file at ``path`` is first kept as ``<stem>.prev.pt`` so a crash at any point leaves
a loadable checkpoint. ``load_checkpoint`` uses ``torch.load(weights_only=True)`` and raises
:class:`CheckpointError` naming the file when it is truncated or corrupt.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (truncated, corrupt, checksum mismatch)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(obj: Any, path: str | Path, keep_previous: bool = True) -> Path:
    """Serialise ``obj`` with ``torch.save`` and write it atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    if keep_previous and path.exists():
        prev = prev_path(path)
        os.replace(path, prev)
        side = _sidecar(path)
        if side.exists():
            os.replace(side, _sidecar(prev))
    _atomic_write(path, data)
    _atomic_write(_sidecar(path), f"{_sha256(data)}  {len(data)}\n".encode())
    return path


def prev_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises :class:`CheckpointError` if the file is missing, shorter/longer than recorded, fails its
    checksum, or cannot be unpickled.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    side = _sidecar(path)
    if side.exists():
        parts = side.read_text().split()
        if len(parts) == 2:
            digest, size = parts[0], int(parts[1])
            if len(data) != size:
                raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} bytes, expected {size}")
            if _sha256(data) != digest:
                raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 mismatch")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError / EOFError / UnpicklingError
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {type(e).__name__}: {e}".splitlines()[0]) from e


def load_latest(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, Path, list[str]]:
    """Load ``path``, falling back to its ``.prev`` copy when it is bad.

    Returns ``(obj, path_used, problems)`` where ``problems`` lists the rejected files' errors.
    Raises :class:`CheckpointError` when neither loads.
    """
    path = Path(path)
    problems: list[str] = []
    for cand in (path, prev_path(path)):
        try:
            return load_checkpoint(cand, map_location), cand, problems
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError("no loadable checkpoint: " + "; ".join(problems))
