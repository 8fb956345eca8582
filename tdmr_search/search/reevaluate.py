"""Re-evaluation of the best configurations, and the pick that ranks by it (DESIGN.md section 8).

A validation split of 50 images has a standard error of about 7 points, so the trial with the
best single validation accuracy is partly luck. After the search the ``k`` best configurations
are retrained on other folds of the same labelled images (``data.split_seed`` = seed + 1, seed +
2, ...: the same labelled and pool images, another stratified train/validation split), and the
pick is the configuration with the best mean validation accuracy over its folds.

Optuna does not let a finished trial's user attrs change, so the record lives in the study's
user attr ``reevaluation``: ``{trial number: {val_acc_seeds, val_acc_mean, val_acc_std,
split_seeds, test_acc_seeds}}`` (test accuracy for the benchmarks; never used to choose). It is
written after every run, so an interrupted re-evaluation resumes where it stopped.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.config import config_from_dict
from tdmr_search.data import TargetData, load_data
from tdmr_search.errors import Interrupted, TdmrError

__all__ = [
    "ATTR", "REEVALUATE_DEFAULT", "FOLDS_DEFAULT", "REEVALUATE_SHARE", "reevaluate", "reevaluation", "pick", "ranked",
    "runs_needed", "best_trials",
]

logger = logging.getLogger(__name__)

#: The study user attr holding the re-evaluation record.
ATTR = "reevaluation"
#: Configurations re-evaluated after a search, and validation accuracies wanted for each.
REEVALUATE_DEFAULT = 3
FOLDS_DEFAULT = 3
#: Share of a time budget kept for re-evaluation and baselines.
REEVALUATE_SHARE = 0.25


def reevaluation(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """The re-evaluation record by trial number (empty when none ran)."""
    return {int(k): v for k, v in (study.user_attrs.get(ATTR) or {}).items()}


def _single_best(study: optuna.Study, k: int) -> list[FrozenTrial]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values and "config" in t.user_attrs]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (sign * t.values[0], t.number))[:k]


def runs_needed(study: optuna.Study, k: int, folds: int) -> int:
    """Training runs still to do to re-evaluate the ``k`` best trials on ``folds`` folds in all."""
    record = reevaluation(study)
    return sum(max(0, folds - len((record.get(t.number) or {}).get("val_acc_seeds", [None])))
               for t in _single_best(study, k))


def resume_note(study: optuna.Study, k: int, folds: int) -> str | None:
    """A line for the log when an earlier run already recorded part of the re-evaluation."""
    full = len(_single_best(study, k)) * max(folds - 1, 0)
    left = runs_needed(study, k, folds)
    if left >= full:
        return None
    return f"re-evaluation: {left} of its {full} training runs left (an earlier run recorded the rest)"


def reevaluate(study: optuna.Study, data: TargetData, k: int, folds: int, cache: Any = None,
               check_stop: Callable[[], None] = lambda: None,
               on_epoch_end: Callable[[int, dict], None] | None = None) -> dict[int, dict[str, Any]]:
    """Retrain the ``k`` best trials' configs on the other ``folds - 1`` folds; record as it goes.

    Args:
        study: A one-objective study whose trials hold their resolved ``config``.
        data: The study's target data (fold 0: the split every trial was scored on).
        k: How many of the best trials (by their single validation accuracy).
        folds: Validation accuracies wanted per configuration, the trial's own included.
        cache: The study's teacher cache (the pool's features are shared by every fold).
        check_stop: Called before every run and after every epoch; raises to stop (the record
            keeps what finished).
        on_epoch_end: Optional progress callback of every run.
    """
    if len(study.directions) != 1 or k <= 0 or folds <= 1:
        return reevaluation(study)
    from tdmr_search.pipeline.run import run_pipeline

    fold_data: dict[int, TargetData] = {}

    def callback(step: int, metrics: dict) -> None:
        check_stop()
        if on_epoch_end is not None:
            on_epoch_end(step, metrics)

    for trial in _single_best(study, k):
        config = config_from_dict(trial.user_attrs["config"])
        while True:
            check_stop()
            record = reevaluation(study)  # read again before every run: another process may share the study
            entry = record.get(trial.number) or {
                "val_acc_seeds": [trial.user_attrs.get("val_acc", trial.values[0])],
                "test_acc_seeds": [trial.user_attrs.get("test_acc")],
                "split_seeds": [None],
            }
            if len(entry["val_acc_seeds"]) >= folds:
                break
            fold = len(entry["val_acc_seeds"])
            split_seed = config.seed + fold
            if fold not in fold_data:
                fold_data[fold] = _fold(data, config, split_seed)
            logger.info("re-evaluating trial %d on fold %d of %d (data.split_seed %d)", trial.number, fold + 1, folds,
                        split_seed)
            try:
                m = run_pipeline(config.replace({"data.split_seed": split_seed}), callback, data=fold_data[fold],
                                 cache=cache).metrics
                val, test = float(m["val_acc"]), m.get("test_acc")
            except Interrupted:  # a signal or the deadline: this fold is not recorded, a rerun does it
                raise
            except TdmrError as err:  # recorded as a failed fold: the configuration cannot be trusted
                logger.warning("re-evaluation of trial %d failed on fold %d: %s", trial.number, fold + 1, err)
                val, test = 0.0, None
            record = reevaluation(study)  # merge into what is there now; a fold another process added wins
            entry = record.get(trial.number) or entry
            if len(entry["val_acc_seeds"]) == fold:
                entry["val_acc_seeds"].append(val)
                entry["test_acc_seeds"].append(test)
                entry["split_seeds"].append(split_seed)
                _summarise(entry)
                record[trial.number] = entry
                study.set_user_attr(ATTR, {str(n): e for n, e in sorted(record.items())})
    return reevaluation(study)


def _fold(data: TargetData, config: Any, split_seed: int) -> TargetData:
    """The study's data re-split with ``split_seed`` (the pool and test split are the same images)."""
    fold = load_data(config.data.__class__(**{**config.to_dict()["data"], "split_seed": split_seed}), config.seed)
    return fold


def _summarise(entry: dict[str, Any]) -> None:
    vals = entry["val_acc_seeds"]
    entry["val_acc_mean"] = statistics.fmean(vals)
    entry["val_acc_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0


def ranked(study: optuna.Study) -> list[tuple[FrozenTrial, dict[str, Any] | None]]:
    """Complete trials, best first: re-evaluated ones by their mean, then the rest by their value."""
    record = reevaluation(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    re = [t for t in done if t.number in record and len(record[t.number]["val_acc_seeds"]) > 1]
    rest = [t for t in done if t not in re]
    re.sort(key=lambda t: (sign * record[t.number]["val_acc_mean"], t.number))
    rest.sort(key=lambda t: (sign * t.values[0], t.number))
    return [(t, record[t.number]) for t in re] + [(t, None) for t in rest]


def pick(study: optuna.Study) -> FrozenTrial:
    """The trial to call best: the best re-evaluated mean when there is one, else ``study.best_trial``."""
    order = ranked(study)
    if order and order[0][1] is not None:
        return order[0][0]
    return study.best_trial


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The pick of a one-objective study (:func:`pick`), or the Pareto front of a two-objective one;
    empty when no trial has finished."""
    try:
        return [pick(study)] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        return []
