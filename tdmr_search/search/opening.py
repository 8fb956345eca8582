"""Opening a study: create and describe a new one, or load one after checking it is ours and unchanged.

A study made by tdmr-search carries ``tdmr_search_version`` (set last, so it marks a complete
description) and a fingerprint of its space and data; a resumed run compares the fingerprint and
refuses a changed space unless told (``--allow-changed-space``, recorded as ``space_changes``).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage

from tdmr_search.config import format_flops
from tdmr_search.errors import StudyError
from tdmr_search.search import fingerprint as fp
from tdmr_search.search.secrets import redact
from tdmr_search.search.settings import StoreOptions
from tdmr_search.search.space import SearchSpace
from tdmr_search.version import __version__

__all__ = ["open_study"]

logger = logging.getLogger(__name__)


def open_study(rdb: RDBStorage, study_name: str, url: str, two_objective: bool, sampler: Any, pruner: Any,
                space: SearchSpace, fit: list, over: list, data: Any, seed: int, options: StoreOptions) -> optuna.Study:
    """Create the study, or load it after checking it is ours and was run with this space and data."""
    directions = ["maximize", "minimize"] if two_objective else ["maximize"]
    current = fp.fingerprint(space, fit, data)
    try:
        study = optuna.create_study(study_name=study_name, storage=rdb, directions=directions, sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=rdb, sampler=sampler, pruner=pruner)
    else:
        _study_metrics(study, two_objective)
        _study_attrs(study, space, fit, over, two_objective, current, seed)
        return study
    attrs = _wait_for_marker(study)
    n = len(study.get_trials(deepcopy=False))
    if not attrs.get("tdmr_search_version"):
        if not options.adopt_study:
            kind = "/".join(d.name.lower() for d in study.directions)
            raise StudyError(
                f"Study {study_name!r} in {redact(url)!r} was not created by tdmr-search (a {kind} study with {n} "
                "trials and no tdmr_search_version attribute); choose another --study, or pass --adopt-study to "
                "add tdmr-search trials to it"
            )
        _check_directions(study, study_name, directions)
        _study_metrics(study, two_objective)
        study.set_user_attr("adopted", {"trials_before": n, "tdmr_search_version": __version__})
        _study_attrs(study, space, fit, over, two_objective, current, seed)
        logger.warning("study %r was not made by tdmr-search: adopted it (--adopt-study) with its %d trials", study_name, n)
        return study
    _check_directions(study, study_name, directions)
    stored = attrs.get("fingerprint")
    if stored is None:  # made by an earlier version: compare from now on
        study.set_user_attr("fingerprint", current)
        return study
    changed = fp.changes(stored, current)
    if not changed:
        return study
    what = fp.describe(stored, current, changed)
    bad = fp.incompatible(stored, current, changed)
    if bad:
        raise StudyError(
            f"Study {study_name!r} was run with another search space or data: {what}; Optuna cannot mix trials "
            f"whose {', '.join(bad)} choices differ, even with --allow-changed-space; choose a new --study, or "
            "restore the space"
        )
    if not options.allow_changed_space:
        raise StudyError(
            f"Study {study_name!r} was run with another search space or data: {what}; its trials and new ones "
            "would not compare; choose a new --study, restore the space, or pass --allow-changed-space to go on "
            "(recorded in the study)"
        )
    history = list(attrs.get("space_changes") or [])
    history.append({"from_trial": n, "changed": changed, "before": {k: stored.get(k) for k in changed},
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tdmr_search_version": __version__})
    study.set_user_attr("space_changes", history)
    study.set_user_attr("fingerprint", current)
    study.set_user_attr("space", space.raw)
    study.set_user_attr("max_flops", space.max_flops)
    study.set_user_attr("max_flops_text", format_flops(space.max_flops) if space.max_flops else None)
    logger.warning("study %r: the search space changed from trial %d on (%s); recorded as space_changes",
                   study_name, n, what)
    return study


def _wait_for_marker(study: optuna.Study, seconds: float = 10.0) -> dict[str, Any]:
    """The study's user attrs, once it is complete: an empty study without the tdmr-search marker may be
    one another process (a worker, a second machine) is describing right now, so wait a little for it."""
    end = time.monotonic() + seconds
    while True:
        attrs = study.user_attrs
        if attrs.get("tdmr_search_version") or time.monotonic() > end:
            return attrs
        if (attrs and "space_name" not in attrs) or (not attrs and study.get_trials(deepcopy=False)):
            return attrs  # another program's study
        time.sleep(0.2)


def _check_directions(study: optuna.Study, study_name: str, directions: list[str]) -> None:
    if [d.name.lower() for d in study.directions] != directions:
        raise StudyError(
            f"Study {study_name!r} was created with {len(study.directions)} objective(s); "
            f"run it {'with' if len(study.directions) == 2 else 'without'} --two-objective, or choose a new --study"
        )


def _study_metrics(study: optuna.Study, two_objective: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(["val_acc", "flops"] if two_objective else ["val_acc"])




def _study_attrs(study: optuna.Study, space: SearchSpace, fit: list, over: list, two_objective: bool,
                 fingerprint: dict[str, Any], seed: int) -> None:
    """Describe a new study; ``tdmr_search_version`` goes last: it marks a complete tdmr-search study."""
    study.set_user_attr("space_name", space.name)
    study.set_user_attr("space", space.raw)
    study.set_user_attr("base_config", space.base.to_dict())
    study.set_user_attr("max_flops", space.max_flops)
    study.set_user_attr("max_flops_text", format_flops(space.max_flops) if space.max_flops else None)
    study.set_user_attr("feasible_students", {c.key: c.flops for c in fit})
    study.set_user_attr("over_cap_students", {c.key: (c.error or c.flops) for c in over})
    study.set_user_attr("objectives", ["val_acc", "flops"] if two_objective else ["val_acc"])
    study.set_user_attr("description", "TDMR search: each trial reprograms the frozen teacher (stage 1) and "
                        "distils it into the student (stage 2); the value is the student's validation accuracy. "
                        "User attrs of each trial: val_acc, test_acc (never used to choose), teacher_val_acc, flops, "
                        "params, seconds per stage, teacher_cached, config (the resolved pipeline config), "
                        "data (split sizes: train, val, test, pool = unlabelled images drawn from the train split, "
                        "unlabeled = pool + its views + mixup images), failure_reason, interrupted (a trial stopped by a signal or the --budget deadline: it "
                        "does not count toward a trial budget), sampler (name, --seed and the trial's own seed).")
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("sampler_seeding", f"each trial's sampler seed is derived from --seed ({seed} for the run "
                        "that created the study) and the trial number: tdmr_search.search.seeding.derive_seed")
    study.set_user_attr("tdmr_search_version", __version__)

