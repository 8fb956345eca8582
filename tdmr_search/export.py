"""``tdmr-search export``: take best-found configs and students away from a study.

Each exported trial becomes a folder holding ``config.yaml`` (the resolved pipeline config, which
``tdmr-search train --config`` retrains with no search), ``student.safetensors`` and
``model.json`` (rebuild with :func:`tdmr_search.load_deployed`), ``metrics.json`` and a short
model card ``README.md``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from optuna.artifacts import FileSystemArtifactStore, download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.config import config_from_dict, dump_config, format_flops
from tdmr_search.deploy import MODEL_FILE, write_deployment
from tdmr_search.errors import StudyError
from tdmr_search.fsio import disk_error, is_disk_error
from tdmr_search.search.objective import KEEP_WEIGHTS
from tdmr_search.search.record import BASELINE_METHODS, TrialRecord, baseline_results
from tdmr_search.search.reevaluate import best_trials
from tdmr_search.search.secrets import redact
from tdmr_search.search.storage import artifact_dir, load_study
from tdmr_search.version import __version__

__all__ = ["export", "export_trial", "model_card"]

logger = logging.getLogger(__name__)

METRIC_KEYS = ("val_acc", "test_acc", "teacher_val_acc", "flops", "params", "seconds", "teacher_cached",
               "val_curve", "history")


def export(study_name: str, storage: str | None, which: str | int, out: str | Path,
           artifacts: str | None = None, force: bool = False) -> list[Path]:
    """Export the best trial (``'best'``), the Pareto front (``'pareto'``) or trial number ``which``.

    Everything is written to a temporary folder beside ``out`` first and moved into ``out`` only
    once complete, so a full disk or a missing artifact leaves ``out`` as it was.

    Args:
        force: Write into a non-empty ``out``, replacing the files of the same names.

    Returns:
        The folders written (one per trial; under ``out/trial-N`` when several).
    """
    out = Path(out)
    _check_out(out, force)
    study = load_study(study_name, storage)
    if which == "best":
        if len(study.directions) != 1:
            raise StudyError(f"Study {study_name!r} has two objectives; export --pareto or --trial N")
        trials = best_trials(study)
    elif which == "pareto":
        trials = best_trials(study)
    else:
        number = int(which)
        found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
        if not found:
            raise StudyError(f"Study {study_name!r} has no trial {number}; it has trials 0 to {len(study.trials) - 1}")
        trials = found
        if trials[0].state != TrialState.COMPLETE:
            raise StudyError(
                f"Trial {number} of study {study_name!r} is {trials[0].state.name}, not COMPLETE; only finished trials "
                "have a student to export"
            )
    if not trials:
        raise StudyError(f"Study {study_name!r} has no finished trial yet; nothing to export")
    store_dir = artifact_dir(study_name, storage, artifacts)
    store = FileSystemArtifactStore(str(store_dir))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".export-tmp", dir=out.parent))
    except OSError as err:
        raise StudyError(
            f"Cannot write the export folder {str(out)!r}: {err.strerror}; choose a writable --out folder"
        ) from None
    try:
        for t in trials:
            export_trial(study, t, staging if len(trials) == 1 else staging / f"trial-{t.number}", store,
                         store_dir=store_dir)
        return _move_into(staging, out, [f"trial-{t.number}" for t in trials] if len(trials) > 1 else [])
    except OSError as err:
        where = str(getattr(err, "filename", None) or out).replace(str(staging), str(out))
        if is_disk_error(err):
            raise disk_error(err, where, "export file", "free space or choose another --out folder") from None
        raise StudyError(f"Cannot write the export file {where!r}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a folder with files in it (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise StudyError(f"Cannot write the export folder {str(out)!r}: it is a file; choose a folder for --out")
    if out.is_dir() and not force:
        try:
            names = sorted(p.name for p in out.iterdir())
        except OSError as err:
            raise StudyError(f"Cannot read the export folder {str(out)!r}: {err.strerror}") from None
        if names:
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            raise StudyError(
                f"The export folder {str(out)!r} is not empty (it holds {shown}); choose an empty or new --out "
                "folder, or pass --force to replace the files of the same names"
            )


def _move_into(staging: Path, out: Path, subfolders: list[str]) -> list[Path]:
    """Move every file of ``staging`` to the same place under ``out`` (renames on one file system)."""
    for src in sorted(p for p in staging.rglob("*") if p.is_file()):
        dst = out / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    return [out / name for name in subfolders] or [out]


def export_trial(study: Any, trial: FrozenTrial, folder: Path, store: FileSystemArtifactStore,
                 store_dir: Path | None = None) -> Path:
    """Write one trial's config, weights, metrics and model card to ``folder``.

    ``store_dir`` (the artifact store's folder) only serves to name it in errors.
    """
    attrs = trial.user_attrs
    if "config" not in attrs:
        raise StudyError(f"Trial {trial.number} of study {study.study_name!r} records no config; was it made by tdmr-search?")
    config = config_from_dict(attrs["config"])
    artifact_id = attrs.get("weights_artifact_id")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StudyError(
            f"Cannot write the export folder {str(folder)!r}: {err.strerror}; choose a writable --out folder"
        ) from None
    weights = folder / MODEL_FILE
    if not artifact_id:
        raise StudyError(f"Trial {trial.number} stored no student weights; retrain it with `tdmr-search train --config` "
                         "on its exported config")
    try:
        download_artifact(artifact_store=store, file_path=str(weights), artifact_id=artifact_id)
    except ArtifactNotFound:  # not an OSError writing the copy (a full disk): that one is raised as it is
        weights.unlink(missing_ok=True)
        where = f" {str(store_dir)!r}" if store_dir is not None else ""
        raise StudyError(
            f"The student weights of trial {trial.number} are gone from the artifact store{where}; accepted: a "
            f"trial whose weights are kept there (the best {KEEP_WEIGHTS} finished trials keep them; pass "
            f"--artifacts DIR if the store moved), or retrain trial {trial.number} from its config with "
            "`tdmr-search train --config`"
        ) from None
    dump_config(config, folder / "config.yaml")
    metrics = {k: attrs.get(k) for k in METRIC_KEYS if k in attrs}
    metrics.update(study=study.study_name, trial=trial.number, state=trial.state.name, values=trial.values,
                   params=trial.params, tdmr_search_version=__version__)
    metrics["params_count"] = attrs.get("params")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    info = write_deployment(folder, config, dict(attrs.get("deployed") or {}))
    (folder / "README.md").write_text(model_card(study, trial, info))
    logger.info("exported trial %d to %s", trial.number, folder)
    return folder


def model_card(study: Any, trial: FrozenTrial, info: dict[str, Any] | None = None) -> str:
    """A short model card for an exported trial; ``info`` (its model.json) adds input, classes and ONNX parity."""
    r = TrialRecord.from_trial(trial)
    cfg = r.config
    nan = float("nan")
    base = baseline_results(study)
    lines = [
        f"# {cfg['student']['name']} @ {cfg['student']['resolution']}px, distilled by TDMR",
        "",
        f"Trial {trial.number} of study `{study.study_name}` (tdmr-search {__version__}).",
        "",
        "| | |",
        "|---|---|",
        f"| task | {cfg['data']['dataset']}, {cfg['data']['shots'] or cfg['data']['fraction']} labels "
        f"{'per class' if cfg['data']['shots'] else '(fraction)'} |",
        f"| teacher (frozen) | {cfg['teacher']['name']} ({redact(str(cfg['teacher']['weights']))} weights) |",
        f"| reprogramming | transform `{cfg['reprogram']['transform']}`, projector `{cfg['reprogram']['projector']}`, "
        f"proxy_dim {cfg['reprogram']['proxy_dim']} |",
        f"| distillation | {cfg['distill']['n_stages']} stages, temperature {cfg['distill']['temperature']:.3g} "
        f"({cfg['distill']['temperature_schedule']}), feature loss {cfg['distill']['feature_loss']} |",
        f"| validation accuracy | {nan if r.val_acc is None else r.val_acc:.4f} |",
        f"| test accuracy | {nan if r.test_acc is None else r.test_acc:.4f} (official test split, never used to choose) |",
        f"| teacher-side val accuracy | {r.teacher_val_acc or nan:.4f} |",
        f"| FLOPs (multiply-adds) | {format_flops(r.flops or 0)} (cap {study.user_attrs.get('max_flops_text') or 'none'}) |",
        f"| parameters | {(r.params or 0) / 1e6:.3f}M |",
    ]
    for method in BASELINE_METHODS:
        if "test_acc" in base.get(method, {}):
            lines.append(f"| baseline `{method}` test accuracy | {base[method]['test_acc']:.4f} |")
    lines += _deployment_card(info) if info else []
    lines += [
        "",
        "Load it:",
        "",
        "```python",
        "from tdmr_search import load_deployed",
        "model = load_deployed('.')  # an nn.Module: images in [0, 1] -> class logits",
        "```",
        "",
        "Predict with it: `tdmr-search predict --model . IMAGES_OR_FOLDERS... [--top-k 3] [--out predictions.csv]`.",
        "",
        "Retrain it without any search: `tdmr-search train --config config.yaml --out retrained`.",
        "",
    ]
    return "\n".join(lines)


def _deployment_card(info: dict[str, Any]) -> list[str]:
    """The model card's lines on input, classes and the ONNX file, from ``model.json``."""
    pre = info.get("preprocessing", {})
    names = info.get("class_names") or []
    lines = [
        "",
        "## Input and classes",
        "",
        f"- input: {pre.get('layout', 'NCHW')} {pre.get('dtype', 'float32')}, {pre.get('channels')} channel"
        f"{'s' if pre.get('channels') != 1 else ''} "
        f"({pre.get('color')}), {pre.get('height')} x {pre.get('width')} pixels, values in "
        f"[{pre.get('value_range', [0, 1])[0]:g}, {pre.get('value_range', [0, 1])[1]:g}]",
        f"- preprocessing: resize {pre.get('resize', 'bilinear')}; alpha {pre.get('alpha', 'dropped')}; "
        f"{pre.get('scaling', 'pixel / 255')}",
        f"- output: {len(names)} logits, in this class order: " + ", ".join(f"{i} `{n}`" for i, n in enumerate(names)),
        "",
        "## ONNX",
        "",
    ]
    onnx = info.get("onnx") or {}
    if onnx.get("file"):
        lines += [
            f"`{onnx['file']}`: opset {onnx.get('opset')}, dynamic batch (input `images`, output `logits`), checked at "
            f"export with onnxruntime {onnx.get('onnxruntime')} against PyTorch on {onnx.get('images_from')}:",
            "",
            "| check | result |",
            "|---|---|",
            f"| largest absolute logit difference | {onnx['max_abs_logit_diff']:.2e} |",
            f"| same arg-max class | {onnx['argmax_agree']}/{onnx['images']} images |",
            f"| batch sizes run | {', '.join(str(b) for b in onnx.get('batch_sizes', []))} |",
        ]
        if "pytorch_vs_float64" in onnx:
            lines.append(f"| for scale: float32 rounding (PyTorch float32 vs float64; onnxruntime vs float64) | "
                         f"{onnx['pytorch_vs_float64']:.2e}; {onnx['onnx_vs_float64']:.2e} |")
    else:
        lines.append(f"No ONNX file: {onnx.get('reason', 'not written')}.")
    return lines
