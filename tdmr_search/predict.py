"""``tdmr-search predict``: classify image files with a deployed student folder.

The folder is an export (``tdmr-search export``) or a trained run (``tdmr-search train``): its
``model.json`` names the classes and the input the model expects. Each image gets the model's own
preprocessing (:func:`load_image`): grey or RGB as the model was trained, alpha dropped, 8- or
16-bit values scaled to [0, 1], resized bilinearly to the model's image size. The model runs
through onnxruntime when the folder holds ``student.onnx`` and onnxruntime is installed, else
through PyTorch. A file that cannot be read is reported in its row; the others are still predicted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdmr_search.deploy import MODEL_JSON, ONNX_FILE, importable, load_deployed
from tdmr_search.errors import ModelError, TdmrError

__all__ = ["Prediction", "Predictions", "predict", "load_image", "image_files", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

#: Files taken from a folder (named files are tried whatever their suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BATCH = 64


@dataclass
class Prediction:
    """The top classes of one file, best first, or why it could not be read."""

    file: str
    classes: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Predictions:
    """Every file's prediction, in input order, and which runtime computed them."""

    rows: list[Prediction]
    backend: str

    @property
    def failed(self) -> list[Prediction]:
        """The files that could not be read."""
        return [r for r in self.rows if r.error is not None]

    def to_csv(self) -> str:
        """``file,class,probability,error``: one row per class of the top k, one row per unreadable file."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "class", "probability", "error"])
        for r in self.rows:
            if r.error is not None:
                writer.writerow([r.file, "", "", r.error])
            for name, p in zip(r.classes, r.probabilities, strict=True):
                writer.writerow([r.file, name, f"{p:.4f}", ""])
        return buf.getvalue()


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files to predict: named files as given, folders searched recursively for image files (sorted).

    A missing path is kept, so its row says it does not exist.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                logger.warning("the folder %s holds no image files (%s)", path, ", ".join(IMAGE_SUFFIXES))
            out += found
        else:
            out.append(path)
    return out


def load_image(path: str | Path, channels: int, size: int) -> np.ndarray:
    """One image file as the model's input: float32, ``channels`` x ``size`` x ``size``, values in [0, 1].

    Grey, RGB, RGBA, palette and 16-bit files of any size are accepted: colour becomes grey
    (ITU-R 601 luma) for a one-channel model and grey becomes RGB for a three-channel one, alpha
    is dropped as in training, 16-bit values are divided by 65535 and 8-bit ones by 255, and the
    image is resized bilinearly (8-bit images by Pillow, as the image-folder training data was).

    Raises:
        OSError, ValueError: the file is missing or not an image Pillow can decode.
    """
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):  # high bit depth grey
            scale = 1.0 if image.mode == "F" else 65535.0
            grey = np.asarray(image, dtype=np.float32) / scale
            plane = Image.fromarray(np.clip(grey, 0.0, 1.0).astype(np.float32), mode="F")
            if plane.size != (size, size):
                plane = plane.resize((size, size), Image.BILINEAR)
            arr = np.asarray(plane, dtype=np.float32)[None]
            return np.repeat(arr, channels, axis=0) if channels == 3 else arr
        converted = image.convert("L" if channels == 1 else "RGB")
    if converted.size != (size, size):
        converted = converted.resize((size, size), Image.BILINEAR)
    arr = np.asarray(converted, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class _Model:
    """The folder's model behind one call: float32 N x C x H x W in [0, 1] -> logits (numpy)."""

    def __init__(self, folder: Path, backend: str) -> None:
        self.backend = backend
        onnx_path = folder / ONNX_FILE
        use_onnx = backend in ("auto", "onnx") and onnx_path.is_file()
        if backend == "onnx" and not onnx_path.is_file():
            raise ModelError(f"{str(folder)!r} holds no {ONNX_FILE}; export the model again with the onnx extra "
                             "installed, or use --backend torch")
        if use_onnx and not importable("onnxruntime"):
            if backend == "onnx":
                raise ModelError("onnxruntime is not installed; pip install 'tdmr-search[onnx]' or use --backend torch")
            logger.warning("%s is there but onnxruntime is not installed; predicting with PyTorch", ONNX_FILE)
            use_onnx = False
        if use_onnx:
            import onnxruntime as ort

            try:
                self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            except Exception as err:
                raise ModelError(f"Cannot load {str(onnx_path)!r} with onnxruntime: {str(err).splitlines()[0]}") from None
            self.input = self.session.get_inputs()[0].name
            self.backend = "onnxruntime"
        else:
            self.model = load_deployed(folder)
            self.backend = "pytorch"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnxruntime":
            return self.session.run(None, {self.input: x})[0]
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


