"""Fault injection for the crash-safety tests (``tests/test_faults.py``).

Library code calls :func:`fault_point` at named places (inside a checkpoint write, in the middle
of a training step, before a metrics row is written, ...). It does nothing unless the environment
variable ``REPALIGN_FAULT`` names that place::

    REPALIGN_FAULT=<point>[@<n>][:<action>][,<point>...]

``<point>`` is matched exactly, ``@<n>`` fires on the n-th time the point is reached in this
process (default 1), ``<action>`` is one of

* ``kill`` (default) — ``SIGKILL`` this process (as ``kill -9`` would);
* ``raise`` — raise :class:`FaultInjected`;
* ``enospc`` — raise ``OSError(ENOSPC)`` as a full disk would;
* ``wait`` — write ``$REPALIGN_FAULT_RELEASE.waiting`` (holding the pid), then block until the file
  named by ``REPALIGN_FAULT_RELEASE`` exists (at most 120 s), to hold a process at a known place
  while a test acts on it; a stop signal received while training (``SIGTERM``/``SIGUSR1``,
  :mod:`repalign.training.signals`, which calls :func:`wake`) ends the wait too, as the step it holds
  would end by itself.

Named points: ``step.forward`` (every arm's forward/backward of a step done, no optimiser step
yet), ``step.update`` (the first arm's optimiser step taken, the others not yet), ``metrics.row``
(before a ``metrics.jsonl`` row is appended), ``metrics.torn`` (half of a row written),
``ckpt.<name>.write`` (before the temp file is written), ``ckpt.<name>.written`` (temp file
complete), ``ckpt.<name>.rotated`` (the old file moved to ``.prev``, the new one not yet in
place), ``ckpt.<name>.committed`` (the new file in place), where ``<name>`` is the file name
without ``.pt`` (``last``, ``epoch_0002``).
"""
from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

ENV = "REPALIGN_FAULT"
RELEASE_ENV = "REPALIGN_FAULT_RELEASE"
_counts: dict[str, int] = {}
_spec_seen: str | None = None
_woken = False


class FaultInjected(RuntimeError):
    """Raised by a fault point whose action is ``raise``."""


def _parse(spec: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, action = item.partition(":")
        point, _, nth = point.partition("@")
        out[point] = (int(nth) if nth else 1, action or "kill")
    return out


def reset() -> None:
    """Forget how often each point was reached (tests that change ``REPALIGN_FAULT`` in-process)."""
    global _spec_seen
    _counts.clear()
    _spec_seen = None


def wake(on: bool = True) -> None:
    """End (``on``) any ``wait`` in progress or to come in this process; ``wake(False)`` re-arms."""
    global _woken
    _woken = on


def fault_point(name: str) -> None:
    """Act as ``REPALIGN_FAULT`` says when it names ``name`` (see the module docstring)."""
    global _spec_seen
    spec = os.environ.get(ENV)
    if not spec:
        return
    if spec != _spec_seen:
        reset()
        _spec_seen = spec
    want = _parse(spec).get(name)
    if want is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    nth, action = want
    if _counts[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # pragma: no cover - the signal is delivered before this returns
    elif action == "raise":
        raise FaultInjected(f"fault injected at {name}")
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {name}>")
    elif action == "wait":
        release = os.environ.get(RELEASE_ENV)
        if release:  # tell the test where we are
            Path(release + ".waiting").write_text(f"{os.getpid()}\n")
        t_end = time.monotonic() + 120
        while release and not Path(release).exists() and not _woken and time.monotonic() < t_end:
            time.sleep(0.02)
    else:
        raise ValueError(f"{ENV}: unknown action {action!r} for point {name!r} (kill, raise, enospc, wait)")
