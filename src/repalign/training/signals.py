"""Graceful stop on ``SIGTERM`` and ``SIGUSR1`` while a run trains (issue 17, item 6).

``kill``, docker, systemd and SLURM send ``SIGTERM``; SLURM sends ``SIGUSR1`` ahead of a pre-emption or
time-out when asked to (``sbatch --signal=USR1@60``). While :meth:`CoupledTrainer.fit
<repalign.training.trainer.CoupledTrainer.fit>` runs, :class:`StopSignals` turns either of them into a
request: the step in progress finishes (with the evaluation scheduled at its end, if any), ``last.pt`` is
written at that optimiser-step boundary (the usual atomic write), the run directory's lock is released and
:class:`~repalign.errors.Interrupted` is raised — the CLI prints one line and exits ``128 + signal``
(143 for ``SIGTERM``, 138 for ``SIGUSR1``). ``--resume`` then continues bitwise as if uninterrupted, losing
nothing but the step in progress. A second signal while that step finishes stops at once (like
``kill -9``: the last checkpoint stays valid).

Handlers are installed only in the main thread (``signal.signal`` raises elsewhere; trainers that sweeps
run inline in threads install nothing and keep the default behaviour), and only over the default
disposition: a handler the caller installed (submitit's, a library user's own) or an ignored signal is
left as it is. When ``fit`` returns or raises, the previous handlers are back.
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from repalign import faults
from repalign.errors import Interrupted

#: the signals that stop a run at the next step boundary (those this platform has)
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None)


class StopSignals:
    """Records the first stop signal (:attr:`signum`) between :meth:`install` and :meth:`restore`; a
    second one raises :class:`~repalign.errors.Interrupted` at once (``checkpointed=False``)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def installed(self) -> list[int]:
        """The signals whose handler this object installed (empty outside the main thread)."""
        return list(self._old)

    def install(self) -> "StopSignals":
        faults.wake(False)
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal raises outside the main thread: the default behaviour stays
        for sig in STOP_SIGNALS:
            if sig in self._old or signal.getsignal(sig) is not signal.SIG_DFL:
                continue  # someone else's handler (or SIG_IGN): theirs to keep
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        while self._old:
            sig, old = self._old.popitem()
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum, checkpointed=False)
        self.signum = signum
        faults.wake()  # a process held at a fault point (tests) finishes its step
