"""The Optuna objective: sample a config, gate its FLOPs, run the pipeline, record everything."""

from __future__ import annotations

import gc
import logging
import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import optuna
import torch

from tdmr_search import progress
from tdmr_search.config import PipelineConfig
from tdmr_search.data import TargetData
from tdmr_search.deploy import MODEL_FILE, deployed_record
from tdmr_search.errors import DiskError, Interrupted, TdmrError, TrialFailed
from tdmr_search.fsio import disk_error, is_disk_error
from tdmr_search.pipeline.run import Reference, deployed_cost, reference_labels, run_pipeline
from tdmr_search.search.pruning import SIGNAL_NO_POOL, pruning_signal
from tdmr_search.search.record import TrialRecord
from tdmr_search.search.space import STUDENT_PARAM, SearchSpace, StudentChoice
from tdmr_search.version import __version__

__all__ = ["Objective", "sample_overrides"]

logger = logging.getLogger(__name__)

#: How many finished trials keep their student weights in the artifact store.
KEEP_WEIGHTS = 3


def sample_overrides(trial: optuna.Trial, space: SearchSpace, students: list[StudentChoice]) -> dict[str, Any]:
    """Sample every active parameter of ``space`` and the student; return dotted overrides."""
    sampled: dict[str, Any] = {}
    for p in space.params:
        if not p.active(sampled):
            continue
        if p.type == "categorical":
            sampled[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.type == "int":
            sampled[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log,
                                                step=int(p.step) if p.step and not p.log else 1)
        else:
            sampled[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log,
                                                  step=None if p.log else p.step)
    key = trial.suggest_categorical(STUDENT_PARAM, [c.key for c in students])
    name, _, res = key.rpartition("@")
    sampled["student.name"] = name
    sampled["student.resolution"] = int(res)
    return sampled


class Objective:
    """Callable objective over a search space with the target data already loaded.

    Args:
        space: The search space.
        students: The feasible student choices (the FLOPs gate's output).
        data: The target data, shared by every trial of this process.
        artifact_store: Where student weights go (None: not stored).
        two_objective: Return (val_acc, flops) instead of val_acc.
        teacher_cache: Optional cache of stage-1 outcomes (``get_or_compute``).
        stop: Called before the trial and after every epoch: a reason to stop (a signal arrived, the
            deadline passed) closes the trial as failed with ``interrupted`` and raises
            :class:`Interrupted`; None goes on.
        store_dir: The artifact store's folder, named when it cannot be written.
    """

    def __init__(self, space: SearchSpace, students: list[StudentChoice], data: TargetData,
                 artifact_store: Any = None, two_objective: bool = False, teacher_cache: Any = None,
                 stop: Callable[[], str | None] | None = None, store_dir: Any = None) -> None:
        self.space = space
        self.students = students
        self.data = data
        self.artifact_store = artifact_store
        self.two_objective = two_objective
        self.teacher_cache = teacher_cache
        self.stop = stop or (lambda: None)
        self.store_dir = store_dir
        self._reference: list[Reference | None] = []

    @property
    def reference(self) -> Reference | None:
        """The fixed reference of the pruning signal (None without a pool), computed once per process.

        It depends only on the space's base config and the data (the linear probe on the frozen
        teacher's cached features), so every trial and worker of the study shares it.
        """
        if not self._reference:
            self._reference.append(reference_labels(self.space.base, self.data, self.teacher_cache))
        return self._reference[0]

    @property
    def signal(self) -> str:
        """What the intermediate values of this study's trials are."""
        return self.reference.description if self.reference is not None else SIGNAL_NO_POOL

    def _check_stop(self) -> None:
        why = self.stop()
        if why:
            raise Interrupted(why)

    def config_for(self, trial: optuna.Trial) -> PipelineConfig:
        """The resolved config of ``trial``."""
        overrides = sample_overrides(trial, self.space, self.students)
        cap = self.space.raw.get("max_flops")
        return self.space.base.replace({**overrides, "method": "tdmr", "max_flops": None if cap is None else str(cap)})

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        record = getattr(trial.study.sampler, "record", None) if hasattr(trial, "study") else None
        if record is not None:
            record(trial)
        try:
            self._check_stop()
            config = self.config_for(trial)
            trial.set_user_attr("config", config.to_dict())
            data = self.data
            flops, params = deployed_cost(config.replace({"max_flops": None}), data.channels, data.image_size,
                                          data.num_classes)
            cap = self.space.max_flops
            trial.set_user_attr("flops", flops)
            trial.set_user_attr("params", params)
            if cap is not None:
                trial.set_constraint("flops_over_cap", (flops - cap) / cap)
                if flops > cap:  # cannot happen with the gated choices; kept as a last check
                    raise TrialFailed(f"the student costs {flops:.0f} FLOPs, over the cap {cap:.0f}")
            gate_seconds = time.perf_counter() - start
            result = run_pipeline(config, self._callback(trial), data=data,
                                  teacher_side=self._teacher_side(config, data, trial), reference=self.reference)
        except optuna.TrialPruned:
            raise
        except (Interrupted, KeyboardInterrupt) as err:  # Optuna closes the trial as failed; it stops the run
            trial.set_user_attr("failure_reason", str(err) if isinstance(err, Interrupted) else "interrupted")
            trial.set_user_attr("interrupted", True)  # not counted toward a trial budget
            logger.warning("trial %d %s", trial.number, trial.user_attrs["failure_reason"])
            raise
        except DiskError as err:
            self._fail(trial, str(err), DiskError)
        except TdmrError as err:
            self._fail(trial, str(err))
        except torch.cuda.OutOfMemoryError as err:
            self._fail(trial, f"CUDA out of memory: {str(err).splitlines()[0]}")
        except Exception as err:  # a bug or an unexpected library error: recorded, the study goes on
            if is_disk_error(err):  # the disk's fault, not the trial's: every next trial would fail alike
                where = getattr(err, "filename", None) or self._where_written()
                self._fail(trial, str(disk_error(err, where, "file", "free space, or choose other --artifacts "
                                                 "and --storage locations")), DiskError)
            logger.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
            self._fail(trial, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        m = result.metrics
        seconds = dict(m["seconds"], gate=gate_seconds, total=time.perf_counter() - start)
        record = TrialRecord(
            trial.number, val_acc=m.get("val_acc"), test_acc=m.get("test_acc"),
            teacher_val_acc=m.get("teacher_val_acc"), teacher_cached=m.get("teacher_cached"),
            history=m.get("history"), data=m.get("data"), seconds={k: round(v, 3) for k, v in seconds.items()},
            deployed=deployed_record(config, data),
            tdmr_search_version=__version__,
        )
        for key, value in record.to_user_attrs().items():
            trial.set_user_attr(key, value)
        if self.artifact_store is not None and result.model is not None:
            try:
                self._upload(trial, result.model)
            except DiskError as err:
                self._fail(trial, str(err), DiskError)
            except OSError as err:
                if not is_disk_error(err):
                    raise
                self._fail(trial, str(disk_error(err, self.store_dir or "artifact store", "artifact store folder",
                                                 "free space, or choose another --artifacts folder")), DiskError)
        val = float(m["val_acc"])
        if not math.isfinite(val):
            self._fail(trial, "validation accuracy is not a number")
        return (val, float(flops)) if self.two_objective else val

    def _teacher_side(self, config: PipelineConfig, data: TargetData, trial: optuna.Trial) -> Any:
        if self.teacher_cache is None:
            return None
        side = self.teacher_cache.get_or_compute(config, data)
        # recorded now, so a trial pruned during stage 2 still says where its teacher side came from
        trial.set_user_attr("teacher_cached", bool(side.cache_hit))
        trial.set_user_attr("seconds", {"stage1": 0.0 if side.cache_hit else round(side.seconds, 3)})
        return side

    def _callback(self, trial: optuna.Trial):  # noqa: ANN202
        curve: list[float] = []
        signal: list[float] = []
        stage1: dict[str, float] = {}

        def on_epoch_end(step: int, metrics: dict) -> None:
            _report_epoch(trial, metrics)
            self._check_stop()  # between epochs: a signal or the deadline stops the trial here
            if metrics.get("stage") == "reprogram":  # stage 1 ran here (no cache)
                stage1["stage1"] = round(metrics["seconds"], 3)
            if metrics.get("stage") != "distill":
                return
            curve.append(float(metrics["val_acc"]))
            trial.set_user_attr("val_curve", curve)
            signal.append(pruning_signal(metrics))
            trial.set_user_attr("signal_curve", signal)
            if self.two_objective:
                return  # Optuna prunes single-objective studies only
            trial.report(signal[-1], step)  # the low-noise signal; val_acc stays the objective
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", step)
                seconds = {**stage1, **(trial.user_attrs.get("seconds") or {}), "stage2": round(metrics["seconds"], 3)}
                trial.set_user_attr("seconds", seconds)
                raise optuna.TrialPruned(f"pruned after stage-2 epoch {step + 1} at signal {signal[-1]:.4f} "
                                         f"(val_acc {metrics['val_acc']:.4f})")

        return on_epoch_end

    def _where_written(self) -> str:
        cache = getattr(self.teacher_cache, "folder", None)
        places = [str(p) for p in (self.store_dir, cache) if p is not None]
        return " or ".join(places) or "a file of the trial"

    def _fail(self, trial: optuna.Trial, reason: str, error: type[TdmrError] = TrialFailed) -> None:
        from tdmr_search.search.secrets import redact

        reason = redact(" ".join(reason.split()))
        try:
            trial.set_user_attr("failure_reason", reason)
        except Exception:  # noqa: BLE001 - the store itself may be what is full; the reason still reaches the user
            if error is TrialFailed:
                raise
        logger.warning("trial %d failed: %s", trial.number, reason)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise error(reason)

    def _upload(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
        from optuna.artifacts import upload_artifact

        from tdmr_search.deploy import save_weights

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"trial-{trial.number}-{MODEL_FILE}")
            save_weights(model, path)
            artifact_id = upload_artifact(artifact_store=self.artifact_store, file_path=path, study_or_trial=trial,
                                          mimetype="application/octet-stream")
        trial.set_user_attr("weights_artifact_id", artifact_id)


def _report_epoch(trial: optuna.Trial, metrics: dict) -> None:
    """Tell the status line which trial runs and where it is (stage and epoch)."""
    cfg = trial.user_attrs.get("config") or {}
    stage = metrics.get("stage", "")
    epochs = (cfg.get("reprogram" if stage == "reprogram" else "distill") or {}).get("epochs")
    name = "stage 1" if stage == "reprogram" else stage
    st = cfg.get("student") or {}
    progress.task(f"trial {trial.number} ({st.get('name', '?')}@{st.get('resolution', '?')})",
                  int(metrics.get("epoch", 0)) + 1, epochs, f"{name} epochs")
