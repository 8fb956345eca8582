"""The pipeline config: defaults, YAML round trip, precedence and error messages."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from tdmr_search.config import (
    DataConfig,
    DistillConfig,
    PipelineConfig,
    ReprogramConfig,
    StudentConfig,
    TeacherConfig,
    config_from_dict,
    dump_config,
    format_flops,
    load_config,
    parse_flops,
)
from tdmr_search.errors import ConfigError, TdmrError

#: A config where every section (and every top-level field) differs from the defaults.
NON_DEFAULT = PipelineConfig(
    method="kd",
    seed=7,
    device="cpu",
    compile=True,
    max_flops="20M",
    data=DataConfig(dataset="digits", root="/tmp/somewhere", download=True, shots=None, fraction=0.5,
                    val_fraction=0.3, image_size=16, test_limit=100, augment_views=2, unlabeled=300, mixup=50,
                    split_seed=3),
    teacher=TeacherConfig(name="test_vit", weights="random", input_size=32),
    reprogram=ReprogramConfig(transform="scale_pad", pad=3, projector="mlp", proxy_dim=17, epochs=2, lr=1e-5,
                              weight_decay=0.01, batch_size=8),
    student=StudentConfig(name="test_resnet", resolution=24, projector="mlp", pretrained=True),
    distill=DistillConfig(n_stages=4, temperature=2.5, temperature_schedule="anneal", feature_loss="cosine",
                          epochs=9, lr=2.5e-4, weight_decay=0.0, batch_size=16, labelled_batch=4,
                          bn_recalibrate=False),
)


def _write(tmp_path, raw: dict, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    return str(info.value)


def test_defaults_are_valid():
    config = PipelineConfig()
    assert load_config() == config
    assert config_from_dict({}) == config
    assert config.max_flops_value is None


def test_non_default_differs_from_defaults_in_every_field():
    default = PipelineConfig()
    for section in ("data", "teacher", "reprogram", "student", "distill"):
        ours, theirs = getattr(NON_DEFAULT, section).__dict__, getattr(default, section).__dict__
        same = [k for k in ours if ours[k] == theirs[k]]
        assert not same, f"{section} fields left at their default: {same}"
    assert NON_DEFAULT.max_flops_value == 20e6


@pytest.mark.parametrize("config", [PipelineConfig(), NON_DEFAULT], ids=["defaults", "every-section-changed"])
def test_yaml_round_trip(config, tmp_path):
    path = tmp_path / "config.yaml"
    text = dump_config(config, path)
    assert path.read_text() == text
    assert "!!" not in text  # plain YAML, no python tags
    loaded = load_config(path)
    assert loaded == config
    assert dump_config(loaded) == text


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = _write(tmp_path, {"distill": {"temperature": 3.0, "n_stages": 2}, "seed": 5})
    from_yaml = load_config(path)
    assert (from_yaml.distill.temperature, from_yaml.distill.n_stages, from_yaml.seed) == (3.0, 2, 5)
    assert from_yaml.distill.lr == DistillConfig().lr  # untouched fields keep their defaults

    overridden = load_config(path, ["distill.temperature=2", "student.projector=mlp"])
    assert overridden.distill.temperature == 2.0
    assert isinstance(overridden.distill.temperature, float)
    assert overridden.distill.n_stages == 2  # from the YAML file
    assert overridden.student.projector == "mlp"
    assert overridden.seed == 5

    as_dict = load_config(path, {"distill.temperature": 2, "data.shots": None, "data.fraction": 0.25})
    assert as_dict.distill.temperature == 2.0
    assert (as_dict.data.shots, as_dict.data.fraction) == (None, 0.25)


def test_override_of_unknown_section_names_the_sections():
    with pytest.raises(ConfigError, match=r"'distil'.*accepted sections: data, teacher, reprogram, student, distill"):
        load_config(None, ["distil.temperature=2"])


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="Cannot read the config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    "raw, field, allowed, given",
    [
        ({"distill": {"temperature": -1}}, "distill.temperature", "> 0.0", "-1"),
        ({"reprogram": {"proxy_dim": 0}}, "reprogram.proxy_dim", ">= 1", "0"),
        ({"reprogram": {"transform": "paad"}}, "reprogram.transform", "resize, additive, pad, scale_pad, conv",
         "'paad'"),
        ({"distill": {"feature_loss": "l2"}}, "distill.feature_loss", "mse, cosine", "'l2'"),
        ({"distill": {"epochs": "ten"}}, "distill.epochs", "integer", "'ten'"),
        ({"data": {"download": "yes"}}, "data.download", "true or false", "'yes'"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "<= 0.9", "1.5"),
        ({"distill": {"n_stages": 3, "epochs": 2}}, "distill.epochs", "at least distill.n_stages (3)", "got 2"),
        ({"method": "distill"}, "method", "tdmr, scratch, kd, probe", "'distill'"),
        ({"max_flops": "lots"}, "max_flops", "50M", "'lots'"),
    ],
)
def test_bad_value_names_field_allowed_and_given(raw, field, allowed, given):
    message = _error(raw)
    assert field in message
    assert allowed in message
    assert given in message


def test_unknown_transform_suggests_the_closest():
    assert "did you mean 'pad'?" in _error({"reprogram": {"transform": "paad"}})
    assert "did you mean 'scale_pad'?" in _error({"reprogram": {"transform": "scalepad"}})


def test_unknown_key_is_named_with_suggestion_and_accepted_keys():
    message = _error({"distill": {"temprature": 2.0}})
    assert "'distill.temprature'" in message
    assert "did you mean 'temperature'?" in message
    assert "accepted in distill: n_stages, temperature" in message
    top = _error({"sead": 1})
    assert "'sead'" in top and "did you mean 'seed'?" in top


def test_shots_and_fraction_cannot_both_be_set():
    message = _error({"data": {"shots": 10, "fraction": 0.5}})
    assert "data.shots" in message and "data.fraction" in message and "null" in message
    # fraction alone is fine once the default shots is cleared
    assert config_from_dict({"data": {"shots": None, "fraction": 0.5}}).data.fraction == 0.5


def test_section_must_be_a_mapping():
    assert "data must be a mapping" in _error({"data": 5})


def test_several_problems_are_reported_at_once():
    message = _error({
        "seed": -1,
        "distill": {"temperature": -1, "epochs": "ten"},
        "reprogram": {"proxy_dim": 0, "transform": "paad"},
        "student": {"colour": "red"},
    })
    for part in ("seed", "distill.temperature", "distill.epochs", "reprogram.proxy_dim", "reprogram.transform",
                 "'student.colour'"):
        assert part in message, part


def test_constructing_a_section_directly_validates_it():
    with pytest.raises(ConfigError, match=r"distill\.temperature.*got -2"):
        DistillConfig(temperature=-2.0)
    with pytest.raises(ConfigError, match=r"student\.resolution"):
        StudentConfig(resolution=2)


def test_config_error_is_a_tdmr_error_and_a_value_error():
    with pytest.raises(TdmrError):
        config_from_dict({"seed": -1})
    with pytest.raises(ValueError):
        config_from_dict({"seed": -1})


def test_numbers_are_coerced_to_the_field_types():
    config = config_from_dict({"distill": {"temperature": 2, "epochs": 6.0}, "max_flops": 20000000})
    assert isinstance(config.distill.temperature, float)
    assert config.distill.epochs == 6 and isinstance(config.distill.epochs, int)
    assert config.max_flops_value == 2e7
    assert "distill.epochs must be an integer; got 6.5" in _error({"distill": {"epochs": 6.5}})


def test_yaml_exponent_floats_are_numbers(tmp_path):
    # PyYAML reads 1e-3 (no dot) as a string; the config must still take it as a number
    path = tmp_path / "c.yaml"
    path.write_text("reprogram:\n  lr: 1e-3\ndistill:\n  lr: 2.5e-4\n")
    config = load_config(path)
    assert config.reprogram.lr == 1e-3 and config.distill.lr == 2.5e-4
    assert load_config(None, ["reprogram.lr=3e-4"]).reprogram.lr == 3e-4


@pytest.mark.parametrize(
    "text, value",
    [("50M", 50e6), ("1.5G", 1.5e9), (2e7, 2e7), ("2e7", 2e7), (300, 300.0), ("20k", 20e3), ("1.2 GFLOPs", 1.2e9),
     ("  7M ", 7e6)],
)
def test_parse_flops(text, value):
    assert parse_flops(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["fifty", "50X", "", "-5M", "M", "1.5GG", 0, -3, True, math.inf, math.nan])
def test_parse_flops_rejects_bad_figures(text):
    with pytest.raises(ConfigError, match=r"'max_flops' must be a .*FLOPs figure.*got"):
        parse_flops(text)


def test_config_module_imports_without_torch():
    code = "import sys; import tdmr_search.config; assert 'torch' not in sys.modules, 'torch imported'; " \
           "assert 'optuna' not in sys.modules, 'optuna imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("value, text", [(1.82e9, "1.82G"), (56.5e6, "56.5M"), (1500.0, "1.5k"), (12.0, "12")])
def test_format_flops_reads_back(value, text):
    assert format_flops(value) == text
    assert parse_flops(text) == pytest.approx(value)
