"""What a search run is asked to do: one frozen settings object, filled by the command line.

``tdmr-search run`` turns its flags into :class:`SearchSettings` and hands it to
:func:`~tdmr_search.search.study.run_search`; the worker processes of ``--workers`` and
``--isolate`` get the same object (as JSON in their environment), with ``worker`` and
``max_trials`` set for them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from tdmr_search.search.reevaluate import FOLDS_DEFAULT, REEVALUATE_DEFAULT

__all__ = ["SearchSettings", "StoreOptions"]


@dataclass(frozen=True)
class StoreOptions:
    """What ``run`` may do to a store beyond adding trials to its own study."""

    allow_changed_space: bool = False
    """Resume although the space or data changed (recorded in the study as ``space_changes``)."""
    adopt_study: bool = False
    """Add trials to a study of that name that tdmr-search did not create."""
    allow_other_tables: bool = False
    """Add Optuna's tables to a database that holds other tables."""


@dataclass(frozen=True)
class SearchSettings:
    """One search run (``tdmr-search run``); every field is a flag of that command."""

    space: str
    """Search space YAML."""
    study: str
    """Study name; the same name resumes."""
    budget: str
    """Number of finished trials the study should hold, or a duration for this run (a deadline for
    everything it does, re-evaluation and baselines included)."""
    storage: str | None = None
    """SQLAlchemy URL; default ``sqlite:///studies/<study>.db``."""
    sampler: str = "tpe"
    """tpe, random, gp or nsga2 (:mod:`~tdmr_search.search.samplers`)."""
    pruner: str = "auto"
    """auto, median, halving, hyperband or none (:mod:`~tdmr_search.search.pruning`)."""
    seed: int = 0
    """Sampler seed; each trial's sampler seed derives from it and the trial number."""
    two_objective: bool = False
    """Maximise val_acc and minimise FLOPs (Pareto front; no pruning, no re-evaluation)."""
    workers: int = 1
    """Worker processes sharing the study."""
    gpus: str | None = None
    """Comma-separated GPU ids, one worker each."""
    artifacts: str | None = None
    """Artifact store folder (default beside a SQLite store)."""
    progress: bool = True
    """Log a line per finished trial."""
    baselines: bool = True
    """Run the scratch and kd baselines for the pick afterwards."""
    isolate: bool = False
    """Run each trial in a fresh process."""
    teacher_cache: bool = True
    """Share stage-1 outcomes and teacher features between trials through the on-disk cache."""
    reevaluate: int = REEVALUATE_DEFAULT
    """After the search, retrain this many of the best configurations on other folds and pick by the mean."""
    folds: int = FOLDS_DEFAULT
    """Validation accuracies per re-evaluated configuration, its own trial's included."""
    store: StoreOptions = field(default_factory=StoreOptions)
    """What the run may do to a store that is not plainly its own."""
    worker: int | None = None
    """Set for a worker process only: its index among the workers."""
    max_trials: int | None = None
    """Set for a worker process only: run at most this many trials here (1 with ``isolate``)."""

    @property
    def is_worker(self) -> bool:
        """Whether this process is a worker started by another run (which summarises and finishes)."""
        return self.worker is not None

    def replace(self, **changes: Any) -> SearchSettings:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The settings as JSON (what a worker process receives)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SearchSettings:
        """Settings written by :meth:`to_json`."""
        raw = json.loads(text)
        raw["store"] = StoreOptions(**raw.get("store") or {})
        return cls(**raw)
