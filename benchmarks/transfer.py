"""Transfer quality: TDMR against scratch, kd and probe on Fashion-MNIST with few labels.

Fashion-MNIST (offline, Debian package) with 10, 50 and 100 labelled images per class (20% of
them held out for validation), the ImageNet EfficientNet-Lite0 teacher from its PyPI package at
112 px (not its native 224: a CPU-sized setting, the same as the demo space), and one fixed
student under 20 MFLOPs. Every method runs with the same student, data, epochs and seed:

- ``tdmr``: stage 1 (pad transform + linear projector into a 128-d proxy space, cross-entropy)
  then 3-phase progressive distillation (features -> predictions -> task);
- ``scratch``: the student with cross-entropy only;
- ``kd``: logit distillation from a linear probe on the frozen teacher;
- ``probe``: the frozen teacher + a linear head (a reference, not deployable under the cap).

Test accuracy is on the official test split (``--test-limit`` takes a stratified subset; the
default is the whole 10,000), never used for selection. The table gives mean +- sample std over
seeds, and TDMR minus scratch / kd as mean +- std of the per-seed paired differences. Every run's
per-epoch history (validation accuracy and the feat / kd / ce losses) and the stage-1 history
are written to the JSON, for finding out why a method wins or loses. The settings are fixed, not
tuned per method.

    python benchmarks/transfer.py [--quick] [--shots 10,50,100] [--seeds 0,1,2]
        [--methods tdmr,scratch,kd,probe] [--test-limit N] [--transform pad]
        [--out benchmarks/results/transfer.json]

``--transform`` changes TDMR's stage-1 transform only (a side check of why TDMR wins or loses;
the reported figures use the default).

``--unlabeled N`` adds an unlabelled pool of N train images (DESIGN.md section 7, never their
labels): ``tdmr`` and ``kd`` then distil on labelled + pool batches for ``--pool-epochs`` passes
over the pool, ``scratch`` stays labels-only, and ``tdmr-nopool`` / ``kd-nopool`` run the same
labelled images without the pool (``--stage2-epochs`` passes over them), so the table shows what
the pool adds on identical labelled splits. The teacher's features of every image go through one
teacher cache (``--cache``), so kd, probe and every ``resize`` run share one pass over the pool.
"""

from __future__ import annotations

import time
from typing import Any

from _common import RESULTS, mean_std, parser, setup, stamp, table, write_json

METHOD_ORDER = ("tdmr", "scratch", "kd", "probe")
NOPOOL = ("tdmr-nopool", "kd-nopool")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _methods(text: str) -> list[str]:
    out = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in out if m not in METHOD_ORDER + NOPOOL]
    if bad:
        raise SystemExit(f"--methods: unknown {bad}; accepted: {', '.join(METHOD_ORDER + NOPOOL)}")
    return out


