"""The study store and the search loop: ``run``, ``status`` and the helpers export and report use.

One Optuna study per search in any SQLAlchemy URL (default ``sqlite:///studies/<study>.db``),
heartbeats on so a trial whose worker died is marked failed and retried with the same
parameters, student weights of the best few trials in a file-system artifact store beside it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tdmr_search import __version__, progress
from tdmr_search.config import format_flops
from tdmr_search.data import load_data
from tdmr_search.errors import ConfigError, StudyError, TdmrError, TrialFailed
from tdmr_search.registry import closest
from tdmr_search.search.objective import KEEP_WEIGHTS, Objective
from tdmr_search.search.secrets import redact
from tdmr_search.search.space import SearchSpace, feasible_students, load_space, require_feasible

__all__ = [
    "default_storage", "open_storage", "load_study", "artifact_dir", "parse_budget", "make_sampler",
    "make_pruner", "run_search", "study_status", "best_trials", "SQLITE_MAX_WORKERS",
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
    if not isinstance(name, str) or not _STUDY_NAME.match(name):
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


def open_storage(url: str, heartbeat: bool = True, wal: bool = False) -> RDBStorage:
    """Open (creating when needed) the study store at ``url``.

    SQLite gets a long busy timeout, and with ``wal`` (what ``run`` asks for) WAL journaling so a
    few local workers can share it; read-only commands leave the file as it is.
    """
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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kw)
    except ImportError as err:
        raise StudyError(
            f"The storage URL {redact(url)!r} needs a database driver that is not installed ({err.name}); "
            "pip install 'tdmr-search[db]' (psycopg for PostgreSQL, pymysql for MySQL/MariaDB)"
        ) from None
    except Exception as err:  # sqlalchemy errors: bad URL, server down, auth
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StudyError(f"Cannot open the study store {redact(url)!r}: {redact(first)[:300]}") from None
    if path is not None and wal:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage


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
PRUNERS = ("hyperband", "median", "halving", "none")


def make_sampler(name: str, seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    """A sampler by name: tpe (default), random, gp, nsga2."""
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


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """A pruner by name over stage-2 epochs: hyperband (default), median, halving, none."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, max_epochs // 5))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}; got {name!r}{_did_you_mean(name, PRUNERS)}")


def small_validation_note(n_val: int, pruner: str, two_objective: bool = False) -> str | None:
    """A warning when pruning would decide on a validation split where one image is over a point."""
    if pruner == "none" or two_objective or n_val >= 100:
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
        keepers = {t.number for t in ranked[:keep]}
    else:
        keepers = {t.number for t in study.best_trials}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        artifact_id = t.user_attrs.get("weights_artifact_id")
        if artifact_id and t.number not in keepers:
            try:
                store.remove(artifact_id)
            except Exception:  # already removed (by another worker)
                pass


def _study_attrs(study: optuna.Study, space: SearchSpace, fit: list, over: list, two_objective: bool) -> None:
    if study.user_attrs.get("tdmr_search_version"):
        return
    study.set_user_attr("tdmr_search_version", __version__)
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
                        "failure_reason.")


def _interrupt_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def run_search(space_path: str, study_name: str, storage: str | None, budget: str, sampler: str = "tpe",
               pruner: str = "hyperband", seed: int = 0, two_objective: bool = False, workers: int = 1,
               gpus: str | None = None, artifacts: str | None = None, progress: bool = True,
               baselines: bool = True, isolate: bool = False, teacher_cache: bool = True,
               one_trial: bool = False, trials_here: int | None = None) -> str:
    """Run (or resume) the search and return a summary for the terminal.

    Args:
        space_path: Search space YAML.
        study_name: Study name; the same name resumes.
        storage: SQLAlchemy URL; default ``sqlite:///studies/<study>.db``.
        budget: Number of finished trials the study should hold, or a duration for this run.
        sampler: tpe, random, gp or nsga2.
        pruner: hyperband, median, halving or none.
        seed: Sampler seed.
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
    """
    check_study_name(study_name)
    n_trials, timeout = parse_budget(budget)
    space = load_space(space_path)
    make_sampler(sampler, seed, two_objective)
    make_pruner(pruner, space.base.distill.epochs)
    url = storage or default_storage(study_name)
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
    if workers > 1 or isolate:
        return _run_workers(space_path, study_name, url, budget, sampler, pruner, seed, two_objective, workers,
                            gpu_ids, artifacts, progress, baselines, isolate)
    return _run_here(space, study_name, url, n_trials, timeout, sampler, pruner, seed, two_objective, artifacts,
                     progress, baselines, teacher_cache, 1 if one_trial else trials_here)


