"""The study store and the search loop: ``run``, ``status`` and the helpers export and report use.

One Optuna study per search in any SQLAlchemy URL (default ``sqlite:///studies/<study>.db``),
heartbeats on so a trial whose worker died is marked failed and retried with the same
parameters, student weights of the best few trials in a file-system artifact store beside it.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tdmr_search import __version__, progress
from tdmr_search.config import format_flops
from tdmr_search.data import load_data
from tdmr_search.errors import ConfigError, Interrupted, StudyError, TdmrError, TrialFailed
from tdmr_search.fsio import disk_error, is_disk_error, write_with
from tdmr_search.registry import closest
from tdmr_search.search import fingerprint as fp
from tdmr_search.search import interrupt
from tdmr_search.search.objective import KEEP_WEIGHTS, Objective
from tdmr_search.search.pruning import choose_pruner, make_pruner
from tdmr_search.search.reevaluate import FOLDS_DEFAULT, REEVALUATE_DEFAULT, REEVALUATE_SHARE, pick, reevaluation
from tdmr_search.search.secrets import redact
from tdmr_search.search.seeding import PerTrialSeedSampler
from tdmr_search.search.space import SearchSpace, load_space

__all__ = [
    "default_storage", "open_storage", "load_study", "artifact_dir", "parse_budget", "make_sampler",
    "make_pruner", "run_search", "study_status", "best_trials", "SQLITE_MAX_WORKERS", "StoreOptions",
    "counts_toward_budget", "check_url",
]

logger = logging.getLogger(__name__)

#: Heartbeat of running trials and how long one may be silent before it counts as dead
#: (TDMR_HEARTBEAT_SECONDS / TDMR_GRACE_SECONDS override them, e.g. in tests).
HEARTBEAT_SECONDS = int(os.environ.get("TDMR_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = int(os.environ.get("TDMR_GRACE_SECONDS", "30"))
SQLITE_MAX_WORKERS = 4
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_study_name(name: str) -> None:
    """Raise unless ``name`` is usable as a study and file name."""
    if not isinstance(name, str) or not _STUDY_NAME.fullmatch(name):  # fullmatch: no trailing newline
        raise ConfigError(
            f"The study name must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit; got {name!r}"
        )


def default_storage(study: str) -> str:
    """``sqlite:///studies/<study>.db`` (relative to the working folder)."""
    check_study_name(study)
    return f"sqlite:///studies/{study}.db"


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):]
    return None if path in ("", ":memory:") else Path(path)


def check_url(url: str) -> None:
    """Raise :class:`StudyError` for a store that cannot outlive the process (in-memory SQLite)."""
    if url.startswith("sqlite") and (url.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://") or ":memory:" in url
                                     or "mode=memory" in url):
        raise StudyError(
            f"The storage URL {url!r} is an in-memory SQLite database: it vanishes when the process ends, so no "
            "worker, resume, export or dashboard could ever read it; accepted: sqlite:///PATH (a file) or a database URL"
        )


#: The tables of an Optuna study store; a database holding other tables and none of these is not ours.
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes", "trials", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_user_attributes", "trial_system_attributes",
    "trial_heartbeats", "version_info", "alembic_version",
})


