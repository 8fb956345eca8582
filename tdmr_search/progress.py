"""Progress of long work, told to whoever listens; the command line draws it, nobody else does.

Library code reports and never draws or prints:

- :func:`budget`: how much of a search budget is spent (trials, or seconds of a time budget).
- :func:`task`: a step of a named piece of work (``"trial 4"``: ``"distill epoch 3/12"``), for
  the status line only unless ``plain``.
- :func:`track`: wraps a long loop, e.g. a teacher pass over thousands of pool images, and
  reports each step as a :func:`task`; it costs one function call per step when nobody listens.

A listener has ``budget(done, total, unit, note)`` and ``task(label, done, total, note, plain)``
methods; :func:`listen` installs one for a ``with`` block. This module imports nothing heavy,
so every layer may report through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TypeVar

__all__ = ["Listener", "listen", "budget", "task", "track", "finish"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Listener(Protocol):
    """What draws progress (the command line's status line)."""

    def budget(self, done: float, total: float | None, unit: str, note: str) -> None:
        """``done`` of ``total`` ``unit`` ('trials' or 'seconds') spent; ``note``: e.g. the best value so far."""

    def task(self, label: str, done: int, total: int | None, note: str, plain: bool) -> None:
        """Step ``done`` of ``total`` of the work ``label``; ``done == total`` ends it.

        ``plain``: worth a plain line now and then where there is no status line (a long pass).
        """


_listeners: list[Listener] = []


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[Listener]:
    """Send every progress report to ``listener`` inside the ``with`` block; its live lines end with it."""
    _listeners.append(listener)
    try:
        yield listener
    finally:
        _listeners.remove(listener)
        end = getattr(listener, "finish", None)
        if end is not None:
            end()


def _tell(method: str, *args: Any) -> None:
    for listener in list(_listeners):
        try:
            getattr(listener, method)(*args)
        except Exception:  # drawing must never break the work it reports on
            logger.debug("progress listener failed", exc_info=True)


def budget(done: float, total: float | None, unit: str = "trials", note: str = "") -> None:
    """Report how much of a budget is spent."""
    if _listeners:
        _tell("budget", done, total, unit, note)


def task(label: str, done: int, total: int | None = None, note: str = "", plain: bool = False) -> None:
    """Report step ``done`` of ``total`` of the work called ``label`` (``done == total`` ends it).

    ``plain``: also worth a plain line now and then in a log file (long work), not only on the status line.
    """
    if _listeners:
        _tell("task", label, done, total, note, plain)


def track(items: Iterable[T], total: int | None = None, label: str = "working", unit: str = "") -> Iterator[T]:
    """Yield ``items``, reporting each one as a step of ``label`` (``unit`` names the steps, e.g. 'batches').

    Long passes are worth a plain line in a log file too (``plain``), not only the status line.

    ``total`` defaults to ``len(items)`` when it has one. Example::

        for start in progress.track(range(0, len(images), batch), label="teacher pass (pool)"):
            ...
    """
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    done = 0
    try:
        for item in items:
            yield item
            done += 1
            task(label, done, total, unit, True)
    finally:
        if total is None or done < total:
            task(label, total if total is not None else done, total if total is not None else done, unit, True)


def finish() -> None:
    """The reported work is over: listeners take their live lines down (before a result is printed)."""
    for listener in list(_listeners):
        end = getattr(listener, "finish", None)
        if end is not None:
            try:
                end()
            except Exception:
                logger.debug("progress listener failed", exc_info=True)
