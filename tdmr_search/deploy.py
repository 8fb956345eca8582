"""The deployed student's files: its weights, what its ``model.json`` says, its ONNX twin.

A deployed student folder (``tdmr-search train --out`` or ``export``) holds
``student.safetensors`` (:data:`MODEL_FILE`, written by :func:`save_weights`), ``config.yaml``,
``model.json`` (:func:`model_info`: the class names and the preprocessing the model expects, for
someone without this package) and ``student.onnx``. :func:`load_deployed` rebuilds the student
from such a folder; :func:`save_deployed` writes a trained run's student.

:func:`write_onnx` writes ``student.onnx`` (dynamic batch, opset :data:`ONNX_OPSET`) and
:func:`onnx_parity` runs it with onnxruntime on real images next to the PyTorch model. The ONNX
parts need the optional packages of the ``onnx`` extra (``pip install 'tdmr-search[onnx]'``);
:func:`onnx_missing` says which one is absent.

This module sits beside ``models``: it imports no pipeline, search or optuna code, so the
pipeline (:func:`tdmr_search.pipeline.run.save_result`), the objective and export all use it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from tdmr_search.config import load_config
from tdmr_search.errors import ModelError
from tdmr_search.version import __version__

if TYPE_CHECKING:
    from tdmr_search.models.students import DeployedStudent

__all__ = [
    "MODEL_FILE", "MODEL_JSON", "ONNX_FILE", "ONNX_OPSET", "ONNX_INPUT", "ONNX_OUTPUT", "PARITY_TOLERANCE",
    "save_weights", "save_deployed", "load_deployed", "deployed_record", "model_info", "preprocessing",
    "importable", "onnx_missing", "write_onnx", "onnx_parity", "export_onnx_checked", "parity_images", "write_deployment",
]

logger = logging.getLogger(__name__)

#: The deployed student's weights (safetensors).
MODEL_FILE = "student.safetensors"
#: What the deployed student is, for someone without this package (:func:`model_info`).
MODEL_JSON = "model.json"
ONNX_FILE = "student.onnx"
#: The opset torch's ONNX exporter (torch.export based) writes natively.
ONNX_OPSET = 18
ONNX_INPUT = "images"
ONNX_OUTPUT = "logits"
#: Largest absolute logit difference between onnxruntime and PyTorch that export accepts.
PARITY_TOLERANCE = 1e-3
#: The packages the ONNX file needs: torch's exporter (onnx, onnxscript) and the check (onnxruntime).
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state dict to ``path`` as safetensors (the format of :data:`MODEL_FILE`)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Path(path)


def deployed_record(config: Any, data: Any) -> dict[str, Any]:
    """What a run records about its deployed student; :func:`model_info` builds ``model.json`` on it.

    Args:
        config: The run's resolved :class:`~tdmr_search.config.PipelineConfig`.
        data: Its loaded :class:`~tdmr_search.data.TargetData`.
    """
    return {
        "student": config.student.name, "resolution": config.student.resolution,
        "in_chans": data.channels, "image_size": data.image_size, "num_classes": data.num_classes,
        "proxy_dim": config.reprogram.proxy_dim, "class_names": data.class_names,
    }


def save_deployed(folder: str | Path, model: nn.Module, config: Any, data: Any) -> dict[str, Any]:
    """Write a trained run's student to ``folder``: weights, ``model.json`` and ``student.onnx``.

    The files are those :func:`write_deployment` writes for an export (``config.yaml`` is the
    caller's). Returns the ``model.json`` contents.
    """
    folder = Path(folder)
    save_weights(model, folder / MODEL_FILE)
    return write_deployment(folder, config, deployed_record(config, data), model=model, data=data)


def load_deployed(folder: str | Path) -> DeployedStudent:
    """Rebuild the deployed student saved in ``folder`` (a trained run or an export; no search code needed)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / MODEL_JSON).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{str(folder)!r} holds no readable {MODEL_JSON} of a deployed student: {err}") from None
    return _rebuild(folder, load_config(folder / "config.yaml"), info)


