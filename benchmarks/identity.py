"""Behaviour identity: fixed CPU runs whose figures must not change under a refactor.

Records, on CPU with one torch thread (so float reductions are ordered the same every time):

- ``tdmr-search train`` of every method (tdmr, kd, scratch, probe) on one fixed digits config
  (timm ``test_*`` models): every number in its ``metrics.json`` except wall times;
- the 3-trial smoke study (``spaces/smoke.yaml``, ``--budget 3``, sampler seed 0, no
  re-evaluation, with baselines): each trial's state, params, value, intermediate values and
  user attrs (except times, paths and host facts), and the study's user attrs that are results;
- that the store still opens in plain Optuna (``optuna.load_study``) and that
  optuna-dashboard's own loader lists the study.

    python benchmarks/identity.py --record benchmarks/results/identity-before.json
    python benchmarks/identity.py --compare benchmarks/results/identity-before.json

``--compare`` exits non-zero and lists every difference when a figure changed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT

METHODS = ("tdmr", "kd", "scratch", "probe")
TRAIN_SETTINGS = [
    "data.dataset=digits", "data.shots=10", "data.val_fraction=0.25", "data.unlabeled=200",
    "teacher.name=test_vit", "teacher.weights=random", "teacher.input_size=32",
    "student.name=test_resnet", "student.resolution=32", "reprogram.transform=pad", "reprogram.pad=4",
    "reprogram.epochs=2", "reprogram.batch_size=32", "distill.epochs=3", "distill.batch_size=32",
    "distill.n_stages=2", "device=cpu", "seed=3",
]
#: attrs that are times, paths, host facts or versions: they differ between any two runs
VOLATILE = ("seconds", "time", "_s", "host", "path", "dir", "folder", "started", "finished", "datetime",
            "version", "hostname", "pid", "fingerprint_created", "git", "python", "torch", "machine",
            "heartbeat", "worker", "artifact", "created", "storage", "url", "stage_time", "throughput",
            "images_per_s", "eta", "progress", "deadline", "budget_left")


def volatile(key: str) -> bool:
    k = key.lower()
    return any(v in k for v in VOLATILE)


def clean(value: Any) -> Any:
    """Drop volatile keys at every depth; round floats to 12 significant digits (JSON round trip)."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in sorted(value.items()) if not volatile(str(k))}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.12g}") if math.isfinite(value) else str(value)
    return value


def env() -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TDMR_TORCH_THREADS="1",
             PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str, cwd: Path) -> None:
    # torch's starting seed differs per process: fix it, so a random-weights teacher built before
    # anything seeds (the probe's) is the same in every run
    cmd = [sys.executable, "-c", "import sys, torch; torch.set_num_threads(1); torch.manual_seed(12345); "
           "from tdmr_search.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def record_train(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in METHODS:
        dst = folder / f"train-{method}"
        args = ["train", "--out", str(dst), "--method", method]
        for s in TRAIN_SETTINGS:
            args += ["--set", s]
        cli(*args, cwd=folder)
        out[method] = clean(json.loads((dst / "metrics.json").read_text()))
    return out


def record_study(folder: Path) -> dict[str, Any]:
    import optuna

    cli("run", "--study", "smoke", "--space", str(ROOT / "spaces" / "smoke.yaml"), "--budget", "3",
        "--reevaluate", "0", "--no-progress", cwd=folder)
    url = f"sqlite:///{folder / 'studies' / 'smoke.db'}"
    if not (folder / "studies" / "smoke.db").exists():
        dbs = list(folder.rglob("*.db"))
        url = f"sqlite:///{dbs[0]}"
    study = optuna.load_study(study_name="smoke", storage=url)
    trials = [{
        "number": t.number, "state": t.state.name, "params": clean(t.params),
        "values": clean(t.values), "intermediate": clean({str(k): v for k, v in t.intermediate_values.items()}),
        "user_attrs": clean(t.user_attrs), "system_attrs": sorted(k for k in t.system_attrs if not volatile(k)),
    } for t in study.trials]
    try:  # optuna-dashboard's own way in: the storage, then the study summaries
        from optuna_dashboard._storage import get_study_summaries  # type: ignore[import-not-found]

        listed = [s.study_name for s in get_study_summaries(optuna.storages.RDBStorage(url))]
    except ImportError:
        from optuna_dashboard import wsgi  # noqa: F401  (the app imports; summaries from Optuna)

        listed = [s.study_name for s in optuna.get_all_study_summaries(url)]
    return {"trials": trials, "study_attrs": clean(study.user_attrs), "dashboard_lists": listed}


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only {'after' if k not in a else 'before'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(prog="benchmarks/identity.py", description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", help="write the figures to this JSON")
    g.add_argument("--compare", help="compare the figures with this JSON")
    p.add_argument("--only", choices=["train", "study"], help="one half only")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tdmr-identity-") as tmp:
        folder = Path(tmp)
        now: dict[str, Any] = {}
        if args.only in (None, "train"):
            now["train"] = record_train(folder)
        if args.only in (None, "study"):
            now["study"] = record_study(folder)
    if args.record:
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(now, indent=1, sort_keys=True))
        print(f"recorded {', '.join(now)} in {args.record}")
        for m, metrics in now.get("train", {}).items():
            print(f"  train {m:8s} val_acc {metrics.get('val_acc')}  test_acc {metrics.get('test_acc')}")
        for t in now.get("study", {}).get("trials", []):
            print(f"  trial {t['number']} {t['state']:8s} value {t['values']}")
        return 0
    before = json.loads(Path(args.compare).read_text())
    if args.only:
        before = {args.only: before[args.only]}
    diffs = differences(before, now)
    for d in diffs:
        print("DIFF", d)
    n = sum(len(v) if isinstance(v, dict) else 1 for v in now.values())
    print(f"{'identical' if not diffs else f'{len(diffs)} differences'} ({', '.join(now)}; {n} records)")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
