"""Every shipped space in spaces/ loads, passes the pre-flight that `validate` and `run` share,
and samples trial configs that pass the config's own checks.

A space that needs a network (the hub, a download) is checked with its teacher and dataset
swapped for tiny offline stand-ins (timm's random ``test_vit``, scikit-learn digits) through the
normal override path, ``load_space(path, overrides)``: everything else (students, cap, searched
parameters, schedule) is the space's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, SMOKE_SPACE, run_cli

from tdmr_search.config import PipelineConfig, config_from_dict
from tdmr_search.errors import ModelError
from tdmr_search.search.objective import Objective
from tdmr_search.search.preflight import network_needs, preflight
from tdmr_search.search.space import load_space

SPACES = sorted((ROOT / "spaces").glob("*.yaml"))
TRIALS = 6


def offline_stand_ins(base: PipelineConfig) -> dict[str, object]:
    """Overrides that swap a space's network-only teacher and dataset for tiny real offline ones."""
    stand_ins: dict[str, object] = {}
    if base.teacher.weights == "hub":
        stand_ins.update({"teacher.name": "test_vit", "teacher.weights": "random", "teacher.input_size": 32})
    if any(need.startswith("data.") for need in network_needs(base)):
        stand_ins.update({"data.dataset": "digits", "data.download": False, "data.root": None, "data.shots": 20,
                          "data.unlabeled": min(base.data.unlabeled, 300), "data.test_limit": None})
    if base.student.pretrained:
        stand_ins["student.pretrained"] = False
    return stand_ins


def test_every_space_is_tested():
    names = {p.stem for p in SPACES}
    assert {"smoke", "demo", "default", "gpu"} <= names, names


@pytest.mark.slow
@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_space_loads_preflights_and_samples_valid_configs(path: Path):
    space = load_space(path)
    overrides = offline_stand_ins(space.base)
    if overrides:
        space = load_space(path, overrides)
    assert network_needs(space.base) == []
    checked = preflight(space)
    assert checked.fit, "at least one student fits the cap"
    assert checked.teacher_size >= 16
    assert all(space.max_flops is None or c.flops <= space.max_flops for c in checked.fit)
    by_key = {c.key: c for c in checked.fit}

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    objective = Objective(space, checked.fit, checked.data)
    for _ in range(TRIALS):
        trial = study.ask()
        config = objective.config_for(trial)  # the objective's own sampling: sample_overrides + base.replace
        assert config_from_dict(config.to_dict()) == config  # passes every check of the config
        assert f"{config.student.name}@{config.student.resolution}" in by_key
        for p in space.params:
            assert (p.name in trial.params) == p.active(trial.params), p.name  # conditions hold
        # everything not searched is the space's base
        assert config.data == space.base.data and config.teacher == space.base.teacher
        assert config.distill.epochs == space.base.distill.epochs
        study.tell(trial, 0.5)
    assert len(study.trials) == TRIALS


def test_the_gpu_space_is_offline_and_gpu_sized():
    space = load_space(ROOT / "spaces" / "gpu.yaml")
    assert network_needs(space.base) == []
    base = space.base
    assert (base.teacher.name, base.teacher.weights, base.teacher.input_size) == ("tf_efficientnet_lite2", "package", 260)
    assert base.data.dataset == "fashion-mnist" and base.data.shots and base.data.unlabeled >= 10_000
    assert base.data.augment_views >= 1
    assert base.distill.batch_size == 256 and space.max_flops == 300e6
    assert min(space.resolutions) == 96 and max(space.resolutions) == 224


def _smoke_variant(tmp_path: Path, name: str, base: dict[str, dict[str, object]]) -> Path:
    """spaces/smoke.yaml with some ``base`` sections changed, written to ``tmp_path``."""
    raw = yaml.safe_load(SMOKE_SPACE.read_text())
    for section, values in base.items():
        raw["base"].setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
