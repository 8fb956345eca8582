"""Declarative search spaces (YAML in ``spaces/``) and the FLOPs gate over student candidates.

A space file has four parts::

    base:       # a pipeline config; every trial starts from it (defaults < base < sampled values)
    max_flops:  20M   # the deployment cap of the deployed student
    students:   # candidate architectures and input resolutions; over-cap pairs never train
      names: [mobilenetv3_small_050, lcnet_050]
      resolutions: [64, 96]
    params:     # searched settings by dotted name, sampled in this order
      reprogram.proxy_dim: {type: int, low: 32, high: 256, log: true}
      reprogram.transform: {type: categorical, choices: [resize, pad, conv]}
      reprogram.pad: {type: int, low: 4, high: 32, when: {reprogram.transform: [pad, scale_pad]}}

The student is searched as one categorical parameter ``student`` whose choices are the feasible
``name@resolution`` pairs, so the sampler only ever proposes students that fit the cap.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tdmr_search.config import PipelineConfig, config_from_dict, format_flops, parse_flops
from tdmr_search.errors import BudgetError, ConfigError, TdmrError
from tdmr_search.registry import did_you_mean
from tdmr_search.yamlio import load_yaml

__all__ = ["ParamSpec", "SearchSpace", "StudentChoice", "load_space", "feasible_students", "describe_feasible"]

logger = logging.getLogger(__name__)

PARAM_TYPES = ("int", "float", "categorical")
FORBIDDEN_PREFIXES = ("data.", "seed", "device", "method", "max_flops")
STUDENT_PARAM = "student"


@dataclass(frozen=True)
class ParamSpec:
    """One searched setting."""

    name: str
    """Dotted config key (``distill.temperature``)."""
    type: str
    """int, float or categorical."""
    low: float | None = None
    """Lower bound (int, float)."""
    high: float | None = None
    """Upper bound (int, float)."""
    log: bool = False
    """Sample on a log scale (int, float)."""
    step: float | None = None
    """Grid step (int, float; not with log)."""
    choices: tuple[Any, ...] = ()
    """Values of a categorical parameter."""
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Sample only when each named parameter took one of the listed values."""

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether the conditions hold for the values sampled so far."""
        return all(sampled.get(key) in values for key, values in self.when.items())


@dataclass(frozen=True)
class StudentChoice:
    """A candidate student: architecture, input resolution and the cost of the deployed model."""

    name: str
    resolution: int
    flops: float
    params: int
    error: str | None = None

    @property
    def key(self) -> str:
        """The categorical value the sampler sees: ``name@resolution``."""
        return f"{self.name}@{self.resolution}"


@dataclass(frozen=True)
class SearchSpace:
    """A loaded search space."""

    name: str
    base: PipelineConfig
    max_flops: float | None
    student_names: tuple[str, ...]
    resolutions: tuple[int, ...]
    params: tuple[ParamSpec, ...]
    raw: dict[str, Any]
    description: str = ""

    def max_proxy_dim(self) -> int:
        """The largest proxy size any trial can use (the FLOPs gate checks at it)."""
        for p in self.params:
            if p.name == "reprogram.proxy_dim":
                return int(p.high if p.type != "categorical" else max(p.choices))
        return self.base.reprogram.proxy_dim


def _param(name: str, raw: Any, problems: list[str], base: dict[str, Any]) -> ParamSpec | None:
    where = f"params.{name}"
    if any(name == f.rstrip(".") or name.startswith(f) for f in FORBIDDEN_PREFIXES if f.endswith(".")) or name in (
        "seed", "device", "method", "max_flops"
    ):
        problems.append(f"{where}: {name!r} cannot be searched (data, seed, device, method and the cap are fixed per study)")
        return None
    if name in ("student.name", "student.resolution"):
        problems.append(f"{where}: {name!r} is searched through students.names and students.resolutions, not params")
        return None
    section, _, key = name.partition(".")
    if section not in base or not isinstance(base[section], dict) or key not in base[section]:
        known = [f"{s}.{k}" for s, v in base.items() if isinstance(v, dict) for k in v if s != "data"]
        problems.append(
            f"{where}: {name!r} is not a pipeline setting{did_you_mean(name, known)}; accepted: section.field names "
            "of the config, e.g. distill.temperature"
        )
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping such as {{type: float, low: 1, high: 8}}; got {raw!r}")
        return None
    allowed = {f.name for f in fields(ParamSpec)} - {"name"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        problems.append(f"{where} has unknown keys {unknown}; accepted: {', '.join(sorted(allowed))}")
        return None
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        problems.append(f"{where}.type must be one of {', '.join(PARAM_TYPES)}; got {kind!r}")
        return None
    when_raw = raw.get("when") or {}
    if not isinstance(when_raw, dict):
        problems.append(f"{where}.when must map parameter names to lists of values; got {when_raw!r}")
        return None
    when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when_raw.items()}
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices must be a non-empty list; got {choices!r}")
            return None
        return ParamSpec(name, kind, choices=tuple(choices), when=when)
    low, high = raw.get("low"), raw.get("high")
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or isinstance(low, bool) or low > high:
        problems.append(f"{where} needs numbers low <= high; got low={low!r}, high={high!r}")
        return None
    if raw.get("log") and low <= 0:
        problems.append(f"{where}: a log-scale range needs low > 0; got {low!r}")
        return None
    if kind == "int" and (not float(low).is_integer() or not float(high).is_integer()):
        problems.append(f"{where}: an int parameter needs integer bounds; got {low!r}, {high!r}")
        return None
    step = raw.get("step")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 or (
            kind == "int" and not float(step).is_integer()
        ):
            problems.append(f"{where}.step must be a positive {'integer' if kind == 'int' else 'number'}; got {step!r}")
            return None
        if raw.get("log"):
            problems.append(f"{where}: a log-scale range cannot have a step; remove step or log")
            return None
    return ParamSpec(name, kind, low=low, high=high, log=bool(raw.get("log", False)), step=raw.get("step"), when=when)


def load_space(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> SearchSpace:
    """Read and check a search space YAML file, reporting every problem at once.

    Args:
        path: The YAML file.
        overrides: ``section.field=value`` strings (as ``--set`` takes them) or a dict of dotted
            keys, applied to ``base`` over the file: defaults < file < overrides. The loaded
            space's ``raw`` carries them, so the study records what actually ran.
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(), f"The search space {str(path)!r}")
    except OSError as err:
        raise ConfigError(f"Cannot read the search space {str(path)!r}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(
            f"The search space {str(path)!r} is not valid YAML" + (f" at line {mark.line + 1}" if mark else "")
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"The search space {str(path)!r} must be a mapping with base, max_flops, students, params")
    problems: list[str] = []
    if overrides:
        raw = _with_overrides(raw, overrides, problems)
    allowed = ("name", "description", "base", "max_flops", "students", "params")
    for key in raw:
        if key not in allowed:
            problems.append(f"Unknown top-level key {key!r}{did_you_mean(key, allowed)}; accepted: {', '.join(allowed)}")
    try:
        base = config_from_dict(_merged_defaults(raw.get("base") or {}))
    except ConfigError as err:
        problems.append(f"base: {err}")
        base = PipelineConfig()
    cap = None
    if raw.get("max_flops") is not None:
        try:
            cap = parse_flops(raw["max_flops"])
        except ConfigError as err:
            problems.append(str(err))
    base_raw = raw.get("base") if isinstance(raw.get("base"), dict) else {}
    if base_raw.get("method", "tdmr") != "tdmr":
        problems.append(f"base.method: a search always runs tdmr (baselines run beside it); got {base_raw['method']!r}")
    if base_raw.get("max_flops") is not None:
        problems.append("base.max_flops: set the FLOPs cap as the top-level max_flops of the space, not in base")
    students = raw.get("students") or {}
    if not isinstance(students, dict):
        problems.append(f"students must be a mapping with names and resolutions; got {students!r}")
        students = {}
    for key in students:
        if key not in ("names", "resolutions"):
            problems.append(f"Unknown key students.{key}{did_you_mean(key, ('names', 'resolutions'))}; accepted: names, "
                            "resolutions")
    names = students.get("names")
    resolutions = students.get("resolutions")
    if names is None:
        names = [base.student.name]
    if resolutions is None:
        resolutions = [base.student.resolution]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append(f"students.names must be a non-empty list of timm model names; got {names!r}")
        names = []
    if not isinstance(resolutions, list) or not resolutions or not all(
        isinstance(r, int) and not isinstance(r, bool) and 8 <= r <= 1024 for r in resolutions
    ):
        problems.append(f"students.resolutions must be a non-empty list of integers from 8 to 1024; got {resolutions!r}")
        resolutions = []
    params_raw = raw.get("params") or {}
    params: list[ParamSpec] = []
    if not isinstance(params_raw, dict):
        problems.append(f"params must map dotted setting names to ranges; got {params_raw!r}")
        params_raw = {}
    base_dict = base.to_dict()
    for name, spec in params_raw.items():
        p = _param(str(name), spec, problems, base_dict)
        if p is not None:
            params.append(p)
    names_so_far: set[str] = set()
    for p in params:
        for cond in p.when:
            if cond not in names_so_far:
                problems.append(f"params.{p.name}.when refers to {cond!r}, which must be a parameter listed before it")
        names_so_far.add(p.name)
    if not any(m.startswith("base:") for m in problems):
        for p in params:
            _check_values(p, base, problems)
    if problems:
        raise ConfigError(f"Invalid search space {str(path)!r}: " + "; ".join(problems))
    return SearchSpace(
        name=str(raw.get("name") or path.stem), base=base, max_flops=cap,
        student_names=tuple(names), resolutions=tuple(resolutions), params=tuple(params), raw=raw,
        description=str(raw.get("description") or ""),
    )


