"""Errors that the command line reports as one line, and their exit codes.

``repalign`` exits with

* ``0`` — success;
* ``2`` — bad input: a config key, a config file, the data, the run directory's contents or
  permissions, unusable checkpoints (:class:`UserError`, :class:`repalign.config.ConfigError`,
  :class:`repalign.training.checkpoint.CheckpointError`, a failed write such as a full disk);
* ``3`` — the run stopped because an arm's values became non-finite and ``train.on_nonfinite`` is
  ``stop_run`` (:class:`repalign.training.NonFiniteError`); the checkpoint is loadable;
* ``4`` — the run directory is in use by another process (:class:`RunDirLocked`);
* ``130`` — interrupted (Ctrl-C); continue with ``--resume``;
* ``143`` / ``138`` — stopped by ``SIGTERM`` / ``SIGUSR1`` (``128 + signal``) after writing the checkpoint
  of the step it was in (:class:`Interrupted`, :mod:`repalign.training.signals`); continue with ``--resume``.

Anything else is a bug and ends in a traceback.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (``SIGTERM``, ``SIGUSR1``; :mod:`repalign.training.signals`).

    A ``KeyboardInterrupt``, so whatever handles Ctrl-C handles it too. ``checkpointed``: the state after
    ``step`` steps was written before stopping (the first signal); false after a second signal, which
    stops at once (then ``step`` is that of the last checkpoint, ``None`` when there is none).
    ``exit_code`` is ``128 + signum``, as a shell reports a process killed by that signal."""

    def __init__(self, signum: int, step: int | None = None, run_dir: str | None = None,
                 checkpointed: bool = True) -> None:
        super().__init__(signum)
        self.signum, self.step, self.run_dir, self.checkpointed = int(signum), step, run_dir, checkpointed
        self.exit_code = 128 + int(signum)

    @property
    def signal_name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __str__(self) -> str:
        how = f"repalign train {self.run_dir}/config.yaml --run-dir {self.run_dir} --resume" if self.run_dir else "--resume"
        if self.checkpointed:
            at = f" at step {self.step}" if self.step is not None else ""
            saved = "checkpoint written" if self.run_dir else "no run directory, nothing saved"
            return f"interrupted by {self.signal_name}{at} ({saved}); resume with: {how}"
        if self.step is None:
            return f"interrupted by a second {self.signal_name}: stopped at once, before any checkpoint"
        return (f"interrupted by a second {self.signal_name}: stopped at once; the last checkpoint is "
                f"step {self.step}; resume with: {how}")


class UserError(Exception):
    """A problem the user can fix; the message is one line and names the file, key or path."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(ValueError):
    """A bad configuration value; the message is one line and names the key (re-exported as
    :class:`repalign.config.ConfigError`; defined here so that :mod:`repalign.plugins`,
    :mod:`repalign.objectives` and the data sources need not import :mod:`repalign.config`)."""


class DataError(UserError, ValueError):
    """The dataset is missing, unreadable or corrupt (names the file or the config key to set)."""


class RunDirError(UserError):
    """The run directory cannot be used as asked (foreign files, not writable, ...)."""


class PathError(UserError, ValueError):
    """A path given to a command does not exist or is not what the command reads (a run, sweep or
    reproduce directory, ...); the message names the path and what was expected. A ``ValueError`` too,
    for library callers of the functions that raised one before."""


class RunDirLocked(RunDirError):
    """Another live process holds the run directory's lock (the message names it)."""

    exit_code = EXIT_LOCKED


def name_file(e: OSError, path: object) -> OSError:
    """``e`` with ``path`` as its file name when it names none (``f.write`` on a full disk raises
    ``OSError(ENOSPC)`` without one) or only a fault-injection place (``<fault …>``), so the one-line
    message names the file being written. Returns ``e`` (re-raise it)."""
    if not e.filename or str(e.filename).startswith("<fault"):
        e.filename = str(path)
    return e


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line. An exception re-raised by a DataLoader worker carries the
    worker's traceback in its message; its last line holds the original message."""
    text = str(e).strip()
    lines = [x for x in text.splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        last = lines[-1]
        return last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return lines[0]
