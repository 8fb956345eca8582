"""Search overhead: sampler, study-store traffic, FLOPs gate and model construction as a share of trial time.

Runs a real search with ``run_search`` (the code ``tdmr-search run`` runs: SQLite study store with
heartbeats, TPE sampler, Hyperband pruner, teacher cache, artifact store for student weights) on the
demo space, and times the real calls by wrapping them with timers:

- ``sampler``: the sampler's methods (``infer_relative_search_space``, ``sample_relative``,
  ``sample_independent``, ``before_trial``, ``after_trial``) and ``sample_overrides`` (the suggest API);
- ``store_write`` / ``store_read``: every method of the study's storage (``create_new_trial``,
  ``set_trial_param``, ``set_trial_user_attr``, ``set_trial_intermediate_value``,
  ``set_trial_state_values``, ... / ``get_trial``, ``get_all_trials``, ...), plus the artifact store
  (student weights upload and clean-up);
- ``pruner``: ``pruner.prune`` (``trial.should_prune``), its storage reads excluded;
- ``flops_gate``: ``deployed_cost`` (the objective's gate and the pipeline's check);
- ``model_construction``: ``build_student`` and ``build_teacher`` (a teacher is built on a cache miss);
- ``config``: ``Objective.config_for`` (dotted overrides into a validated ``PipelineConfig``).

Time is charged exclusively to the innermost category (a storage read inside the sampler counts as
store time once, not twice), on the main thread only (the heartbeat thread runs beside the trials).
The share is the sum over categories divided by the wall time of ``study.optimize`` (all trials).
One-off study setup (loading data, the FLOPs gate over all candidates, opening the store) is
reported separately.

Goal (the issue): under 3% of trial time.

    python benchmarks/overhead.py [--quick] [--trials 8] [--out benchmarks/results/overhead.json]
"""

from __future__ import annotations

import collections
import functools
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ROOT, parser, setup, stamp, table, verdict, write_json

GOAL_SHARE = 0.03
SAMPLER_METHODS = ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial",
                   "after_trial")
REPORTED = ("sampler", "store_write", "flops_gate", "model_construction")  # what the issue names
OTHER = ("store_read", "store_artifacts", "pruner", "config")