def add_settings(p: Any) -> None:
    """The flags of the fixed pipeline settings (``base_config`` reads them); shared with transfer_ablation.py."""
    p.add_argument("--student", default="mobilenetv3_small_100@64", help="name@resolution, under --max-flops")
    p.add_argument("--max-flops", default="20M")
    p.add_argument("--teacher-size", type=int, default=112, help="teacher input side (EfficientNet-Lite0 is 224 native)")
    p.add_argument("--transform", default="pad", help="TDMR's stage-1 input transform (default pad, with pad 16)")
    p.add_argument("--stage1-epochs", type=int, default=5, help="stage-1 epochs (also the kd/probe linear probe's)")
    p.add_argument("--stage2-epochs", type=int, default=20, help="stage-2 epochs (every method's student)")
    p.add_argument("--unlabeled", type=int, default=0, help="unlabelled pool size (0: none)")
    p.add_argument("--views", type=int, default=0, help="augmented views per labelled and pool image")
    p.add_argument("--mixup", type=int, default=0, help="fixed mixup images added to the distillation inputs")
    p.add_argument("--pool-epochs", type=int, default=6, help="with a pool: stage-2 passes over the unlabelled inputs")
    p.add_argument("--feature-loss", default="mse", help="TDMR's feature loss: mse, cosine or cka")
    p.add_argument("--n-stages", type=int, default=3, help="TDMR's distillation phases")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def base_config(args: Any, device: str) -> Any:
    from tdmr_search.config import PipelineConfig

    name, _, res = args.student.rpartition("@")
    return PipelineConfig().replace({
        "device": device, "max_flops": args.max_flops,
        "data.dataset": "fashion-mnist", "data.val_fraction": 0.2, "data.test_limit": args.test_limit,
        "teacher.name": "tf_efficientnet_lite0", "teacher.weights": "package", "teacher.input_size": args.teacher_size,
        "reprogram.transform": args.transform, "reprogram.pad": 16, "reprogram.projector": "linear", "reprogram.proxy_dim": 128,
        "reprogram.epochs": args.stage1_epochs, "reprogram.lr": 3e-3, "reprogram.batch_size": 64,
        "student.name": name, "student.resolution": int(res), "student.projector": "linear",
        "distill.n_stages": args.n_stages, "distill.temperature": 4.0, "distill.temperature_schedule": "constant",
        "distill.feature_loss": args.feature_loss,
        "distill.epochs": args.pool_epochs if args.unlabeled else args.stage2_epochs, "distill.lr": 3e-3,
        "distill.weight_decay": 5e-4, "distill.batch_size": 64,
        "data.unlabeled": args.unlabeled, "data.augment_views": args.views, "data.mixup": args.mixup,
    })


def method_config(config: Any, method: str, args: Any) -> Any:
    """The config of one benchmark method: ``X-nopool`` is X on the labelled images alone."""
    if method.endswith("-nopool") or method == "scratch":
        return config.replace({"method": method.split("-")[0], "data.unlabeled": 0, "data.mixup": 0,
                               "distill.epochs": args.stage2_epochs})
    return config.replace({"method": method})


def compact_history(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keep = ("epoch", "phase", "val_acc", "loss", "feat", "kd", "ce", "temperature", "teacher_val_acc")
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in h.items() if k in keep} for h in history]


def summarise(runs: list[dict[str, Any]], shots_list: list[int], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"test_acc": {}, "teacher_val_acc": {}, "tdmr_minus": {}, "best_epoch_val_acc": {}}
    for shots in shots_list:
        for method in methods:
            rs = [r for r in runs if r["shots"] == shots and r["method"] == method]
            if not rs:
                continue
            m, s = mean_std([r["test_acc"] for r in rs])
            out["test_acc"][f"{shots}/{method}"] = {"mean": m, "std": s, "n": len(rs)}
            tv = [r["teacher_val_acc"] for r in rs if r.get("teacher_val_acc") is not None]
            if tv:
                tm, ts = mean_std(tv)
                out["teacher_val_acc"][f"{shots}/{method}"] = {"mean": tm, "std": ts}
            curves = [[h["val_acc"] for h in r["history"]] for r in rs if r.get("history")]
            if curves:
                out["best_epoch_val_acc"][f"{shots}/{method}"] = {
                    "final": mean_std([c[-1] for c in curves])[0], "max": mean_std([max(c) for c in curves])[0]}
        for other in ("scratch", "kd", "probe", "tdmr-nopool", "kd-nopool"):
            pairs = []
            for r in runs:
                if r["shots"] == shots and r["method"] == "tdmr":
                    o = next((x for x in runs if x["shots"] == shots and x["seed"] == r["seed"]
                              and x["method"] == other), None)
                    if o is not None:
                        pairs.append(r["test_acc"] - o["test_acc"])
            if pairs:
                m, s = mean_std(pairs)
                out["tdmr_minus"][f"{shots}/{other}"] = {"mean": m, "std": s, "n": len(pairs),
                                                          "wins": sum(p > 0 for p in pairs)}
    return out


