"""A sampler seed per trial: reproducible, and never the same for two trials of a study.

Seeding each process's sampler with ``--seed`` makes every process draw the same sequence: a
resumed run repeats the first run's random (or start-up) trials, and two workers started on one
study propose identical pairs. Here the sampler is rebuilt before every trial with a seed derived
from ``--seed`` and the trial's number. The number is the count of trials the study held when the
trial was created, and the store hands each number out once, so it differs between resumed runs,
between the workers of one run and between machines sharing a study, with no coordination; and
the same ``--seed`` and study give the same seeds again. Each trial records its seed
(user attr ``sampler``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

__all__ = ["PerTrialSeedSampler", "derive_seed"]


def derive_seed(seed: int, trial_number: int) -> int:
    """The sampler seed of trial ``trial_number`` of a study run with ``--seed seed`` (32 bits)."""
    digest = hashlib.sha256(f"tdmr-search:{seed}:{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class PerTrialSeedSampler(BaseSampler):
    """Wraps a sampler factory; before each trial builds the sampler with that trial's seed.

    Args:
        name: The sampler's name (recorded with each trial).
        seed: The run's ``--seed``.
        make: Builds the inner sampler from a seed.
    """

    def __init__(self, name: str, seed: int, make: Callable[[int], BaseSampler]) -> None:
        self.name = name
        self.seed = seed
        self._make = make
        self._inner = make(seed)
        self._number: int | None = None

    def seed_for(self, trial_number: int) -> int:
        """The seed the inner sampler gets for trial ``trial_number``."""
        return derive_seed(self.seed, trial_number)

    def record(self, trial: optuna.Trial) -> None:
        """Store the sampler, the run's seed and the trial's seed as the trial's user attr ``sampler``."""
        trial.set_user_attr("sampler", {"name": self.name, "seed": self.seed, "trial_seed": self.seed_for(trial.number)})

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if trial.number != self._number:
            self._inner = self._make(self.seed_for(trial.number))
            self._number = trial.number
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:  # noqa: ANN401
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
