"""Errors that the command line reports as one line, and their exit codes.

``repalign`` exits with

* ``0`` — success;
* ``2`` — bad input: a config key, a config file, the data, the run directory's contents or
  permissions, unusable checkpoints (:class:`UserError`, :class:`repalign.config.ConfigError`,
  :class:`repalign.training.checkpoint.CheckpointError`, a failed write such as a full disk);
* ``3`` — the run stopped because an arm's values became non-finite and ``train.on_nonfinite`` is
  ``stop_run`` (:class:`repalign.training.NonFiniteError`); the checkpoint is loadable;
* ``4`` — the run directory is in use by another process (:class:`RunDirLocked`);
* ``130`` — interrupted (Ctrl-C); continue with ``--resume``.

Anything else is a bug and ends in a traceback.
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130


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


class RunDirLocked(RunDirError):
    """Another live process holds the run directory's lock (the message names it)."""

    exit_code = EXIT_LOCKED


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