def _check_tables(url: str, engine_kwargs: dict[str, Any], allow_other_tables: bool | None) -> None:
    """Refuse a database that holds tables but no Optuna study store (an application's database)."""
    import sqlalchemy

    path = _sqlite_path(url)
    if path is not None and not path.exists():
        return  # a new file: nothing in it yet
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        names = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if not names or {"studies", "trials", "version_info"} <= names or allow_other_tables:
        return
    shown = ", ".join(sorted(names)[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    hint = ("; use a database (or SQLite file) of its own, or pass --allow-other-tables to add Optuna's "
            f"{len(OPTUNA_TABLES)} tables beside them" if allow_other_tables is False else
            "; it holds no study to read")
    raise StudyError(f"The store {redact(url)!r} is not an Optuna study store: it holds other tables ({shown})" + hint)


def _driver_error(url: str, err: ImportError) -> StudyError:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except Exception:  # noqa: BLE001 - an unknown dialect: name what we can
        backend, driver = url.partition(":")[0], "its driver"
    name = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}.get(backend, backend)
    missing = err.name or str(err).splitlines()[0] or driver
    return StudyError(
        f"The storage URL {redact(url)!r} needs the {name} driver {driver!r}, which cannot be imported ({missing}); "
        "accepted: pip install 'tdmr-search[db]' and a URL naming its drivers, postgresql+psycopg://user@host/db or "
        "mysql+pymysql://user@host/db"
    )


def check_sqlite_writable(url: str) -> None:
    """Raise :class:`StudyError` when a SQLite store's file or folder cannot be written."""
    path = _sqlite_path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise PermissionError("not writable")
    except OSError as err:
        raise StudyError(
            f"Cannot write the study store {str(path)!r} ({getattr(err, 'strerror', None) or err}); "
            "choose a writable --storage sqlite:///PATH or a database URL"
        ) from None


def open_storage(url: str, heartbeat: bool = True, wal: bool = False,
                 allow_other_tables: bool | None = None) -> RDBStorage:
    """Open (creating when needed) the study store at ``url``.

    SQLite gets a long busy timeout, and with ``wal`` (what ``run`` asks for) WAL journaling so a
    few local workers can share it; read-only commands leave the file as it is. A database that
    holds other tables and no Optuna store is refused: ``allow_other_tables`` True adds the store
    beside them (``run --allow-other-tables``), False refuses naming that flag, None (commands
    that only read) refuses.
    """
    check_url(url)
    engine_kwargs: dict[str, Any] = {}
    path = _sqlite_path(url)
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    if path is not None:
        check_sqlite_writable(url)
    elif url.startswith(("postgresql", "mysql", "mariadb")):
        engine_kwargs["pool_pre_ping"] = True
    kw: dict[str, Any] = {}
    if heartbeat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            kw = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS,
                  "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2)}
    try:
        _check_tables(url, engine_kwargs, allow_other_tables)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = _create_storage(url, engine_kwargs, kw)
    except ImportError as err:
        raise _driver_error(url, err) from None
    except StudyError:
        raise
    except Exception as err:  # sqlalchemy errors: bad URL, server down, auth, a full disk
        if is_disk_error(err):
            raise disk_error(err, path if path is not None else redact(url), "study store",
                             "free space, or choose another --storage") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StudyError(f"Cannot open the study store {redact(url)!r}: {redact(first)[:300]}") from None
    if path is not None and wal:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


def _create_storage(url: str, engine_kwargs: dict[str, Any], kw: dict[str, Any]) -> RDBStorage:
    """``RDBStorage(url)``; when two processes create a new store's schema at once, the loser's
    insert of the schema version fails on a unique constraint: the schema is there now, so the
    second try opens it."""
    import sqlalchemy.exc

    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kw)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as err:
            if attempt == 2 or is_disk_error(err) or ("UNIQUE" not in str(err) and "locked" not in str(err)
                                                      and "already exists" not in str(err)):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def load_study(study: str, storage: str | None) -> optuna.Study:
    """Load an existing study, with a clear error listing the studies the store holds."""
    check_study_name(study)
    url = storage or default_storage(study)
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise StudyError(f"No study store at {str(path)!r}; run `tdmr-search run --study {study} ...` first or pass --storage")
    rdb = open_storage(url, heartbeat=False)
    try:
        return optuna.load_study(study_name=study, storage=rdb)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
        raise StudyError(
            f"The store {redact(url)!r} holds no study {study!r}; it holds: {', '.join(names) or 'none'}"
        ) from None


def artifact_dir(study: str, storage: str | None, override: str | None = None) -> Path:
    """The artifact store folder: ``--artifacts``, else beside a SQLite file, else studies/<study>-artifacts."""
    if override:
        return Path(override)
    path = _sqlite_path(storage or default_storage(study))
    folder = path.parent if path is not None else Path("studies")
    return folder / f"{study}-artifacts"


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


SAMPLERS = ("tpe", "random", "gp", "nsga2")


def make_sampler(name: str, seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    """A sampler by name: tpe (default), random, gp, nsga2, seeded per trial from ``seed`` (see seeding.py)."""
    _make_sampler(name, seed, two_objective)  # unknown names fail here, before any trial
    return PerTrialSeedSampler(name, seed, lambda s: _make_sampler(name, s, two_objective))


def _make_sampler(name: str, seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        if two_objective:
            raise ConfigError("--sampler gp searches one objective; accepted with --two-objective: tpe, random, nsga2")
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}{_did_you_mean(name, SAMPLERS)}")


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


def _did_you_mean(name: str, names: tuple[str, ...]) -> str:
    hint = closest(name, names)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


class _Progress:
    """Logs one line per finished trial (number, state, value, best so far, student, seconds, budget left)
    and reports the budget to :mod:`tdmr_search.progress` (the command line's status line)."""

    def __init__(self, n_trials: int | None, timeout: float | None) -> None:
        self.start = time.monotonic()
        self.n_trials = n_trials
        self.timeout = timeout
        if timeout is not None:
            progress.budget(0.0, timeout, "seconds")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        elapsed = time.monotonic() - self.start
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        value = "-" if trial.values is None else " ".join(f"{v:.4f}" for v in trial.values)
        curve = trial.user_attrs.get("val_curve") or []
        if trial.state == TrialState.PRUNED and curve:  # its value is the pruning signal, not an accuracy
            value = f"{curve[-1]:.4f} at epoch {len(curve)}"
        reason = trial.user_attrs.get("failure_reason")
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})" if len(study.directions) == 1 else \
                f"{len(study.best_trials)} on the Pareto front"
        except ValueError:
            best = "no finished trial yet"
        st = (trial.user_attrs.get("config") or {}).get("student") or {}
        student = f"{st.get('name', '?')}@{st.get('resolution', '?')}" if st else "-"
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        left = ""
        if self.timeout is not None:
            left = f", {_fmt_seconds(self.timeout - elapsed)} left"
        elif self.n_trials is not None:
            left = f", {max(0, self.n_trials - done)} trials left"
        logger.info("trial %d %s %s%s | %s | %s | %.1fs | %d finished, %s elapsed%s", trial.number, trial.state.name,
                    value, f" ({reason})" if reason else "", best, student, seconds, done, _fmt_seconds(elapsed), left)
        if self.timeout is not None:
            progress.budget(elapsed, self.timeout, "seconds", f"{done} finished | {best}")
        elif self.n_trials is not None:
            progress.budget(done, self.n_trials, "trials", best)


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


