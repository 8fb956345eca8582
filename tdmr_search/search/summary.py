"""What a search says: a line per finished trial, the run's closing summary, and ``tdmr-search status``.

All three format the same records (:mod:`tdmr_search.search.record`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search import progress
from tdmr_search.config import format_flops
from tdmr_search.search.budget import fmt_seconds
from tdmr_search.search.objective import KEEP_WEIGHTS
from tdmr_search.search.record import BASELINE_METHODS, TrialRecord, baseline_results, describe, number, trials_table
from tdmr_search.search.reevaluate import pick, reevaluation
from tdmr_search.search.secrets import redact
from tdmr_search.search.storage import default_storage, load_study

__all__ = ["TrialLine", "summary", "study_status"]

logger = logging.getLogger(__name__)


class TrialLine:
    """Logs one line per finished trial (number, state, value, best so far, student, seconds, budget left)
    and reports the budget to :mod:`tdmr_search.progress` (the command line's status line)."""

    def __init__(self, n_trials: int | None, timeout: float | None) -> None:
        self.start = time.monotonic()
        self.n_trials = n_trials
        self.timeout = timeout
        if timeout is not None:
            progress.budget(0.0, timeout, "seconds")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        elapsed = time.monotonic() - self.start
        done = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
        r = TrialRecord.from_trial(trial)
        value = "-" if trial.values is None else " ".join(f"{v:.4f}" for v in trial.values)
        if trial.state == TrialState.PRUNED and r.val_curve:  # its value is the pruning signal, not an accuracy
            value = f"{r.val_curve[-1]:.4f} at epoch {len(r.val_curve)}"
        try:
            best = f"best {study.best_value:.4f} (trial {study.best_trial.number})" if len(study.directions) == 1 else \
                f"{len(study.best_trials)} on the Pareto front"
        except ValueError:
            best = "no finished trial yet"
        student = r.student if r.config.get("student") else "-"
        seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
        left = ""
        if self.timeout is not None:
            left = f", {fmt_seconds(self.timeout - elapsed)} left"
        elif self.n_trials is not None:
            left = f", {max(0, self.n_trials - done)} trials left"
        reason = r.failure_reason
        logger.info("trial %d %s %s%s | %s | %s | %.1fs | %d finished, %s elapsed%s", trial.number, trial.state.name,
                    value, f" ({reason})" if reason else "", best, student, seconds, done, fmt_seconds(elapsed), left)
        if self.timeout is not None:
            progress.budget(elapsed, self.timeout, "seconds", f"{done} finished | {best}")
        elif self.n_trials is not None:
            progress.budget(done, self.n_trials, "trials", best)


def summary(study: optuna.Study, url: str, store_dir: Path) -> str:
    """What ``run`` prints at the end: the pick, where things are and what to do next."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    counts["INTERRUPTED"] = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get("interrupted")) for t in trials)
    counts["FAIL"] -= counts["INTERRUPTED"]  # stopped by a signal or the deadline: not the trial's own failure
    lines = [f"study {study.study_name!r}: " + (", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c)
                                                or "no trials")]
    try:
        if len(study.directions) == 1:
            best = pick(study)
            lines.append(describe(best))
            record = reevaluation(study)
            if best.number in record:
                r = record[best.number]
                lines.append(f"  picked by the mean validation accuracy over {len(r['val_acc_seeds'])} folds of the "
                             f"labelled images: {r['val_acc_mean']:.4f} +- {r['val_acc_std']:.4f} "
                             f"({', '.join(f'{v:.3f}' for v in r['val_acc_seeds'])})")
                for n, other in sorted(record.items(), key=lambda kv: -kv[1]["val_acc_mean"]):
                    if n != best.number:
                        lines.append(f"  re-evaluated trial {n}: {other['val_acc_mean']:.4f} +- {other['val_acc_std']:.4f}"
                                     f" over {len(other['val_acc_seeds'])} folds (single run {other['val_acc_seeds'][0]:.4f})")
            base = baseline_results(study)
            for method in BASELINE_METHODS:
                if "test_acc" in base.get(method, {}):
                    b = base[method]
                    lines.append(f"  baseline {method:<7} val_acc {b['val_acc']:.4f}  test_acc {b['test_acc']:.4f}  "
                                 f"(TDMR gains {100 * (best.user_attrs['test_acc'] - b['test_acc']):+.1f} test points)")
        else:
            lines.append(f"Pareto front: {len(study.best_trials)} trials")
            lines += ["  " + describe(t) for t in study.best_trials]
    except ValueError:
        lines.append("no trial has finished yet")
    safe = redact(url)
    storage_flag = "" if url == default_storage(study.study_name) else f" --storage '{safe}'"
    lines += [
        f"study store: {safe}",
        f"student weights (best {KEEP_WEIGHTS}): {store_dir}",
        f"inspect: optuna-dashboard {safe} --artifact-dir {store_dir}",
        f"export:  tdmr-search export --study {study.study_name}{storage_flag} --best --out exports/{study.study_name}",
        f"report:  tdmr-search report --study {study.study_name}{storage_flag} --out {study.study_name}.html",
    ]
    return "\n".join(lines)


def _num(value: object, fmt: str) -> str:
    v = number(value)
    return "-" if v is None else format(v, fmt)


def study_status(study_name: str, storage: str | None) -> str:
    """A table of the study's trials, for ``tdmr-search status``."""
    study = load_study(study_name, storage)
    rows = [f"{'#':>4} {'state':<9} {'val_acc':>8} {'test_acc':>8} {'flops':>8} {'student':<30} {'transform':<10} "
            f"{'proxy':>5} {'stg':>3} {'T':>5} {'secs':>7}  note"]
    for row in trials_table(study):
        r = row.record
        rp, ds = r.section("reprogram"), r.section("distill")
        rows.append(
            f"{r.number:>4} {r.state:<9} {_num(r.shown_val_acc, '.4f'):>8} {_num(r.test_acc, '.4f'):>8} "
            f"{format_flops(r.flops) if r.flops else '-':>8} "
            f"{r.student:<30} {str(rp.get('transform', '-')):<10} "
            f"{str(rp.get('proxy_dim', '-')):>5} {str(ds.get('n_stages', '-')):>3} {_num(ds.get('temperature'), '.2f'):>5} "
            f"{_num(r.seconds.get('total'), '.1f'):>7}  {row.note}"
        )
    base = baseline_results(study)
    for method in BASELINE_METHODS:
        if "test_acc" in base.get(method, {}):
            rows.append(f"baseline {method}: val_acc {base[method]['val_acc']:.4f} test_acc {base[method]['test_acc']:.4f}")
    cap = study.user_attrs.get("max_flops_text")
    rows.insert(0, f"study {study_name!r} (space {study.user_attrs.get('space_name', '?')}, FLOPs cap {cap or 'none'}, "
                   f"{len(study.get_trials(deepcopy=False))} trials)")
    return "\n".join(rows)
