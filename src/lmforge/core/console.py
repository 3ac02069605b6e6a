"""Messages and progress on stderr, written for whoever reads them: a terminal, or a log file.

In a terminal, progress is tqdm's bar, redrawn in place. When stderr is not a terminal (nohup, CI, a SLURM
log), a redrawn bar is a long line of carriage returns; progress is then one plain line every
LMFORGE_PROGRESS_SECONDS seconds (default 30) and one at the end (none for a bar that a terminal would
erase when done, `leave=False`). NO_COLOR (https://no-color.org), set to anything but empty, turns off the
colours of terminal output (`use_color`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


def say(message: str) -> None:
    tqdm.write(f"lmforge: {message}", file=sys.stderr)


def use_color() -> bool:
    """Whether to colour terminal output: unless NO_COLOR is set (piped output keeps its colours, for
    `less -R`)."""
    return not os.environ.get("NO_COLOR")


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, **bar_options: Any):  # fmt: skip
    """A progress bar over `iterable` or up to `total`: tqdm's in a terminal, plain lines in a log (above).
    Either has update(n), set_postfix(**values), write(message), close(), iteration and `with`."""
    if disable or sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    **bar_options)  # fmt: skip
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)


class LineProgress:
    """Progress as plain lines on stderr: `desc: n/total unit (pct%), rate, postfix`, at most one line every
    `every` seconds, and one when it closes."""

    def __init__(
        self, iterable=None, *, total=None, desc="", unit="it", initial=0, leave=True, every: float | None = None
    ):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self.start_n = desc, unit, initial, initial
        self.every = every if every is not None else float(os.environ.get("LMFORGE_PROGRESS_SECONDS", "30"))
        self.started = self.last = time.monotonic()
        self.postfix = ""
        self.closed, self.leave, self.lines = False, leave, 0

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    @staticmethod
    def write(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave or self.lines:  # a short inner loop (leave=False) leaves no line behind
                self._line()

    def _line(self) -> None:
        self.last = now = time.monotonic()
        self.lines += 1
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.start_n) / max(now - self.started, 1e-9)
        parts = [f"{self.desc}: {done} {self.unit}{share}", f"{rate:.2f} {self.unit}/s"]
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)