@dataclass(frozen=True)
class StoreOptions:
    """What ``run`` may do to a store beyond adding trials to its own study."""

    allow_changed_space: bool = False
    """Resume although the space or data changed (recorded in the study as ``space_changes``)."""
    adopt_study: bool = False
    """Add trials to a study of that name that tdmr-search did not create."""
    allow_other_tables: bool = False
    """Add Optuna's tables to a database that holds other tables."""


def run_search(space_path: str, study_name: str, storage: str | None, budget: str, sampler: str = "tpe",
               pruner: str = "auto", seed: int = 0, two_objective: bool = False, workers: int = 1,
               gpus: str | None = None, artifacts: str | None = None, progress: bool = True,
               baselines: bool = True, isolate: bool = False, teacher_cache: bool = True,
               one_trial: bool = False, trials_here: int | None = None,
               options: StoreOptions | None = None, reevaluate: int = REEVALUATE_DEFAULT,
               folds: int = FOLDS_DEFAULT) -> str:
    """Run (or resume) the search and return a summary for the terminal.

    SIGINT and SIGTERM stop it between steps: the running trial is closed as failed with
    ``interrupted`` (it does not count toward a trial budget) and :class:`Interrupted` is raised
    with the summary attached.

    Args:
        space_path: Search space YAML.
        study_name: Study name; the same name resumes.
        storage: SQLAlchemy URL; default ``sqlite:///studies/<study>.db``.
        budget: Number of finished trials the study should hold, or a duration for this run (a
            deadline for everything it does, baselines included).
        sampler: tpe, random, gp or nsga2.
        pruner: auto (chosen by the budget: see :func:`~tdmr_search.search.pruning.choose_pruner`),
            median, halving, hyperband or none.
        seed: Sampler seed; each trial's sampler seed derives from it and the trial number.
        two_objective: Maximise val_acc and minimise FLOPs (Pareto front; no pruning).
        workers: Worker processes sharing the study.
        gpus: Comma-separated GPU ids, one worker each.
        artifacts: Artifact store folder.
        progress: Log a line per finished trial.
        baselines: Run the scratch and kd baselines for the best student afterwards.
        isolate: Run each trial in a fresh process.
        one_trial: Run at most one trial in this process (what isolated workers do).
        trials_here: Run at most this many trials in this process (a worker's share of a trial budget).
        teacher_cache: Share stage-1 outcomes between trials through the on-disk cache.
        options: What the run may do to a store that is not plainly its own.
        reevaluate: After the search, retrain this many of the best configurations on other folds
            of the labelled images and pick by the mean (0: pick by the single validation accuracy).
            A time budget keeps ``REEVALUATE_SHARE`` of itself for this; a trial budget adds the runs.
        folds: Validation accuracies per re-evaluated configuration, its own trial's included.
    """
    with interrupt.stop_on_signals():
        start = time.monotonic()
        check_study_name(study_name)
        n_trials, timeout = parse_budget(budget)
        deadline = None if timeout is None else start + timeout
        space = load_space(space_path)
        make_sampler(sampler, seed, two_objective)
        pruner, why = choose_pruner(pruner, n_trials, two_objective)
        make_pruner(pruner, space.base.distill.epochs)
        if not one_trial and trials_here is None:  # the run the user started, not one of its workers
            logger.info("pruner: %s (%s)", pruner, why)
        url = storage or default_storage(study_name)
        check_url(url)
        gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus is not None else []
        if gpus is not None and (not gpu_ids or not all(g.isdigit() for g in gpu_ids)):
            raise ConfigError(f"--gpus must be comma-separated GPU numbers such as 0,1; got {gpus!r}")
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1; got {workers}")
        if gpu_ids:
            workers = len(gpu_ids)
        if workers > SQLITE_MAX_WORKERS and url.startswith("sqlite"):
            raise ConfigError(
                f"--workers {workers} on SQLite: SQLite serves at most {SQLITE_MAX_WORKERS} local workers safely; use a "
                "PostgreSQL or MySQL --storage URL (postgresql+psycopg://user@host/db, mysql+pymysql://user@host/db)"
            )
        if reevaluate < 0 or folds < 1:
            raise ConfigError(f"--reevaluate must be 0 or more and --folds 1 or more; got {reevaluate} and {folds}")
        options = options or StoreOptions()
        created: list[Path] = []  # folders this run made: removed again if they are left empty
        top = not one_trial and trials_here is None  # the run the user started, not one of its workers
        finish = top and not two_objective and (baselines or reevaluate > 0)
        search_deadline = deadline
        if finish and deadline is not None and reevaluate > 0:
            search_deadline = start + (1.0 - REEVALUATE_SHARE) * timeout
            logger.info("re-evaluation of the %d best configurations on %d folds: the search stops after %s of the "
                        "%s budget, the rest is for re-evaluation and baselines", reevaluate, folds,
                        _fmt_seconds((1.0 - REEVALUATE_SHARE) * timeout), _fmt_seconds(timeout))
        elif finish and reevaluate > 0 and n_trials is not None:
            logger.info("re-evaluation adds up to %d training runs after the %d trials (%d best configurations x %d "
                        "more folds)", reevaluate * (folds - 1), n_trials, reevaluate, folds - 1)
        try:
            if workers > 1 or isolate:
                text = _run_workers(space_path, study_name, url, n_trials, search_deadline, sampler, pruner, seed,
                                    two_objective, workers, gpu_ids, artifacts, progress, baselines and not finish,
                                    isolate, options, created)
            else:
                text = _run_here(space, study_name, url, n_trials, search_deadline, sampler, pruner, seed,
                                 two_objective, artifacts, progress, baselines and not finish, teacher_cache,
                                 1 if one_trial else trials_here, options, created, trial_deadline=deadline)
            if finish:
                text = _finish(space, study_name, url, artifacts, deadline, reevaluate, folds, baselines, teacher_cache)
            return text
        finally:
            _remove_empty(created)


