"""The methods a run can train: what each trains before the student and what the student distils towards.

============  ====================================================  ==========================================
method        teacher side (before the student)                     the student learns from
============  ====================================================  ==========================================
``tdmr``      stage 1 reprograms the frozen teacher                 its proxy features, then its logits and the
              (:func:`reprogram_teacher`)                           labels, in progressive phases
``kd``        a linear probe on the frozen teacher's features       its logits and the labels (one phase)
              (:func:`linear_probe`)
``scratch``   none; the unlabelled pool is hidden too               the labels (one phase)
``probe``     the linear probe is the model: no student             --
============  ====================================================  ==========================================

:data:`METHODS` creates a :class:`Method` by the name in ``config.method``;
:func:`tdmr_search.pipeline.run.run_pipeline` trains its teacher side, then distils the student
towards the :class:`Targets` it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmr_search.config import METHODS as METHOD_NAMES
from tdmr_search.config import DistillConfig, PipelineConfig
from tdmr_search.data import TargetData
from tdmr_search.models.flops import count_flops
from tdmr_search.models.heads import build_classifier, build_projector
from tdmr_search.models.teachers import FrozenTeacher, build_teacher
from tdmr_search.models.timm_utils import create_timm
from tdmr_search.models.transforms import build_transform
from tdmr_search.pipeline.loop import (
    EpochCallback,
    Runtime,
    accuracy,
    cosine_schedule,
    fit,
    infer,
    no_callback,
    seed_everything,
    steps_per_epoch,
)
from tdmr_search.pipeline.stages import Phase, ReprogrammedTeacher, plan_phases
from tdmr_search.registry import Registry

__all__ = [
    "METHODS", "Method", "MethodInputs", "Targets", "TeacherSide", "FeatureSource", "teacher_features",
    "reprogram_teacher", "linear_probe",
]

logger = logging.getLogger(__name__)

#: Teacher passes over more images than this report their progress (``tdmr_search.progress``).
PASS_PROGRESS_IMAGES = 1000

#: ``features(split, images)``: the frozen teacher's pooled features of ``images`` behind the
#: static ``resize`` front end; ``split`` ('train', 'val', 'unlabeled', 'test') names them for a cache.
FeatureSource = Callable[[str, torch.Tensor], torch.Tensor]


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
class Targets:
    """What the student distils towards (None: not used), and what its teacher side reports.

    Attributes:
        z_train, logits_train: The teacher's proxy features and logits of the train images.
        z_unlabeled, logits_unlabeled: The same of the unlabelled images.
        classifier: Weights of the proxy classifier H that the student starts from.
        val_acc: The teacher side's validation accuracy.
        seconds: How long the teacher side took (None: it has none).
        cached: Whether the teacher side was read from the teacher cache.
        history: The teacher side's per-epoch metrics, when it trained now.
    """

    z_train: torch.Tensor | None = None
    logits_train: torch.Tensor | None = None
    z_unlabeled: torch.Tensor | None = None
    logits_unlabeled: torch.Tensor | None = None
    classifier: dict[str, torch.Tensor] | None = None
    val_acc: float | None = None
    seconds: float | None = None
    cached: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MethodInputs:
    """What a method's teacher side may use: the run's config, data, device and shared stage-1 sources.

    Attributes:
        features: The frozen teacher's features (computed, or read from the teacher cache).
        on_epoch_end: The run's callback, for a teacher side that trains for epochs.
        teacher_side: A stage-1 outcome to reuse (TDMR only).
        cache: A :class:`~tdmr_search.pipeline.cache.TeacherCache`, or None.
    """

    config: PipelineConfig
    data: TargetData
    runtime: Runtime
    features: FeatureSource
    on_epoch_end: EpochCallback = no_callback
    teacher_side: TeacherSide | None = None
    cache: Any = None


class Method:
    """What a method trains before the student, and what the student distils towards.

    A method registers under its name in :data:`METHODS` and overrides :meth:`teacher` and
    :meth:`phases`; one that trains no student (``trains_student = False``) overrides :meth:`evaluate`.
    """

    #: The ``stage`` of its student's epochs in metrics and callbacks.
    stage: str = ""
    #: False: the run hides the unlabelled pool from it (labels only).
    sees_pool: bool = True
    #: False: it trains no student; :meth:`evaluate` is the whole run.
    trains_student: bool = True

    def teacher(self, run: MethodInputs) -> Targets:
        """Train the teacher side and return what the student distils towards (nothing by default)."""
        return Targets()

    def phases(self, dcfg: DistillConfig) -> list[Phase]:
        """The student's training phases: loss weights, temperature, epochs."""
        raise NotImplementedError(f"method {type(self).__name__} trains a student, so it must define phases()")

    def evaluate(self, run: MethodInputs) -> dict[str, Any]:
        """The metrics of a method without a student: val_acc, test_acc, teacher_val_acc, flops, params."""
        raise NotImplementedError(f"method {type(self).__name__} trains no student, so it must define evaluate()")


