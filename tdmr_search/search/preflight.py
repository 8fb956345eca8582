"""The one pre-flight of a search space: everything a search needs, checked before any training.

``tdmr-search validate`` and ``tdmr-search run`` both call :func:`preflight`, so a space that
validates is a space that starts. In order:

1. **names**: every student and the teacher are timm models;
2. **input sizes**: the teacher runs at ``teacher.input_size`` (or its pretrained size when that
   is null), checked on the meta device;
3. **what may need a network**: the teacher's weights (cached or reachable on the hub, the
   packaged file installed, the weights file present) and, for ``student.pretrained``, the
   students' weights;
4. **data**: the dataset loads with the space's sampling (this is where a torchvision dataset
   downloads when ``data.download`` is true);
5. **the FLOPs gate**: at least one student fits ``max_flops``.

Steps 3 and 4 report together: a machine without a network learns in one line everything it
lacks and how to provide it (``teacher.weights: PATH``, ``data.root``, ``data.download``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tdmr_search.config import PipelineConfig, TeacherConfig
from tdmr_search.errors import DataError, ModelError, TdmrError
from tdmr_search.search.space import SearchSpace, StudentChoice, feasible_students, require_feasible

if TYPE_CHECKING:
    from tdmr_search.data import TargetData

__all__ = ["Preflight", "network_needs", "preflight", "teacher_input_size", "weights_problem"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the hub or a weights URL to answer a metadata request.
REACH_TIMEOUT = 10.0

_OFFLINE_TEACHERS = "teacher.weights: package (tf_efficientnet_lite0 or tf_efficientnet_lite2, offline)"


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight found: enough to start the search."""

    data: TargetData
    """The target data, loaded with the space's sampling."""
    teacher_size: int
    """Side of the teacher's input (``teacher.input_size``, or its pretrained size)."""
    teacher_weights: str
    """Where the teacher's weights come from, in words (``hub, cached``)."""
    fit: list[StudentChoice]
    """Students under the FLOPs cap, cheapest first."""
    over: list[StudentChoice]
    """Students over the cap or not buildable (never trained)."""


def network_needs(config: PipelineConfig) -> list[str]:
    """What of ``config`` may need a network on first use (the hub, a download), in words; empty when nothing."""
    from tdmr_search.data import TORCHVISION_SPLITS

    needs = []
    if config.teacher.weights == "hub":
        needs.append(f"teacher.weights: hub ({config.teacher.name} from the Hugging Face hub)")
    if config.student.pretrained:
        needs.append("student.pretrained: true (the students' weights from the hub)")
    if config.data.dataset in TORCHVISION_SPLITS and (config.data.download or config.data.root is None):
        needs.append(f"data.dataset: {config.data.dataset} (a torchvision download)")
    return needs


