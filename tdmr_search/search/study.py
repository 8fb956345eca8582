"""The search loop: ``tdmr-search run`` on one :class:`~tdmr_search.search.settings.SearchSettings`.

:func:`run_search` checks the settings, then runs the trials here (:func:`_run_here`, Optuna's
``optimize``) or in worker processes (:mod:`.workers`), and finishes the study (:func:`_finish`):
re-evaluation of the best configurations, then the baselines for the pick. The parts it stands
on: the store (:mod:`.storage`, :mod:`.opening`), the budget (:mod:`.budget`), samplers and
pruners (:mod:`.samplers`, :mod:`.pruning`), the objective (:mod:`.objective`) and what is said
(:mod:`.summary`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.data import load_data
from tdmr_search.errors import ConfigError, Interrupted, TdmrError, TrialFailed
from tdmr_search.search import interrupt
from tdmr_search.search.baselines import run_baselines
from tdmr_search.search.budget import check_stop, count_finished, fmt_seconds, parse_budget, stop_reason
from tdmr_search.search.objective import KEEP_WEIGHTS, Objective
from tdmr_search.search.opening import open_study
from tdmr_search.search.pruning import choose_pruner, make_pruner, small_validation_note
from tdmr_search.search.reevaluate import REEVALUATE_SHARE, reevaluation
from tdmr_search.search.samplers import make_sampler
from tdmr_search.search.settings import SearchSettings
from tdmr_search.search.space import SearchSpace, load_space
from tdmr_search.search.storage import (
    SQLITE_MAX_WORKERS,
    AtomicArtifactStore,
    artifact_dir,
    check_sqlite_writable,
    check_study_name,
    check_url,
    default_storage,
    load_study,
    mkdirs_or_fail,
    open_storage,
    remove_empty,
    sqlite_path,
    store_error,
)
from tdmr_search.search.summary import TrialLine, summary

__all__ = ["run_search"]

logger = logging.getLogger(__name__)


def run_search(settings: SearchSettings) -> str:
    """Run (or resume) the search ``settings`` describe and return a summary for the terminal.

    SIGINT and SIGTERM stop it between steps: the running trial is closed as failed with
    ``interrupted`` (it does not count toward a trial budget) and :class:`Interrupted` is raised
    with the summary attached. A time budget is a deadline for everything; with re-evaluation on,
    the search itself stops after ``1 - REEVALUATE_SHARE`` of it, and a trial budget says how many
    runs re-evaluation adds.
    """
    with interrupt.stop_on_signals():
        start = time.monotonic()
        check_study_name(settings.study)
        n_trials, timeout = parse_budget(settings.budget)
        deadline = None if timeout is None else start + timeout
        space = load_space(settings.space)
        make_sampler(settings.sampler, settings.seed, settings.two_objective)
        pruner, why = choose_pruner(settings.pruner, n_trials, settings.two_objective)
        make_pruner(pruner, space.base.distill.epochs)
        top = not settings.is_worker  # the run the user started, not one of its workers
        if top:
            logger.info("pruner: %s (%s)", pruner, why)
        url = settings.storage or default_storage(settings.study)
        check_url(url)
        settings = settings.replace(storage=url, pruner=pruner)
        gpus = settings.gpus
        gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus is not None else []
        if gpus is not None and (not gpu_ids or not all(g.isdigit() for g in gpu_ids)):
            raise ConfigError(f"--gpus must be comma-separated GPU numbers such as 0,1; got {gpus!r}")
        if settings.workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {settings.workers}")
        if gpu_ids:
            settings = settings.replace(workers=len(gpu_ids))
        workers = settings.workers
        if workers > SQLITE_MAX_WORKERS and url.startswith("sqlite"):
            raise ConfigError(
                f"--workers {workers} on SQLite: SQLite serves at most {SQLITE_MAX_WORKERS} local workers safely; use a "
                "PostgreSQL or MySQL --storage URL (postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db)"
            )
        k, folds = settings.reevaluate, settings.folds
        if k < 0 or folds < 1:
            raise ConfigError(f"--reevaluate must be 0 or more and --folds 1 or more; got {k} and {folds}")
        created: list[Path] = []  # folders this run made: removed again if they are left empty
        finish = top and not settings.two_objective and (settings.baselines or k > 0)
        search_deadline = deadline
        if finish and deadline is not None and k > 0:
            search_deadline = start + (1.0 - REEVALUATE_SHARE) * timeout
            logger.info("re-evaluation of the %d best configurations on %d folds: the search stops after %s of the "
                        "%s budget, the rest is for re-evaluation and baselines", k, folds,
                        fmt_seconds((1.0 - REEVALUATE_SHARE) * timeout), fmt_seconds(timeout))
        elif finish and k > 0 and n_trials is not None:
            logger.info("re-evaluation adds up to %d training runs after the %d trials (%d best configurations x %d "
                        "more folds)", k * (folds - 1), n_trials, k, folds - 1)
        try:
            if top and (workers > 1 or settings.isolate):
                from tdmr_search.search.workers import run_workers

                text = run_workers(settings, n_trials, search_deadline, pruner, gpu_ids, created)
            else:
                text = _run_here(settings, space, n_trials, search_deadline, settings.baselines and not finish,
                                 created, trial_deadline=deadline)
            if finish:
                text = _finish(settings, space, deadline)
            return text
        finally:
            remove_empty(created)


def _store_dir(settings: SearchSettings) -> Path:
    url = settings.storage or ""
    return artifact_dir(settings.study, url if url.startswith("sqlite") else None, settings.artifacts)


def _teacher_cache(settings: SearchSettings, store_dir: Path, created: list[Path] | None = None) -> Any:
    """The study's teacher cache beside its artifact store (None with ``--no-cache``)."""
    if not settings.teacher_cache:
        return None
    from tdmr_search.pipeline.cache import TeacherCache

    folder = store_dir.parent / f"{settings.study}-cache"
    if created is not None and not folder.exists():
        created.append(folder)
    return TeacherCache.beside(folder)


