"""Pruning: the same search with the default pruner (``auto``) and with none, over sampler seeds.

Per sampler seed, two real studies on the demo space through ``run_search`` (what ``tdmr-search
run`` runs), with the same TPE sampler and seed and the same number of trials; one uses
``--pruner auto`` (or ``--pruner NAME``), the other ``--pruner none``. Re-evaluation is off in
both (the pick is each study's best single trial). Both share one teacher cache (same study name, two stores
side by side), so stage 1 is computed at most once per stage-1 setting across the two; that is why
the cost compared is stage-2 epochs, not wall time: a trial's trained stage-2 epochs are the
length of its intermediate values (one report per epoch).

Read with care: once a trial is pruned, TPE sees a different history, so from then on the two
studies do not sample the same configurations (their first ``n_startup_trials`` = 5 random trials
are the same). Validation accuracy is measured on the demo's 50 validation images: one image is
2 points, so "within 1 point" means equal or better.

It also prints, over the unpruned studies' trials, the rank (Spearman) correlation with the final
*test* accuracy of the pruning signal (``signal_curve``: agreement with the reference teacher on
the pool) and of the validation accuracy after a third of the schedule (test accuracy is read by
this benchmark only, never by the search).

Goals (the issue): at least half of the stage-2 epochs saved, the pruned study's pick within 1
test point of the unpruned study's pick (mean over seeds), the signal's rank correlation at a
third of the schedule with the final test accuracy at least 0.8.

    python benchmarks/pruning.py [--quick] [--trials 32] [--seeds 0,1,2] [--pruner auto]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, parser, setup, stamp, table, verdict, write_json

GOAL_SAVED = 0.5
GOAL_ACC_POINTS = 1.0


def run_study(space: str, pruner: str, n_trials: int, seed: int, folder: Path) -> dict[str, Any]:
    from optuna.trial import TrialState

    from tdmr_search.search.settings import SearchSettings
    from tdmr_search.search.storage import load_study
    from tdmr_search.search.study import run_search

    url = f"sqlite:///{folder / f'{pruner}-{seed}.db'}"
    t0 = time.perf_counter()
    # artifacts in folder/<pruner>-artifacts: the teacher cache goes to folder/pruning-cache for every study
    run_search(SearchSettings(space, "pruning", str(n_trials), storage=url, sampler="tpe", pruner=pruner, seed=seed,
                              artifacts=str(folder / f"{pruner}-{seed}-artifacts"), progress=False, baselines=False,
                              teacher_cache=True, reevaluate=0))
    wall = time.perf_counter() - t0
    study = load_study("pruning", url)
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number, "state": t.state.name, "params": t.params,
            "stage2_epochs": len(t.intermediate_values),
            "curve": list(t.user_attrs.get("val_curve") or []),
            "signal": list(t.user_attrs.get("signal_curve") or []),
            "last_val_acc": (t.user_attrs.get("val_curve") or [None])[-1],
            "val_acc": t.user_attrs.get("val_acc"), "test_acc": t.user_attrs.get("test_acc"),
            "teacher_cached": t.user_attrs.get("teacher_cached"), "seconds": t.user_attrs.get("seconds"),
            "failure_reason": t.user_attrs.get("failure_reason"),
        })
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {
        "pruner": pruner, "wall_seconds": wall, "trials": trials,
        "epochs": sum(t["stage2_epochs"] for t in trials),
        "counts": {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")},
        "best_val_acc": best.value if best else None, "best_trial": best.number if best else None,
        "best_test_acc": best.user_attrs.get("test_acc") if best else None,
    }


def rank_correlations(trials: list[dict[str, Any]], steps: list[int], curve: str = "curve",
                      final: str | None = None) -> dict[int, float | None]:
    """Spearman correlation, over complete trials, of ``curve`` after ``step`` with the final value.

    The final value is the curve's own last one, or the trial's ``final`` key (e.g. test_acc). How
    well an early value predicts the final ranking is what decides whether stopping at that step
    is safe; measured on the studies without a pruner, where every trial runs to the end.
    """
    from scipy.stats import spearmanr

    full = [(t[curve], t[final] if final else t[curve][-1]) for t in trials
            if t["state"] == "COMPLETE" and t[curve] and (final is None or t.get(final) is not None)]
    out: dict[int, float | None] = {}
    for step in steps:
        pairs = [(c[step], f) for c, f in full if len(c) > step]
        rho = spearmanr(*zip(*pairs, strict=True)).correlation if len(pairs) > 2 else float("nan")
        out[step] = None if rho != rho else float(rho)
    return out


def main() -> None:
    p = parser("pruning", __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 32; --quick: 6)")
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--seeds", default="0,1,2", help="sampler seeds: one pruned and one unpruned study each")
    p.add_argument("--pruner", default="auto", help="the pruner compared with none (default auto)")
    args = p.parse_args()
    setup(args)
    n_trials = args.trials or (6 if args.quick else 32)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]

    from tdmr_search.search.pruning import choose_pruner
    from tdmr_search.search.space import load_space

    max_epochs = load_space(args.space).base.distill.epochs
    pruner = choose_pruner(args.pruner, n_trials)[0]
    folder = Path(tempfile.mkdtemp(prefix="tdmr-bench-pruning-"))
    results: dict[int, dict[str, Any]] = {}
    try:
        for seed in seeds:
            results[seed] = {}
            for name in ("none", pruner):  # none first: its trials fill the shared cache the other reuses
                print(f"seed {seed}, pruner {name}: {n_trials} trials ...", flush=True)
                r = results[seed][name] = run_study(args.space, name, n_trials, seed, folder)
                print(f"  {r['counts']}, {r['epochs']} stage-2 epochs, pick val_acc {r['best_val_acc']}, test_acc "
                      f"{r['best_test_acc']}, {r['wall_seconds']:.0f}s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows, saved_all, test_diffs = [], [], []
    for seed, pair in results.items():
        none, pr = pair["none"], pair[pruner]
        saved = 1.0 - pr["epochs"] / none["epochs"] if none["epochs"] else float("nan")
        diff = 100.0 * ((pr["best_test_acc"] or 0.0) - (none["best_test_acc"] or 0.0))
        saved_all.append(saved)
        test_diffs.append(diff)
        for r in (none, pr):
            rows.append([seed, r["pruner"], r["counts"]["COMPLETE"], r["counts"]["PRUNED"], r["counts"]["FAIL"],
                         r["epochs"], n_trials * max_epochs,
                         f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-",
                         f"{r['best_test_acc']:.4f}" if r["best_test_acc"] is not None else "-",
                         f"{r['wall_seconds']:.0f}"])
    saved = sum(saved_all) / len(saved_all)
    diff = sum(test_diffs) / len(test_diffs)
    third = max(0, round(max_epochs / 3) - 1)
    unpruned = [t for pair in results.values() for t in pair["none"]["trials"]]
    rho_signal = rank_correlations(unpruned, [third], "signal", "test_acc")[third]
    rho_val = rank_correlations(unpruned, [third], "curve", "test_acc")[third]
    goals = {"epochs_saved>=0.5": saved >= GOAL_SAVED, "pick_test_acc_within_1pt": diff >= -GOAL_ACC_POINTS,
             "signal_rank_corr>=0.8": rho_signal is not None and rho_signal >= 0.8}
    print()
    print(table(rows, ["seed", "pruner", "complete", "pruned", "failed", "stage-2 epochs", "of max", "pick val_acc",
                       "pick test_acc", "wall s"]))
    print()
    print(f"stage-2 epochs saved ({pruner} vs none, mean over {len(seeds)} seeds) = {100 * saved:.1f}%  "
          f"goal >= {100 * GOAL_SAVED:.0f}%: {verdict(goals['epochs_saved>=0.5'])}")
    print(f"pick test_acc, {pruner} - none = {diff:+.1f} points (mean over seeds)  goal >= -{GOAL_ACC_POINTS:.0f}: "
          f"{verdict(goals['pick_test_acc_within_1pt'])}")
    fmt = lambda r: "-" if r is None else f"{r:+.2f}"  # noqa: E731
    print(f"rank correlation with the final test accuracy after epoch {third + 1} of {max_epochs} "
          f"(unpruned trials): pruning signal {fmt(rho_signal)}, val accuracy {fmt(rho_val)}  "
          f"goal signal >= 0.8: {verdict(goals['signal_rank_corr>=0.8'])}")
    payload = {
        **stamp(), "benchmark": "pruning", "space": args.space, "trials_per_study": n_trials, "seeds": seeds,
        "pruner": pruner, "max_stage2_epochs_per_trial": max_epochs, "epochs_saved_share": saved,
        "pick_test_acc_diff_points": diff, "spearman_at_third": {"signal": rho_signal, "val_acc": rho_val},
        "goals": {"min_saved": GOAL_SAVED, "max_acc_loss_points": GOAL_ACC_POINTS, "met": goals},
        "studies": {str(k): v for k, v in results.items()},
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