#: The methods by name (``config.method``), each a :class:`Method`.
METHODS: Registry[Method] = Registry("method", METHOD_NAMES)


@METHODS.register("tdmr")
class Tdmr(Method):
    """Stage 1 reprograms the frozen teacher; the student distils its proxy features, then its logits."""

    stage = "distill"

    def teacher(self, run: MethodInputs) -> Targets:
        side = run.teacher_side
        if side is None and run.cache is not None:
            side = run.cache.get_or_compute(run.config, run.data)
        if side is None:
            side = reprogram_teacher(run.config, run.data, run.runtime, run.on_epoch_end, features=run.features)
        return Targets(
            z_train=side.z_train, logits_train=side.logits_train, z_unlabeled=side.z_unlabeled,
            logits_unlabeled=side.logits_unlabeled, classifier=side.state["classifier"], val_acc=side.val_acc,
            seconds=0.0 if side.cache_hit else side.seconds, cached=side.cache_hit,
            history=[] if side.cache_hit else side.history,
        )

    def phases(self, dcfg: DistillConfig) -> list[Phase]:
        return plan_phases(dcfg.n_stages, dcfg.epochs, dcfg.temperature, dcfg.temperature_schedule)


@METHODS.register("kd")
class Kd(Method):
    """A linear probe on the frozen teacher; the student distils its logits with cross-entropy (one phase)."""

    stage = "kd"

    def teacher(self, run: MethodInputs) -> Targets:
        start = time.perf_counter()
        data, put = run.data, run.runtime.put
        f_train = run.features("train", data.train.images)
        head = linear_probe(run.config, f_train, data.train.labels, data.num_classes, run.runtime)
        with torch.no_grad():
            logits = head(put(f_train)).float().cpu()
            val_acc = accuracy(head(put(run.features("val", data.val.images))).cpu(), data.val.labels)
            logits_u = None
            if len(data.unlabeled):  # the same views as TDMR distils on
                logits_u = head(put(run.features("unlabeled", data.unlabeled))).float().cpu()
        return Targets(logits_train=logits, logits_unlabeled=logits_u, val_acc=val_acc,
                       seconds=time.perf_counter() - start)

    def phases(self, dcfg: DistillConfig) -> list[Phase]:
        return [Phase(0, dcfg.epochs, 0.0, 1.0, 1.0, dcfg.temperature, True)]


@METHODS.register("scratch")
class Scratch(Method):
    """No teacher: the student learns from the labels alone; the unlabelled pool is not shown to it."""

    stage = "scratch"
    sees_pool = False

    def phases(self, dcfg: DistillConfig) -> list[Phase]:
        return [Phase(0, dcfg.epochs, 0.0, 0.0, 1.0, 1.0, True)]


@METHODS.register("probe")
class Probe(Method):
    """No student: a linear head on the frozen teacher's features is the model."""

    stage = "probe"
    trains_student = False

    def evaluate(self, run: MethodInputs) -> dict[str, Any]:
        config, data, runtime = run.config, run.data, run.runtime
        head = linear_probe(config, run.features("train", data.train.images), data.train.labels, data.num_classes,
                            runtime)
        val_acc = accuracy(head(runtime.put(run.features("val", data.val.images))).cpu(), data.val.labels)
        test_acc = accuracy(head(runtime.put(run.features("test", data.test.images))).cpu(), data.test.labels)
        size = config.teacher.input_size or build_teacher(config.teacher).input_size
        flops, params = count_flops(  # the teacher with a K-class linear head is the probe
            lambda: create_timm(config.teacher.name, "teacher.name", img_size=config.teacher.input_size,
                                pretrained=False, num_classes=data.num_classes),
            (1, 3, size, size),
        )
        return {"val_acc": val_acc, "test_acc": test_acc, "teacher_val_acc": val_acc, "flops": flops,
                "params": params}


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


def _probe_features(teacher: FrozenTeacher, images: torch.Tensor, runtime: Runtime,
                    label: str | None = None) -> torch.Tensor:
    """The frozen teacher's pooled features of ``images`` behind the ``resize`` front end."""
    transform = runtime.module(build_transform("resize", teacher.input_size, teacher.mean, teacher.std))
    return infer(lambda x: teacher(transform(x)), images, runtime, label=label)


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


def linear_probe(config: PipelineConfig, feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
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
