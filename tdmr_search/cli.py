"""The ``tdmr-search`` command line: a table from command name to a thin handler.

Each handler parses, calls one library function, prints and returns an exit code. A
:class:`TdmrError` becomes one line on stderr and exit code 2 (a traceback only with --debug).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tdmr_search import progress
from tdmr_search.config import DEVICES, METHODS
from tdmr_search.console import Console
from tdmr_search.errors import Interrupted, TdmrError
from tdmr_search.version import __version__

if TYPE_CHECKING:
    from tdmr_search.search.settings import SearchSettings

__all__ = ["main"]

logger = logging.getLogger("tdmr_search")

#: The commands that run a search: signals stop them between steps, their log is one line per trial.
SEARCHES = ("run", "worker")


def _train(args: argparse.Namespace) -> int:
    from tdmr_search.config import load_config

    overrides = list(args.set or [])
    if args.method:
        overrides.append(f"method={args.method}")
    if args.device:
        overrides.append(f"device={args.device}")
    config = load_config(args.config, overrides)  # config errors come before the heavy imports
    out = Path(args.out)
    _check_writable(out)
    from tdmr_search.pipeline.run import run_pipeline, save_result

    result = run_pipeline(config)
    save_result(result, out)
    m = result.metrics
    print(
        f"{config.method}: val_acc {m['val_acc']:.4f}  test_acc {m['test_acc']:.4f}  "
        f"flops {m['flops'] / 1e6:.2f}M  params {m['params'] / 1e6:.3f}M  "
        f"seconds {sum(m['seconds'].values()):.1f}  -> {out}"
    )
    return 0


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tdmr-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise TdmrError(f"Cannot write to the output folder {str(out)!r}: {err.strerror}; choose a writable --out folder") from None


def _run(args: argparse.Namespace) -> int:
    from tdmr_search.search.settings import SearchSettings, StoreOptions

    settings = SearchSettings(
        space=args.space, study=args.study, storage=args.storage, budget=args.budget, sampler=args.sampler,
        pruner=args.pruner, seed=args.seed, two_objective=args.two_objective, workers=args.workers, gpus=args.gpus,
        artifacts=args.artifacts, progress=not args.no_progress, baselines=not args.no_baselines,
        isolate=args.isolate, teacher_cache=not args.no_cache, reevaluate=args.reevaluate, folds=args.folds,
        store=StoreOptions(allow_changed_space=args.allow_changed_space, adopt_study=args.adopt_study,
                           allow_other_tables=args.allow_other_tables),
    )
    print(_search(settings, args.debug))
    return 0


def _worker(args: argparse.Namespace) -> int:
    """A worker process of ``run --workers N`` / ``--isolate``: its settings come from its environment."""
    from tdmr_search.search.workers import worker_settings

    _search(worker_settings(), args.debug)  # the run that started the workers prints the one summary
    return 0


def _search(settings: SearchSettings, debug: bool) -> str:
    from tdmr_search.search.interrupt import stop_on_signals

    with stop_on_signals():  # from here on a signal only sets a flag: the search stops between steps
        import optuna

        from tdmr_search.search.study import run_search

        if not debug:
            optuna.logging.set_verbosity(optuna.logging.WARNING)  # our progress line replaces Optuna's
        text = run_search(settings)
    progress.finish()  # the status line goes before the summary
    return text


def _validate(args: argparse.Namespace) -> int:
    from tdmr_search.search.space import describe_feasible

    print(describe_feasible(args.space))
    return 0


def _status(args: argparse.Namespace) -> int:
    from tdmr_search.search.summary import study_status

    print(study_status(args.study, args.storage))
    return 0


def _export(args: argparse.Namespace) -> int:
    from tdmr_search.export import export

    which = "best" if args.best else "pareto" if args.pareto else args.trial
    for folder in export(args.study, args.storage, which, args.out, artifacts=args.artifacts, force=args.force):
        print(folder)
    return 0


def _report(args: argparse.Namespace) -> int:
    from tdmr_search.report import write_report

    print(write_report(args.study, args.storage, args.out))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tdmr_search.predict import predict

    result = predict(args.model, args.images, top_k=args.top_k, backend=args.backend)
    for row in result.failed:
        print(f"tdmr-search predict: {row.file}: {row.error}", file=sys.stderr)
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(result.to_csv())
        except OSError as err:
            raise TdmrError(f"Cannot write the predictions file {str(out)!r}: {err.strerror}; choose a writable --out") from None
        print(f"{len(result.rows) - len(result.failed)} of {len(result.rows)} files predicted with {result.backend} -> {out}")
    else:
        print(result.to_csv(), end="")
    return 1 if result.failed else 0


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=os.environ.get("TDMR_STORAGE") or None,
                   help="SQLAlchemy URL of the study store (default $TDMR_STORAGE, else sqlite:///studies/<study>.db)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="tdmr-search", description="Search Task-Driven Model Reprogramming pipelines with Optuna under a FLOPs budget.")
    parser.add_argument("--version", action="version", version=f"tdmr-search {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only warnings and results")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="every log line (run: per-epoch lines too)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    parser.add_argument("-v", "--verbose", action="store_true", help="every log line (run: per-epoch lines too)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name: str, **kw: object) -> argparse.ArgumentParser:
        return _add(name, parents=[common], **kw)  # type: ignore[arg-type]

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("train", help="run one configured pipeline (TDMR or a baseline) and save the student")
    p.add_argument("--config", help="YAML config file (defaults < file < --set)")
    p.add_argument("--out", required=True, help="folder for config.yaml, metrics.json and student.safetensors")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override one setting (repeatable)")
    p.add_argument("--method", choices=METHODS, help="override the method")
    p.add_argument("--device", choices=DEVICES, help="override the device")
    p.set_defaults(handler=_train)

    p = sub.add_parser("run", help="search: run (or resume) an Optuna study over the TDMR pipeline")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--space", required=True, help="search space YAML (see spaces/)")
    p.add_argument("--budget", required=True, help="a duration (90s, 30m, 2h) or a number of trials (20)")
    _storage_arg(p)
    p.add_argument("--sampler", default="tpe", help="tpe (default), random, gp, nsga2")
    p.add_argument("--pruner", default="auto",
                   help="auto (default: median with patience for tens of trials, hyperband from 200), median, "
                        "halving, hyperband, none")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--two-objective", action="store_true", help="maximise val accuracy and minimise FLOPs")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the study")
    p.add_argument("--gpus", help="comma-separated GPU ids: one worker per GPU")
    p.add_argument("--artifacts", help="folder of the artifact store (default beside the study)")
    p.add_argument("--isolate", action="store_true", help="run each trial in a fresh process")
    p.add_argument("--no-progress", action="store_true", help="no live progress line")
    p.add_argument("--no-baselines", action="store_true", help="skip the scratch and kd baselines")
    p.add_argument("--reevaluate", type=int, default=3, metavar="K",
                   help="after the search, retrain the K best configurations on other folds of the labelled images "
                        "and pick by the mean (default 3; 0: pick by one validation run); on a finished study it "
                        "just re-evaluates")
    p.add_argument("--folds", type=int, default=3,
                   help="validation accuracies per re-evaluated configuration, its own trial's included (default 3)")
    p.add_argument("--no-cache", action="store_true", help="do not share stage-1 outcomes through the teacher cache")
    p.add_argument("--allow-changed-space", action="store_true",
                   help="resume although the space or data changed (recorded in the study)")
    p.add_argument("--adopt-study", action="store_true", help="add trials to a study tdmr-search did not create")
    p.add_argument("--allow-other-tables", action="store_true",
                   help="add the study store to a database that holds other tables")
    p.set_defaults(handler=_run)

    # started by `run --workers N` / `--isolate` (search/workers.py), its settings in TDMR_WORKER_SETTINGS
    p = _add("worker", parents=[common])
    p.set_defaults(handler=_worker)

    p = sub.add_parser("validate", help="check a search space and list the students that fit its FLOPs cap")
    p.add_argument("space", help="search space YAML")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("status", help="a table of a study's trials")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.set_defaults(handler=_status)

    p = sub.add_parser("export", help="write the best (or a chosen) trial's config, weights, metrics and model card")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best trial")
    which.add_argument("--trial", type=int, help="trial number N")
    which.add_argument("--pareto", action="store_true", help="every trial on the accuracy/FLOPs Pareto front")
    p.add_argument("--out", required=True, help="output folder (new or empty, unless --force)")
    p.add_argument("--artifacts", help="folder of the artifact store (default beside the study)")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out, replacing files of the same names")
    p.set_defaults(handler=_export)

    p = sub.add_parser("report", help="an HTML report of a study (plotly)")
    p.add_argument("--study", required=True)
    _storage_arg(p)
    p.add_argument("--out", required=True, help="output .html file")
    p.set_defaults(handler=_report)

    p = sub.add_parser("predict", help="classify image files or folders with an exported or trained model")
    p.add_argument("--model", required=True, help="an export (tdmr-search export --out) or train --out folder")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDERS", help="image files (PNG, JPEG, ...) or folders of them")
    p.add_argument("--top-k", type=int, default=1, help="classes per image, best first (default 1)")
    p.add_argument("--out", help="write the predictions to this CSV file instead of printing them")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (default): onnxruntime when the folder holds student.onnx, else PyTorch")
    p.set_defaults(handler=_predict)
    return parser




def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tdmr-search`` and ``python -m tdmr_search``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signals = contextlib.ExitStack()
    if args.command in SEARCHES:  # from here on a signal only sets a flag: the search stops between steps
        from tdmr_search.search.interrupt import stop_on_signals

        signals.enter_context(stop_on_signals())
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    console = _console(args)
    logging.basicConfig(level=level, handlers=[console])
    if not args.debug:
        for noisy in ("optuna", "timm", "sqlalchemy", "alembic", "urllib3", "httpx", "onnx_ir", "onnxscript", "torch.onnx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with progress.listen(console):  # the status line comes down before any result or error line
            return int(args.handler(args))
    except Interrupted as err:  # a signal stopped the search between steps; the running trial is closed
        if args.command != "worker":
            if err.summary:
                print(err.summary)
            print(f"tdmr-search {args.command}: {_one_line(str(err))}; run the same command again to resume",
                  file=sys.stderr)
        return 130
    except TdmrError as err:
        if args.debug:
            raise
        print(f"tdmr-search {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command != "worker":
            print(f"tdmr-search {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signals.close()


def _console(args: argparse.Namespace) -> Console:
    """stderr's handler: for ``run``, one line per trial and a status line (every line with -v or --debug)."""
    run = args.command in SEARCHES
    verbose = bool(args.debug or args.verbose or os.environ.get("TDMR_VERBOSE") == "1")
    if run and args.verbose:
        os.environ["TDMR_VERBOSE"] = "1"  # the worker processes of --workers / --isolate inherit it
    bar = args.command == "run" and not args.quiet  # a worker's lines go under its starter's status line
    console = Console(bar=None if bar else False, verbose=verbose or not run)
    if run:  # Optuna's own warnings go through the same handler, under the status line
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
        logging.captureWarnings(True)
    return console


def _one_line(text: str) -> str:
    from tdmr_search.search.secrets import redact

    return redact(" ".join(text.split()))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
