"""The search layer's parts on their own: settings, the trial record and table, samplers and pruners.

No real study runs here (the whole search is tested in test_search.py and test_defects.py): the
stores are real Optuna studies in SQLite files, with trials added by hand.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tdmr_search.errors import ConfigError, StudyError
from tdmr_search.search.pruning import PRUNERS, make_pruner
from tdmr_search.search.record import TrialRecord, baseline_results, trials_table
from tdmr_search.search.reevaluate import ATTR, best_trials
from tdmr_search.search.samplers import SAMPLERS, make_sampler
from tdmr_search.search.settings import SearchSettings, StoreOptions
from tdmr_search.search.workers import WORKER_SETTINGS, worker_settings

CONFIG = {"student": {"name": "test_resnet", "resolution": 16}, "reprogram": {"transform": "pad", "proxy_dim": 32},
          "distill": {"n_stages": 2, "temperature": 3.0}}


def _trial(value, state=TrialState.COMPLETE, **attrs):
    kw = {"value": value} if state == TrialState.COMPLETE else {}
    return create_trial(state=state, params={"distill.lr": 0.003}, distributions={"distill.lr": FloatDistribution(1e-3, 1e-2)},
                        user_attrs={"config": CONFIG, **attrs}, intermediate_values={0: 0.5, 1: 0.6}, **kw)


@pytest.fixture
def study(tmp_path):
    s = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    s.add_trial(_trial(0.7, val_acc=0.7, test_acc=0.65, flops=1.5e6, seconds={"total": 3.0}))
    s.add_trial(_trial(0.8, val_acc=0.8, test_acc=0.60, teacher_cached=True))
    s.add_trial(_trial(None, TrialState.PRUNED, val_curve=[0.4, 0.45]))
    s.add_trial(_trial(None, TrialState.FAIL, failure_reason="the stage-1 loss became nan"))
    return s


def test_settings_travel_to_a_worker_whole(monkeypatch):
    settings = SearchSettings("spaces/smoke.yaml", "s", "30m", storage="postgresql+psycopg://u:pw@h/db", seed=3,
                              pruner="median", workers=2, isolate=True, teacher_cache=False, reevaluate=0,
                              store=StoreOptions(adopt_study=True), worker=1, max_trials=1)
    assert SearchSettings.from_json(settings.to_json()) == settings
    monkeypatch.setenv(WORKER_SETTINGS, settings.to_json())
    assert worker_settings() == settings
    assert worker_settings().is_worker and not settings.replace(worker=None).is_worker


def test_a_worker_without_settings_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(WORKER_SETTINGS, raising=False)
    with pytest.raises(StudyError, match="only as a worker of `tdmr-search run --workers N`"):
        worker_settings()


def test_the_record_reads_what_the_objective_writes(study):
    written = TrialRecord(7, val_acc=0.5, test_acc=0.4, teacher_val_acc=0.9, teacher_cached=False, history=[],
                          data={"train": 10}, seconds={"total": 1.0}, deployed={"student": "x"},
                          tdmr_search_version="1.0")
    attrs = written.to_user_attrs()
    assert list(attrs) == list(TrialRecord.RESULTS)
    study.add_trial(create_trial(value=0.5, user_attrs=attrs))
    read = TrialRecord.from_trial(study.trials[-1])
    assert read.to_user_attrs() == attrs
    assert read.number == 4 and read.state == "COMPLETE"


def test_the_trials_table_notes_each_state_and_the_pick(study):
    rows = trials_table(study)
    assert [r.record.state for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert [r.note for r in rows] == ["", "cached teacher", "pruned at epoch 2", "the stage-1 loss became nan"]
    assert rows[2].record.shown_val_acc == 0.45 and rows[0].record.student == "test_resnet@16"
    assert not any(r.picked for r in rows)  # nothing re-evaluated: no pick to mark
    study.set_user_attr(ATTR, {"0": {"val_acc_seeds": [0.7, 0.8, 0.9], "val_acc_mean": 0.8, "val_acc_std": 0.1,
                                     "split_seeds": [None, 1, 2]},
                               "1": {"val_acc_seeds": [0.8, 0.6, 0.7], "val_acc_mean": 0.7, "val_acc_std": 0.1,
                                     "split_seeds": [None, 1, 2]}})
    rows = trials_table(study)
    assert rows[0].picked and rows[0].note.startswith("PICK mean 0.8000 +- 0.1000 over 3 folds")
    assert [t.number for t in best_trials(study)] == [0]  # the mean, not trial 1's single 0.8


def test_best_trials_is_empty_before_any_trial_finished(tmp_path):
    s = optuna.create_study(storage=f"sqlite:///{tmp_path / 'e.db'}", direction="maximize")
    assert best_trials(s) == [] and trials_table(s) == [] and baseline_results(s) == {}


def test_samplers_and_pruners_are_registries_with_one_line_errors():
    assert list(SAMPLERS) == ["tpe", "random", "gp", "nsga2"]
    for name in SAMPLERS:
        if name != "gp":
            assert make_sampler(name, 0, two_objective=True) is not None
    with pytest.raises(ConfigError, match=r"--sampler must be one of tpe, random, gp, nsga2; got 'tpee' \(did you mean 'tpe'\?\)"):
        make_sampler("tpee", 0, False)
    with pytest.raises(ConfigError, match="accepted with --two-objective: tpe, random, nsga2"):
        make_sampler("gp", 0, True)
    kinds = {name: type(make_pruner(name, 9)).__name__ for name in PRUNERS if name != "auto"}
    assert kinds == {"median": "MedianWithPatience", "halving": "SuccessiveHalvingPruner",
                     "hyperband": "HyperbandPruner", "none": "NopPruner"}
    with pytest.raises(ConfigError, match=r"--pruner must be one of auto, median, halving, hyperband, none; got 'medain'"):
        make_pruner("medain", 9)
