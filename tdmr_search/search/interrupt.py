"""Stop a search on SIGINT (Ctrl-C) or SIGTERM without losing the signal or printing a traceback.

A signal handler that raises (Python's default for SIGINT) can fire anywhere, including inside a
weakref callback or ``__del__``, where the exception is printed as "Exception ignored in ..." and
lost. So the handlers here only set a flag; the search checks it between steps (before a trial,
after every epoch, before the baselines) and raises :class:`~tdmr_search.errors.Interrupted`
there. A second signal raises ``KeyboardInterrupt`` at once, for a step that takes too long; the
flag stays set, so even that one cannot be lost.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tdmr_search.errors import Interrupted

__all__ = ["stop_on_signals", "requested", "check", "reason", "on_request"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, Any] = {"signal": None, "listeners": []}


def requested() -> bool:
    """Whether a stop was asked for (a signal arrived since :func:`stop_on_signals` began)."""
    return _state["signal"] is not None


def reason() -> str:
    """The signal's name ('SIGTERM'), or '' when none arrived."""
    sig = _state["signal"]
    return signal.Signals(sig).name if sig is not None else ""


def check(where: str = "") -> None:
    """Raise :class:`Interrupted` when a stop was asked for; call it between steps."""
    if requested():
        raise Interrupted(f"interrupted by {reason()}" + (f" {where}" if where else ""))


def on_request(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` (from the signal handler: keep it tiny) when a stop is asked for.

    Returns a function that removes it.
    """
    _state["listeners"].append(listener)
    return lambda: _state["listeners"].remove(listener) if listener in _state["listeners"] else None


def _handler(signum: int, frame: Any) -> None:
    if _state["signal"] is not None:  # the second signal: stop now
        raise KeyboardInterrupt(signal.Signals(signum).name)
    _state["signal"] = signum
    for listener in list(_state["listeners"]):
        try:
            listener()
        except Exception:  # noqa: BLE001 - a handler must never raise by accident
            pass


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set the stop flag instead of raising.

    Outside the main thread (where Python allows no handlers) this does nothing. On leaving, the
    previous handlers come back; the flag stays set so the caller can still report the signal.
    Nested use keeps the outer handlers.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is _handler:
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    reset()
    for s in _SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def reset() -> None:
    """Forget an earlier stop request (for a process that runs several searches, e.g. tests)."""
    _state["signal"] = None
