"""The TDMR pipeline and its baselines, run for real on digits with timm test_* models."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, run_cli

from tdmr_search.config import METHODS as METHOD_NAMES
from tdmr_search.config import TeacherConfig, config_from_dict, load_config
from tdmr_search.errors import BudgetError
from tdmr_search.models.students import build_student
from tdmr_search.models.teachers import build_teacher
from tdmr_search.pipeline.loop import Runtime, accuracy, recalibrate_batchnorm, steps_per_epoch, train_batches
from tdmr_search.pipeline.methods import METHODS, Method
from tdmr_search.pipeline.run import distill_student, reprogram_teacher, run_pipeline
from tdmr_search.pipeline.stages import kd_loss, plan_phases

METRIC_KEYS = {"val_acc", "test_acc", "teacher_val_acc", "flops", "params", "seconds"}
#: TINY_CONFIG with fewer epochs: every method runs in a few seconds.
FAST = {"reprogram.epochs": 1, "distill.epochs": 2}


@pytest.fixture(scope="module")
def fast_config():
    return config_from_dict(TINY_CONFIG).replace(FAST)


@pytest.fixture(scope="module")
def method_runs(fast_config, digits_data):
    """Each method run once on the same data; with the epochs its callback saw."""
    runs = {}
    for method in ("tdmr", "scratch", "kd", "probe"):
        calls = []
        result = run_pipeline(fast_config.replace({"method": method}),
                              on_epoch_end=lambda step, m, calls=calls: calls.append((step, m["stage"])),
                              data=digits_data)
        runs[method] = (result, calls)
    return runs


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- the teacher stays frozen


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_teacher_is_frozen_through_stage_1(tiny_config, digits_data, name):
    # one epoch of stage 1 suffices; test_resnet has batch-norm statistics that must not move
    config = tiny_config.replace({"teacher.name": name, "reprogram.epochs": 1})
    torch.manual_seed(0)
    teacher = build_teacher(TeacherConfig(name=name, weights="random", input_size=32))
    torch.manual_seed(0)
    fresh = build_teacher(TeacherConfig(name=name, weights="random", input_size=32))
    before = _state(teacher)
    side = reprogram_teacher(config, digits_data, Runtime.create("cpu"), teacher=teacher)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"teacher {key} changed"
        assert torch.equal(fresh.state_dict()[key], value)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(not m.training for m in teacher.model.modules())
    # ... while the transform in front of it did learn through it
    assert side.state["transform"]["prompt"].abs().sum() > 0
    assert len(side.history) == config.reprogram.epochs
    assert side.z_train.shape == (len(digits_data.train), config.reprogram.proxy_dim)
    assert side.logits_val.shape == (len(digits_data.val), digits_data.num_classes)


# ----------------------------------------------------------------------------- the loop and the methods


@pytest.mark.parametrize("batch_size", [1, 2, 7, 32])
@pytest.mark.parametrize("n", [0, 1, 2, 8, 31, 32, 33, 65])
def test_steps_per_epoch_counts_the_batches_an_epoch_draws(n, batch_size):
    drawn = train_batches(n, batch_size, torch.Generator().manual_seed(0))
    assert steps_per_epoch(n, batch_size) == len(drawn)
    if batch_size > 1 and len(drawn) > 1:
        assert len(drawn[-1]) > 1  # a trailing batch of one is dropped (batch norm cannot train on it)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_configurable_method_is_registered(name, fast_config):
    method = METHODS.create(name)
    assert method.stage
    # each method defines the hook its kind needs (the base class's hooks raise NotImplementedError)
    hook = "phases" if method.trains_student else "evaluate"
    assert getattr(type(method), hook) is not getattr(Method, hook), f"{name} does not define {hook}()"
    if method.trains_student:
        phases = method.phases(fast_config.distill)
        assert sum(p.epochs for p in phases) == fast_config.distill.epochs
        assert phases[-1].train_classifier and phases[-1].w_ce > 0


# ----------------------------------------------------------------------------- progressive distillation


@pytest.mark.parametrize("schedule", ["constant", "anneal"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("epochs", [4, 7, 30])
def test_plan_phases(n, epochs, schedule):
    phases = plan_phases(n, epochs, 4.0, schedule)
    assert len(phases) == n
    assert [p.index for p in phases] == list(range(n))
    assert sum(p.epochs for p in phases) == epochs
    assert all(p.epochs >= 1 for p in phases)
    assert max(p.epochs for p in phases) - min(p.epochs for p in phases) <= 1
    last = phases[-1]
    assert last.train_classifier and last.w_ce > 0 and last.w_kd > 0
    assert [p.train_classifier for p in phases[:-1]] == [False] * (n - 1)
    if n >= 2:
        first = phases[0]
        assert first.w_feat > 0 and first.w_feat >= first.w_kd and first.w_ce == 0
        assert last.w_feat == 0
        w_kd = [p.w_kd for p in phases]
        assert w_kd == sorted(w_kd)  # hands over from features to predictions
    if schedule == "anneal" and n >= 2:
        assert phases[0].temperature == 4.0 and last.temperature == 1.0
        temps = [p.temperature for p in phases]
        assert temps == sorted(temps, reverse=True)
    else:
        assert all(p.temperature == 4.0 for p in phases)


def test_shared_classifier_is_frozen_until_the_last_phase(fast_config, digits_data):
    config = fast_config.replace({"reprogram.transform": "resize"})  # a static transform: stage 1 is quick
    runtime = Runtime.create("cpu")
    side = reprogram_teacher(config, digits_data, runtime)
    torch.manual_seed(0)
    student = build_student(config.student, digits_data.channels, config.reprogram.proxy_dim, digits_data.num_classes)
    student.classifier.load_state_dict(side.state["classifier"])
    start = _state(student)
    seen = []
    phases = plan_phases(2, 2, 4.0, "constant")
    distill_student(student, phases, config, digits_data, runtime, side.z_train, side.logits_train,
                    on_epoch_end=lambda step, m: seen.append((_state(student), m)))
    (after_1, m_1), (after_2, m_2) = seen
    assert torch.equal(after_1["classifier.weight"], side.state["classifier"]["weight"])  # H frozen in phase 1
    assert not torch.equal(after_1["projector.weight"], start["projector.weight"])  # P_S learns
    assert not torch.equal(after_2["classifier.weight"], after_1["classifier.weight"])  # H unfrozen at the end
    assert m_1["feat"] > 0 and m_1["kd"] == 0 and m_1["ce"] == 0  # phase 1: feature alignment only
    assert m_2["feat"] == 0 and m_2["kd"] > 0 and m_2["ce"] > 0  # last phase: KD + CE
    assert all(p.requires_grad for p in student.parameters())


def test_kd_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=gen)
    assert float(kd_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 10, generator=gen)
    loss = kd_loss(other, logits, 2.0)
    p_t = torch.softmax(logits / 2.0, 1)
    expected = 4.0 * (p_t * (p_t.log() - torch.log_softmax(other / 2.0, 1))).sum(1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss) > 0
    assert float(kd_loss(other + 3.0, logits, 2.0)) == pytest.approx(float(loss), rel=1e-5)  # shift-invariant


# ----------------------------------------------------------------------------- batch-norm statistics


def _batchnorms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_recalibrate_batchnorm_computes_the_exact_statistics(tiny_config, digits_data):
    torch.manual_seed(0)
    student = build_student(tiny_config.student, digits_data.channels, 32, digits_data.num_classes)
    first = _batchnorms(student)[0]
    seen = []
    first.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach()))
    images = digits_data.train.images[:96]
    runtime = Runtime.create("cpu")
    assert recalibrate_batchnorm(student, images, runtime, batch_size=32)  # three equal batches
    assert not student.training and not first.training
    assert all(m.momentum == 0.1 for m in _batchnorms(student))  # momentum restored
    x = torch.cat(seen)  # the first norm's inputs over the whole pass
    assert torch.allclose(first.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(first.running_var, x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-2, atol=1e-5)
    mean, var = first.running_mean.clone(), first.running_var.clone()
    recalibrate_batchnorm(student, images, runtime, batch_size=96)  # one batch: the same statistics
    assert torch.allclose(first.running_mean, mean, atol=1e-5)
    assert torch.allclose(first.running_var, var, rtol=1e-2, atol=1e-5)  # a mean of batch variances
    vit = build_teacher(TeacherConfig(name="test_vit", weights="random", input_size=32)).model
    assert not recalibrate_batchnorm(vit, torch.zeros(2, 3, 32, 32), runtime)  # no batch norm: nothing to do


@pytest.mark.slow
@pytest.mark.parametrize("method", ["tdmr", "scratch", "kd"])
def test_deployed_student_carries_statistics_of_the_train_images(method, method_runs, digits_data):
    """The last validation (and so the exported model) used statistics re-estimated on the train images."""
    model = method_runs[method][0].model
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    assert before
    recalibrate_batchnorm(model, digits_data.train.images, Runtime.create("cpu"))
    for key, value in model.state_dict().items():
        if "running_mean" in key or "running_var" in key:
            assert torch.allclose(value, before[key], rtol=1e-4, atol=1e-5), key


def test_batchnorm_recalibration_can_be_turned_off(fast_config, digits_data):
    on = run_pipeline(fast_config.replace({"method": "scratch"}), data=digits_data)
    off = run_pipeline(fast_config.replace({"method": "scratch", "distill.bn_recalibrate": False}), data=digits_data)
    keys = [k for k in on.model.state_dict() if "running_mean" in k]
    assert any(not torch.allclose(on.model.state_dict()[k], off.model.state_dict()[k]) for k in keys)
    weights = [k for k in on.model.state_dict() if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(on.model.state_dict()[k], off.model.state_dict()[k]) for k in weights)  # training unchanged


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", ["tdmr", "scratch", "kd", "probe"])
def test_each_method_runs_and_reports_its_metrics(method, method_runs, fast_config, digits_data):
    result, calls = method_runs[method]
    m = result.metrics
    assert METRIC_KEYS <= m.keys()
    assert m["method"] == method
    for key in ("val_acc", "test_acc"):
        assert 0.0 <= m[key] <= 1.0
    assert m["flops"] > 0 and m["params"] > 0
    assert isinstance(m["seconds"], dict) and all(v >= 0 for v in m["seconds"].values())
    assert result.config.method == method
    if method == "probe":
        assert result.model is None
        assert m["teacher_val_acc"] == m["val_acc"]
        assert m["flops"] > method_runs["tdmr"][0].metrics["flops"]  # the teacher is the expensive part
        return
    assert result.model is not None and not result.model.training
    assert m["flops"] == method_runs["tdmr"][0].metrics["flops"]  # same student for every method
    assert m["params"] == sum(p.numel() for p in result.model.parameters())
    assert len(m["history"]) == fast_config.distill.epochs
    assert m["val_acc"] == m["history"][-1]["val_acc"]
    stage2 = [c for c in calls if c[1] != "reprogram"]
    assert [s for s, _ in stage2] == list(range(fast_config.distill.epochs))
    with torch.no_grad():
        assert accuracy(result.model(digits_data.test.images), digits_data.test.labels) == \
            pytest.approx(m["test_acc"], abs=1e-6)
    if method == "tdmr":
        assert [c[1] for c in calls] == ["reprogram"] * fast_config.reprogram.epochs + \
            ["distill"] * fast_config.distill.epochs
        assert 0.0 <= m["teacher_val_acc"] <= 1.0
        assert {"stage1", "stage2"} <= m["seconds"].keys()
    elif method == "kd":
        assert 0.0 <= m["teacher_val_acc"] <= 1.0
        assert {c[1] for c in calls} == {"kd"}
    else:
        assert m["teacher_val_acc"] is None
        assert {c[1] for c in calls} == {"scratch"}


def test_cpu_run_with_a_fixed_seed_repeats_exactly(method_runs, fast_config, digits_data):
    first = method_runs["tdmr"][0]
    second = run_pipeline(fast_config, data=digits_data)
    for key in ("val_acc", "test_acc", "teacher_val_acc"):
        assert second.metrics[key] == first.metrics[key], key
    assert [h["loss"] for h in second.metrics["history"]] == [h["loss"] for h in first.metrics["history"]]
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_another_seed_gives_another_student(method_runs, fast_config, digits_data):
    first = method_runs["scratch"][0]
    other = run_pipeline(fast_config.replace({"method": "scratch", "seed": 1}), data=digits_data)
    a, b = first.model.state_dict(), other.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_over_budget_student_is_rejected_before_training(fast_config, digits_data):
    calls = []
    with pytest.raises(BudgetError) as info:
        run_pipeline(fast_config.replace({"max_flops": "1k"}), on_epoch_end=lambda s, m: calls.append(s),
                     data=digits_data)
    assert calls == []
    message = str(info.value)
    assert "test_resnet" in message and "max_flops=1k" in message
    for method in ("tdmr", "scratch", "kd"):
        with pytest.raises(BudgetError):
            run_pipeline(fast_config.replace({"max_flops": "1k", "method": method}),
                         on_epoch_end=lambda s, m: calls.append(s), data=digits_data)
    assert calls == []


# ----------------------------------------------------------------------------- the CLI, end to end


def _fast_yaml(tmp_path, **changes):
    raw = json.loads(json.dumps(TINY_CONFIG))
    raw["reprogram"]["epochs"] = FAST["reprogram.epochs"]
    raw["distill"]["epochs"] = FAST["distill.epochs"]
    for key, value in changes.items():
        section, field = key.split(".")
        raw[section][field] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_cli_train_end_to_end(tmp_path):
    from tdmr_search import load_deployed
    from tdmr_search.data import load_data

    config_path = _fast_yaml(tmp_path)
    out = tmp_path / "out"
    proc = run_cli("train", "--config", str(config_path), "--out", str(out), "-q", cwd=tmp_path)
    assert "tdmr: val_acc" in proc.stdout
    for name in ("config.yaml", "metrics.json", "model.json", "student.safetensors"):
        assert (out / name).is_file(), name
    config = load_config(config_path)
    assert load_config(out / "config.yaml") == config
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= metrics.keys()
    info = json.loads((out / "model.json").read_text())
    assert (info["in_chans"], info["image_size"], info["num_classes"]) == (1, 8, 10)

    model = load_deployed(out)
    data = load_data(config.data, config.seed)
    with torch.no_grad():
        logits = model(data.test.images)
    assert logits.shape == (450, 10)
    assert accuracy(logits, data.test.labels) == pytest.approx(metrics["test_acc"], abs=1e-6)


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path):
    config_path = _fast_yaml(tmp_path, **{"distill.temperature": -1})
    proc = run_cli("train", "--config", str(config_path), "--out", str(tmp_path / "out"),
                   "--set", "distill.n_stages=9", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tdmr-search train: error:")
    assert "distill.temperature" in lines[0] and "got -1" in lines[0]  # from the file
    assert "distill.n_stages" in lines[0] and "got 9" in lines[0]  # from the --set flag
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out" / "metrics.json").exists()
