"""Worker processes sharing one study (Optuna's distributed mode): ``--workers N``, ``--gpus``, ``--isolate``.

:func:`run_workers` starts each worker with :func:`start_worker`: a fresh Python running
``tdmr_search worker``, whose whole task is the run's :class:`SearchSettings` with ``worker`` and
``max_trials`` set, passed as JSON in its environment (``TDMR_WORKER_SETTINGS``), so neither
a flag is re-typed nor a password in the storage URL shows on a command line.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from tdmr_search.errors import Interrupted, StudyError
from tdmr_search.search import interrupt
from tdmr_search.search.budget import count_finished
from tdmr_search.search.settings import SearchSettings
from tdmr_search.search.storage import artifact_dir, load_study, mkdirs_or_fail, open_storage, sqlite_path
from tdmr_search.search.summary import summary

__all__ = ["WORKER_SETTINGS", "run_workers", "start_worker", "worker_settings"]

logger = logging.getLogger(__name__)

#: The environment variable a worker process reads its settings from.
WORKER_SETTINGS = "TDMR_WORKER_SETTINGS"


def start_worker(settings: SearchSettings, gpu: str | None = None) -> subprocess.Popen:
    """Start one worker process running ``settings`` (``worker`` set), in its own session.

    ``gpu`` becomes its only visible GPU. The CPU cores are shared between the workers: oversubscribed
    OpenMP threads spin and crawl.
    """
    env = dict(os.environ, **{WORKER_SETTINGS: settings.to_json()})
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, settings.workers))))
    return subprocess.Popen([sys.executable, "-m", "tdmr_search", "worker"], env=env, start_new_session=True)


def worker_settings() -> SearchSettings:
    """The settings of this worker process (what :func:`start_worker` passed)."""
    text = os.environ.get(WORKER_SETTINGS)
    if not text:
        raise StudyError(f"tdmr-search worker runs only as a worker of `tdmr-search run --workers N` or --isolate "
                         f"({WORKER_SETTINGS} is not set); use tdmr-search run")
    return SearchSettings.from_json(text)


def run_workers(settings: SearchSettings, n_trials: int | None, deadline: float | None, pruner: str,
                gpu_ids: list[str], created: list[Path]) -> str:
    """Start ``settings.workers`` processes running this study and wait for them; returns the summary.

    With ``isolate`` each process runs one trial and a new one replaces it until the budget is spent.
    The workers run in their own session, and a signal to this process reaches each of them once,
    forwarded as SIGTERM. Re-evaluation and the baselines are not theirs: the run that started
    them does both afterwards.
    """
    url = settings.storage or ""
    path = sqlite_path(url)
    if path is not None:
        mkdirs_or_fail(path.parent, created, f"study store {str(path)!r}", "choose a writable --storage sqlite:///PATH "
                       "or a database URL")
    rdb = open_storage(url, heartbeat=False, wal=True,  # fail early, clearly; create the schema once
                       allow_other_tables=settings.store.allow_other_tables)
    workers = settings.workers
    shares: list[int | None] = [None] * workers
    if n_trials is not None and not settings.isolate:
        # a trial budget is split between the workers, so the study ends with exactly n_trials
        try:
            done = count_finished(optuna.load_study(study_name=settings.study, storage=rdb))
        except KeyError:
            done = 0
        left = max(0, n_trials - done)
        shares = [left // workers + (1 if w < left % workers else 0) for w in range(workers)]

    def start(w: int) -> subprocess.Popen:
        budget = str(n_trials) if deadline is None else f"{max(1.0, deadline - time.monotonic()):.0f}s"
        one = settings.replace(budget=budget, pruner=pruner, baselines=False, reevaluate=0, workers=workers,
                               gpus=None, isolate=False, worker=w, max_trials=1 if settings.isolate else shares[w])
        return start_worker(one, gpu_ids[w % len(gpu_ids)] if gpu_ids else None)

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
                elif settings.isolate and not interrupt.requested() and not _budget_spent(settings, n_trials, deadline):
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
    store_dir = artifact_dir(settings.study, url if url.startswith("sqlite") else None, settings.artifacts)
    if interrupt.requested():
        err = Interrupted(f"interrupted by {interrupt.reason()}; the workers closed their running trials")
        err.summary = summary(load_study(settings.study, url), url, store_dir)
        raise err
    if failures:
        raise StudyError("; ".join(failures) + f"; the study {settings.study!r} keeps every finished trial, run again "
                         "to resume")
    return summary(load_study(settings.study, url), url, store_dir)


def _budget_spent(settings: SearchSettings, n_trials: int | None, deadline: float | None) -> bool:
    if deadline is not None and time.monotonic() >= deadline:
        return True
    if n_trials is None:
        return False
    return count_finished(load_study(settings.study, settings.storage)) >= n_trials