def test_run_preflight_builds_a_teacher_with_a_null_input_size(tmp_path):
    # Regression (issue 12): `run` passed teacher.input_size=None to the size check and stopped
    # before any trial ("cannot run at teacher.input_size=None"); `validate` guarded it. Both now
    # share one pre-flight, which checks the teacher at its pretrained size (test_vit: 160).
    raw = yaml.safe_load(SMOKE_SPACE.read_text())
    raw["base"]["teacher"]["input_size"] = None
    raw["base"]["reprogram"].update({"transform": "resize", "epochs": 1})
    raw["base"]["distill"].update({"epochs": 1, "n_stages": 1})
    raw["students"] = {"names": ["test_resnet"], "resolutions": [16]}
    raw["params"] = {"reprogram.proxy_dim": {"type": "categorical", "choices": [16, 32]}}
    path = tmp_path / "null-size.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))

    assert preflight(load_space(path)).teacher_size == 160
    assert "teacher test_vit (random weights) at 160px" in run_cli("validate", str(path), cwd=tmp_path).stdout
    proc = run_cli("run", "--study", "nullsize", "--space", str(path), "--budget", "1", "--no-baselines",
                   "--reevaluate", "0", "--no-progress", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "input_size=None" not in proc.stderr
    study = optuna.load_study(study_name="nullsize", storage=f"sqlite:///{tmp_path}/studies/nullsize.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert study.trials[0].user_attrs["config"]["teacher"]["input_size"] is None


def test_a_missing_weights_file_is_one_line_naming_teacher_weights_path(tmp_path):
    path = _smoke_variant(tmp_path, "nofile", {"teacher": {"weights": str(tmp_path / "gone.safetensors")}})
    with pytest.raises(ModelError) as err:
        preflight(load_space(path))
    text = str(err.value)
    assert "gone.safetensors" in text and "does not exist" in text and "teacher.weights: PATH" in text
    assert "\n" not in text


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """No network as the tools see it: the hub in offline mode, every download through a dead proxy."""
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update({
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HOME": str(tmp_path / "home"),  # empty caches: ~/.cache/tdmr-search/data, the hub's, torch's
        "HF_HOME": str(tmp_path / "home" / "hf"), "TORCH_HOME": str(tmp_path / "home" / "torch"),
        "XDG_CACHE_HOME": str(tmp_path / "home" / "cache"),
        "HF_HUB_OFFLINE": "1", "http_proxy": dead, "https_proxy": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead,
    })
    return env


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "run"])
def test_default_space_without_a_network_is_one_line(tmp_path, command):
    args = ["validate", str(ROOT / "spaces" / "default.yaml")] if command == "validate" else [
        "run", "--study", "offline", "--space", str(ROOT / "spaces" / "default.yaml"), "--budget", "1"]
    proc = subprocess.run([sys.executable, "-m", "tdmr_search", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_offline_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    line = errors[0]
    assert line.startswith(f"tdmr-search {command}: error: This space needs 2 things this machine lacks")
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in line and "teacher.weights: PATH" in line
    assert "'cifar100'" in line and "cannot be downloaded" in line and "data.root" in line
    assert not (tmp_path / "studies" / "offline.db").exists()


@pytest.mark.slow
def test_a_torchvision_dataset_without_download_names_data_download(tmp_path):
    path = _smoke_variant(tmp_path, "nodl", {"data": {"dataset": "cifar10", "root": str(tmp_path / "none"), "shots": 5}})
    proc = run_cli("validate", str(path), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "'cifar10' is not in" in line and "data.download: true" in line and "data.root" in line


@pytest.mark.slow
def test_the_gpu_space_runs_a_trial_on_the_cpu_with_tiny_stand_ins(tmp_path):
    # spaces/gpu.yaml as shipped (pool + views, batch 256 + 64 labelled, its searched parameters),
    # with the teacher, students and data swapped for tiny offline ones and its epochs cut.
    stand_ins = {
        "teacher.name": "test_vit", "teacher.weights": "random", "teacher.input_size": 32,
        "data.dataset": "digits", "data.shots": 20, "data.unlabeled": 300,
        "students.names": ["test_resnet", "test_efficientnet"], "students.resolutions": [16], "max_flops": "2M",
        "reprogram.epochs": 2, "distill.epochs": 4, "device": "cpu",
    }
    space = load_space(ROOT / "spaces" / "gpu.yaml", stand_ins)
    assert space.base.distill.batch_size == 256 and space.base.data.augment_views == 1
    path = tmp_path / "gpu-stand-in.yaml"
    path.write_text(yaml.safe_dump(space.raw, sort_keys=False))
    run_cli("run", "--study", "gpu", "--space", str(path), "--budget", "1", "--no-baselines", "--reevaluate", "0",
            "--no-progress", cwd=tmp_path)
    study = optuna.load_study(study_name="gpu", storage=f"sqlite:///{tmp_path}/studies/gpu.db")
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    config = trial.user_attrs["config"]
    assert config["data"]["unlabeled"] == 300 and config["data"]["augment_views"] == 1
    assert config["distill"]["batch_size"] == 256 and config["distill"]["labelled_batch"] == 64
    assert study.user_attrs["space"]["base"]["teacher"]["name"] == "test_vit"  # the store records what ran