def _run_here(space: SearchSpace, study_name: str, url: str, n_trials: int | None, timeout: float | None,
              sampler: str, pruner: str, seed: int, two_objective: bool, artifacts: str | None, progress: bool,
              baselines: bool, teacher_cache: bool, max_trials_this_process: int | None = None) -> str:
    from optuna.artifacts import FileSystemArtifactStore

    from tdmr_search.models.teachers import check_input_size
    from tdmr_search.models.timm_utils import check_model_name

    for name in space.student_names:
        check_model_name(name, "students.names")
    check_model_name(space.base.teacher.name, "base.teacher.name")
    check_input_size(space.base.teacher.name, space.base.teacher.input_size)
    data = load_data(space.base.data, space.base.seed)
    fit, over = feasible_students(space, data.channels, data.image_size, data.num_classes)
    require_feasible(space, fit, over)
    note = small_validation_note(len(data.val), pruner, two_objective)
    if note:
        logger.warning(note)
    check_sqlite_writable(url)
    store_dir = _make_artifact_dir(artifact_dir(study_name, url if url.startswith("sqlite") else None, artifacts))
    rdb = open_storage(url, wal=True)
    directions = ["maximize", "minimize"] if two_objective else ["maximize"]
    try:
        study = optuna.create_study(
            study_name=study_name, storage=rdb, directions=directions, load_if_exists=True,
            sampler=make_sampler(sampler, seed, two_objective), pruner=make_pruner(pruner, space.base.distill.epochs),
        )
    except ValueError as err:
        raise StudyError(f"Cannot resume study {study_name!r}: {err}") from None
    if [d.name.lower() for d in study.directions] != directions:
        raise StudyError(
            f"Study {study_name!r} was created with {len(study.directions)} objective(s); "
            f"run it {'with' if len(study.directions) == 2 else 'without'} --two-objective, or choose a new --study"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(["val_acc", "flops"] if two_objective else ["val_acc"])
    _study_attrs(study, space, fit, over, two_objective)
    store = FileSystemArtifactStore(str(store_dir))
    cache = None
    if teacher_cache:
        from tdmr_search.pipeline.cache import TeacherCache

        cache = TeacherCache.beside(store_dir.parent / f"{study_name}-cache")
    objective = Objective(space, fit, data, artifact_store=store, two_objective=two_objective, teacher_cache=cache)
    callbacks: list[Any] = [lambda s, t: _keep_best_weights(s, store)]
    if progress:
        callbacks.append(_Progress(n_trials, timeout))
    if n_trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(
            n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    _interrupt_on_sigterm()
    finished = _count_finished(study)
    if n_trials is None or finished < n_trials:
        todo = None if n_trials is None else n_trials - finished
        if max_trials_this_process is not None:
            todo = max_trials_this_process if todo is None else min(todo, max_trials_this_process)
        study.optimize(objective, n_trials=todo, timeout=timeout, catch=(TrialFailed,), callbacks=callbacks,
                       gc_after_trial=True)
    if baselines and not two_objective:
        _baselines(study, space, data)
    return summary(study, url, store_dir)


def _make_artifact_dir(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        raise StudyError(
            f"Cannot write the artifact store folder {str(folder)!r} ({getattr(err, 'strerror', None) or err}); "
            "choose a writable --artifacts folder"
        ) from None
    return folder


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def _baselines(study: optuna.Study, space: SearchSpace, data: Any) -> None:
    """Run (or reuse) the scratch and kd baselines for the best trial's student."""
    from tdmr_search.config import config_from_dict
    from tdmr_search.pipeline.run import run_pipeline

    try:
        best = study.best_trial
    except ValueError:
        return
    config = config_from_dict(best.user_attrs["config"])
    key = f"{config.student.name}@{config.student.resolution}/proxy{config.reprogram.proxy_dim}/{config.student.projector}"
    done = dict(study.user_attrs.get("baselines", {}))
    if key in done:
        return
    results = {}
    for method in ("scratch", "kd"):
        logger.info("baseline %s for %s", method, key)
        try:
            m = run_pipeline(config.replace({"method": method}), data=data).metrics
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
    lines = [f"study {study.study_name!r}: " + ", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)]
    try:
        if len(study.directions) == 1:
            best = study.best_trial
            lines.append(_describe(best))
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
    """The best trial of a one-objective study, or the Pareto front of a two-objective one."""
    try:
        return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        raise StudyError(f"Study {study.study_name!r} has no finished trial yet; nothing to export") from None


def study_status(study_name: str, storage: str | None) -> str:
    """A table of the study's trials, for ``tdmr-search status``."""
    study = load_study(study_name, storage)
    rows = [f"{'#':>4} {'state':<9} {'val_acc':>8} {'test_acc':>8} {'flops':>8} {'student':<30} {'transform':<10} "
            f"{'proxy':>5} {'stg':>3} {'T':>5} {'secs':>7}  note"]
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        cfg = a.get("config", {})
        st, rp, ds = cfg.get("student", {}), cfg.get("reprogram", {}), cfg.get("distill", {})

        def num(v: Any, fmt: str) -> str:
            return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "-"

        val = a.get("val_acc")
        if t.state == TrialState.PRUNED and t.intermediate_values:
            val = t.intermediate_values[max(t.intermediate_values)]
        note = a.get("failure_reason") or ("cached teacher" if a.get("teacher_cached") else "")
        if t.state == TrialState.PRUNED:
            note = f"pruned at epoch {max(t.intermediate_values) + 1 if t.intermediate_values else '?'}"
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


def _run_workers(space_path: str, study_name: str, url: str, budget: str, sampler: str, pruner: str, seed: int,
                 two_objective: bool, workers: int, gpu_ids: list[str], artifacts: str | None, progress: bool,
                 baselines: bool, isolate: bool) -> str:
    """Start ``workers`` processes running this study (Optuna's distributed mode) and wait for them.

    With ``isolate`` each process runs one trial and a new one replaces it until the budget is spent.
    """
    n_trials, timeout = parse_budget(budget)
    deadline = None if timeout is None else time.monotonic() + timeout
    rdb = open_storage(url, heartbeat=False, wal=True)  # fail early, clearly; create the schema once
    _interrupt_on_sigterm()
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
        cmd = [sys.executable, "-m", "tdmr_search", "run", "--study", study_name, "--space", space_path,
               "--storage", url, "--sampler", sampler, "--pruner", pruner, "--seed", str(seed + worker),
               "--budget", budget if deadline is None else f"{max(1.0, deadline - time.monotonic()):.0f}s",
               "--no-baselines", "--workers", "1"]
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
        return cmd

    def env(worker: int) -> dict[str, str]:
        e = dict(os.environ)
        if gpu_ids:
            e["CUDA_VISIBLE_DEVICES"] = gpu_ids[worker % len(gpu_ids)]
        # share the CPU cores between the workers: oversubscribed OpenMP threads spin and crawl
        e.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        return e

    procs: dict[int, subprocess.Popen] = {
        w: subprocess.Popen(command(w), env=env(w)) for w in range(workers) if shares[w] != 0
    }
    failures = []
    try:
        while procs:
            for w, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[w]
                if rc not in (0,):
                    failures.append(f"worker {w} exited with {rc}")
                if isolate and rc == 0 and not _budget_spent(study_name, url, n_trials, deadline):
                    procs[w] = subprocess.Popen(command(w), env=env(w))
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.wait(timeout=60)
        raise
    if failures:
        raise StudyError("; ".join(failures) + f"; the study {study_name!r} keeps every finished trial, run again to resume")
    study = load_study(study_name, url)
    if baselines and not two_objective:
        space = load_space(space_path)
        _baselines(study, space, load_data(space.base.data, space.base.seed))
    return summary(study, url, artifact_dir(study_name, url if url.startswith("sqlite") else None, artifacts))


def _budget_spent(study_name: str, url: str, n_trials: int | None, deadline: float | None) -> bool:
    if deadline is not None and time.monotonic() >= deadline:
        return True
    if n_trials is None:
        return False
    return _count_finished(load_study(study_name, url)) >= n_trials