def print_summary(summary: dict[str, Any], shots_list: list[int], methods: list[str]) -> None:
    rows = []
    for shots in shots_list:
        row: list[Any] = [shots]
        for method in methods:
            s = summary["test_acc"].get(f"{shots}/{method}")
            row.append(f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f} (n={s['n']})" if s else "-")
        others = [o for o in ("scratch", "kd", "probe", "tdmr-nopool") if o in methods]
        for other in others:
            d = summary["tdmr_minus"].get(f"{shots}/{other}")
            row.append(f"{100 * d['mean']:+.1f} +- {100 * d['std']:.1f} ({d['wins']}/{d['n']} wins)" if d else "-")
        rows.append(row)
    others = [o for o in ("scratch", "kd", "probe", "tdmr-nopool") if o in methods]
    print(table(rows, ["shots/class", *[f"{m} test %" for m in methods], *[f"tdmr - {o}" for o in others]]))
    tv_rows = []
    for shots in shots_list:
        row = [shots]
        for method in ("tdmr", "kd", "probe"):
            s = summary["teacher_val_acc"].get(f"{shots}/{method}")
            row.append(f"{100 * s['mean']:.1f} +- {100 * s['std']:.1f}" if s else "-")
        for method in ("tdmr", "scratch", "kd"):
            s = summary["best_epoch_val_acc"].get(f"{shots}/{method}")
            row.append(f"{100 * s['final']:.1f} / {100 * s['max']:.1f}" if s else "-")
        tv_rows.append(row)
    print()
    print(table(tv_rows, ["shots/class", "tdmr teacher val %", "kd probe val %", "probe val %",
                          "tdmr val final/max %", "scratch val final/max %", "kd val final/max %"]))


def report(path: str) -> None:
    """Print the tables of one run's JSON, or of several (comma-separated) whose runs are merged."""
    import json

    parts = [json.loads(open(p).read()) for p in path.split(",")]
    saved = {**parts[0], "runs": [r for part in parts for r in part["runs"]],
             "complete": all(part.get("complete") for part in parts),
             "shots": sorted({s for part in parts for s in part["shots"]}),
             "command": " + ".join(part["command"] for part in parts)}
    runs = saved["runs"]
    shots_list = [s for s in saved["shots"] if any(r["shots"] == s for r in runs)]
    methods = [m for m in saved["methods"] if any(r["method"] == m for r in runs)]
    print(f"{saved['command']}  ({saved['date']}, {'complete' if saved.get('complete') else 'cut short'}: "
          f"{len(runs)} runs)")
    print_summary(summarise(runs, shots_list, methods), shots_list, methods)
    print(saved["test_note"])
    _verdicts(summarise(runs, shots_list, methods), shots_list)


def _verdicts(summary: dict[str, Any], shots_list: list[int]) -> None:
    for shots in shots_list:
        for other in ("scratch", "kd", "probe", "tdmr-nopool"):
            d = summary["tdmr_minus"].get(f"{shots}/{other}")
            if d:
                se = d["std"] / d["n"] ** 0.5 if d["n"] > 1 else float("inf")
                word = ("beats" if d["mean"] > 2 * se else "is worse than" if d["mean"] < -2 * se
                        else "shows no clear difference from")
                print(f"{shots:>3} shots: TDMR {word} {other}: {100 * d['mean']:+.1f} +- {100 * d['std']:.1f} points "
                      f"(std of the per-seed differences; standard error {100 * se:.1f}), ahead in {d['wins']}/{d['n']} "
                      "seeds; 'beats' needs the mean above 2 standard errors")