def _finish(space: SearchSpace, study_name: str, url: str, artifacts: str | None, deadline: float | None,
            k: int, folds: int, baselines: bool, teacher_cache: bool) -> str:
    """After the search: re-evaluate the best configurations, run the baselines for the pick, summarise.

    Both stop at the deadline or on a signal; what finished is kept (a rerun resumes them).
    """
    from tdmr_search.search.reevaluate import reevaluate

    study = load_study(study_name, url)
    store_dir = artifact_dir(study_name, url if url.startswith("sqlite") else None, artifacts)
    cache = None
    if teacher_cache:
        from tdmr_search.pipeline.cache import TeacherCache

        cache = TeacherCache.beside(store_dir.parent / f"{study_name}-cache")
    try:
        _check_stop(deadline)
        data = load_data(space.base.data, space.base.seed)
        if k > 0:
            reevaluate(study, data, k, folds, cache, check_stop=lambda: _check_stop(deadline))
        if baselines:
            _baselines(study, space, data, deadline, cache)
    except Interrupted as err:
        if interrupt.requested():
            err.summary = summary(study, url, store_dir)
            raise
        logger.warning("the --budget deadline passed: %s (a rerun of the same command finishes it)", err)
    return summary(study, url, store_dir)


def _stop_reason(deadline: float | None) -> str | None:
    """Why the search must stop now: a signal, the --budget deadline, or None to go on."""
    if interrupt.requested():
        return f"interrupted by {interrupt.reason()}"
    if deadline is not None and time.monotonic() >= deadline:
        return "stopped at the --budget deadline"
    return None


def _check_stop(deadline: float | None) -> None:
    why = _stop_reason(deadline)
    if why:
        raise Interrupted(why)