def _rebuild(folder: Path, config: Any, info: dict[str, Any]) -> DeployedStudent:
    """The student ``config`` and ``info`` (its ``model.json``) describe, with the weights in ``folder``."""
    from safetensors.torch import load_file

    from tdmr_search.models.students import build_student

    student = build_student(config.student, int(info["in_chans"]), int(info["proxy_dim"]), int(info["num_classes"]),
                            pretrained=False)
    try:
        state = load_file(str(folder / info.get("weights", MODEL_FILE)))
    except Exception as err:
        raise ModelError(f"Cannot read the student weights in {str(folder)!r}: {err}") from None
    student.load_state_dict(state, strict=True)
    return student.eval()


def preprocessing(in_chans: int, image_size: int) -> dict[str, Any]:
    """The input the deployed model expects, in words a non-Python user can follow."""
    return {
        "layout": "NCHW",
        "dtype": "float32",
        "channels": int(in_chans),
        "color": "grey (ITU-R 601 luma of colour images)" if in_chans == 1 else "RGB (grey images repeated)",
        "height": int(image_size),
        "width": int(image_size),
        "resize": "bilinear to height x width (any input size)",
        "alpha": "dropped (as in training)",
        "value_range": [0.0, 1.0],
        "scaling": "pixel / 255 for 8-bit images, pixel / 65535 for 16-bit ones; no mean/std: the model normalises inside",
    }


def model_info(deployed: dict[str, Any], class_names: list[str] | None = None) -> dict[str, Any]:
    """The ``model.json`` of a deployed student.

    Args:
        deployed: What the trial or run recorded: student, resolution, in_chans, image_size,
            num_classes, proxy_dim and (newer runs) class_names.
        class_names: Names to use when ``deployed`` has none (e.g. read from the data now).
    """
    info = dict(deployed)
    names = info.get("class_names") or class_names
    num_classes = int(info.get("num_classes") or (len(names) if names else 0))
    if not names or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    info.update(
        format="tdmr-search deployed student", tdmr_search_version=__version__, weights=MODEL_FILE,
        class_names=[str(n) for n in names], num_classes=num_classes,
        input="N x in_chans x image_size x image_size float images with values in [0, 1]",
        preprocessing=preprocessing(int(info["in_chans"]), int(info["image_size"])),
        output="N x num_classes logits; softmax gives class probabilities in class_names order",
    )
    return info


def onnx_missing() -> str | None:
    """None when the ONNX file can be written and checked, else why not (one line)."""
    absent = [name for name in ONNX_PACKAGES if not importable(name)]
    if not absent:
        return None
    return (f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not installed; "
            "pip install 'tdmr-search[onnx]' (or make setup) to get student.onnx")


def importable(name: str) -> bool:
    """Whether the module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked with sys.modules[name] = None
        return False


def write_onnx(model: nn.Module, path: str | Path, in_chans: int, image_size: int) -> Path:
    """Export ``model`` (images in [0, 1] -> logits) to ONNX with a dynamic batch dimension.

    torch's exporter reports its steps on stdout and through warnings: they go to the debug log.
    """
    path = Path(path)
    model = model.eval()
    example = torch.rand(2, in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    arg = next(iter(_forward_args(model)))
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET, external_data=False,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_shapes={arg: {0: torch.export.Dim("batch")}}, verbose=False,
        )
    for line in chatter.getvalue().splitlines():
        logger.debug("torch.onnx: %s", line)
    for w in caught:
        logger.debug("torch.onnx warning: %s", w.message)
    return path


def _forward_args(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"] or ["x"]


def onnx_parity(path: str | Path, model: nn.Module, images: torch.Tensor, batch: int = 64) -> dict[str, Any]:
    """Run ``path`` with onnxruntime (CPU) and ``model`` with PyTorch on ``images``; compare the logits.

    Returns:
        images (how many), max_abs_logit_diff, argmax_agree (how many images get the same class),
        batch_sizes (the batch sizes run, to show the batch dimension is dynamic), onnxruntime (its
        version), opset, and pytorch_vs_float64 / onnx_vs_float64: each runtime's largest logit
        difference from the model run in float64 on the first batch (float32 rounding, for scale).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model = model.eval()
    worst, agree, sizes = 0.0, 0, set()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch].float().contiguous()
            ref = model(x).numpy()
            out = session.run(None, {name: x.numpy()})[0]
            worst = max(worst, float(np.abs(out - ref).max()))
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            sizes.add(len(x))
        if len(images) > 1:  # one more batch size: the batch dimension must be dynamic
            x = images[:1].float().contiguous()
            worst = max(worst, float(np.abs(session.run(None, {name: x.numpy()})[0] - model(x).numpy()).max()))
            sizes.add(1)
    out = {"images": int(len(images)), "max_abs_logit_diff": worst, "argmax_agree": agree,
           "batch_sizes": sorted(sizes), "onnxruntime": ort.__version__, "opset": ONNX_OPSET}
    out.update(_float64_reference(model, session, name, images[:batch]))
    return out


