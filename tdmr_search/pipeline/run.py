"""One configured run: TDMR (stage 1 then stage 2) or a baseline, from data to a deployable student.

Progress goes to an ``on_epoch_end(step, metrics)`` callback; this module never imports optuna.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from tdmr_search.models.flops import count_flops, student_cost
from tdmr_search.models.heads import build_classifier, build_projector
from tdmr_search.models.students import DeployedStudent, build_student
from tdmr_search.models.teachers import FrozenTeacher, build_teacher
from tdmr_search.models.timm_utils import create_timm
from tdmr_search.models.transforms import build_transform
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
from tdmr_search.pipeline.stages import Phase, ProgressiveDistiller, ReprogrammedTeacher, plan_phases
from tdmr_search.version import __version__

__all__ = [
    "PipelineResult", "TeacherSide", "Reference", "reference_labels", "run_pipeline", "reprogram_teacher", "distill_student",
    "save_result", "load_deployed", "deployed_cost", "MODEL_FILE",
]
# MODEL_FILE and load_deployed live in tdmr_search.deploy; they stay importable from here.

logger = logging.getLogger(__name__)

#: Teacher passes over more images than this report their progress (``tdmr_search.progress``).
PASS_PROGRESS_IMAGES = 1000
#: Batch-norm re-estimation passes over the train images and at most this many images in all.
BN_IMAGES = 4096
#: The losses stage 2 reports (means per epoch).
LOSSES = ("loss", "feat", "kd", "ce")


@dataclass
class TeacherSide:
    """What stage 1 leaves for stage 2: proxy features and logits of the train, val and unlabelled images.

    ``state`` holds the trained transform, projector and proxy classifier weights; ``cache_hit``
    says whether this outcome was read from the teacher cache rather than computed now.
    """

    z_train: torch.Tensor
    logits_train: torch.Tensor
    z_val: torch.Tensor
    logits_val: torch.Tensor
    val_acc: float
    state: dict[str, dict[str, torch.Tensor]]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    z_unlabeled: torch.Tensor | None = None
    logits_unlabeled: torch.Tensor | None = None
    cache_hit: bool = False


@dataclass
class Reference:
    """A fixed reference for a low-noise training signal: images and the reference teacher's labels."""

    images: torch.Tensor
    labels: torch.Tensor
    description: str


#: Pool images the reference teacher labels for the pruning signal (at most).
REFERENCE_IMAGES = 1000


#: ``features(split, images)``: the frozen teacher's pooled features of ``images`` behind the
#: static ``resize`` front end; ``split`` ('train', 'val', 'unlabeled', 'test') names them for a cache.
FeatureSource = Callable[[str, torch.Tensor], torch.Tensor]


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
    if cap is not None and flops > cap and config.method != "probe":
        raise BudgetError(
            f"The student {config.student.name} at {config.student.resolution}px costs {format_flops(flops)} "
            f"FLOPs, over the cap max_flops={config.max_flops}; choose a smaller student or resolution"
        )
    return flops, params


def teacher_features(config: PipelineConfig, runtime: Runtime, cache: Any = None,
                     teacher: FrozenTeacher | None = None) -> FeatureSource:
    """A :data:`FeatureSource` for ``config``'s teacher: computed here, or read through ``cache``.

    The teacher is built on first use only, so a cache that holds every split costs no model.
    """
    built: list[FrozenTeacher] = [] if teacher is None else [teacher]

    def compute(split: str, images: torch.Tensor) -> torch.Tensor:
        if not built:
            built.append(runtime.module(build_teacher(config.teacher)))
            runtime.compiled(built[0].model, "forward_features")
        label = f"teacher pass ({split}, {len(images)} images)" if len(images) > PASS_PROGRESS_IMAGES else None
        return _probe_features(built[0], images, runtime, label).cpu()

    def features(split: str, images: torch.Tensor) -> torch.Tensor:
        if cache is None:
            return compute(split, images)
        return cache.features(config, split, images, lambda: compute(split, images))

    return features


