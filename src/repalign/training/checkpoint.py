"""Crash-safe, self-verifying checkpoints.

File format (``repalign-checkpoint-v2``): one ``torch.save`` file holding
``{"format": "repalign-checkpoint-v2", "sha256": <hex>, "state": <the saved object>}``, where the
digest is :func:`state_digest` of the state — a SHA-256 over its structure (keys, types, scalars)
and every tensor's dtype, shape and bytes. The data and its checksum are therefore committed by
one rename: there is no separate checksum file that a crash could leave out of step.

``save_checkpoint(obj, path)`` serialises, writes ``.<name>.tmp<pid>`` and fsyncs it, moves the
current ``path`` to ``<stem>.prev.pt`` (``keep_previous``), renames the temp file to ``path`` and
fsyncs the directory. At every point a crash leaves ``path`` or its ``.prev`` copy (or both)
complete and verifiable; the orphan temp file is removed by :func:`remove_orphan_temps` on the
next start. ``load_checkpoint`` uses ``torch.load(weights_only=True)``, recomputes the digest and
raises :class:`CheckpointError` naming the file when it is truncated, corrupt or unverifiable.

Checkpoints of older versions (the bare object plus a ``<file>.sha256`` sidecar ``"<hex>  <size>"``)
are still read; they are verified against the sidecar of the file or of its ``.prev`` sibling (a
crash between the old code's two renames left the sidecars swapped). One without any sidecar
cannot be verified and is refused, never trusted silently.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from repalign.errors import name_file
from repalign.faults import fault_point

FORMAT = "repalign-checkpoint-v2"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (missing, truncated, corrupt, unverifiable)."""

    exit_code = 2


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest_into(h: Any, obj: Any) -> None:
    """Feed a canonical description of ``obj`` into the hash ``h`` (type-tagged, order-sensitive)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).numpy()))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _digest_into(h, k)
            _digest_into(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _digest_into(h, v)
    elif isinstance(obj, float):
        h.update(f"F{obj.hex()};".encode())
    elif isinstance(obj, (bool, int, str, type(None))):
        h.update(f"{type(obj).__name__[0]}{obj!r};".encode())
    elif isinstance(obj, (bytes, bytearray)):
        h.update(f"B{len(obj)}:".encode())
        h.update(bytes(obj))
    else:  # torch.dtype, torch.Size, torch.device, ...: their repr is stable across a round trip
        h.update(f"O{type(obj).__name__}{obj!r};".encode())


def state_digest(obj: Any) -> str:
    """SHA-256 (hex) over the structure, scalars and tensor bytes of ``obj`` (a nested state dict)."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def prev_path(path: Path) -> Path:
    """``last.pt`` → ``last.prev.pt``."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a fsynced temp file and a rename; on any error the temp
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise name_file(e, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint(obj: Any, path: str | Path, keep_previous: bool = True) -> Path:
    """Write ``obj`` (a nested state dict) to ``path`` in the self-verifying format, crash-safely.

    With ``keep_previous`` the file already at ``path`` becomes ``<stem>.prev.pt`` just before the
    new one is renamed into place. On an error (a full disk, ...) nothing but the temp file is
    touched, and that is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "sha256": state_digest(obj), "state": obj}, buf)
    data = buf.getvalue()
    fault = f"ckpt.{path.stem}"
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            fault_point(f"{fault}.write")  # a crash or a full disk half-way through the write
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"{fault}.written")
        prev = prev_path(path)
        if keep_previous and path.exists():
            os.replace(path, prev)
            if _sidecar(path).exists():  # an older version's sidecar travels with its file
                os.replace(_sidecar(path), _sidecar(prev))
            else:
                _sidecar(prev).unlink(missing_ok=True)
            fault_point(f"{fault}.rotated")
        elif keep_previous and _sidecar(path).exists() and prev.exists():
            # an older version was killed between its two renames: this sidecar is .prev's
            os.replace(_sidecar(path), _sidecar(prev))
        os.replace(tmp, path)
    except OSError as e:  # a full disk: the one line names the checkpoint being written
        tmp.unlink(missing_ok=True)
        raise name_file(e, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sidecar(path).unlink(missing_ok=True)  # stale: the new file carries its own digest
    _fsync_dir(path.parent)
    fault_point(f"{fault}.committed")
    return path


def _legacy_digests(path: Path) -> set[str]:
    """Digests in the sidecars of ``path`` and of its ``.prev`` / base sibling (older format)."""
    base = path.with_name(path.name.replace(".prev.pt", ".pt")) if path.name.endswith(".prev.pt") else path
    out = set()
    for side in (_sidecar(path), _sidecar(base), _sidecar(prev_path(base))):
        try:
            parts = side.read_text().split()
        except OSError:
            continue
        if parts:
            out.add(parts[0])
    return out


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises :class:`CheckpointError` naming the file if it is missing, cannot be unpickled
    (truncated, corrupt, or holding arbitrary objects), fails its digest, or carries no checksum.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror}") from e
    try:
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError / EOFError / UnpicklingError
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {type(e).__name__}: {e}".splitlines()[0]) from e
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if "state" not in obj or state_digest(obj["state"]) != obj.get("sha256"):
            raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the stored SHA-256 digest")
        return obj["state"]
    digests = _legacy_digests(path)
    if not digests:
        raise CheckpointError(f"checkpoint {path} carries no checksum (no stored digest and no {path.name}.sha256): "
                              "it cannot be verified")
    if _sha256(data) not in digests:
        raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 mismatch with its .sha256 sidecar")
    return obj


def load_latest(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, Path, list[str]]:
    """Load ``path``, falling back to its ``.prev`` copy when it is missing or bad.

    Returns ``(obj, path_used, problems)`` where ``problems`` lists the rejected files' errors.
    Raises :class:`CheckpointError` (one line, naming both files) when neither loads.
    """
    path = Path(path)
    problems: list[str] = []
    for cand in (path, prev_path(path)):
        try:
            return load_checkpoint(cand, map_location), cand, problems
        except CheckpointError as e:
            problems.append(str(e))
    raise CheckpointError("no loadable checkpoint: " + "; ".join(problems))


def remove_orphan_temps(folder: str | Path) -> list[Path]:
    """Delete temp files (``.<name>.tmp<pid>``) left in ``folder`` by a killed writer; return them.
    Call only while holding the run directory's lock (a live writer's temp file looks the same)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for p in folder.glob(".*.tmp*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def fallback_warning(problems: list[str], used: Path, step: Any) -> str | None:
    """The one-line warning when :func:`~repalign.training.checkpoint.load_latest` fell back to another
    file than the one asked for: the rejected file's error, the file used and its step."""
    if not problems:
        return None
    return f"repalign: warning: {problems[0]}; using {used.name} (step {step}) instead"
