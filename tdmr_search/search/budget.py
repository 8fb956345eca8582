"""The budget of a run: a number of trials or a duration, and when to stop.

A duration is a deadline for everything the run does; a signal (SIGINT, SIGTERM) stops it too.
Both are checked between steps (before a trial, after every epoch), never inside one.
"""

from __future__ import annotations

import re
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.errors import ConfigError, Interrupted
from tdmr_search.search import interrupt

__all__ = ["parse_budget", "fmt_seconds", "stop_reason", "check_stop", "counts_toward_budget", "count_finished"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)\s*$", re.IGNORECASE)


def parse_budget(text: str | int) -> tuple[int | None, float | None]:
    """A budget: a number of trials ('20') or a duration ('90s', '30m', '2h'). Returns (trials, seconds)."""
    s = str(text).strip()
    if s.isdigit() and int(s) > 0:
        return int(s), None
    match = _DURATION.match(s)
    if match and float(match.group(1)) > 0:
        unit = match.group(2).lower()[0]
        return None, float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    raise ConfigError(f"--budget must be a number of trials (20) or a duration (90s, 30m, 2h); got {text!r}")


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def stop_reason(deadline: float | None) -> str | None:
    """Why the search must stop now: a signal, the --budget deadline, or None to go on."""
    if interrupt.requested():
        return f"interrupted by {interrupt.reason()}"
    if deadline is not None and time.monotonic() >= deadline:
        return "stopped at the --budget deadline"
    return None


def check_stop(deadline: float | None) -> None:
    why = stop_reason(deadline)
    if why:
        raise Interrupted(why)

def counts_toward_budget(t: FrozenTrial) -> bool:
    """Finished trials count toward a trial budget; one stopped by a signal or the deadline does not."""
    if t.state == TrialState.FAIL:
        return not t.user_attrs.get("interrupted")
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def count_finished(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
