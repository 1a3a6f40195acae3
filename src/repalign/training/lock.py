"""One writer per run directory: an exclusive ``fcntl.flock`` on ``RUN_DIR/.lock``.

The lock file records its holder as one JSON line (pid, host, command, start time). ``flock``
locks die with their process, so a holder killed with ``kill -9`` leaves only a stale record: the
next writer takes the lock over with a warning naming the dead holder. A second live writer gets
:class:`~repalign.errors.RunDirLocked`, whose one-line message names the holder.

Within one process the lock is re-entrant (the CLI takes it before clearing or resuming a run
directory and the trainer takes it again); each :class:`RunLock` must be released once. The
file is truncated, never deleted, on release (deleting a lock file races with a process that has
just opened it).
"""
from __future__ import annotations

import errno
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from repalign.errors import RunDirError, RunDirLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class _Held:
    def __init__(self, fd: int, pid: int) -> None:
        self.fd, self.pid, self.count = fd, pid, 0


_HELD: dict[str, _Held] = {}


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir / LOCK_NAME)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        rec = json.loads(text.splitlines()[0])
    except ValueError:
        return {"raw": text[:200]}
    return rec if isinstance(rec, dict) else {"raw": text[:200]}


def describe(rec: dict[str, Any] | None) -> str:
    """``pid 123 on host h (repalign train ...), since 2025-01-01T00:00:00``."""
    if not rec:
        return "another process"
    if "pid" not in rec:
        return f"another process ({rec.get('raw', '?')!r})"
    cmd = rec.get("command") or "?"
    return f"pid {rec['pid']} on host {rec.get('host', '?')} ({cmd}), since {rec.get('started', '?')}"


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The record of the live process holding ``run_dir``'s lock, or ``None`` when it is free
    (or held by this process)."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    if fcntl is None or not path.exists():
        return None
    held = _HELD.get(_key(run_dir))
    if held is not None and held.pid == os.getpid():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return _read_record(path) or {}
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """Exclusive lock of a run directory. ``acquire()`` creates the directory if needed; when it
    did, ``release()`` removes it again if nothing but the lock file (and empty ``checkpoints/``)
    is in it — a failed start leaves no empty run folder behind.

    Use as a context manager or call :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.command = command or " ".join(["repalign", *sys.argv[1:]])[:300]
        self.held = False
        self.created_dir = False

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_NAME

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        if not self.run_dir.exists():
            try:
                self.run_dir.mkdir(parents=True)
                self.created_dir = True
            except FileExistsError:
                pass
            except OSError as e:
                raise RunDirError(f"cannot create run directory {str(self.run_dir)!r}: {e.strerror}") from None
        if fcntl is None:  # pragma: no cover
            self.held = True
            return self
        key = _key(self.run_dir)
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            self.held = True
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._undo_mkdir()
            raise RunDirError(f"run directory {str(self.run_dir)!r} is not writable: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirLocked(f"run directory {str(self.run_dir)!r} is in use by "
                                   f"{describe(_read_record(self.path))}; wait for it to finish or stop it") from None
            raise
        old = _read_record(self.path)
        if old and old.get("pid") != os.getpid():
            print(f"repalign: warning: taking over the lock of {self.run_dir} left by {describe(old)}, "
                  "which is no longer running", file=sys.stderr)
        rec = {"pid": os.getpid(), "host": platform.node(), "command": self.command,
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
        except OSError as e:
            os.close(fd)
            self._undo_mkdir()
            raise RunDirError(f"run directory {str(self.run_dir)!r} is not writable: {e.strerror}") from None
        entry = _Held(fd, os.getpid())
        entry.count = 1
        _HELD[key] = entry
        self.held = True
        return self

    def release(self) -> None:
        """Give the lock up (once per :meth:`acquire`); the last release in this process unlocks."""
        if not self.held:
            return
        self.held = False
        if fcntl is None:  # pragma: no cover
            return
        key = _key(self.run_dir)
        entry = _HELD.get(key)
        if entry is None or entry.pid != os.getpid():
            return
        entry.count -= 1
        if entry.count > 0:
            return
        del _HELD[key]
        try:
            if self.created_dir and self._only_skeleton():
                self.path.unlink(missing_ok=True)
                if (self.run_dir / "checkpoints").is_dir():
                    (self.run_dir / "checkpoints").rmdir()
                self.run_dir.rmdir()
            else:
                os.ftruncate(entry.fd, 0)
        except OSError:
            pass
        finally:
            try:  # unlock the open file description itself: a forked child (a DataLoader worker) shares it
                fcntl.flock(entry.fd, fcntl.LOCK_UN)
            except OSError:
                pass
            os.close(entry.fd)

    def _only_skeleton(self) -> bool:
        try:
            names = {p.name for p in self.run_dir.iterdir()}
        except OSError:
            return False
        if not names <= {LOCK_NAME, "checkpoints"}:
            return False
        ck = self.run_dir / "checkpoints"
        return not ck.exists() or (ck.is_dir() and not any(ck.iterdir()))

    def _undo_mkdir(self) -> None:
        if self.created_dir:
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a trainer dropped without finishing fit()
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
