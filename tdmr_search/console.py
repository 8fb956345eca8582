"""What the command line shows on stderr: log lines, and under them one live status line.

:class:`Console` is a logging handler and a :mod:`tdmr_search.progress` listener. On a terminal
it keeps a progress bar for the search budget as the last line (clearing it for each log line,
redrawing it after, and once a second for the clock). When stderr is not a terminal (a log file,
CI) there is no bar: log lines only, and a plain line now and then for long work such as a
teacher pass over a large pool. The stream is looked up at every write, so pytest's capture works.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from typing import TextIO

__all__ = ["Console", "HeadlineFilter", "HEADLINE_LOGGERS"]

#: Loggers whose INFO lines a default (not --verbose) ``run`` shows: one line per trial and the
#: run's own steps. Everything else shows from WARNING up.
HEADLINE_LOGGERS = ("tdmr_search.search.study", "tdmr_search.search.summary", "tdmr_search.search.baselines",
                    "tdmr_search.cli", "tdmr_search.export")
#: A long task shows as a plain line (no terminal) after this many seconds, then at most this often.
PLAIN_TASK_SECONDS = 15.0
BAR_WIDTH = 24


class HeadlineFilter(logging.Filter):
    """Pass warnings and errors from anywhere, and INFO lines from :data:`HEADLINE_LOGGERS` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(HEADLINE_LOGGERS)


class _ShortFormatter(logging.Formatter):
    """``12:03:04 message``; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            head, _, rest = text.partition(" ")
            return f"{head} {record.levelname.lower()}: {rest}"
        return text


def _fmt(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Console(logging.Handler):
    """Log lines on stderr with a live status line under them on a terminal.

    Args:
        bar: Draw the status line; None: when stderr is a terminal.
        verbose: Show every INFO line in the long format (logger names); else headlines only.
    """

    def __init__(self, bar: bool | None = None, verbose: bool = True) -> None:
        super().__init__()
        self.bar = self._isatty() if bar is None else bar
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
                          if verbose else _ShortFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
        if not verbose:
            self.addFilter(HeadlineFilter())
        self.start = time.monotonic()
        self._budget: tuple[float, float | None, str, str, float] | None = None
        self._tasks: dict[str, tuple[int, int | None, str, float, float]] = {}
        self._drawn = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @staticmethod
    def _stream() -> TextIO:
        return sys.stderr

    def _isatty(self) -> bool:
        try:
            return self._stream().isatty()
        except (AttributeError, ValueError):
            return False

    # -- logging ---------------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).rstrip()  # Python warnings end with a newline of their own
            with self.lock:  # type: ignore[union-attr]
                stream = self._stream()
                self._clear(stream)
                stream.write(text + "\n")
                self._draw(stream)
                stream.flush()
        except Exception:
            self.handleError(record)

    # -- progress listener -----------------------------------------------------------------------
    def budget(self, done: float, total: float | None, unit: str, note: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._budget = (done, total, unit, note, time.monotonic())
            self._tasks.clear()  # reported between trials: the finished trial's work is over
            self._redraw()
        self._start_ticker()

    def task(self, label: str, done: int, total: int | None, note: str, plain: bool = False) -> None:
        now = time.monotonic()
        with self.lock:  # type: ignore[union-attr]
            if total is not None and done >= total:
                self._tasks.pop(label, None)
            else:
                first, last_plain = self._tasks.get(label, (0, None, "", now, now))[3:]
                self._tasks[label] = (done, total, note, first, last_plain)
                if (plain and not self.bar and now - first >= PLAIN_TASK_SECONDS
                        and now - last_plain >= PLAIN_TASK_SECONDS):
                    self._tasks[label] = (done, total, note, first, now)
                    stream = self._stream()
                    stream.write(f"{time.strftime('%H:%M:%S')} {label}: {self._count(done, total, note)}\n")
                    stream.flush()
            self._redraw()
        self._start_ticker()

    def finish(self) -> None:
        """Take the status line down for good (the run is over; its result comes next)."""
        self._stop.set()
        with self.lock:  # type: ignore[union-attr]
            self.bar = False
            stream = self._stream()
            self._clear(stream)
            stream.flush()

    def close(self) -> None:
        self.finish()
        super().close()

    # -- drawing ---------------------------------------------------------------------------------
    @staticmethod
    def _count(done: int, total: int | None, note: str) -> str:
        unit = f" {note}" if note else ""
        if total:
            return f"{done}/{total}{unit} ({100 * done / total:.0f}%)"
        return f"{done}{unit}"

    def status(self) -> str:
        """The status line: a bar for the budget, the best value, the work in progress, the clock."""
        now = time.monotonic()
        parts = []
        if self._budget is not None:
            done, total, unit, note, at = self._budget
            if unit == "seconds":
                done = done + (now - at)  # the clock moves between reports
            frac = min(1.0, done / total) if total else 0.0
            fill = int(round(frac * BAR_WIDTH))
            bar = "[" + "#" * fill + "-" * (BAR_WIDTH - fill) + "]"
            if unit == "seconds":
                parts.append(f"{bar} {_fmt(done)} of {_fmt(total or 0)}")
            else:
                parts.append(f"{bar} {int(done)}/{int(total) if total else '?'} {unit}")
            if note:
                parts.append(note)
        for label, (done, total, note, _, _) in self._tasks.items():
            parts.append(f"{label}: {self._count(done, total, note)}" if done or total else label)
        if not parts:
            return ""
        if self._budget is None or self._budget[2] != "seconds":  # a time budget's bar is the clock already
            parts.append(f"{_fmt(now - self.start)} elapsed")
        return " | ".join(parts)

    def _clear(self, stream: TextIO) -> None:
        if self._drawn:
            stream.write("\r\x1b[2K")
            self._drawn = False

    def _draw(self, stream: TextIO) -> None:
        if not self.bar:
            return
        line = self.status()
        if line:
            width = shutil.get_terminal_size((100, 20)).columns
            stream.write(line[: max(10, width - 1)])
            self._drawn = True

    def _redraw(self) -> None:
        if not self.bar:
            return
        stream = self._stream()
        self._clear(stream)
        self._draw(stream)
        stream.flush()

    def _start_ticker(self) -> None:
        if not self.bar or self._ticker is not None:
            return

        def tick() -> None:
            while not self._stop.wait(1.0):
                with self.lock:  # type: ignore[union-attr]
                    self._redraw()

        self._ticker = threading.Thread(target=tick, name="tdmr-status-line", daemon=True)
        self._ticker.start()