def reprogram_teacher(config: PipelineConfig, data: TargetData, runtime: Runtime,
                      on_epoch_end: EpochCallback = no_callback, teacher: FrozenTeacher | None = None,
                      features: FeatureSource | None = None) -> TeacherSide:
    """Stage 1: train T, P_T and H in front of and behind the frozen teacher with cross-entropy.

    With the static ``resize`` front end the teacher's features of every image are computed once
    (or read from ``features``, e.g. a cache shared by every proxy size and projector) and stage 1
    trains on them; a trainable transform passes every image, the unlabelled ones included,
    through the teacher itself.
    """
    start = time.perf_counter()
    rcfg = config.reprogram
    seed_everything(config.seed)
    static = rcfg.transform == "resize"
    if teacher is None and not (static and features is not None):
        teacher = build_teacher(config.teacher)
        runtime.compiled(teacher.model, "forward_features")
    if static:
        features = features or teacher_features(config, runtime, teacher=runtime.module(teacher))
        f_train = runtime.put(features("train", data.train.images))
        f_val = runtime.put(features("val", data.val.images))
        f_unl = runtime.put(features("unlabeled", data.unlabeled)) if len(data.unlabeled) else None
        seed_everything(config.seed)  # the heads' initialisation must not depend on whether a teacher was built
        model: nn.Module = _HeadOnly(build_projector(rcfg.projector, f_train.shape[1], rcfg.proxy_dim),
                                     build_classifier(rcfg.proxy_dim, data.num_classes))
    else:
        transform = build_transform(rcfg.transform, teacher.input_size, teacher.mean, teacher.std, pad=rcfg.pad)
        model = ReprogrammedTeacher(
            transform, teacher, build_projector(rcfg.projector, teacher.feature_dim, rcfg.proxy_dim),
            build_classifier(rcfg.proxy_dim, data.num_classes),
        )
    model = runtime.module(model)
    x_train, y_train = (f_train if static else runtime.put(data.train.images)), runtime.put(data.train.labels)
    x_val, y_val = (f_val if static else data.val.images), runtime.put(data.val.labels)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=rcfg.lr, weight_decay=rcfg.weight_decay)
    scheduler = cosine_schedule(optimizer, rcfg.epochs * steps_per_epoch(len(data.train), rcfg.batch_size))
    history: list[dict[str, Any]] = []

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with runtime.autocast():
            return {"loss": model(x_train[idx], y_train[idx])["loss"]}

    def end_epoch(epoch: int, losses: dict[str, float]) -> None:
        val_logits = infer(lambda x: model(x)["logits"], x_val, runtime)
        metrics = {"stage": "reprogram", "epoch": epoch, "loss": losses.get("loss", 0.0),
                   "teacher_val_acc": accuracy(val_logits, y_val), "seconds": time.perf_counter() - start}
        history.append(metrics)
        logger.info("stage 1 epoch %d/%d  loss %.4f  teacher val acc %.4f", epoch + 1, rcfg.epochs,
                    metrics["loss"], metrics["teacher_val_acc"])
        on_epoch_end(epoch, metrics)

    fit(model, step, optimizer, len(data.train), rcfg.batch_size, torch.Generator().manual_seed(config.seed),
        rcfg.epochs, runtime, "stage-1 cross-entropy", end_epoch, scheduler)
    model.eval()

    def outputs(inputs: torch.Tensor, label: str | None = None) -> torch.Tensor:
        return infer(lambda x: torch.cat(list(model.forward(x).values()), 1), inputs, runtime, label=label)

    train_out = outputs(x_train)
    val_out = outputs(x_val)
    unl_out = None
    if len(data.unlabeled):
        unl_out = (outputs(f_unl) if static else  # one teacher pass over the pool per trainable setting
                   outputs(data.unlabeled, label=f"teacher pass (unlabeled, {len(data.unlabeled)} images)"))
    d = rcfg.proxy_dim
    state = {name: {k: v.detach().cpu() for k, v in getattr(model, name).state_dict().items()}
             for name in ("transform", "projector", "classifier")}
    val_acc = accuracy(val_out[:, d:], y_val)
    return TeacherSide(
        z_train=train_out[:, :d].cpu(), logits_train=train_out[:, d:].cpu(),
        z_val=val_out[:, :d].cpu(), logits_val=val_out[:, d:].cpu(), val_acc=val_acc,
        state=state, seconds=time.perf_counter() - start, history=history,
        z_unlabeled=None if unl_out is None else unl_out[:, :d].cpu(),
        logits_unlabeled=None if unl_out is None else unl_out[:, d:].cpu(),
    )