class Accountant:
    """Exclusive wall time per category, on the thread that created it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self.stack: list[list[Any]] = []  # [category, running since]
        self.thread = threading.get_ident()

    def wrap(self, category: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.thread:
                return fn(*args, **kwargs)
            now = time.perf_counter()
            if self.stack:  # pause the enclosing category
                self.seconds[self.stack[-1][0]] += now - self.stack[-1][1]
            self.stack.append([category, now])
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                cat, since = self.stack.pop()
                self.seconds[cat] += end - since
                self.calls[cat] += 1
                if self.stack:
                    self.stack[-1][1] = end  # the enclosing category resumes

        timed.__wrapped_by_benchmark__ = True  # type: ignore[attr-defined]
        return timed


def _is_write(name: str) -> bool:
    return name.startswith(("set_", "create_", "delete_", "record_heartbeat"))


def instrument_storage(acc: Accountant, storage: Any) -> None:
    names = {n for n in dir(storage) if not n.startswith("__") and (not n.startswith("_") or n == "_get_stale_trial_ids")}
    for name in sorted(names):
        attr = getattr(storage, name, None)
        if callable(attr) and not isinstance(attr, type) and hasattr(type(storage), name):
            setattr(storage, name, acc.wrap("store_write" if _is_write(name) else "store_read", attr))


def install(acc: Accountant) -> dict[str, Any]:
    """Wrap the real calls; return what the study setup and optimize took (filled in later)."""
    import optuna

    import tdmr_search.data as data_mod
    import tdmr_search.pipeline.methods as methods_mod
    import tdmr_search.pipeline.run as run_mod
    import tdmr_search.search.objective as obj_mod
    import tdmr_search.search.preflight as preflight_mod
    import tdmr_search.search.study as study_mod

    setup: dict[str, Any] = {"seconds": collections.defaultdict(float), "optimize_seconds": 0.0, "study": None}

    def setup_timer(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setup["seconds"][name] += time.perf_counter() - t0
        return timed

    data_mod.load_data = setup_timer("load_data", data_mod.load_data)  # the pre-flight imports it when it runs
    preflight_mod.feasible_students = setup_timer("feasible_students_gate", preflight_mod.feasible_students)
    study_mod.open_storage = setup_timer("open_storage", study_mod.open_storage)

    real_create = optuna.create_study

    def create_study(*a: Any, **k: Any) -> optuna.Study:
        t0 = time.perf_counter()
        study = real_create(*a, **k)
        setup["seconds"]["create_study"] += time.perf_counter() - t0
        instrument_storage(acc, study._storage)
        for name in SAMPLER_METHODS:
            setattr(study.sampler, name, acc.wrap("sampler", getattr(study.sampler, name)))
        study.pruner.prune = acc.wrap("pruner", study.pruner.prune)  # type: ignore[method-assign]
        real_optimize = study.optimize

        def optimize(*oa: Any, **ok: Any) -> None:
            t1 = time.perf_counter()
            try:
                real_optimize(*oa, **ok)
            finally:
                setup["optimize_seconds"] += time.perf_counter() - t1

        study.optimize = optimize  # type: ignore[method-assign]
        setup["study"] = study
        return study

    optuna.create_study = create_study  # study.py calls optuna.create_study at run time
    obj_mod.sample_overrides = acc.wrap("sampler", obj_mod.sample_overrides)
    obj_mod.deployed_cost = acc.wrap("flops_gate", obj_mod.deployed_cost)
    run_mod.deployed_cost = acc.wrap("flops_gate", run_mod.deployed_cost)
    run_mod.build_student = acc.wrap("model_construction", run_mod.build_student)
    methods_mod.build_teacher = acc.wrap("model_construction", methods_mod.build_teacher)  # the teacher sides build it
    obj_mod.Objective.config_for = acc.wrap("config", obj_mod.Objective.config_for)
    obj_mod.Objective._upload = acc.wrap("store_artifacts", obj_mod.Objective._upload)
    study_mod._keep_best_weights = acc.wrap("store_artifacts", study_mod._keep_best_weights)
    return setup


def main() -> None:
    p = parser("overhead", __doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=None, help="trials (default 8; --quick: 3)")
    p.add_argument("--space", default=str(ROOT / "spaces" / "demo.yaml"))
    p.add_argument("--pruner", default="hyperband")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args)
    n_trials = args.trials or (3 if args.quick else 8)

    from tdmr_search.search.settings import SearchSettings
    from tdmr_search.search.study import run_search

    acc = Accountant()
    state = install(acc)
    tmp = Path(tempfile.mkdtemp(prefix="tdmr-bench-overhead-"))
    url = f"sqlite:///{tmp / 'overhead.db'}"
    t0 = time.perf_counter()
    try:
        run_search(SearchSettings(args.space, "overhead", str(n_trials), storage=url, sampler="tpe", pruner=args.pruner,
                                  seed=args.seed, artifacts=str(tmp / "artifacts"), progress=False, baselines=False,
                                  teacher_cache=True, reevaluate=0))
        total_run = time.perf_counter() - t0
        study = state["study"]
        trials = [{
            "number": t.number, "state": t.state.name,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            "stage2_epochs": len(t.intermediate_values), "teacher_cached": t.user_attrs.get("teacher_cached"),
            "val_acc": t.user_attrs.get("val_acc"), "pipeline_seconds": t.user_attrs.get("seconds"),
        } for t in study.get_trials(deepcopy=False)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = state["optimize_seconds"]
    shares = {k: acc.seconds.get(k, 0.0) / wall for k in (*REPORTED, *OTHER)}
    named = sum(shares[k] for k in REPORTED)
    everything = sum(shares.values())
    rows = [[k, f"{acc.seconds.get(k, 0.0):.3f}", acc.calls.get(k, 0), f"{100 * shares[k]:.3f}%"] for k in (*REPORTED, *OTHER)]
    rows.append(["sum (issue's four)", f"{named * wall:.3f}", "", f"{100 * named:.3f}%"])
    rows.append(["sum (all search machinery)", f"{everything * wall:.3f}", "", f"{100 * everything:.3f}%"])
    per_trial = ", ".join(f"{t['state'].lower()} {t['seconds']:.0f}s" for t in trials if t["seconds"] is not None)
    print(f"{n_trials} trials on {Path(args.space).name}: study.optimize {wall:.1f}s ({per_trial})")
    print(table(rows, ["category", "seconds", "calls", "share of trial time"]))
    print(f"overhead share (sampler + store writes + FLOPs gate + model construction) = {100 * named:.2f}%  "
          f"goal < {100 * GOAL_SHARE:.0f}%: {verdict(named < GOAL_SHARE)}")
    print(f"with store reads, artifacts, pruner and config too = {100 * everything:.2f}%  "
          f"goal < {100 * GOAL_SHARE:.0f}%: {verdict(everything < GOAL_SHARE)}")
    print("one-off study setup (not in trial time): "
          + ", ".join(f"{k} {v:.2f}s" for k, v in state["seconds"].items()))
    payload = {
        **stamp(), "benchmark": "overhead", "space": args.space, "trials": n_trials, "pruner": args.pruner,
        "seed": args.seed, "optimize_wall_seconds": wall, "run_search_wall_seconds": total_run,
        "seconds": dict(acc.seconds), "calls": dict(acc.calls), "shares": shares,
        "share_issue_four": named, "share_all_machinery": everything,
        "goal": {"max_share": GOAL_SHARE, "met_issue_four": named < GOAL_SHARE, "met_all": everything < GOAL_SHARE},
        "setup_seconds": dict(state["seconds"]), "trials_detail": trials,
    }
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
