"""Pruners by name, the ``auto`` choice, and the signal trials report to them (DESIGN.md section 8).

Trials report a low-noise signal after every stage-2 epoch, not the validation accuracy (which
stays the objective): top-1 agreement with one fixed reference teacher on a slice of the pool,
or, without a pool, the negative validation log-loss. ``auto`` picks a pruner by what the study
can afford: Hyperband splits trials into brackets and gives the sampler only the current
bracket's trials (``optuna/pruners/__init__.py``, ``_filter_study``), which starves TPE in a study
of tens of trials, so it is chosen only for budgets of hundreds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from tdmr_search.errors import ConfigError
from tdmr_search.registry import did_you_mean

__all__ = [
    "PRUNERS", "HYPERBAND_MIN_TRIALS", "MedianWithPatience", "choose_pruner", "make_pruner", "pruning_signal",
    "SIGNAL_NO_POOL", "small_validation_note",
]

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

    - ``median``: :class:`MedianWithPatience` after ``MEDIAN_STARTUP_TRIALS`` finished trials and a
      warm-up of a third of the schedule, with one epoch of patience;
    - ``halving``: asynchronous successive halving (one bracket), from a third of the schedule;
    - ``hyperband``: Hyperband over 1..max_epochs with reduction factor 3;
    - ``none``: never prune.
    """
    factory = _PRUNERS.get(name)
    if factory is None:
        raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {name!r}{did_you_mean(name, PRUNERS)}")
    return factory(max_epochs, max(1, round(max_epochs / 3)))


def small_validation_note(n_val: int, pruner: str, two_objective: bool = False, pool: int = 0) -> str | None:
    """A warning when pruning would decide on a validation split where one image is over a point.

    With an unlabelled pool the pruner hears the agreement with the reference teacher over up to
    1,000 pool images instead, and there is nothing to warn about.
    """
    if pruner == "none" or two_objective or n_val >= 100 or pool >= 100:
        return None
    return (f"the validation split has {n_val} images (one image = {100 / max(n_val, 1):.1f} accuracy points): "
            f"early-epoch accuracies barely rank trials, so the {pruner} pruner may stop slow starters that "
            "would have won; more labelled images, or --pruner none, make the search safer (README: Performance)")


class MedianWithPatience(optuna.pruners.BasePruner):
    """Prune a trial whose signal was below the median of the other trials at this epoch and at
    each of the ``patience`` epochs before it (one bad epoch alone never prunes).

    Args:
        n_startup_trials: Finished (complete) trials needed before anything is pruned.
        n_warmup_epochs: Epochs every trial runs before it can be pruned.
        patience: Earlier epochs that must also have been below the median.
    """

    def __init__(self, n_startup_trials: int, n_warmup_epochs: int, patience: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.n_warmup_epochs = n_warmup_epochs
        self.patience = patience

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step + 1 < self.n_warmup_epochs:
            return False
        from optuna.trial import TrialState

        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if sum(t.state == TrialState.COMPLETE for t in finished) < self.n_startup_trials:
            return False
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        for s in range(step - self.patience, step + 1):
            value = trial.intermediate_values.get(s)
            others = [t.intermediate_values[s] for t in finished if s in t.intermediate_values]
            if value is None or not others:
                return False
            median = float(np.nanmedian(others))
            if not (value < median if maximize else value > median):
                return False
        return True


#: name -> factory(max_epochs, warm-up epochs); ``auto`` is resolved by :func:`choose_pruner` first.
_PRUNERS: dict[str, Callable[[int, int], optuna.pruners.BasePruner]] = {
    "median": lambda epochs, warmup: MedianWithPatience(MEDIAN_STARTUP_TRIALS, warmup, patience=1),
    "halving": lambda epochs, warmup: optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=3),
    "hyperband": lambda epochs, warmup: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1),
                                                                        reduction_factor=3),
    "none": lambda epochs, warmup: optuna.pruners.NopPruner(),
}


def pruning_signal(metrics: dict[str, Any]) -> float:
    """The value an epoch reports to the pruner: agreement with the reference, else -val log-loss."""
    if metrics.get("agreement") is not None:
        return float(metrics["agreement"])
    return -float(metrics["val_loss"])