class _HeadOnly(nn.Module):
    """Stage 1 behind the static front end: P_T and H trained on the teacher's cached features."""

    def __init__(self, projector: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.transform = nn.Identity()  # resize has no parameters; its state is empty
        self.projector = projector
        self.classifier = classifier

    def forward(self, feats: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        z = self.projector(feats)
        out = {"z": z, "logits": self.classifier(z)}
        if y is not None:
            out["loss"] = F.cross_entropy(out["logits"].float(), y)
        return out


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


def _probe_features(teacher: FrozenTeacher, images: torch.Tensor, runtime: Runtime,
                    label: str | None = None) -> torch.Tensor:
    """The frozen teacher's pooled features of ``images`` behind the ``resize`` front end."""
    transform = runtime.module(build_transform("resize", teacher.input_size, teacher.mean, teacher.std))
    return infer(lambda x: teacher(transform(x)), images, runtime, label=label)


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
    head = _linear_probe(config, features("train", data.train.images), data.train.labels, data.num_classes, runtime)
    images = data.unlabeled[: min(n, data.pool_size)]
    with torch.no_grad():
        pool_feats = features("unlabeled", data.unlabeled)[: len(images)]
        labels = head(runtime.put(pool_feats)).argmax(1).cpu()
    return Reference(images, labels, f"top-1 agreement with the linear probe on the frozen teacher over {len(images)} "
                                     "pool images")


def _linear_probe(config: PipelineConfig, feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  runtime: Runtime) -> nn.Module:
    """A linear head trained with cross-entropy on frozen teacher features (``config.reprogram``'s settings)."""
    seed_everything(config.seed)
    head = runtime.module(nn.Linear(feats.shape[1], num_classes))
    feats, labels = runtime.put(feats), runtime.put(labels)
    rcfg = config.reprogram
    optimizer = torch.optim.AdamW(head.parameters(), lr=rcfg.lr, weight_decay=rcfg.weight_decay)

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(head(feats[idx]).float(), labels[idx])}  # full precision: no autocast

    fit(head, step, optimizer, len(labels), rcfg.batch_size, torch.Generator().manual_seed(config.seed), rcfg.epochs,
        runtime, "linear probe")
    return head.eval()


def run_pipeline(config: PipelineConfig, on_epoch_end: EpochCallback = no_callback, data: TargetData | None = None,
                 teacher_side: TeacherSide | None = None, cache: Any = None,
                 reference: Reference | None = None) -> PipelineResult:
    """Run ``config`` end to end and return its metrics and deployed model.

    Args:
        config: The resolved config; ``config.method`` picks TDMR or a baseline.
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
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = data or load_data(config.data, config.seed)
    seconds["data"] = time.perf_counter() - t0
    metrics: dict[str, Any] = {"method": config.method, "tdmr_search_version": __version__,
                               "device": str(runtime.device), "data": data.summary()}
    if config.method == "scratch":  # labels only: the pool is not shown to it
        data = data.without_unlabeled()
    model: nn.Module | None = None
    features = teacher_features(config, runtime, cache)
    if config.method == "probe":
        t0 = time.perf_counter()
        head = _linear_probe(config, features("train", data.train.images), data.train.labels, data.num_classes,
                             runtime)
        val_acc = accuracy(head(runtime.put(features("val", data.val.images))).cpu(), data.val.labels)
        test_acc = accuracy(head(runtime.put(features("test", data.test.images))).cpu(), data.test.labels)
        size = config.teacher.input_size or build_teacher(config.teacher).input_size
        flops, params = count_flops(  # the teacher with a K-class linear head is the probe
            lambda: create_timm(config.teacher.name, "teacher.name", img_size=config.teacher.input_size,
                                pretrained=False, num_classes=data.num_classes),
            (1, 3, size, size),
        )
        seconds["probe"] = time.perf_counter() - t0
        metrics.update(val_acc=val_acc, test_acc=test_acc, teacher_val_acc=val_acc, flops=flops, params=params,
                       teacher_cached=False, seconds=seconds)
        return PipelineResult(config, metrics, None, data)

    flops, params = deployed_cost(config, data.channels, data.image_size, data.num_classes)
    metrics.update(flops=flops, params=params)
    seed_everything(config.seed)
    student = build_student(config.student, data.channels, config.reprogram.proxy_dim, data.num_classes)
    dcfg = config.distill
    z_t = t_logits = z_u = logits_u = None
    teacher_val_acc: float | None = None
    cached = False
    if config.method == "tdmr":
        if teacher_side is None and cache is not None:
            teacher_side = cache.get_or_compute(config, data)
        if teacher_side is None:
            teacher_side = reprogram_teacher(config, data, runtime, on_epoch_end, features=features)
        cached = teacher_side.cache_hit
        seconds["stage1"] = 0.0 if cached else teacher_side.seconds
        teacher_val_acc = teacher_side.val_acc
        student.classifier.load_state_dict(teacher_side.state["classifier"])
        z_t, t_logits = teacher_side.z_train, teacher_side.logits_train
        z_u, logits_u = teacher_side.z_unlabeled, teacher_side.logits_unlabeled
        phases = plan_phases(dcfg.n_stages, dcfg.epochs, dcfg.temperature, dcfg.temperature_schedule)
        stage = "distill"
    elif config.method == "kd":
        t0 = time.perf_counter()
        f_train = features("train", data.train.images)
        head = _linear_probe(config, f_train, data.train.labels, data.num_classes, runtime)
        with torch.no_grad():
            t_logits = head(runtime.put(f_train)).float().cpu()
            teacher_val_acc = accuracy(head(runtime.put(features("val", data.val.images))).cpu(), data.val.labels)
            if len(data.unlabeled):  # the same views as TDMR distils on
                logits_u = head(runtime.put(features("unlabeled", data.unlabeled))).float().cpu()
        seconds["stage1"] = time.perf_counter() - t0
        phases = [Phase(0, dcfg.epochs, 0.0, 1.0, 1.0, dcfg.temperature, True)]
        stage = "kd"
    else:  # scratch
        phases = [Phase(0, dcfg.epochs, 0.0, 0.0, 1.0, 1.0, True)]
        stage = "scratch"
    t0 = time.perf_counter()
    seed_everything(config.seed)
    history = distill_student(student, phases, config, data, runtime, z_t, t_logits, on_epoch_end, stage,
                              z_u=z_u, logits_u=logits_u, reference=reference)
    seconds["stage2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student.eval()
    test_acc = accuracy(infer(student, data.test.images, runtime), runtime.put(data.test.labels))
    seconds["eval"] = time.perf_counter() - t0
    metrics.update(
        val_acc=history[-1]["val_acc"], test_acc=test_acc, teacher_val_acc=teacher_val_acc,
        teacher_cached=cached, seconds=seconds, history=history,
        teacher_history=(teacher_side.history if teacher_side is not None and not cached else []),
    )
    model = student.cpu().eval()
    return PipelineResult(config, metrics, model, data)


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
