"""Selection: the regret of the pick, with and without re-evaluation, over several real studies.

Per seed, one real study on the demo space through ``run_search`` (TPE with that seed, the
default pruner, no re-evaluation), then :func:`~tdmr_search.search.reevaluate.reevaluate` of its
``--k`` best configurations on ``--folds`` folds of the labelled images. The regret of a pick is
the best test accuracy among the study's complete trials minus the pick's test accuracy: what
choosing on a tiny validation split costs. Test accuracy is read by this benchmark only; the
search and the re-evaluation never see it.

Goal (the issue): re-evaluation at least halves the mean regret.

    python benchmarks/selection.py [--quick] [--trials 16] [--seeds 0,1,2] [--k 3] [--folds 3]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, parser, setup, stamp, table, verdict, write_json


def main() -> None:
    p = parser("selection", __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials per study (default 16; --quick: 5)")
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--seeds", default=None, help="one study per sampler seed (default 0,1,2; --quick: 0)")
    p.add_argument("--k", type=int, default=3, help="configurations re-evaluated")
    p.add_argument("--folds", type=int, default=3, help="validation accuracies per configuration")
    args = p.parse_args()
    setup(args)
    n_trials = args.trials or (5 if args.quick else 16)
    seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if x.strip()]

    from optuna.trial import TrialState

    from tdmr_search.data import load_data
    from tdmr_search.pipeline.cache import TeacherCache
    from tdmr_search.search.reevaluate import pick, reevaluate
    from tdmr_search.search.settings import SearchSettings
    from tdmr_search.search.space import load_space
    from tdmr_search.search.storage import load_study
    from tdmr_search.search.study import run_search

    space = load_space(args.space)
    data = load_data(space.base.data, space.base.seed)
    folder = Path(tempfile.mkdtemp(prefix="tdmr-bench-selection-"))
    studies: list[dict[str, Any]] = []
    try:
        for seed in seeds:
            url = f"sqlite:///{folder / f'selection-{seed}.db'}"
            t0 = time.perf_counter()
            run_search(SearchSettings(args.space, "selection", str(n_trials), storage=url, seed=seed,
                                      artifacts=str(folder / f"a{seed}"), progress=False, baselines=False, reevaluate=0))
            search_s = time.perf_counter() - t0
            study = load_study("selection", url)
            single = study.best_trial
            t0 = time.perf_counter()
            record = reevaluate(study, data, args.k, args.folds, TeacherCache(folder / "selection-cache"))
            reeval_s = time.perf_counter() - t0
            picked = pick(study)
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            best_test = max(t.user_attrs["test_acc"] for t in complete)
            out = {
                "seed": seed, "trials": len(study.trials), "complete": len(complete), "best_test_acc": best_test,
                "single_pick": single.number, "single_pick_val": single.value,
                "single_pick_test": single.user_attrs["test_acc"],
                "reeval_pick": picked.number, "reeval_pick_mean": record[picked.number]["val_acc_mean"],
                "reeval_pick_test": picked.user_attrs["test_acc"],
                "regret_single": best_test - single.user_attrs["test_acc"],
                "regret_reeval": best_test - picked.user_attrs["test_acc"],
                "search_seconds": search_s, "reevaluation_seconds": reeval_s,
                "reevaluation": {str(k): v for k, v in record.items()},
            }
            studies.append(out)
            print(f"seed {seed}: best test {best_test:.4f}; single pick trial {single.number} (val {single.value:.4f}, "
                  f"test {out['single_pick_test']:.4f}); re-evaluated pick trial {picked.number} (mean val "
                  f"{out['reeval_pick_mean']:.4f}, test {out['reeval_pick_test']:.4f}); search {search_s:.0f}s, "
                  f"re-evaluation {reeval_s:.0f}s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mean_single = sum(s["regret_single"] for s in studies) / len(studies)
    mean_reeval = sum(s["regret_reeval"] for s in studies) / len(studies)
    halved = mean_reeval <= 0.5 * mean_single if mean_single > 0 else None
    rows = [[s["seed"], s["complete"], f"{100 * s['best_test_acc']:.1f}", f"{100 * s['regret_single']:.1f}",
             f"{100 * s['regret_reeval']:.1f}"] for s in studies]
    print()
    print(table(rows, ["seed", "complete trials", "best test %", "regret, single pick", "regret, re-evaluated"]))
    print(f"mean regret: single pick {100 * mean_single:.2f} points, re-evaluated pick {100 * mean_reeval:.2f} points; "
          f"goal: re-evaluation at least halves it: "
          f"{'n/a (the single pick had no regret)' if halved is None else verdict(halved)}")
    payload = {**stamp(), "benchmark": "selection", "space": args.space, "trials_per_study": n_trials, "k": args.k,
               "folds": args.folds, "mean_regret_single": mean_single, "mean_regret_reevaluated": mean_reeval,
               "goal_halved": halved, "studies": studies}
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