def _with_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` with the dotted ``overrides`` applied.

    ``section.field`` keys (``teacher.name=test_vit``) and top-level pipeline keys (``seed``) go
    into ``base``; ``max_flops``, ``students.names`` and ``students.resolutions`` replace the
    space's own.
    """
    import copy

    from tdmr_search.config import parse_override

    raw = copy.deepcopy(raw)
    base = raw.get("base")
    if base is None:
        base = raw["base"] = {}
    if not isinstance(base, dict):
        return raw  # reported as a base problem
    sections = [k for k, v in PipelineConfig().to_dict().items() if isinstance(v, dict)]
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        section, dot, field_name = str(key).partition(".")
        if key == "max_flops":
            raw["max_flops"] = value
            continue
        if section == "students" and field_name in ("names", "resolutions"):
            students = raw.get("students")
            raw["students"] = {**(students if isinstance(students, dict) else {}), field_name: value}
            continue
        if not dot:
            base[section] = value
            continue
        if section not in sections:
            problems.append(f"override {key!r}: {section!r} is not a config section; accepted: section.field names "
                            "such as teacher.name, data.dataset, or students.names, students.resolutions, max_flops")
            continue
        target = base.setdefault(section, {})
        if not isinstance(target, dict):
            continue  # reported as a base problem
        target[field_name] = value
    return raw


def _check_values(p: ParamSpec, base: PipelineConfig, problems: list[str]) -> None:
    """Report the choices or bounds of ``p`` that the config itself rejects (a typo, a negative temperature)."""
    if p.type == "categorical":
        values = [("choice", v) for v in p.choices]
    else:
        cast = int if p.type == "int" else float
        values = [("low", cast(p.low)), ("high", cast(p.high))]
    for what, value in values:
        try:
            base.replace({p.name: value})
        except ConfigError as err:
            message = str(err).removeprefix("Invalid config: ")
            if f"{p.name} must" in message:  # its own check, not a combination with another base value
                problems.append(f"params.{p.name}: {what} {value!r} is not accepted: {message}")


def _merged_defaults(base: Any) -> Any:
    if not isinstance(base, dict):
        return base
    merged = PipelineConfig().to_dict()
    for key, value in base.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def feasible_students(space: SearchSpace, in_chans: int, image_size: int, num_classes: int) -> tuple[list[StudentChoice], list[StudentChoice]]:
    """Split the student candidates into those that fit the cap and those that do not.

    Costs are counted at the space's largest ``proxy_dim``, so a feasible student fits whatever
    proxy size a trial samples. No candidate trains here: counting runs on the meta device.
    """
    from tdmr_search.config import StudentConfig
    from tdmr_search.models.flops import student_cost

    proxy = space.max_proxy_dim()
    fit, over = [], []
    for name in space.student_names:
        for res in space.resolutions:
            cfg = StudentConfig(name=name, resolution=res, projector="mlp" if _may_use_mlp(space) else space.base.student.projector)
            try:
                flops, params = student_cost(cfg, in_chans, image_size, proxy, num_classes)
            except TdmrError:
                raise
            except Exception as err:  # e.g. a ViT whose patch size does not divide the resolution
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                over.append(StudentChoice(name, res, math.inf, 0, error=reason))
                continue
            choice = StudentChoice(name, res, flops, params)
            (fit if space.max_flops is None or flops <= space.max_flops else over).append(choice)
    fit.sort(key=lambda c: c.flops)
    return fit, over


def _may_use_mlp(space: SearchSpace) -> bool:
    for p in space.params:
        if p.name == "student.projector":
            return "mlp" in p.choices
    return space.base.student.projector == "mlp"


def require_feasible(space: SearchSpace, fit: list[StudentChoice], over: list[StudentChoice]) -> None:
    """Raise :class:`BudgetError` when no student fits the cap."""
    if fit:
        return
    buildable = [c for c in over if c.error is None]
    if not buildable:
        first = over[0] if over else None
        raise BudgetError(
            "No student candidate can be built"
            + (f" (e.g. {first.key}: {first.error})" if first is not None else "")
            + "; accepted: students.names / students.resolutions the architectures take (for a ViT a multiple "
            "of its patch size)"
        )
    cheapest = min(buildable, key=lambda c: c.flops)
    raise BudgetError(
        f"No student fits the FLOPs cap max_flops={format_flops(space.max_flops or 0)}: the cheapest candidate, "
        f"{cheapest.key}, costs {format_flops(cheapest.flops)}; raise max_flops or add smaller students.names / "
        "students.resolutions"
    )


def describe_feasible(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> str:
    """The text ``tdmr-search validate`` prints: the space, its parameters and the students that fit.

    It runs the same pre-flight as ``tdmr-search run`` (:func:`~tdmr_search.search.preflight.preflight`).
    """
    from tdmr_search.search.preflight import preflight

    space = load_space(path, overrides)
    checked = preflight(space)
    data, fit, over = checked.data, checked.fit, checked.over
    teacher = space.base.teacher
    pool = f", an unlabelled pool of {data.pool_size}" if data.pool_size else ""
    extra = len(data.unlabeled) - data.pool_size if data.unlabeled is not None else 0
    lines = [
        f"space {space.name!r}: {space.description}".rstrip(": "),
        f"data {data.name}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images{pool}"
        + (f" (+{extra} views/mixup)" if extra > 0 else "")
        + f", {data.num_classes} classes, {data.channels}x{data.image_size}x{data.image_size}",
        f"teacher {teacher.name} ({checked.teacher_weights} weights) at {checked.teacher_size}px",
        f"FLOPs cap {format_flops(space.max_flops) if space.max_flops else 'none'} "
        f"(deployed student = backbone + projector + classifier, at proxy_dim {space.max_proxy_dim()})",
        f"searched: {', '.join(p.name for p in space.params) or 'nothing'} and the student",
        f"{len(fit)} of {len(fit) + len(over)} students fit:",
    ]
    lines += [f"  {c.key:<36} {format_flops(c.flops):>8} FLOPs  {c.params / 1e6:7.3f}M params" for c in fit]
    if over:
        lines.append(f"{len(over)} over the cap or not buildable (never trained):")
        lines += [f"  {c.key:<36} " + (f"cannot be built: {c.error}" if c.error else f"{format_flops(c.flops):>8} FLOPs")
                  for c in sorted(over, key=lambda c: c.flops)]
    return "\n".join(lines)