def _float64_reference(model: nn.Module, session: Any, name: str, images: torch.Tensor) -> dict[str, float]:
    """How far PyTorch float32 and onnxruntime each are from the same model in float64.

    Puts the parity figure in scale: float32 rounding alone moves the logits about this much.
    """
    import copy

    try:
        exact = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            ref = exact(images.double()).numpy()
            f32 = model(images.float()).double().numpy()
        ort_out = session.run(None, {name: images.float().contiguous().numpy()})[0].astype(np.float64)
    except Exception:  # a layer without float64 kernels: the figure is left out
        logger.debug("no float64 reference", exc_info=True)
        return {}
    return {"pytorch_vs_float64": float(np.abs(f32 - ref).max()), "onnx_vs_float64": float(np.abs(ort_out - ref).max())}


def export_onnx_checked(model: nn.Module, folder: str | Path, in_chans: int, image_size: int,
                        images: torch.Tensor, images_from: str) -> dict[str, Any]:
    """Write ``folder/student.onnx`` and check it against ``model`` on ``images``.

    A file whose logits differ by more than :data:`PARITY_TOLERANCE` (relative to the logits'
    scale) or whose arg-max disagrees anywhere is removed, so that ``predict`` never uses it.

    Returns:
        The parity figures plus ``file`` (None when removed or not written), ``images_from`` and,
        when there is no file, ``reason``.
    """
    path = Path(folder) / ONNX_FILE
    try:
        write_onnx(model, path, in_chans, image_size)
        parity = onnx_parity(path, model, images)
    except Exception as err:  # an operator the exporter or onnxruntime cannot handle
        path.unlink(missing_ok=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = f"the ONNX export or its check failed: {type(err).__name__}: {first[:300]}"
        logger.warning("student.onnx was not written: %s", reason)
        logger.debug("ONNX export failure", exc_info=True)
        return {"file": None, "reason": reason, "images_from": images_from}
    parity["images_from"] = images_from
    with torch.no_grad():
        scale = max(1.0, float(model(images[:64].float()).abs().max()))
    if parity["max_abs_logit_diff"] > PARITY_TOLERANCE * scale or parity["argmax_agree"] != parity["images"]:
        path.unlink(missing_ok=True)
        parity.update(file=None, reason=(
            f"onnxruntime disagrees with PyTorch (max abs logit difference {parity['max_abs_logit_diff']:.3g}, "
            f"arg-max agrees on {parity['argmax_agree']}/{parity['images']} images)"))
        logger.warning("student.onnx was removed: %s", parity["reason"])
        return parity
    parity["file"] = ONNX_FILE
    logger.info("student.onnx: max abs logit difference %.3g vs PyTorch, arg-max agrees on %d/%d images",
                parity["max_abs_logit_diff"], parity["argmax_agree"], parity["images"])
    return parity


#: Real images the ONNX check runs on (test images of the task).
PARITY_IMAGES = 64
_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.warning(message)


def parity_images(config: Any, num_classes: int, data: Any = None,
                  n: int = PARITY_IMAGES) -> tuple[torch.Tensor | None, str, list[str] | None]:
    """Up to ``n`` test images of ``config``'s task (None when unreadable), where they come from, class names.

    Uses ``data`` (a loaded :class:`~tdmr_search.data.TargetData`) when given, else loads the task
    with the fewest labelled images it allows. When the data cannot be read (it moved, it was a
    download), the images are None and the returned text says what stands in: seeded random images.
    """
    import dataclasses

    from tdmr_search.data import load_data
    from tdmr_search.errors import TdmrError

    if data is None:
        small = {"shots": 2, "fraction": None, "val_fraction": 0.5, "test_limit": max(n, num_classes),
                 "augment_views": 0, "unlabeled": 0, "mixup": 0}
        try:
            cfg = dataclasses.replace(config.data, **{k: v for k, v in small.items() if hasattr(config.data, k)})
            data = load_data(cfg, config.seed)
        except (TdmrError, OSError) as err:
            reason = " ".join(str(err).split())[:200]
            logger.warning("the ONNX check runs on random images: the task's data cannot be read (%s)", reason)
            return None, f"seeded random images (the task's data cannot be read: {reason})", None
    images = data.test.images[:n]
    return images, f"{len(images)} test images of {config.data.dataset}", list(data.class_names)


def write_deployment(folder: str | Path, config: Any, deployed: dict[str, Any], model: nn.Module | None = None,
                     data: Any = None) -> dict[str, Any]:
    """Write ``model.json`` (class names, preprocessing) and ``student.onnx`` checked against PyTorch.

    ``folder`` already holds the weights (:data:`MODEL_FILE`). Without the ONNX packages the ONNX file is
    skipped and the log says why, once per process.

    Args:
        folder: The deployed student's folder.
        config: Its resolved :class:`~tdmr_search.config.PipelineConfig`.
        deployed: What the run recorded about the model (student, resolution, in_chans,
            image_size, num_classes, proxy_dim, class_names).
        model: The deployed student (rebuilt from the weights file when None).
        data: The loaded target data, when at hand (else its test images are loaded).

    Returns:
        The ``model.json`` contents; its ``onnx`` entry holds the parity figures or why there is no file.
    """
    folder = Path(folder)
    num_classes = int(deployed.get("num_classes") or 0)
    images, images_from, names = parity_images(config, num_classes, data)
    deployed = dict(deployed)  # older runs recorded less: fill it from the config and the data
    deployed.setdefault("student", config.student.name)
    deployed.setdefault("resolution", config.student.resolution)
    deployed.setdefault("proxy_dim", config.reprogram.proxy_dim)
    if images is not None:
        deployed.setdefault("in_chans", int(images.shape[1]))
        deployed.setdefault("image_size", int(images.shape[-1]))
    if names and not deployed.get("num_classes"):
        deployed["num_classes"] = len(names)
    missing = [k for k in ("in_chans", "image_size", "num_classes") if not deployed.get(k)]
    if missing:
        raise ModelError(f"The run records no {', '.join(missing)} of its model and its data cannot be read "
                         f"({images_from}); export it where its dataset {config.data.dataset!r} is readable")
    info = model_info(deployed, names)
    if model is None:
        model = _rebuild(folder, config, info)
    absent = onnx_missing()
    if absent:
        (folder / ONNX_FILE).unlink(missing_ok=True)
        _say_once(f"export skipped student.onnx: {absent}")
        info["onnx"] = {"file": None, "reason": f"skipped: {absent}"}
    else:
        if images is None:
            images = torch.rand(PARITY_IMAGES, int(info["in_chans"]), int(info["image_size"]), int(info["image_size"]),
                                generator=torch.Generator().manual_seed(0))
        info["onnx"] = export_onnx_checked(model, folder, int(info["in_chans"]), int(info["image_size"]), images,
                                           images_from)
    (folder / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return info
