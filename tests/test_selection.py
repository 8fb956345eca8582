"""Selection under noise (DESIGN.md section 8): the pruning signal, the auto pruner, the small-validation warning."""

from __future__ import annotations

import optuna
import pytest
import yaml
from conftest import SMOKE_SPACE

from tdmr_search.data import load_data
from tdmr_search.pipeline.cache import TeacherCache
from tdmr_search.search.objective import Objective
from tdmr_search.search.pruning import (
    HYPERBAND_MIN_TRIALS,
    MedianWithPatience,
    choose_pruner,
    make_pruner,
    small_validation_note,
)
from tdmr_search.search.space import feasible_students, load_space


def _space(tmp_path, unlabeled: int):
    raw = yaml.safe_load(SMOKE_SPACE.read_text())
    raw["base"]["data"]["unlabeled"] = unlabeled
    raw["base"]["distill"]["epochs"] = 4
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_space(path)


def _fixed_trial(space, fit):
    params = {"student": fit[0].key, "reprogram.proxy_dim": 16, "reprogram.transform": "resize",
              "reprogram.projector": "linear", "student.projector": "linear", "distill.n_stages": 2,
              "distill.temperature": 2.0, "distill.temperature_schedule": "constant", "distill.feature_loss": "mse",
              "reprogram.lr": 0.003, "distill.lr": 0.005}
    return optuna.trial.FixedTrial(params)


@pytest.mark.slow
@pytest.mark.parametrize("unlabeled", [300, 0])
def test_objective_reports_the_low_noise_signal(tmp_path, unlabeled):
    space = _space(tmp_path, unlabeled)
    data = load_data(space.base.data, space.base.seed)
    fit, _ = feasible_students(space, data.channels, data.image_size, data.num_classes)
    objective = Objective(space, fit, data, teacher_cache=TeacherCache(tmp_path / "cache"))
    trial = _fixed_trial(space, fit)
    value = objective(trial)
    attrs = trial.user_attrs
    assert value == attrs["val_acc"] == attrs["val_curve"][-1]  # the objective is still the val accuracy
    history = attrs["history"]
    assert len(attrs["signal_curve"]) == len(history) == 4
    if unlabeled:
        reference = objective.reference
        assert len(reference.images) == 300 and "agreement" in objective.signal
        assert attrs["signal_curve"] == [h["agreement"] for h in history]
        assert all(0.0 <= v <= 1.0 for v in attrs["signal_curve"])
        # the reference is the linear probe's top-1 labels, fixed for the study: recomputing gives the same
        again = Objective(space, fit, data, teacher_cache=TeacherCache(tmp_path / "cache")).reference
        assert again.labels.tolist() == reference.labels.tolist()
        assert len(set(reference.labels.tolist())) > 3  # a real teacher's labels, not one class
    else:
        assert objective.reference is None and "log-loss" in objective.signal
        assert attrs["signal_curve"] == [-h["val_loss"] for h in history]


def test_auto_pruner_by_budget():
    assert choose_pruner("auto", 40)[0] == "median"
    assert choose_pruner("auto", None)[0] == "median"  # a time budget
    assert choose_pruner("auto", HYPERBAND_MIN_TRIALS)[0] == "hyperband"
    assert choose_pruner("auto", 500)[0] == "hyperband"
    assert choose_pruner("auto", 500, two_objective=True)[0] == "none"
    assert choose_pruner("halving", 5) == ("halving", "asked for")
    name, why = choose_pruner("auto", 40)
    assert "40 trials" in why and "Hyperband" in why
    median = make_pruner("median", 15)
    assert isinstance(median, MedianWithPatience) and median.n_warmup_epochs == 5
    assert isinstance(make_pruner("hyperband", 15), optuna.pruners.HyperbandPruner)
    with pytest.raises(Exception, match="did you mean 'median'"):
        make_pruner("medain", 15)


def test_median_rule_waits_a_third_of_the_schedule_and_the_startup_trials():
    study = optuna.create_study(direction="maximize", pruner=make_pruner("median", 9))
    for _ in range(5):  # five good trials finish
        t = study.ask()
        for step in range(9):
            t.report(0.9, step)
        study.tell(t, 0.9)
    bad = study.ask()
    pruned_at = None
    for step in range(9):
        bad.report(0.1, step)
        if bad.should_prune():
            pruned_at = step
            break
    assert pruned_at == 2  # after 3 of 9 epochs (a third), not before
    study.tell(bad, state=optuna.trial.TrialState.PRUNED)
    blip = study.ask()  # below the median at one epoch only: patience keeps it
    for step, value in enumerate([0.95, 0.95, 0.1, 0.95, 0.1, 0.95]):
        blip.report(value, step)
        assert not blip.should_prune(), step


def test_small_validation_warning_fires_only_where_pruning_hears_the_validation_split():
    assert small_validation_note(50, "median") is not None
    assert small_validation_note(50, "median", pool=1000) is None  # the signal comes from the pool
    assert small_validation_note(50, "none") is None
    assert small_validation_note(150, "median") is None


# ----------------------------------------------------------------------------- re-evaluation and the pick


def _smoke(folder):
    from tdmr_search.search.storage import load_study

    return load_study("smoke", f"sqlite:///{folder}/studies/smoke.db")


