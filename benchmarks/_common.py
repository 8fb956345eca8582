"""Helpers shared by the benchmark scripts: repo path, machine description, JSON output, tables.

Every benchmark measures its figures side by side in one run (repetitions interleaved, medians
reported), because the machine may be shared: absolute times are not comparable across runs,
ratios measured together are.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a clean clone: python benchmarks/x.py
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the two flags every benchmark takes: --quick and --out."""
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions / trials (a smoke run, noisier)")
    p.add_argument("--out", default=str(RESULTS / f"{name}.json"), help="where to write the JSON figures")
    p.add_argument("--verbose", action="store_true", help="log the pipeline's progress")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own); 1 on a shared, busy machine, where OpenMP "
                        "threads waiting for each other on busy cores slow every step down several times")
    return p


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when asked (recorded in the JSON's machine.torch_threads)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def setup(args: argparse.Namespace) -> None:
    """Logging and threads, from the common flags."""
    setup_logging(args.verbose)
    apply_threads(args.threads)


def setup_logging(verbose: bool) -> None:
    """Quiet by default: the pipeline logs every epoch."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        for name in ("optuna", "tdmr_search", "timm"):
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
        except ImportError:
            pass


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu",
    }
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["device"] = "cuda"
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import optuna
        import timm

        info["timm"] = timm.__version__
        info["optuna"] = optuna.__version__
    except ImportError:
        pass
    try:
        from tdmr_search import __version__

        info["tdmr_search"] = __version__
    except ImportError:
        pass
    return info


def stamp() -> dict[str, Any]:
    """The command line, the date and the machine, for the head of every result file."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (atomically: a partial file never replaces a full one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_default) + "\n")
    os.replace(tmp, path)
    return path


def _default(o: Any) -> Any:
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    return float(statistics.fmean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``"""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
