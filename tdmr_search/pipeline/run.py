"""One configured run: a method's teacher side, then its student, from data to a deployable student.

The method (``config.method``: TDMR or a baseline) says what is trained before the student and
what the student distils towards (:mod:`tdmr_search.pipeline.methods`); stage 2 here trains the
student towards it. Progress goes to an ``on_epoch_end(step, metrics)`` callback; this module
never imports optuna.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmr_search.config import PipelineConfig, dump_config, format_flops
from tdmr_search.data import TargetData, load_data
from tdmr_search.deploy import MODEL_FILE, load_deployed, save_deployed
from tdmr_search.errors import BudgetError, ModelError, TdmrError
from tdmr_search.models.flops import student_cost
from tdmr_search.models.students import DeployedStudent, build_student
from tdmr_search.pipeline.loop import (
    EVAL_BATCH,
    EpochCallback,
    Runtime,
    accuracy,
    cosine_schedule,
    fit,
    infer,
    no_callback,
    recalibrate_batchnorm,
    seed_everything,
    steps_per_epoch,
)
from tdmr_search.pipeline.methods import (
    METHODS,
    MethodInputs,
    TeacherSide,
    linear_probe,
    reprogram_teacher,
    teacher_features,
)
from tdmr_search.pipeline.stages import Phase, ProgressiveDistiller
from tdmr_search.version import __version__

__all__ = [
    "PipelineResult", "TeacherSide", "Reference", "reference_labels", "run_pipeline", "reprogram_teacher", "distill_student",
    "save_result", "load_deployed", "deployed_cost", "teacher_features", "MODEL_FILE",
]
# TeacherSide, reprogram_teacher and teacher_features live in .methods, MODEL_FILE and
# load_deployed in tdmr_search.deploy; they stay importable from here.

logger = logging.getLogger(__name__)

#: Batch-norm re-estimation passes over the train images and at most this many images in all.
BN_IMAGES = 4096
#: The losses stage 2 reports (means per epoch).
LOSSES = ("loss", "feat", "kd", "ce")


@dataclass
class Reference:
    """A fixed reference for a low-noise training signal: images and the reference teacher's labels."""

    images: torch.Tensor
    labels: torch.Tensor
    description: str


#: Pool images the reference teacher labels for the pruning signal (at most).
REFERENCE_IMAGES = 1000


@dataclass
class PipelineResult:
    """The outcome of one run: the resolved config, its metrics and the deployed model."""

    config: PipelineConfig
    metrics: dict[str, Any]
    model: nn.Module | None
    data: TargetData | None = None


def deployed_cost(config: PipelineConfig, in_chans: int, image_size: int, num_classes: int) -> tuple[float, int]:
    """FLOPs and parameters of the deployed student of ``config``; raises when over the cap."""
    try:
        flops, params = student_cost(config.student, in_chans, image_size, config.reprogram.proxy_dim, num_classes)
    except TdmrError:
        raise
    except Exception as err:  # e.g. a ViT whose patch size does not divide the resolution
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelError(
            f"Student {config.student.name!r} cannot run at student.resolution={config.student.resolution} ({reason}); "
            "accepted: a resolution the architecture supports (ViTs: a multiple of their patch size)"
        ) from None
    cap = config.max_flops_value
    if cap is not None and flops > cap and METHODS.create(config.method).trains_student:  # the probe deploys no student
        raise BudgetError(
            f"The student {config.student.name} at {config.student.resolution}px costs {format_flops(flops)} "
            f"FLOPs, over the cap max_flops={config.max_flops}; choose a smaller student or resolution"
        )
    return flops, params