def _mkdirs(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, noting in ``created`` each folder it made."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    folder.mkdir(parents=True, exist_ok=True)
    created.extend(reversed(missing))


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a run made and left empty (innermost first)."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:  # not empty, or gone
            pass


class _QuietFailedTrials(logging.Filter):
    """Drop Optuna's traceback for a trial that failed on purpose: the objective logged its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (TdmrError, KeyboardInterrupt)):
            return False
        return not re.match(r"Trial \d+ failed with value None\.", record.getMessage())


def counts_toward_budget(t: FrozenTrial) -> bool:
    """Finished trials count toward a trial budget; one stopped by a signal or the deadline does not."""
    if t.state == TrialState.FAIL:
        return not t.user_attrs.get("interrupted")
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def _count_finished(study: optuna.Study) -> int:
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


def _open_study(rdb: RDBStorage, study_name: str, url: str, two_objective: bool, sampler: Any, pruner: Any,
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


def _run_here(space: SearchSpace, study_name: str, url: str, n_trials: int | None, deadline: float | None,
              sampler: str, pruner: str, seed: int, two_objective: bool, artifacts: str | None, progress: bool,
              baselines: bool, teacher_cache: bool, max_trials_this_process: int | None,
              options: StoreOptions, created: list[Path], trial_deadline: float | None = None) -> str:
    """Run the search in this process until ``deadline``; a trial running then may go on until
    ``trial_deadline`` (the whole budget's end, when part of it is kept for re-evaluation)."""
    from tdmr_search.search.preflight import preflight

    checked = preflight(space, between=lambda: _check_stop(None))  # the same pre-flight as `validate`
    data, fit, over = checked.data, checked.fit, checked.over
    note = small_validation_note(len(data.val), pruner, two_objective, data.pool_size)
    if note:
        logger.warning(note)
    _check_stop(None)
    path = _sqlite_path(url)
    if path is not None:
        _mkdirs_or_fail(path.parent, created, f"study store {str(path)!r}", "choose a writable --storage sqlite:///PATH "
                        "or a database URL")
    check_sqlite_writable(url)
    store_dir = artifact_dir(study_name, url if url.startswith("sqlite") else None, artifacts)
    _mkdirs_or_fail(store_dir, created, f"artifact store folder {str(store_dir)!r}", "choose a writable --artifacts folder")
    rdb = open_storage(url, wal=True, allow_other_tables=options.allow_other_tables)
    try:
        study = _open_study(rdb, study_name, url, two_objective, make_sampler(sampler, seed, two_objective),
                            make_pruner(pruner, space.base.distill.epochs), space, fit, over, data, seed, options)
    except TdmrError:
        raise
    except Exception as err:  # the store failed under us (disk full, server gone)
        raise _store_error(err, url) from None
    store = AtomicArtifactStore(str(store_dir))
    cache = None
    if teacher_cache:
        from tdmr_search.pipeline.cache import TeacherCache

        cache_dir = store_dir.parent / f"{study_name}-cache"
        if not cache_dir.exists():
            created.append(cache_dir)
        cache = TeacherCache.beside(cache_dir)
    objective = Objective(space, fit, data, artifact_store=store, two_objective=two_objective, teacher_cache=cache,
                          stop=lambda: _stop_reason(trial_deadline or deadline), store_dir=store_dir)
    signal = (f"the pruning signal, after every stage-2 epoch: {objective.signal}; validation accuracy is the "
              "objective (val_curve)")
    if not two_objective and study.user_attrs.get("intermediate_values") != signal:
        study.set_user_attr("intermediate_values", signal)
    callbacks: list[Any] = [lambda s, t: _keep_best_weights(s, store)]
    if progress:
        callbacks.append(_Progress(n_trials, None if deadline is None else deadline - time.monotonic()))

    def stop_when_done(s: optuna.Study, t: FrozenTrial) -> None:
        if _stop_reason(deadline) or (n_trials is not None and _count_finished(s) >= n_trials):
            s.stop()

    callbacks.append(stop_when_done)
    quiet = _QuietFailedTrials()
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    remove_listener = interrupt.on_request(lambda: _stop_quietly(study))
    stopped: Interrupted | None = None
    try:
        finished = _count_finished(study)
        if (n_trials is None or finished < n_trials) and not _stop_reason(deadline):
            todo = None if n_trials is None else n_trials - finished
            if max_trials_this_process is not None:
                todo = max_trials_this_process if todo is None else min(todo, max_trials_this_process)
            study.optimize(objective, n_trials=todo, timeout=None if deadline is None else deadline - time.monotonic(),
                           catch=(TrialFailed,), callbacks=callbacks, gc_after_trial=True)
        _check_stop(None if trial_deadline else deadline)  # the search's share ending is no stop: the rest follows
        if baselines and not two_objective:
            _baselines(study, space, data, deadline, cache)
    except Interrupted as err:
        stopped = err
    except TdmrError:
        raise
    except Exception as err:  # the store failed under us (disk full, server gone)
        raise _store_error(err, url) from None
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


def _stop_quietly(study: optuna.Study) -> None:
    try:
        study.stop()
    except RuntimeError:  # not inside optimize: the next check between steps stops the run
        pass


def _store_error(err: BaseException, url: str) -> TdmrError:
    """One line for an error of the store itself during a run (a full disk, a server gone)."""
    where = _sqlite_path(url)
    if is_disk_error(err):
        return disk_error(err, where if where is not None else redact(url), "study store",
                          "free space (or choose another --storage); a trial left RUNNING is marked failed by the "
                          "next run, every finished trial is kept")
    inner = err
    while inner.__context__ is not None and isinstance(inner, AssertionError):  # Optuna's "Should not reach."
        inner = inner.__context__
    first = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    return StudyError(f"The study store {redact(url)!r} failed during the run: {redact(first)[:300]}; every finished "
                      "trial is kept, run again to resume")


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, writing each file whole (a temporary name, then a rename)."""

    def write(self, artifact_id: str, content_body: Any) -> None:  # noqa: ANN401
        import shutil

        write_with(os.path.join(self._base_path, artifact_id), lambda fh: shutil.copyfileobj(content_body, fh),
                   "student weights in the artifact store",
                   "free space, or choose another --artifacts folder")


def _mkdirs_or_fail(folder: Path, created: list[Path], what: str, hint: str) -> None:
    try:
        _mkdirs(folder, created)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as err:
        raise StudyError(f"Cannot write the {what} ({getattr(err, 'strerror', None) or err}); {hint}") from None


def _baselines(study: optuna.Study, space: SearchSpace, data: Any, deadline: float | None = None,
               cache: Any = None) -> None:
    """Run (or reuse) the scratch and kd baselines for the best trial's student, within the deadline.

    ``cache`` (the study's teacher cache) gives kd the teacher's features of the same views the
    trials distilled on, without another pass over the pool.
    """
    from tdmr_search.config import config_from_dict
    from tdmr_search.pipeline.run import run_pipeline

    try:
        best = pick(study)
    except ValueError:
        return
    if "config" not in best.user_attrs:  # an adopted study's own trial
        return
    config = config_from_dict(best.user_attrs["config"])
    key = f"{config.student.name}@{config.student.resolution}/proxy{config.reprogram.proxy_dim}/{config.student.projector}"
    done = dict(study.user_attrs.get("baselines", {}))
    if key in done:
        return

    def on_epoch_end(step: int, metrics: dict) -> None:
        _check_stop(deadline)

    results = {}
    for method in ("scratch", "kd"):
        _check_stop(deadline)
        logger.info("baseline %s for %s", method, key)
        try:
            m = run_pipeline(config.replace({"method": method}), on_epoch_end, data=data, cache=cache).metrics
        except Interrupted:
            raise
        except TdmrError as err:
            results[method] = {"failure_reason": str(err)}
            continue
        results[method] = {k: m.get(k) for k in ("val_acc", "test_acc", "teacher_val_acc", "flops", "params")}
        results[method]["seconds"] = m.get("seconds")
        results[method]["val_curve"] = [h["val_acc"] for h in m.get("history", [])]
    results["tdmr_trial"] = best.number
    done[key] = results
    study.set_user_attr("baselines", done)
    study.set_user_attr("baselines_for_best", key)


def summary(study: optuna.Study, url: str, store_dir: Path) -> str:
    """What ``run`` prints at the end: the best trial, where things are and what to do next."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    counts["INTERRUPTED"] = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get("interrupted")) for t in trials)
    counts["FAIL"] -= counts["INTERRUPTED"]  # stopped by a signal or the deadline: not the trial's own failure
    lines = [f"study {study.study_name!r}: " + (", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)
                                                or "no trials")]
    try:
        if len(study.directions) == 1:
            best = pick(study)
            lines.append(_describe(best))
            record = reevaluation(study)
            if best.number in record:
                r = record[best.number]
                lines.append(f"  picked by the mean validation accuracy over {len(r['val_acc_seeds'])} folds of the "
                             f"labelled images: {r['val_acc_mean']:.4f} +- {r['val_acc_std']:.4f} "
                             f"({', '.join(f'{v:.3f}' for v in r['val_acc_seeds'])})")
                for n, other in sorted(record.items(), key=lambda kv: -kv[1]["val_acc_mean"]):
                    if n != best.number:
                        lines.append(f"  re-evaluated trial {n}: {other['val_acc_mean']:.4f} +- {other['val_acc_std']:.4f}"
                                     f" over {len(other['val_acc_seeds'])} folds (single run {other['val_acc_seeds'][0]:.4f})")
            base = study.user_attrs.get("baselines", {}).get(study.user_attrs.get("baselines_for_best", ""), {})
            for method in ("scratch", "kd"):
                if "test_acc" in base.get(method, {}):
                    b = base[method]
                    lines.append(f"  baseline {method:<7} val_acc {b['val_acc']:.4f}  test_acc {b['test_acc']:.4f}  "
                                 f"(TDMR gains {100 * (best.user_attrs['test_acc'] - b['test_acc']):+.1f} test points)")
        else:
            lines.append(f"Pareto front: {len(study.best_trials)} trials")
            lines += ["  " + _describe(t) for t in study.best_trials]
    except ValueError:
        lines.append("no trial has finished yet")
    safe = redact(url)
    storage_flag = "" if url == default_storage(study.study_name) else f" --storage '{safe}'"
    lines += [
        f"study store: {safe}",
        f"student weights (best {KEEP_WEIGHTS}): {store_dir}",
        f"inspect: optuna-dashboard {safe} --artifact-dir {store_dir}",
        f"export:  tdmr-search export --study {study.study_name}{storage_flag} --best --out exports/{study.study_name}",
        f"report:  tdmr-search report --study {study.study_name}{storage_flag} --out {study.study_name}.html",
    ]
    return "\n".join(lines)


def _describe(t: FrozenTrial) -> str:
    a = t.user_attrs
    cfg = a.get("config", {})
    st = cfg.get("student", {})
    rp = cfg.get("reprogram", {})
    ds = cfg.get("distill", {})
    return (f"best trial {t.number}: val_acc {a.get('val_acc', float('nan')):.4f}  test_acc {a.get('test_acc', float('nan')):.4f}  "
            f"flops {format_flops(a.get('flops', 0))}  student {st.get('name')}@{st.get('resolution')}  "
            f"transform {rp.get('transform')}  proxy_dim {rp.get('proxy_dim')}  stages {ds.get('n_stages')}  "
            f"T {ds.get('temperature', 0):.3g}")


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The pick of a one-objective study (the best re-evaluated mean, else the best trial), or the
    Pareto front of a two-objective one."""
    try:
        return [pick(study)] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        raise StudyError(f"Study {study.study_name!r} has no finished trial yet; nothing to export") from None


def study_status(study_name: str, storage: str | None) -> str:
    """A table of the study's trials, for ``tdmr-search status``."""
    study = load_study(study_name, storage)
    rows = [f"{'#':>4} {'state':<9} {'val_acc':>8} {'test_acc':>8} {'flops':>8} {'student':<30} {'transform':<10} "
            f"{'proxy':>5} {'stg':>3} {'T':>5} {'secs':>7}  note"]
    record = reevaluation(study) if len(study.directions) == 1 else {}
    try:
        picked = pick(study).number if record else None
    except ValueError:
        picked = None
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        cfg = a.get("config", {})
        st, rp, ds = cfg.get("student", {}), cfg.get("reprogram", {}), cfg.get("distill", {})

        def num(v: Any, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"

        val = a.get("val_acc")
        if t.state == TrialState.PRUNED:  # its last validation accuracy (the intermediate values are the signal)
            val = (a.get("val_curve") or [None])[-1]
        note = a.get("failure_reason") or ("cached teacher" if a.get("teacher_cached") else "")
        if t.state == TrialState.PRUNED:
            note = f"pruned at epoch {max(t.intermediate_values) + 1 if t.intermediate_values else '?'}"
        if t.number in record:
            r = record[t.number]
            note = (f"{'PICK ' if picked == t.number else ''}mean {r['val_acc_mean']:.4f} +- {r['val_acc_std']:.4f} "
                    f"over {len(r['val_acc_seeds'])} folds; {note}").rstrip("; ")
        rows.append(
            f"{t.number:>4} {t.state.name:<9} {num(val, '.4f'):>8} {num(a.get('test_acc'), '.4f'):>8} "
            f"{format_flops(a['flops']) if a.get('flops') else '-':>8} "
            f"{str(st.get('name', '-')) + '@' + str(st.get('resolution', '-')):<30} {str(rp.get('transform', '-')):<10} "
            f"{str(rp.get('proxy_dim', '-')):>5} {str(ds.get('n_stages', '-')):>3} {num(ds.get('temperature'), '.2f'):>5} "
            f"{num((a.get('seconds') or {}).get('total'), '.1f'):>7}  {note}"
        )
    base = study.user_attrs.get("baselines", {}).get(study.user_attrs.get("baselines_for_best", ""), {})
    for method in ("scratch", "kd"):
        if "test_acc" in base.get(method, {}):
            rows.append(f"baseline {method}: val_acc {base[method]['val_acc']:.4f} test_acc {base[method]['test_acc']:.4f}")
    cap = study.user_attrs.get("max_flops_text")
    rows.insert(0, f"study {study_name!r} (space {study.user_attrs.get('space_name', '?')}, FLOPs cap {cap or 'none'}, "
                   f"{len(study.get_trials(deepcopy=False))} trials)")
    return "\n".join(rows)


def _run_workers(space_path: str, study_name: str, url: str, n_trials: int | None, deadline: float | None,
                 sampler: str, pruner: str, seed: int, two_objective: bool, workers: int, gpu_ids: list[str],
                 artifacts: str | None, progress: bool, baselines: bool, isolate: bool, options: StoreOptions,
                 created: list[Path]) -> str:
    """Start ``workers`` processes running this study (Optuna's distributed mode) and wait for them.

    With ``isolate`` each process runs one trial and a new one replaces it until the budget is spent.
    The workers get the storage URL through the environment (``TDMR_STORAGE``), so a password in it
    never shows on a command line; they run in their own session, and a signal to this process
    reaches each of them once, forwarded as SIGTERM.
    """
    path = _sqlite_path(url)
    if path is not None:
        _mkdirs_or_fail(path.parent, created, f"study store {str(path)!r}", "choose a writable --storage sqlite:///PATH "
                        "or a database URL")
    rdb = open_storage(url, heartbeat=False, wal=True,  # fail early, clearly; create the schema once
                       allow_other_tables=options.allow_other_tables)
    shares: list[int | None] = [None] * workers
    if n_trials is not None and not isolate:
        # a trial budget is split between the workers, so the study ends with exactly n_trials
        try:
            done = _count_finished(optuna.load_study(study_name=study_name, storage=rdb))
        except KeyError:
            done = 0
        left = max(0, n_trials - done)
        shares = [left // workers + (1 if w < left % workers else 0) for w in range(workers)]

    def command(worker: int) -> list[str]:
        budget = str(n_trials) if deadline is None else f"{max(1.0, deadline - time.monotonic()):.0f}s"
        cmd = [sys.executable, "-m", "tdmr_search", "run", "--study", study_name, "--space", space_path,
               "--sampler", sampler, "--pruner", pruner, "--seed", str(seed), "--budget", budget,
               "--no-baselines", "--reevaluate", "0", "--workers", "1", "--worker-index", str(worker)]
        if isolate:
            cmd += ["--one-trial"]
        elif shares[worker] is not None:
            cmd += ["--trials-here", str(shares[worker])]
        if two_objective:
            cmd.append("--two-objective")
        if artifacts:
            cmd += ["--artifacts", artifacts]
        if not progress:
            cmd.append("--no-progress")
        for flag, on in (("--allow-changed-space", options.allow_changed_space), ("--adopt-study", options.adopt_study),
                         ("--allow-other-tables", options.allow_other_tables)):
            if on:
                cmd.append(flag)
        return cmd

    def env(worker: int) -> dict[str, str]:
        e = dict(os.environ, TDMR_STORAGE=url)
        if gpu_ids:
            e["CUDA_VISIBLE_DEVICES"] = gpu_ids[worker % len(gpu_ids)]
        # share the CPU cores between the workers: oversubscribed OpenMP threads spin and crawl
        e.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        return e

    def start(worker: int) -> subprocess.Popen:
        return subprocess.Popen(command(worker), env=env(worker), start_new_session=True)

    def forward(sig: int) -> None:
        for p in procs.values():
            try:
                p.send_signal(sig)
            except OSError:  # already gone
                pass

    procs: dict[int, subprocess.Popen] = {}
    failures = []
    forwarded = False
    try:
        for w in range(workers):
            if shares[w] != 0 and not interrupt.requested():
                procs[w] = start(w)
        while procs:
            if interrupt.requested() and not forwarded:
                forward(signal.SIGTERM)
                forwarded = True
            for w, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[w]
                if rc == 130 and interrupt.requested():
                    continue
                if rc != 0:
                    failures.append(f"worker {w} exited with {rc}")
                elif isolate and not interrupt.requested() and not _budget_spent(study_name, url, n_trials, deadline):
                    procs[w] = start(w)
            time.sleep(0.2)
    except KeyboardInterrupt:  # a second signal: stop the workers now
        forward(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    if interrupt.requested():
        err = Interrupted(f"interrupted by {interrupt.reason()}; the workers closed their running trials")
        err.summary = summary(load_study(study_name, url), url, artifact_dir(
            study_name, url if url.startswith("sqlite") else None, artifacts))
        raise err
    if failures:
        raise StudyError("; ".join(failures) + f"; the study {study_name!r} keeps every finished trial, run again to resume")
    study = load_study(study_name, url)
    store_dir = artifact_dir(study_name, url if url.startswith("sqlite") else None, artifacts)
    return summary(study, url, store_dir)  # re-evaluation and baselines: run_search's _finish, after the workers


def _budget_spent(study_name: str, url: str, n_trials: int | None, deadline: float | None) -> bool:
    if deadline is not None and time.monotonic() >= deadline:
        return True
    if n_trials is None:
        return False
    return _count_finished(load_study(study_name, url)) >= n_trials
