"""Why TDMR does or does not beat kd: the same student distilled three ways, side by side.

The settings of ``transfer.py`` (Fashion-MNIST, Lite0 teacher at 112 px, mobilenetv3_small_100@64,
stage 2 of 20 epochs), per seed and labels per class:

- ``tdmr``: stage 1 (pad 16, proxy 128), then 3-phase progressive distillation
  (features -> features + predictions -> predictions + task);
- ``tdmr_kd``: the same stage-1 teacher side, but one phase of KD + cross-entropy on its proxy
  logits (the shared classifier H still starts from the teacher's): the progressive feature
  phases removed, everything else equal;
- ``kd``: classic KD + cross-entropy from a linear probe on the frozen teacher (no transform,
  no proxy space), the baseline.

``tdmr`` against ``tdmr_kd`` measures what the progressive schedule adds; ``tdmr_kd`` against
``kd`` what the reprogrammed teacher's targets add. Test accuracy on the test subset, mean +- std.

    python benchmarks/transfer_ablation.py [--shots 10,50] [--seeds 0,1,2] [--test-limit 2000]
        [--unlabeled 5000 --transform resize ...] [--variants tdmr_kd --paired-with transfer.json]

It takes ``transfer.py``'s settings flags (``--unlabeled`` included: with a pool every variant
distils on the same labelled + pool batches) and its teacher cache, so the stage-1 outcomes and
the teacher's features a ``transfer.py`` run computed are read, not recomputed. ``--variants``
runs a subset; ``--paired-with`` takes the other variants' runs from a ``transfer.py`` JSON of
the same settings (CPU runs repeat bit for bit, so its tdmr and kd are these).
"""

from __future__ import annotations

import time
from typing import Any

from _common import RESULTS, mean_std, parser, setup, stamp, table, write_json
from transfer import _ints, add_settings, base_config

VARIANTS = ("tdmr", "tdmr_kd", "kd")


def tdmr_kd(config: Any, data: Any, side: Any) -> dict[str, Any]:
    """KD + CE from the reprogrammed teacher's proxy logits in one phase (no feature phases)."""
    from tdmr_search.models.students import build_student
    from tdmr_search.pipeline.loop import Runtime, accuracy, infer, seed_everything
    from tdmr_search.pipeline.run import distill_student
    from tdmr_search.pipeline.stages import Phase

    runtime = Runtime.create(config.device)
    seed_everything(config.seed)
    student = build_student(config.student, data.channels, config.reprogram.proxy_dim, data.num_classes)
    student.classifier.load_state_dict(side.state["classifier"])
    d = config.distill
    seed_everything(config.seed)
    history = distill_student(student, [Phase(0, d.epochs, 0.0, 1.0, 1.0, d.temperature, True)], config, data,
                              runtime, None, side.logits_train, stage="tdmr_kd", logits_u=side.logits_unlabeled)
    student.eval()
    test_acc = accuracy(infer(student, data.test.images, runtime), data.test.labels)
    return {"test_acc": test_acc, "val_acc": history[-1]["val_acc"], "teacher_val_acc": side.val_acc}


def main() -> None:
    p = parser("transfer_ablation", __doc__.splitlines()[0])
    p.add_argument("--shots", default="10,50")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--variants", default=",".join(VARIANTS), help="which of tdmr, tdmr_kd, kd to run")
    p.add_argument("--paired-with", help="a transfer.py JSON of the same settings: its tdmr and kd runs fill in")
    p.add_argument("--cache", default=str(RESULTS / "transfer-cache"), help="teacher cache folder (shared with transfer.py)")
    add_settings(p)
    args = p.parse_args()
    setup(args)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    from tdmr_search.data import load_data
    from tdmr_search.pipeline.cache import TeacherCache
    from tdmr_search.pipeline.run import run_pipeline

    base = base_config(args, device)
    shots_list, seeds = _ints(args.shots), _ints(args.seeds)
    cache = TeacherCache(args.cache)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for shots in shots_list:
            config = base.replace({"seed": seed, "data.shots": shots})
            data = load_data(config.data, seed)
            side = cache.get_or_compute(config, data)
            for variant in variants:
                t0 = time.perf_counter()
                if variant == "tdmr_kd":
                    m = tdmr_kd(config, data, side)
                else:
                    m = run_pipeline(config.replace({"method": variant}), data=data, cache=cache,
                                     teacher_side=side if variant == "tdmr" else None).metrics
                runs.append({"seed": seed, "shots": shots, "variant": variant, "test_acc": m["test_acc"],
                             "val_acc": m["val_acc"], "teacher_val_acc": m["teacher_val_acc"],
                             "seconds": time.perf_counter() - t0})
                print(f"  seed {seed} shots {shots:>3} {variant:<8} test {100 * m['test_acc']:5.1f}%  "
                      f"teacher val {100 * m['teacher_val_acc']:5.1f}%", flush=True)
    if args.paired_with:  # read at the end: a transfer.py run beside this one has had time to finish
        import json

        for r in json.loads(open(args.paired_with).read())["runs"]:
            if r["method"] in VARIANTS and r["method"] not in variants and r["seed"] in seeds and r["shots"] in shots_list:
                runs.append({"seed": r["seed"], "shots": r["shots"], "variant": r["method"], "test_acc": r["test_acc"],
                             "val_acc": r["val_acc"], "teacher_val_acc": r["teacher_val_acc"], "from": args.paired_with})
    rows = []
    for shots in shots_list:
        row: list[Any] = [shots]
        for variant in VARIANTS:
            accs = [r["test_acc"] for r in runs if r["shots"] == shots and r["variant"] == variant]
            m, s = mean_std(accs)
            row.append(f"{100 * m:.1f} +- {100 * s:.1f}")
        for a, b in (("tdmr", "tdmr_kd"), ("tdmr_kd", "kd")):
            diffs = [ra["test_acc"] - rb["test_acc"] for ra in runs for rb in runs
                     if ra["shots"] == rb["shots"] == shots and ra["seed"] == rb["seed"]
                     and ra["variant"] == a and rb["variant"] == b]
            m, s = mean_std(diffs)
            row.append(f"{100 * m:+.1f} +- {100 * s:.1f}")
        rows.append(row)
    print()
    print(table(rows, ["shots/class", *[f"{v} test %" for v in VARIANTS], "tdmr - tdmr_kd (schedule)",
                       "tdmr_kd - kd (teacher targets)"]))
    print(f"test accuracy on a stratified {args.test_limit}-image subset" if args.test_limit else "full test split")
    print(f"wrote {write_json(args.out, {**stamp(), 'benchmark': 'transfer_ablation', 'runs': runs})}")


if __name__ == "__main__":
    main()
