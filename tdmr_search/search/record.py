"""One trial record: what a trial writes to the study store, and one table of trials read from it.

The objective writes a trial's user attrs (:meth:`TrialRecord.to_user_attrs` for its results); the
commands that read them (``status``, the run's summary, the report, ``export``, the model card)
go through :meth:`TrialRecord.from_trial` and :func:`trials_table`, never through the raw strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.config import format_flops
from tdmr_search.search.reevaluate import pick, reevaluation

__all__ = ["TrialRecord", "TrialRow", "trials_table", "baseline_results", "number", "BASELINE_METHODS"]

#: The baselines run for the pick after a search, in the order they are shown.
BASELINE_METHODS = ("scratch", "kd")


def number(value: Any) -> float | None:
    """A finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class TrialRecord:
    """A trial of a tdmr-search study, as its user attrs hold it.

    ``val_acc`` is the objective (the student's validation accuracy), ``test_acc`` is recorded and
    never used to choose; the intermediate values are the pruning signal, whose per-epoch values
    are ``signal_curve`` (``val_curve`` holds the validation accuracies beside them).
    """

    number: int
    state: str = "RUNNING"
    config: dict[str, Any] = field(default_factory=dict)
    val_acc: float | None = None
    test_acc: float | None = None
    teacher_val_acc: float | None = None
    teacher_cached: bool | None = None
    flops: float | None = None
    params: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] | None = None
    data: dict[str, Any] | None = None
    deployed: dict[str, Any] | None = None
    val_curve: list[float] = field(default_factory=list)
    signal_curve: list[float] = field(default_factory=list)
    failure_reason: str | None = None
    interrupted: bool = False
    pruned_at_epoch: int | None = None
    weights_artifact_id: str | None = None
    tdmr_search_version: str | None = None
    last_step: int | None = None
    """The last step with an intermediate value (the last stage-2 epoch reported)."""

    #: The results the objective writes once a trial's pipeline has finished, in this order.
    RESULTS = ("val_acc", "test_acc", "teacher_val_acc", "teacher_cached", "history", "data", "seconds", "deployed",
               "tdmr_search_version")

    @classmethod
    def from_trial(cls, t: FrozenTrial) -> TrialRecord:
        """The record of a stored trial (any state; an adopted study's own trials have few attrs)."""
        a = t.user_attrs
        return cls(
            number=t.number, state=t.state.name, config=dict(a.get("config") or {}),
            val_acc=a.get("val_acc"), test_acc=a.get("test_acc"), teacher_val_acc=a.get("teacher_val_acc"),
            teacher_cached=a.get("teacher_cached"), flops=a.get("flops"), params=a.get("params"),
            seconds=dict(a.get("seconds") or {}), history=a.get("history"), data=a.get("data"),
            deployed=a.get("deployed"), val_curve=list(a.get("val_curve") or []),
            signal_curve=list(a.get("signal_curve") or []), failure_reason=a.get("failure_reason"),
            interrupted=bool(a.get("interrupted")), pruned_at_epoch=a.get("pruned_at_epoch"),
            weights_artifact_id=a.get("weights_artifact_id"), tdmr_search_version=a.get("tdmr_search_version"),
            last_step=max(t.intermediate_values) if t.intermediate_values else None,
        )

    def to_user_attrs(self) -> dict[str, Any]:
        """The results part of the record (:attr:`RESULTS`), as the objective writes them."""
        return {key: getattr(self, key) for key in self.RESULTS}

    def section(self, name: str) -> dict[str, Any]:
        """One section of the resolved config ('student', 'reprogram', 'distill', 'teacher', 'data')."""
        return dict(self.config.get(name) or {})

    @property
    def student(self) -> str:
        """``name@resolution`` of the student ('-' when the trial has no config)."""
        st = self.section("student")
        return f"{st.get('name', '-')}@{st.get('resolution', '-')}"

    @property
    def shown_val_acc(self) -> float | None:
        """The validation accuracy to show: a pruned trial's last one (its value is the signal)."""
        if self.state == TrialState.PRUNED.name:
            return self.val_curve[-1] if self.val_curve else None
        return self.val_acc


@dataclass(frozen=True)
class TrialRow:
    """A row of the trials table: the record, and what the study says about it."""

    record: TrialRecord
    trial: FrozenTrial
    note: str
    picked: bool = False
    reevaluated: dict[str, Any] | None = None


def trials_table(study: optuna.Study) -> list[TrialRow]:
    """Every trial of ``study`` with its note (failure, cached teacher, pruned, re-evaluation); pure."""
    record = reevaluation(study) if len(study.directions) == 1 else {}
    try:
        picked = pick(study).number if record else None
    except ValueError:
        picked = None
    rows = []
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.from_trial(t)
        note = r.failure_reason or ("cached teacher" if r.teacher_cached else "")
        if t.state == TrialState.PRUNED:
            note = f"pruned at epoch {r.last_step + 1 if r.last_step is not None else '?'}"
        reev = record.get(t.number)
        if reev is not None:
            note = (f"{'PICK ' if picked == t.number else ''}mean {reev['val_acc_mean']:.4f} +- "
                    f"{reev['val_acc_std']:.4f} over {len(reev['val_acc_seeds'])} folds; {note}").rstrip("; ")
        rows.append(TrialRow(r, t, note, picked == t.number, reev))
    return rows


def baseline_results(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """The baselines run for the study's pick: method -> results (empty when none ran)."""
    attrs = study.user_attrs
    return dict((attrs.get("baselines") or {}).get(attrs.get("baselines_for_best") or "", {}))


def describe(t: FrozenTrial) -> str:
    """One line on a trial: accuracies, FLOPs and its main choices."""
    r = TrialRecord.from_trial(t)
    st, rp, ds = r.section("student"), r.section("reprogram"), r.section("distill")
    nan = float("nan")
    return (f"best trial {t.number}: val_acc {r.val_acc if r.val_acc is not None else nan:.4f}  "
            f"test_acc {r.test_acc if r.test_acc is not None else nan:.4f}  "
            f"flops {format_flops(r.flops or 0)}  student {st.get('name')}@{st.get('resolution')}  "
            f"transform {rp.get('transform')}  proxy_dim {rp.get('proxy_dim')}  stages {ds.get('n_stages')}  "
            f"T {ds.get('temperature', 0):.3g}")
