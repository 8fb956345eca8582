"""Pruning: the same search with the default pruner (Hyperband) and with none.

Two real studies on the demo space through ``run_search`` (what ``tdmr-search run`` runs), with the
same TPE sampler and seed and the same number of trials; one uses ``--pruner hyperband`` (the
default), the other ``--pruner none``. Both share one teacher cache (same study name, two stores
side by side), so stage 1 is computed at most once per stage-1 setting across the two; that is why
the cost compared is stage-2 epochs, not wall time: a trial's trained stage-2 epochs are the
length of its intermediate values (one report per epoch).

Read with care: once a trial is pruned, TPE sees a different history, so from then on the two
studies do not sample the same configurations (their first ``n_startup_trials`` = 5 random trials
are the same). Validation accuracy is measured on the demo's 50 validation images: one image is
2 points, so "within 1 point" means equal or better.

Goals (the issue): at least half of the stage-2 epochs saved, best validation accuracy within 1 point.

    python benchmarks/pruning.py [--quick] [--trials 16] [--out benchmarks/results/pruning.json]
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

    from tdmr_search.search.study import load_study, run_search

    url = f"sqlite:///{folder / f'{pruner}.db'}"
    t0 = time.perf_counter()
    # artifacts in folder/<pruner>-artifacts: the teacher cache goes to folder/pruning-cache for both
    run_search(space, "pruning", url, str(n_trials), sampler="tpe", pruner=pruner, seed=seed,
               artifacts=str(folder / f"{pruner}-artifacts"), progress=False, baselines=False, teacher_cache=True)
    wall = time.perf_counter() - t0
    study = load_study("pruning", url)
    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({
            "number": t.number, "state": t.state.name, "params": t.params,
            "stage2_epochs": len(t.intermediate_values),
            "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            "last_val_acc": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
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


def rank_correlations(trials: list[dict[str, Any]], steps: list[int]) -> dict[int, float | None]:
    """Spearman correlation, over complete trials, of the val accuracy after ``step`` with the final one.

    How well an early value predicts the final ranking is what decides whether stopping at that
    step is safe; measured on the study without a pruner, where every trial runs to the end.
    """
    from scipy.stats import spearmanr

    full = [t["curve"] for t in trials if t["state"] == "COMPLETE" and t["curve"]]
    out: dict[int, float | None] = {}
    for step in steps:
        pairs = [(c[step], c[-1]) for c in full if len(c) > step]
        rho = spearmanr(*zip(*pairs, strict=True)).correlation if len(pairs) > 2 else float("nan")
        out[step] = None if rho != rho else float(rho)
    return out


def main() -> None:
    p = parser("pruning", __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 16; --quick: 6)")
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--seed", type=int, default=0, help="the sampler seed of both studies")
    args = p.parse_args()
    setup(args)
    n_trials = args.trials or (6 if args.quick else 16)

    from tdmr_search.search.space import load_space

    max_epochs = load_space(args.space).base.distill.epochs
    folder = Path(tempfile.mkdtemp(prefix="tdmr-bench-pruning-"))
    try:
        results = {}
        for pruner in ("none", "hyperband"):  # none first: its trials fill the shared cache the other reuses
            print(f"study with pruner {pruner}: {n_trials} trials ...", flush=True)
            results[pruner] = run_study(args.space, pruner, n_trials, args.seed, folder)
            r = results[pruner]
            print(f"  {r['counts']}, {r['epochs']} stage-2 epochs, best val_acc {r['best_val_acc']}, "
                  f"{r['wall_seconds']:.0f}s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    none, hb = results["none"], results["hyperband"]
    saved = 1.0 - hb["epochs"] / none["epochs"] if none["epochs"] else float("nan")
    diff = 100.0 * ((hb["best_val_acc"] or 0.0) - (none["best_val_acc"] or 0.0))
    same_first = sum(a["params"] == b["params"] for a, b in zip(none["trials"], hb["trials"], strict=False))
    goals = {"epochs_saved>=0.5": saved >= GOAL_SAVED, "best_val_acc_within_1pt": diff >= -GOAL_ACC_POINTS}
    rows = [[r["pruner"], r["counts"]["COMPLETE"], r["counts"]["PRUNED"], r["counts"]["FAIL"], r["epochs"],
             n_trials * max_epochs, f"{r['best_val_acc']:.4f}" if r["best_val_acc"] is not None else "-",
             f"{r['best_test_acc']:.4f}" if r["best_test_acc"] is not None else "-", f"{r['wall_seconds']:.0f}"]
            for r in (none, hb)]
    print()
    print(table(rows, ["pruner", "complete", "pruned", "failed", "stage-2 epochs", "of max", "best val_acc",
                       "its test_acc", "wall s"]))
    print()
    print(f"epochs saved = {100 * saved:.1f}%  goal >= {100 * GOAL_SAVED:.0f}%: {verdict(goals['epochs_saved>=0.5'])}")
    print(f"best val_acc, hyperband - none = {diff:+.1f} points  goal >= -{GOAL_ACC_POINTS:.0f}: "
          f"{verdict(goals['best_val_acc_within_1pt'])}")
    print(f"the two studies sampled the same parameters in {same_first} of {n_trials} trials "
          "(they diverge once pruning changes what TPE has seen)")
    print("wall times are not comparable: the second study (hyperband) reuses the stage-1 cache the first filled")
    rungs = [3**k for k in range(8) if 3**k < max_epochs - 1]  # the default Hyperband's (min 1, factor 3) rung steps
    steps = sorted({0, *rungs, max_epochs // 2, max_epochs - 3} & set(range(max_epochs - 1)))
    rho = rank_correlations(none["trials"], steps)
    print("how well the val acc after epoch k predicts the final one (Spearman over the unpruned study's trials); "
          f"Hyperband decides after epochs {', '.join(str(r + 1) for r in rungs)}:")
    print("  " + "  ".join(f"epoch {k + 1}: {'-' if r is None else f'{r:+.2f}'}" for k, r in rho.items()))
    payload = {
        **stamp(), "benchmark": "pruning", "space": args.space, "trials_per_study": n_trials, "seed": args.seed,
        "max_stage2_epochs_per_trial": max_epochs, "epochs_saved_share": saved, "best_val_acc_diff_points": diff,
        "same_params_trials": same_first, "spearman_val_acc_at_epoch_vs_final": {k + 1: r for k, r in rho.items()},
        "goals": {"min_saved": GOAL_SAVED, "max_acc_loss_points": GOAL_ACC_POINTS, "met": goals},
        "studies": results,
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