def test_the_smoke_run_reevaluated_its_best_and_says_so(smoke_study):
    from tdmr_search.search.reevaluate import reevaluation

    study = _smoke(smoke_study)
    record = reevaluation(study)
    assert len(record) == 3  # the default: the 3 best configurations, 3 folds each
    for number, entry in record.items():
        trial = study.trials[number]
        assert entry["val_acc_seeds"][0] == trial.user_attrs["val_acc"]  # fold 0 is the trial itself
        assert len(entry["val_acc_seeds"]) == 3 and entry["split_seeds"] == [None, 1, 2]
        assert entry["val_acc_mean"] == pytest.approx(sum(entry["val_acc_seeds"]) / 3)
    log = (smoke_study / "run.log").read_text()
    assert "re-evaluation adds up to 6 training runs" in log


def test_reevaluation_resumes_where_it_stopped(copy_study):
    from tdmr_search.errors import Interrupted
    from tdmr_search.search.reevaluate import ATTR, reevaluate, reevaluation, runs_needed

    study = _smoke(copy_study)
    study.set_user_attr(ATTR, {})
    space = load_space(SMOKE_SPACE)
    data = load_data(space.base.data, space.base.seed)
    assert runs_needed(study, 2, 3) == 4

    def stop_after_two_runs():
        if sum(len(e["val_acc_seeds"]) - 1 for e in reevaluation(study).values()) >= 2:
            raise Interrupted("killed")

    with pytest.raises(Interrupted):
        reevaluate(study, data, 2, 3, check_stop=stop_after_two_runs)
    first = reevaluation(study)
    assert [len(e["val_acc_seeds"]) for e in first.values()] == [3]  # one configuration done, recorded
    assert runs_needed(study, 2, 3) == 2
    epochs = []
    done = reevaluate(study, data, 2, 3, on_epoch_end=lambda step, m: epochs.append(m["stage"]))
    assert epochs.count("distill") == 2 * space.base.distill.epochs  # only the two runs left
    assert [len(e["val_acc_seeds"]) for e in done.values()] == [3, 3]
    number = next(iter(first))
    assert done[number] == first[number]


def test_export_best_status_and_summary_follow_the_mean(copy_study):
    from conftest import run_cli

    from tdmr_search.search.reevaluate import ATTR, best_trials
    from tdmr_search.search.summary import summary

    study = _smoke(copy_study)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    single_best, runner_up = complete[0], complete[1]
    # means that disagree with the single runs: the runner-up is steadier
    study.set_user_attr(ATTR, {
        str(single_best.number): {"val_acc_seeds": [single_best.value, 0.1, 0.1], "val_acc_mean": 0.3,
                                  "val_acc_std": 0.2, "split_seeds": [None, 1, 2], "test_acc_seeds": [None] * 3},
        str(runner_up.number): {"val_acc_seeds": [runner_up.value, 0.9, 0.9], "val_acc_mean": 0.9,
                                "val_acc_std": 0.0, "split_seeds": [None, 1, 2], "test_acc_seeds": [None] * 3},
    })
    assert [t.number for t in best_trials(study)] == [runner_up.number]
    out = copy_study / "exported"
    run_cli("export", "--study", "smoke", "--best", "--out", str(out), cwd=copy_study)
    exported = yaml.safe_load((out / "config.yaml").read_text())
    assert exported == runner_up.user_attrs["config"]
    status = run_cli("status", "--study", "smoke", cwd=copy_study).stdout
    assert "PICK mean 0.9000" in status
    assert summary(study, "sqlite:///x.db", copy_study).splitlines()[1].startswith(f"best trial {runner_up.number}:")


def test_reevaluation_killed_with_sigkill_resumes_with_what_is_missing(copy_study):
    """A real process re-evaluating a finished study is killed (SIGKILL) after its first recorded
    run; the same command then does only the runs left, and what was recorded stays as it was."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    from tdmr_search.search.reevaluate import ATTR, reevaluation

    url = f"sqlite:///{copy_study}/studies/smoke.db"
    study = _smoke(copy_study)
    study.set_user_attr(ATTR, {})  # as if the search had just finished
    n_trials = len(study.trials)
    args = [sys.executable, "-m", "tdmr_search", "run", "--study", "smoke", "--space", str(SMOKE_SPACE),
            "--budget", "3", "--reevaluate", "2", "--folds", "3", "--no-baselines", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(args, cwd=copy_study, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.communicate()}"
            runs = sum(len(e["val_acc_seeds"]) - 1
                       for e in reevaluation(optuna.load_study(study_name="smoke", storage=url)).values())
            if runs >= 1:
                break
            assert time.monotonic() < deadline, "no re-evaluation run was recorded in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = reevaluation(optuna.load_study(study_name="smoke", storage=url))
    recorded = sum(len(e["val_acc_seeds"]) - 1 for e in before.values())
    assert 1 <= recorded < 4, before  # killed in the middle: some runs recorded, not all
    # mark the recorded runs (CPU runs repeat bit for bit, so a redone run would look the same)
    for entry in before.values():
        entry["val_acc_seeds"][1:] = [0.123] * (len(entry["val_acc_seeds"]) - 1)
    optuna.load_study(study_name="smoke", storage=url).set_user_attr(ATTR, {str(n): e for n, e in before.items()})

    from conftest import run_cli

    proc = run_cli(*args[3:], cwd=copy_study)
    assert f"re-evaluation: {4 - recorded} of its 4 training runs left" in proc.stderr, proc.stderr
    after = optuna.load_study(study_name="smoke", storage=url)
    record = reevaluation(after)
    assert len(after.trials) == n_trials  # re-evaluation only: no trial added or replaced
    assert sorted(len(e["val_acc_seeds"]) for e in record.values()) == [3, 3]
    for number, entry in before.items():  # what was recorded before the kill is kept (marks and all), not redone
        assert record[number]["val_acc_seeds"][:len(entry["val_acc_seeds"])] == entry["val_acc_seeds"]