def distill_student(student: DeployedStudent, phases: list[Phase], config: PipelineConfig, data: TargetData,
                    runtime: Runtime, z_t: torch.Tensor | None, t_logits: torch.Tensor | None,
                    on_epoch_end: EpochCallback = no_callback, stage: str = "distill",
                    z_u: torch.Tensor | None = None, logits_u: torch.Tensor | None = None,
                    reference: Reference | None = None) -> list[dict[str, Any]]:
    """Train ``student`` through ``phases``, evaluating on val after every epoch.

    Without unlabelled inputs an epoch is one pass over the train split. With them (``data.unlabeled``
    and their teacher targets ``z_u`` / ``logits_u``), an epoch is one pass over the unlabelled
    inputs: every step takes ``batch_size`` of them plus ``labelled_batch`` train images (cycled),
    the feature and prediction losses cover every row and cross-entropy the labelled rows only.

    Returns one metrics dict per epoch (also passed to ``on_epoch_end``): stage, epoch, phase,
    val_acc, val_loss (cross-entropy on val), agreement (top-1 agreement with ``reference`` on its
    images, when given), temperature, the mean losses, and ``seconds`` since stage 2 began.
    """
    start = time.perf_counter()
    dcfg = config.distill
    distiller = ProgressiveDistiller(student, dcfg.feature_loss)
    runtime.module(student)
    runtime.compiled(student.backbone)
    x, y = runtime.put(data.train.images), runtime.put(data.train.labels)
    y_val = runtime.put(data.val.labels)
    z_t = None if z_t is None else runtime.put(z_t)
    t_logits = None if t_logits is None else runtime.put(t_logits)
    pooled = len(data.unlabeled) > 0 and (z_u is not None or logits_u is not None)
    if pooled:
        xu = runtime.put(data.unlabeled)
        z_u = None if z_u is None else runtime.put(z_u)
        logits_u = None if logits_u is None else runtime.put(logits_u)
        n_lab = min(dcfg.labelled_batch or max(1, dcfg.batch_size // 4), len(data.train))
        labelled = _Cycle(len(data.train), torch.Generator().manual_seed(config.seed + 2))
        bn_images = torch.cat([x, xu[: max(0, BN_IMAGES - len(x))]])
    else:
        bn_images = x
    optimizer = torch.optim.AdamW(student.parameters(), lr=dcfg.lr, weight_decay=dcfg.weight_decay)
    gen = torch.Generator().manual_seed(config.seed + 1)
    n_rows = len(data.unlabeled) if pooled else len(data.train)
    per_epoch = steps_per_epoch(n_rows, dcfg.batch_size)
    total_epochs = sum(p.epochs for p in phases)
    scheduler = cosine_schedule(optimizer, total_epochs * per_epoch, warmup=min(per_epoch, 10))
    history: list[dict[str, Any]] = []

    def cat(a: torch.Tensor | None, ia: torch.Tensor, b: torch.Tensor | None, ib: torch.Tensor) -> torch.Tensor | None:
        return None if a is None or b is None else torch.cat([a[ia], b[ib]])

    def losses(phase: Phase, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with runtime.autocast():
            if pooled:
                lab = labelled.take(n_lab).to(runtime.device)
                out = distiller(torch.cat([x[lab], xu[idx]]), y[lab], cat(z_t, lab, z_u, idx),
                                cat(t_logits, lab, logits_u, idx), phase)
            else:
                out = distiller(x[idx], y[idx], None if z_t is None else z_t[idx],
                                None if t_logits is None else t_logits[idx], phase)
        return {k: out[k] for k in LOSSES}

    def end_epoch(phase: Phase, _: int, means: dict[str, float]) -> None:
        if dcfg.bn_recalibrate:
            recalibrate_batchnorm(student, bn_images, runtime, EVAL_BATCH)
        student.eval()
        val_logits = infer(student, data.val.images, runtime)
        val_acc = accuracy(val_logits, y_val)
        step = len(history)
        metrics = {"stage": stage, "epoch": step, "phase": phase.index + 1, "val_acc": val_acc,
                   "val_loss": float(F.cross_entropy(val_logits, y_val)),
                   "temperature": phase.temperature, **{k: means.get(k, 0.0) for k in LOSSES},
                   "seconds": time.perf_counter() - start}
        if reference is not None:
            metrics["agreement"] = accuracy(infer(student, reference.images, runtime), runtime.put(reference.labels))
        history.append(metrics)
        logger.info("%s epoch %d/%d (phase %d)  loss %.4f  val acc %.4f", stage, step + 1, total_epochs,
                    phase.index + 1, metrics["loss"], val_acc)
        on_epoch_end(step, metrics)

    for phase in phases:
        student.classifier.requires_grad_(phase.train_classifier)
        fit(student, partial(losses, phase), optimizer, n_rows, dcfg.batch_size, gen, phase.epochs, runtime,
            f"{stage} (phase {phase.index + 1})", partial(end_epoch, phase), scheduler)
    student.classifier.requires_grad_(True)
    return history


class _Cycle:
    """Endless seeded batches of indices over ``n`` items: each pass is a fresh permutation."""

    def __init__(self, n: int, gen: torch.Generator) -> None:
        self.n, self.gen = n, gen
        self.order = torch.randperm(n, generator=gen)
        self.pos = 0

    def take(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self.pos >= self.n:
                self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
            part = self.order[self.pos : self.pos + k]
            out.append(part)
            self.pos += len(part)
            k -= len(part)
        return torch.cat(out)


def reference_labels(config: PipelineConfig, data: TargetData, cache: Any = None,
                     n: int = REFERENCE_IMAGES) -> Reference | None:
    """The reference teacher's top-1 labels of the first ``n`` pool images (None without a pool).

    The reference teacher is ``config``'s linear probe on the frozen teacher (the kd baseline's
    teacher), trained on the labelled train images only: one fixed reference for every trial
    that shares ``config``'s teacher and data, whatever the trial's own stage-1 choices.
    """
    if not data.pool_size:
        return None
    runtime = Runtime.create(config.device)
    features = teacher_features(config, runtime, cache)
    head = linear_probe(config, features("train", data.train.images), data.train.labels, data.num_classes, runtime)
    images = data.unlabeled[: min(n, data.pool_size)]
    with torch.no_grad():
        pool_feats = features("unlabeled", data.unlabeled)[: len(images)]
        labels = head(runtime.put(pool_feats)).argmax(1).cpu()
    return Reference(images, labels, f"top-1 agreement with the linear probe on the frozen teacher over {len(images)} "
                                     "pool images")




def run_pipeline(config: PipelineConfig, on_epoch_end: EpochCallback = no_callback, data: TargetData | None = None,
                 teacher_side: TeacherSide | None = None, cache: Any = None,
                 reference: Reference | None = None) -> PipelineResult:
    """Run ``config`` end to end and return its metrics and deployed model.

    Args:
        config: The resolved config; ``config.method`` picks TDMR or a baseline (:data:`METHODS`).
        on_epoch_end: Called after every epoch with the epoch index and a metrics dict whose
            ``stage`` is 'reprogram', 'distill' or the baseline's name.
        data: Already loaded target data (loaded from ``config.data`` when None).
        teacher_side: A stage-1 outcome to reuse instead of running stage 1 (TDMR only).
        cache: A :class:`~tdmr_search.pipeline.cache.TeacherCache`: stage-1 outcomes and the
            teacher's features (kd, probe, the ``resize`` front end) are read from it or stored in it.
        reference: Images and reference labels whose top-1 agreement with the student every
            stage-2 epoch reports (``agreement``), e.g. :func:`reference_labels`.
    """
    runtime = Runtime.create(config.device, config.compile)
    method = METHODS.create(config.method)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = data or load_data(config.data, config.seed)
    seconds["data"] = time.perf_counter() - t0
    metrics: dict[str, Any] = {"method": config.method, "tdmr_search_version": __version__,
                               "device": str(runtime.device), "data": data.summary()}
    if not method.sees_pool:
        data = data.without_unlabeled()
    run = MethodInputs(config, data, runtime, teacher_features(config, runtime, cache), on_epoch_end, teacher_side,
                       cache)
    if not method.trains_student:  # the probe: its linear head is the model, and there is no student file
        t0 = time.perf_counter()
        results = method.evaluate(run)
        seconds[method.stage] = time.perf_counter() - t0
        metrics.update(results, teacher_cached=False, seconds=seconds)
        return PipelineResult(config, metrics, None, data)

    flops, params = deployed_cost(config, data.channels, data.image_size, data.num_classes)
    metrics.update(flops=flops, params=params)
    seed_everything(config.seed)
    student = build_student(config.student, data.channels, config.reprogram.proxy_dim, data.num_classes)
    targets = method.teacher(run)
    if targets.seconds is not None:
        seconds["stage1"] = targets.seconds
    if targets.classifier is not None:
        student.classifier.load_state_dict(targets.classifier)
    t0 = time.perf_counter()
    seed_everything(config.seed)
    history = distill_student(student, method.phases(config.distill), config, data, runtime, targets.z_train,
                              targets.logits_train, on_epoch_end, method.stage, z_u=targets.z_unlabeled,
                              logits_u=targets.logits_unlabeled, reference=reference)
    seconds["stage2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student.eval()
    test_acc = accuracy(infer(student, data.test.images, runtime), runtime.put(data.test.labels))
    seconds["eval"] = time.perf_counter() - t0
    metrics.update(
        val_acc=history[-1]["val_acc"], test_acc=test_acc, teacher_val_acc=targets.val_acc,
        teacher_cached=targets.cached, seconds=seconds, history=history, teacher_history=targets.history,
    )
    return PipelineResult(config, metrics, student.cpu().eval(), data)


def save_result(result: PipelineResult, out_dir: str | Path) -> Path:
    """Write ``config.yaml`` and ``metrics.json`` to ``out_dir``, and the deployed student's files.

    The student's files are ``student.safetensors``, ``model.json`` and ``student.onnx``, written
    as export writes them (:func:`tdmr_search.deploy.save_deployed`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(result.config, out / "config.yaml")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2, default=float) + "\n")
    if result.model is not None and result.data is not None:
        save_deployed(out, result.model, result.config, result.data)
    return out