def teacher_input_size(cfg: TeacherConfig) -> int:
    """``teacher.input_size``, or the model's pretrained input size when it is null (what the teacher is built at)."""
    if cfg.input_size is not None:
        return int(cfg.input_size)
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(cfg.name)
    size = getattr(pcfg, "input_size", None) if pcfg is not None else None
    return int(size[-1]) if size else 224


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0][:160] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _hub_weights(name: str) -> tuple[str | None, str]:
    """(problem or None, where the weights come from) for timm's pretrained weights of ``name``."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    if pcfg is None:
        return f"timm has no pretrained weights for {name!r}", ""
    hub_id = getattr(pcfg, "hf_hub_id", None)
    url = getattr(pcfg, "url", None)
    if hub_id:
        import huggingface_hub as hf

        repo, _, revision = str(hub_id).partition("@")
        filename = getattr(pcfg, "hf_hub_filename", None)
        candidates = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
        for file in candidates:
            if isinstance(hf.try_to_load_from_cache(repo, file, revision=revision or None), str):
                return None, "hub, cached"
        try:  # the hub answered 404 for this file (not LocalEntryNotFoundError: offline and not cached)
            from huggingface_hub.errors import RemoteEntryNotFoundError as NotOnHub
        except ImportError:  # huggingface_hub < 1.0
            from huggingface_hub.utils import EntryNotFoundError as NotOnHub
        failure: BaseException | None = None
        for file in candidates:  # a repo may hold only one of them: a missing file is no network problem
            try:
                hf.get_hf_file_metadata(hf.hf_hub_url(repo, file, revision=revision or None), timeout=REACH_TIMEOUT)
                return None, "hub, downloaded on first use"
            except NotOnHub as err:
                failure = err
            except Exception as err:  # offline mode, no route, DNS, proxy, hub errors
                return f"not cached, and the Hugging Face hub cannot be reached ({_reason(err)})", ""
        return f"not on the hub ({_reason(failure) if failure else repo})", ""
    if url:
        import urllib.parse
        import urllib.request

        import torch.hub

        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)
        if cached.is_file():
            return None, "url, cached"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=REACH_TIMEOUT).close()
            return None, "url, downloaded on first use"
        except Exception as err:
            return f"not cached, and {url} cannot be reached ({_reason(err)})", ""
    return f"timm names no download for the weights of {name!r}", ""


def weights_problem(cfg: TeacherConfig) -> tuple[str | None, str]:
    """Whether the teacher's weights can be had now: (one phrase naming what is missing and how to provide it, or None; the source in words)."""
    weights = cfg.weights
    if weights == "random":
        return None, "random"
    if weights == "package":
        from tdmr_search.models.lite import packaged_weights_path

        try:
            packaged_weights_path(cfg.name)
        except ModelError as err:
            return f"teacher.weights: package: {err}", ""
        return None, "package"
    if weights == "hub":
        problem, where = _hub_weights(cfg.name)
        if problem is None:
            return None, where
        return (f"the weights of teacher {cfg.name!r} (teacher.weights: hub) are {problem}: download them on a "
                f"machine with a network and set teacher.weights: PATH (a .safetensors file or state dict), or use "
                f"{_OFFLINE_TEACHERS}"), ""
    path = Path(weights).expanduser()
    if not path.is_file():
        from tdmr_search.models.teachers import WEIGHT_SOURCES

        if not path.exists() and not any(sep in weights for sep in "/\\."):
            try:
                WEIGHT_SOURCES.check(weights, "teacher.weights")  # an unknown word, not a path
            except TdmrError as err:
                return str(err), ""
        problem = "is not a file" if path.exists() else "does not exist"
        return (f"the teacher weights file {str(path)!r} (teacher.weights) {problem}: set teacher.weights: PATH to "
                f"an existing .safetensors file or torch state dict, or use teacher.weights: hub (needs a network) or "
                f"{_OFFLINE_TEACHERS}"), ""
    return None, f"file {path.name}"


def _student_weights_problem(names: tuple[str, ...]) -> str | None:
    missing = []
    for name in names:
        problem, _ = _hub_weights(name)
        if problem is not None:
            missing.append(f"{name} ({problem})")
    if not missing:
        return None
    return (f"student.pretrained: true needs the hub weights of every student, and these are {'; '.join(missing)}: "
            "set student.pretrained: false, or run where the hub is reachable once to fill the cache")


def preflight(space: SearchSpace, between: Callable[[], None] | None = None) -> Preflight:
    """Check everything ``space`` needs before any training; load its data; gate its students.

    Args:
        space: A loaded search space (its base already carries any overrides).
        between: Called between the steps (the search uses it to stop on a signal).

    Returns:
        The data, the teacher's input size and weight source, and the students that fit.

    Raises:
        ModelError: A name is not a timm model, the teacher cannot run at its input size, or its
            weights cannot be had (with the data's problems in the same message).
        DataError: The dataset cannot be had or sampled as asked.
        BudgetError: No student fits the cap.
    """
    from tdmr_search.data import load_data
    from tdmr_search.models.teachers import check_input_size
    from tdmr_search.models.timm_utils import check_model_name

    step = between or (lambda: None)
    base = space.base
    names: list[str] = []
    for name in space.student_names:
        try:
            check_model_name(name, "students.names")
        except ModelError as err:
            names.append(str(err))
    try:
        check_model_name(base.teacher.name, "base.teacher.name")
    except ModelError as err:
        names.append(str(err))
    if names:
        raise ModelError("; ".join(names))
    size = teacher_input_size(base.teacher)
    check_input_size(base.teacher.name, size)  # the pretrained size when input_size is null: never None
    step()
    missing: list[tuple[type[TdmrError], str]] = []
    problem, source = weights_problem(base.teacher)
    if problem is not None:
        missing.append((ModelError, problem))
    if base.student.pretrained:
        problem = _student_weights_problem(space.student_names)
        if problem is not None:
            missing.append((ModelError, problem))
    data = None
    try:
        data = load_data(base.data, base.seed)
    except DataError as err:
        missing.append((DataError, str(err)))
    if missing:
        kind = missing[0][0] if all(k is missing[0][0] for k, _ in missing) else ModelError
        text = "; ".join(m for _, m in missing)
        raise kind(text if len(missing) == 1 else f"This space needs {len(missing)} things this machine lacks: {text}")
    assert data is not None
    step()
    fit, over = feasible_students(space, data.channels, data.image_size, data.num_classes)
    require_feasible(space, fit, over)
    step()
    return Preflight(data=data, teacher_size=size, teacher_weights=source, fit=fit, over=over)