def main() -> None:
    p = parser("transfer", __doc__.splitlines()[0])
    p.add_argument("--shots", default=None, help="labels per class, comma-separated (default 10,50,100; --quick: 10)")
    p.add_argument("--seeds", default=None, help="seeds, comma-separated (default 0,1,2; --quick: 0)")
    p.add_argument("--methods", default=",".join(METHOD_ORDER))
    p.add_argument("--test-limit", type=int, default=None, help="stratified test subset (default: all 10,000)")
    add_settings(p)
    p.add_argument("--report", metavar="JSON[,JSON]",
                   help="print the tables of an earlier (possibly cut-short) run, or of several merged, and exit")
    p.add_argument("--cache", default=str(RESULTS / "transfer-cache"),
                   help="teacher cache folder (features and stage-1 outcomes; delete it to measure from cold)")
    args = p.parse_args()
    setup(args)
    if args.report:
        report(args.report)
        return
    shots_list = _ints(args.shots or ("10" if args.quick else "10,50,100"))
    seeds = _ints(args.seeds or ("0" if args.quick else "0,1,2"))
    methods = _methods(args.methods)

    import torch

    from tdmr_search.data import load_data
    from tdmr_search.pipeline.cache import TeacherCache
    from tdmr_search.pipeline.run import deployed_cost, run_pipeline

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    base = base_config(args, device)
    test_note = (f"test accuracy on a stratified {args.test_limit}-image subset of the 10,000 test images"
                 if args.test_limit else "test accuracy on the full 10,000-image test split")
    cache = TeacherCache(args.cache)
    pool_note = (f"pool {args.unlabeled} (+{args.views} views, {args.mixup} mixup), {args.pool_epochs} epochs over it; "
                 if args.unlabeled else "")
    print(f"student {base.student.name}@{base.student.resolution}, teacher {base.teacher.name} at "
          f"{base.teacher.input_size}px (package weights), stage-1 {base.reprogram.transform} {base.reprogram.epochs} ep, stage-2 "
          f"{args.stage2_epochs} ep, {pool_note}device {device}; {test_note}; teacher cache {args.cache}", flush=True)
    head = {**stamp(), "benchmark": "transfer", "shots": shots_list, "seeds": seeds, "methods": methods,
            "test_limit": args.test_limit, "test_note": test_note, "settings": base.to_dict()}
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for seed in seeds:  # seed-major: a cut-short run still covers every shots setting
        for shots in shots_list:
            config = base.replace({"seed": seed, "data.shots": shots})
            data = load_data(config.data, seed)
            if "student_flops" not in head:
                head["student_flops"], head["student_params"] = deployed_cost(
                    config, data.channels, data.image_size, data.num_classes)
            for method in methods:
                t0 = time.perf_counter()
                mconfig = method_config(config, method, args)
                mdata = data if mconfig.data.unlabeled or not args.unlabeled else data.without_unlabeled()
                result = run_pipeline(mconfig, data=mdata, cache=cache)
                m = result.metrics
                run = {
                    "shots": shots, "seed": seed, "method": method, "test_acc": m["test_acc"],
                    "val_acc": m["val_acc"], "teacher_val_acc": m.get("teacher_val_acc"),
                    "wall_seconds": time.perf_counter() - t0, "seconds": m.get("seconds"), "data": m.get("data"),
                    "history": compact_history(m.get("history") or []),
                    "teacher_history": compact_history(m.get("teacher_history") or []),
                }
                runs.append(run)
                tv = run["teacher_val_acc"]
                print(f"  seed {seed} shots {shots:>3} {method:<7} test {100 * run['test_acc']:5.1f}%  "
                      f"val {100 * run['val_acc']:5.1f}%"
                      + (f"  teacher val {100 * tv:5.1f}%" if tv is not None else "")
                      + f"  {run['wall_seconds']:6.1f}s  (elapsed {time.perf_counter() - started:5.0f}s)", flush=True)
                write_json(args.out, {**head, "complete": False, "runs": runs,
                                      "summary": summarise(runs, shots_list, methods)})
    summary = summarise(runs, shots_list, methods)
    print()
    print_summary(summary, shots_list, methods)
    print()
    print(test_note)
    _verdicts(summary, shots_list)
    print(f"wrote {write_json(args.out, {**head, 'complete': True, 'runs': runs, 'summary': summary})}")


if __name__ == "__main__":
    main()