def _read_info(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelError(f"--model {str(folder)!r} is not a folder; expected an export (tdmr-search export) or a trained "
                         "run (tdmr-search train --out) holding model.json")
    try:
        info = json.loads((folder / MODEL_JSON).read_text())
        for key in ("in_chans", "image_size", "num_classes"):
            int(info[key])
    except (OSError, ValueError, KeyError, TypeError) as err:
        reason = f"missing key {err}" if isinstance(err, KeyError) else (getattr(err, "strerror", None) or str(err))
        raise ModelError(f"{str(folder)!r} holds no readable model.json of a deployed student ({reason}); expected an "
                         "export (tdmr-search export) or a trained run (tdmr-search train --out)") from None
    return info


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _batches(files: list[Path], channels: int, size: int) -> Iterator[tuple[list[Prediction], np.ndarray]]:
    """Rows and the stacked images of the readable files among them, ``BATCH`` files at a time."""
    for start in range(0, len(files), BATCH):
        rows, arrays = [], []
        for path in files[start : start + BATCH]:
            row = Prediction(str(path))
            try:
                arrays.append(load_image(path, channels, size))
            except FileNotFoundError:
                row.error = "no such file"
            except IsADirectoryError:
                row.error = "a folder, not an image file"
            except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, DecompressionBombError...
                text = " ".join(str(err).split()) or type(err).__name__
                text = text.replace(repr(str(path)), "").replace(str(path), "").strip()
                row.error = f"not a readable image ({text})"[:200]
            rows.append(row)
        yield rows, (np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, channels, size, size), np.float32))


def predict(model_dir: str | Path, inputs: Sequence[str | Path], top_k: int = 1, backend: str = "auto") -> Predictions:
    """Classify image files (and image folders) with the deployed student in ``model_dir``.

    Args:
        model_dir: An exported or trained folder holding model.json and the weights.
        inputs: Image files and folders (searched recursively for image files).
        top_k: How many classes per image, best first.
        backend: 'auto' (onnxruntime when the folder has student.onnx, else PyTorch), 'onnx' or 'torch'.

    Returns:
        One :class:`Prediction` per file, in order; unreadable files carry an ``error``.

    Raises:
        ModelError: the folder holds no usable model. TdmrError: bad arguments or no input file.
    """
    folder = Path(model_dir)
    if backend not in ("auto", "onnx", "torch"):
        raise TdmrError(f"--backend must be auto, onnx or torch; got {backend!r}")
    info = _read_info(folder)
    num_classes, channels, size = int(info["num_classes"]), int(info["in_chans"]), int(info["image_size"])
    if not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
        raise TdmrError(f"--top-k must be an integer from 1 to the model's {num_classes} classes; got {top_k!r}")
    names = [str(n) for n in info.get("class_names") or []]
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    files = image_files(inputs)
    if not files:
        raise TdmrError(f"No image files to predict in {', '.join(str(i) for i in inputs)}; accepted: image files or "
                        f"folders holding them ({', '.join(IMAGE_SUFFIXES)})")
    model = _Model(folder, backend)
    rows: list[Prediction] = []
    for batch_rows, x in _batches(files, channels, size):
        if len(x):
            probs = _softmax(model(x).astype(np.float64))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
            ok = iter(range(len(x)))
            for row in batch_rows:
                if row.error is None:
                    i = next(ok)
                    row.classes = [names[j] for j in order[i]]
                    row.probabilities = [float(probs[i, j]) for j in order[i]]
        rows += batch_rows
    result = Predictions(rows, model.backend)
    logger.info("predicted %d of %d files with %s", len(rows) - len(result.failed), len(rows), model.backend)
    return result
