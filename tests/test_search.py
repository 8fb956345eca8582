"""The search end to end: a real smoke study from the CLI, read back with plain Optuna; export and
retrain; pruning; a failing trial; the FLOPs gate; optuna-dashboard on the store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import SMOKE_SPACE, run_cli

STUDY = "smoke"


def _storage(folder: Path) -> str:
    return f"sqlite:///{folder}/studies/{STUDY}.db"


def test_store_reads_with_plain_optuna(smoke_study):
    study = optuna.load_study(study_name=STUDY, storage=_storage(smoke_study))
    trials = study.get_trials()
    assert len(trials) == 3
    assert study.metric_names == ["val_acc"]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert finished, [t.user_attrs.get("failure_reason") for t in trials]
    for t in finished:
        assert "student" in t.params and "reprogram.transform" in t.params
        assert t.intermediate_values, "the pruning signal is reported every stage-2 epoch"
        # no pool in the smoke space: the signal is the negative validation log-loss
        assert all(v <= 0.0 for v in t.intermediate_values.values())
        assert [t.intermediate_values[e] for e in sorted(t.intermediate_values)] == t.user_attrs["signal_curve"]
        a = t.user_attrs
        for key in ("config", "flops", "params", "val_curve"):
            assert key in a, key
        assert a["flops"] <= 2e6  # the space's cap
        assert a["config"]["student"]["name"] + "@" + str(a["config"]["student"]["resolution"]) == t.params["student"]
    for t in (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE):
        a = t.user_attrs
        for key in ("val_acc", "test_acc", "teacher_val_acc", "seconds", "teacher_cached", "weights_artifact_id"):
            assert key in a, key
        assert t.value == pytest.approx(a["val_acc"])
        assert {"stage1", "stage2", "eval"} <= set(a["seconds"])
    attrs = study.user_attrs
    for key in ("base_config", "space", "max_flops", "tdmr_search_version", "feasible_students", "description",
                "intermediate_values"):
        assert key in attrs, key
    assert "negative validation cross-entropy" in attrs["intermediate_values"]
    assert attrs["max_flops"] == 2e6
    assert attrs["baselines"][attrs["baselines_for_best"]]["scratch"]["test_acc"] >= 0


def test_small_validation_split_is_flagged_before_pruning(smoke_study):
    from tdmr_search.search.pruning import small_validation_note

    log = (smoke_study / "run.log").read_text()
    assert "the validation split has 50 images (one image = 2.0 accuracy points)" in log  # digits: 5 per class
    assert small_validation_note(50, "hyperband") is not None
    assert small_validation_note(99, "median") is not None
    assert small_validation_note(100, "hyperband") is None  # one image is at most a point
    assert small_validation_note(50, "none") is None  # nothing is pruned
    assert small_validation_note(50, "hyperband", two_objective=True) is None  # Optuna does not prune these


def test_status_table(smoke_study):
    out = run_cli("status", "--study", STUDY, cwd=smoke_study).stdout
    assert "FLOPs cap 2M" in out and out.count("\n") >= 4


def test_export_then_retrain_reproduces_val_acc(copy_study):
    out = copy_study / "exported"
    run_cli("export", "--study", STUDY, "--best", "--out", str(out), cwd=copy_study)
    for name in ("config.yaml", "student.safetensors", "metrics.json", "model.json", "README.md"):
        assert (out / name).is_file(), name
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"] == "tdmr"
    exported = json.loads((out / "metrics.json").read_text())
    retrained = copy_study / "retrained"
    run_cli("train", "--config", str(out / "config.yaml"), "--out", str(retrained), "--device", "cpu", cwd=copy_study)
    again = json.loads((retrained / "metrics.json").read_text())
    assert again["val_acc"] == pytest.approx(exported["val_acc"], abs=1e-6)
    assert again["test_acc"] == pytest.approx(exported["test_acc"], abs=1e-6)
    # the exported weights are the trial's student: same test accuracy when loaded back
    import torch

    from tdmr_search import load_deployed
    from tdmr_search.config import load_config
    from tdmr_search.data import load_data

    model = load_deployed(out)
    cfg = load_config(out / "config.yaml")
    data = load_data(cfg.data, cfg.seed)
    with torch.no_grad():
        acc = (model(data.test.images).argmax(1) == data.test.labels).float().mean().item()
    assert acc == pytest.approx(exported["test_acc"], abs=1e-6)


def test_export_errors(copy_study):
    proc = run_cli("export", "--study", STUDY, "--trial", "99", "--out", "x", cwd=copy_study, check=False)
    assert proc.returncode == 2 and "has no trial 99" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error:" in line] == [proc.stderr.strip().splitlines()[-1]]
    proc = run_cli("export", "--study", "nosuch", "--best", "--out", "x", cwd=copy_study, check=False)
    assert proc.returncode == 2 and "No study store" in proc.stderr


def test_resume_adds_to_the_same_study(copy_study):
    run_cli("run", "--study", STUDY, "--space", str(SMOKE_SPACE), "--budget", "4", "--no-baselines", cwd=copy_study)
    study = optuna.load_study(study_name=STUDY, storage=_storage(copy_study))
    assert len(study.trials) == 4


def _objective_study(tmp_path, pruner):
    from tdmr_search.data import load_data
    from tdmr_search.search.objective import Objective
    from tdmr_search.search.space import feasible_students, load_space

    space = load_space(SMOKE_SPACE)
    data = load_data(space.base.data.__class__(**{**vars(space.base.data)}), space.base.seed)
    fit, _ = feasible_students(space, data.channels, data.image_size, data.num_classes)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db", direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    return study, Objective(space, fit, data)


def test_pruner_prunes_a_trial(tmp_path):
    # A threshold above any reachable accuracy prunes at the first stage-2 epoch.
    study, objective = _objective_study(tmp_path, optuna.pruners.ThresholdPruner(lower=1.01))
    study.optimize(objective, n_trials=1)
    t = study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED
    assert list(t.intermediate_values) == [0]
    assert t.user_attrs["pruned_at_epoch"] == 0
    seconds = t.user_attrs["seconds"]  # a pruned trial still tells where its time went
    assert seconds["stage2"] > 0 and seconds["stage1"] >= 0


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    space = yaml.safe_load(SMOKE_SPACE.read_text())
    # a real teacher weights file of the wrong architecture: every trial fails in stage 1
    import timm
    import torch

    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), wrong)
    space["base"]["teacher"]["weights"] = str(wrong)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    proc = run_cli("run", "--study", "bad", "--space", str(path), "--budget", "2", "--no-baselines", cwd=tmp_path)
    assert "no trial has finished yet" in proc.stdout
    study = optuna.load_study(study_name="bad", storage=f"sqlite:///{tmp_path}/studies/bad.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    for t in study.trials:
        assert "does not fit teacher 'test_vit'" in t.user_attrs["failure_reason"]


@pytest.mark.slow
def test_no_feasible_student_is_a_clear_error_before_training(tmp_path):
    space = yaml.safe_load(SMOKE_SPACE.read_text())
    space["max_flops"] = "10k"
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    for args in (["validate", str(path)], ["run", "--study", "tiny", "--space", str(path), "--budget", "2"]):
        proc = run_cli(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
        assert "No student fits the FLOPs cap" in errors[0] and "cheapest" in errors[0]
    assert not (tmp_path / "studies" / "tiny.db").exists()


@pytest.mark.slow
def test_validate_lists_feasible_students(tmp_path):
    out = run_cli("validate", str(SMOKE_SPACE), cwd=tmp_path).stdout
    assert "students fit" in out and "test_vit@16" in out and "over the cap" in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_optuna_dashboard_opens_the_store(smoke_study):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install 'tdmr-search[dashboard]')")
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", "from optuna_dashboard._cli import main; main()", _storage(smoke_study),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "optuna-dashboard did not answer"
        summary = next(s for s in studies["study_summaries"] if s["study_name"] == STUDY)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10) as r:
            detail = json.loads(r.read())
        assert detail["objective_names"] == ["val_acc"]
        keys = {a["key"] for t in detail["trials"] for a in t["user_attrs"]}
        assert {"val_acc", "test_acc", "flops", "config"} <= keys
    finally:
        server.terminate()
        server.wait(timeout=10)