def _finish(settings: SearchSettings, space: SearchSpace, deadline: float | None) -> str:
    """After the search: re-evaluate the best configurations, run the baselines for the pick, summarise.

    Both stop at the deadline or on a signal; what finished is kept (a rerun resumes them).
    """
    from tdmr_search.search.reevaluate import reevaluate, resume_note

    url = settings.storage or ""
    study = load_study(settings.study, url)
    store_dir = _store_dir(settings)
    cache = _teacher_cache(settings, store_dir)
    try:
        check_stop(deadline)
        data = load_data(space.base.data, space.base.seed)
        if settings.reevaluate > 0:
            note = resume_note(study, settings.reevaluate, settings.folds)
            if note:
                logger.info(note)
            reevaluate(study, data, settings.reevaluate, settings.folds, cache, check_stop=lambda: check_stop(deadline))
        if settings.baselines:
            run_baselines(study, space, data, deadline, cache)
    except Interrupted as err:
        if interrupt.requested():
            err.summary = summary(study, url, store_dir)
            raise
        logger.warning("the --budget deadline passed: %s (a rerun of the same command finishes it)", err)
    return summary(study, url, store_dir)


def _run_here(settings: SearchSettings, space: SearchSpace, n_trials: int | None, deadline: float | None,
              baselines: bool, created: list[Path], trial_deadline: float | None = None) -> str:
    """Run the search in this process until ``deadline``; a trial running then may go on until
    ``trial_deadline`` (the whole budget's end, when part of it is kept for re-evaluation)."""
    from tdmr_search.search.preflight import preflight

    url, two_objective, pruner = settings.storage or "", settings.two_objective, settings.pruner
    checked = preflight(space, between=lambda: check_stop(None))  # the same pre-flight as `validate`
    data, fit, over = checked.data, checked.fit, checked.over
    note = small_validation_note(len(data.val), pruner, two_objective, data.pool_size)
    if note:
        logger.warning(note)
    check_stop(None)
    path = sqlite_path(url)
    if path is not None:
        mkdirs_or_fail(path.parent, created, f"study store {str(path)!r}", "choose a writable --storage sqlite:///PATH "
                       "or a database URL")
    check_sqlite_writable(url)
    store_dir = _store_dir(settings)
    mkdirs_or_fail(store_dir, created, f"artifact store folder {str(store_dir)!r}", "choose a writable --artifacts folder")
    rdb = open_storage(url, wal=True, allow_other_tables=settings.store.allow_other_tables)
    try:
        study = open_study(rdb, settings.study, url, two_objective,
                           make_sampler(settings.sampler, settings.seed, two_objective),
                           make_pruner(pruner, space.base.distill.epochs), space, fit, over, data, settings.seed,
                           settings.store)
    except TdmrError:
        raise
    except Exception as err:  # the store failed under us (disk full, server gone)
        raise store_error(err, url) from None
    store = AtomicArtifactStore(str(store_dir))
    cache = _teacher_cache(settings, store_dir, created)
    objective = Objective(space, fit, data, artifact_store=store, two_objective=two_objective, teacher_cache=cache,
                          stop=lambda: stop_reason(trial_deadline or deadline), store_dir=store_dir)
    signal = (f"the pruning signal, after every stage-2 epoch: {objective.signal}; validation accuracy is the "
              "objective (val_curve)")
    if not two_objective and study.user_attrs.get("intermediate_values") != signal:
        study.set_user_attr("intermediate_values", signal)
    callbacks: list[Any] = [lambda s, t: _keep_best_weights(s, store)]
    if settings.progress:
        callbacks.append(TrialLine(n_trials, None if deadline is None else deadline - time.monotonic()))

    def stop_when_done(s: optuna.Study, t: FrozenTrial) -> None:
        if stop_reason(deadline) or (n_trials is not None and count_finished(s) >= n_trials):
            s.stop()

    callbacks.append(stop_when_done)
    quiet = _QuietFailedTrials()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    remove_listener = interrupt.on_request(lambda: _stop_quietly(study))
    stopped: Interrupted | None = None
    try:
        finished = count_finished(study)
        if (n_trials is None or finished < n_trials) and not stop_reason(deadline):
            todo = None if n_trials is None else n_trials - finished
            if settings.max_trials is not None:
                todo = settings.max_trials if todo is None else min(todo, settings.max_trials)
            study.optimize(objective, n_trials=todo, timeout=None if deadline is None else deadline - time.monotonic(),
                           catch=(TrialFailed,), callbacks=callbacks, gc_after_trial=True)
        check_stop(None if trial_deadline else deadline)  # the search's share ending is no stop: the rest follows
        if baselines and not two_objective:
            run_baselines(study, space, data, deadline, cache)
    except Interrupted as err:
        stopped = err
    except TdmrError:
        raise
    except Exception as err:  # the store failed under us (disk full, server gone)
        raise store_error(err, url) from None
    finally:
        remove_listener()
        optuna_log.removeFilter(quiet)
    text = summary(study, url, store_dir)
    if stopped is not None and interrupt.requested():
        stopped.summary = text
        raise stopped
    if stopped is not None:
        logger.warning("the --budget deadline passed: %s", stopped)
    return text


def _keep_best_weights(study: optuna.Study, store: Any, keep: int = KEEP_WEIGHTS) -> None:
    """Remove the student weights of finished trials that are not among the best ``keep``."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if len(study.directions) == 1:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(done, key=lambda t: sign * t.values[0])
        keepers = {t.number for t in ranked[:keep]} | set(reevaluation(study))  # and every re-evaluated one
    else:
        keepers = {t.number for t in study.best_trials}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        artifact_id = t.user_attrs.get("weights_artifact_id")
        if artifact_id and t.number not in keepers:
            try:
                store.remove(artifact_id)
            except Exception:  # already removed (by another worker)
                pass


class _QuietFailedTrials(logging.Filter):
    """Drop Optuna's traceback for a trial that failed on purpose: the objective logged its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (TdmrError, KeyboardInterrupt)):
            return False
        return not re.match(r"Trial \d+ failed with value None\.", record.getMessage())


def _stop_quietly(study: optuna.Study) -> None:
    try:
        study.stop()
    except RuntimeError:  # not inside optimize: the next check between steps stops the run
        pass
