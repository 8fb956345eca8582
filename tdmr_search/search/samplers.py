"""Optuna samplers by name: a small registry, each seeded per trial (see :mod:`.seeding`)."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from tdmr_search.errors import ConfigError
from tdmr_search.registry import did_you_mean
from tdmr_search.search.seeding import PerTrialSeedSampler

__all__ = ["SAMPLERS", "make_sampler"]


def _tpe(seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)


def _random(seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _gp(seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    if two_objective:
        raise ConfigError("--sampler gp searches one objective; accepted with --two-objective: tpe, random, nsga2")
    return optuna.samplers.GPSampler(seed=seed)


def _nsga2(seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)


#: name -> factory(seed, two_objective); the order is the order the help and errors list them in.
SAMPLERS: dict[str, Callable[[int, bool], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "random": _random, "gp": _gp, "nsga2": _nsga2,
}


def make_sampler(name: str, seed: int, two_objective: bool) -> optuna.samplers.BaseSampler:
    """A sampler by name: tpe (default), random, gp, nsga2, seeded per trial from ``seed`` (see seeding.py)."""
    factory = SAMPLERS.get(name)
    if factory is None:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}{did_you_mean(name, SAMPLERS)}")
    factory(seed, two_objective)  # a sampler that does not fit the study fails here, before any trial
    return PerTrialSeedSampler(name, seed, lambda s: factory(s, two_objective))
