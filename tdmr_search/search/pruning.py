"""Pruners by name, the ``auto`` choice, and the signal trials report to them (DESIGN.md section 8).

Trials report a low-noise signal after every stage-2 epoch, not the validation accuracy (which
stays the objective): top-1 agreement with one fixed reference teacher on a slice of the pool,
or, without a pool, the negative validation log-loss. ``auto`` picks a pruner by what the study
can afford: Hyperband splits trials into brackets and gives the sampler only the current
bracket's trials (``optuna/pruners/__init__.py``, ``_filter_study``), which starves TPE in a study
of tens of trials, so it is chosen only for budgets of hundreds.
"""

from __future__ import annotations

from typing import Any

import optuna

from tdmr_search.errors import ConfigError
from tdmr_search.registry import closest

__all__ = ["PRUNERS", "HYPERBAND_MIN_TRIALS", "choose_pruner", "make_pruner", "pruning_signal", "SIGNAL_NO_POOL"]

PRUNERS = ("auto", "median", "halving", "hyperband", "none")
#: ``auto`` picks Hyperband only for trial budgets at least this large.
HYPERBAND_MIN_TRIALS = 200
#: Trials the median rule lets finish before it prunes anything.
MEDIAN_STARTUP_TRIALS = 5
SIGNAL_NO_POOL = "negative validation cross-entropy (log-loss)"


def choose_pruner(name: str, n_trials: int | None, two_objective: bool = False) -> tuple[str, str]:
    """Resolve ``auto`` to a pruner name; returns (name, the reason, for the log)."""
    if name != "auto":
        return name, "asked for"
    if two_objective:
        return "none", "Optuna does not prune multi-objective studies"
    if n_trials is not None and n_trials >= HYPERBAND_MIN_TRIALS:
        return "hyperband", (f"a budget of {n_trials} trials (>= {HYPERBAND_MIN_TRIALS}) fills Hyperband's brackets, "
                             "and each bracket's sampler still sees tens of trials")
    budget = f"a budget of {n_trials} trials" if n_trials is not None else "a time budget (its trial count is unknown)"
    return "median", (f"{budget}: the median rule with patience keeps every trial in the sampler's view, where "
                      f"Hyperband (chosen from {HYPERBAND_MIN_TRIALS} trials) would show TPE one bracket's share")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """A pruner by name over stage-2 epochs (``auto`` must be resolved with :func:`choose_pruner` first).

    - ``median``: prune a trial whose signal is below the median of earlier trials at the same
      epoch, after ``MEDIAN_STARTUP_TRIALS`` trials, a warm-up of a third of the schedule, and one
      epoch of patience (no improvement over the last epoch);
    - ``halving``: asynchronous successive halving (one bracket), from a third of the schedule;
    - ``hyperband``: Hyperband over 1..max_epochs with reduction factor 3;
    - ``none``: never prune.
    """
    warmup = max(1, round(max_epochs / 3))
    if name == "median":
        return optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup - 1),
            patience=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    hint = closest(str(name), PRUNERS)
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {name!r}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def pruning_signal(metrics: dict[str, Any]) -> float:
    """The value an epoch reports to the pruner: agreement with the reference, else -val log-loss."""
    if metrics.get("agreement") is not None:
        return float(metrics["agreement"])
    return -float(metrics["val_loss"])
