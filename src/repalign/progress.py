"""One progress convention for every command a person waits on (issue 20): ``train``, ``align``,
``sweep``, ``reproduce``.

On a terminal (stderr is a TTY) a :mod:`tqdm` bar; elsewhere (logs, CI, pipes) one line per finished
unit, ``<what> N/M <unit> (<label>) · <elapsed> elapsed · ETA <eta>``, the ETA from the mean time of the
finished units (``elapsed / N · (M − N)``). ``enabled=False`` (``logging.progress: false``, ``--quiet``)
prints nothing.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


def fmt_seconds(s: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def progress_line(what: str, n: int, total: int, elapsed: float, unit: str = "", label: str = "") -> str:
    """The non-TTY line for the ``n``-th of ``total`` finished units after ``elapsed`` seconds."""
    eta = elapsed / n * (total - n) if n > 0 else float("nan")
    lab = f" ({label})" if label else ""
    u = f" {unit}" if unit else ""
    tail = f" · ETA {fmt_seconds(eta)}" if n < total else ""
    return f"{what} {n}/{total}{u}{lab} · {fmt_seconds(elapsed)} elapsed{tail}"


class Progress:
    """``with Progress("align", total, unit="checkpoints") as p: ... p.done(label)`` — a bar on a TTY,
    one line per finished unit otherwise; thread-safe ``done``."""

    def __init__(self, what: str, total: int, unit: str = "", enabled: bool = True,
                 file: TextIO | None = None, tty: bool | None = None) -> None:
        self.what, self.total, self.unit, self.enabled = what, int(total), unit, bool(enabled)
        self.file = file if file is not None else sys.stderr
        isatty = getattr(self.file, "isatty", None)
        self.tty = bool(isatty()) if tty is None and callable(isatty) else bool(tty)
        self.n = 0
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._bar: Any = None
        if self.enabled and self.tty:
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=what, unit=unit.rstrip("s") or "it", dynamic_ncols=True,
                             file=self.file)

    def done(self, label: str = "") -> None:
        with self._lock:
            self.n += 1
            if not self.enabled:
                return
            if self._bar is not None:
                if label:
                    self._bar.set_postfix_str(label, refresh=False)
                self._bar.update(1)
            else:
                print(progress_line(self.what, self.n, self.total, time.perf_counter() - self._t0, self.unit, label),
                      file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Progress", "progress_line", "fmt_seconds"]
