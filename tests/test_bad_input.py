"""A catalogue of bad inputs: each one gives one error line that names the problem and what is
accepted, exit code 2, no traceback, and leaves the study store (and every other file) as it was.

Each case is (id, how to build the bad input in the working folder, CLI arguments, substrings the
error line must hold). The catalogue runs ``tdmr_search.cli.main`` in this process, so each case
costs its own work and not a fresh interpreter (importing torch and timm takes seconds); a few
cases also run as real ``python -m tdmr_search`` processes to check what a user sees on stderr.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import shutil
import sqlite3
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from conftest import SMOKE_SPACE, TINY_CONFIG, run_cli

Setup = Callable[[Path], None]

# ----------------------------------------------------------------------------- building bad inputs


def _nothing(folder: Path) -> None:
    return None


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
    raw[last] = value


def config(changes: dict[str, Any] | None = None, name: str = "bad.yaml") -> Setup:
    """Write TINY_CONFIG with dotted-key ``changes`` to ``name``."""

    def setup(folder: Path) -> None:
        raw = copy.deepcopy(TINY_CONFIG)
        for key, value in (changes or {}).items():
            _set(raw, key, value)
        (folder / name).write_text(yaml.safe_dump(raw, sort_keys=False))

    return setup


def text(name: str, content: str) -> Setup:
    def setup(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)

    return setup


def space(mutate: Callable[[dict[str, Any]], None] | None = None, mini: bool = True, name: str = "space.yaml") -> Setup:
    """Write spaces/smoke.yaml, changed by ``mutate``; ``mini`` keeps one cheap student (fast gate)."""

    def setup(folder: Path) -> None:
        raw = yaml.safe_load(SMOKE_SPACE.read_text())
        if mini:
            raw["students"] = {"names": ["test_resnet"], "resolutions": [16]}
        if mutate is not None:
            mutate(raw)
        (folder / name).write_text(yaml.safe_dump(raw, sort_keys=False))

    return setup


def both(*setups: Setup) -> Setup:
    def setup(folder: Path) -> None:
        for s in setups:
            s(folder)

    return setup


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def imagefolder(classes: tuple[str, ...] = ("a", "b"), train: int = 6, test: int = 2, corrupt: bool = False,
                test_classes: tuple[str, ...] | None = None) -> Setup:
    """An image folder ``data/`` with train/ and test/ class folders of tiny PNGs."""

    def setup(folder: Path) -> None:
        root = folder / "data"
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir(parents=True)
        for split, n, names in (("train", train, classes), ("test", test, test_classes or classes)):
            for c in names:
                (root / split / c).mkdir(exist_ok=True)
                for i in range(n):
                    _png(root / split / c / f"{i}.png", seed=i)
        if corrupt:
            (root / "train" / classes[0] / "broken.png").write_bytes(np.random.default_rng(0).bytes(300))

    return setup


def weights_of(arch: str, name: str) -> Setup:
    """A real state dict of timm model ``arch`` saved with torch.save."""

    def setup(folder: Path) -> None:
        import timm
        import torch

        torch.save(timm.create_model(arch).state_dict(), folder / name)

    return setup


def junk(name: str) -> Setup:
    """A file of random bytes."""

    def setup(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(np.random.default_rng(1).bytes(4096))

    return setup


def saved(obj: Any, name: str) -> Setup:
    """``obj`` saved with torch.save (a real pickle that is not a state dict)."""

    def setup(folder: Path) -> None:
        import torch

        torch.save(obj, folder / name)

    return setup


def optuna_store(name: str, build: Callable[[optuna.Study], None] = lambda s: None, **create: Any) -> Setup:
    """A study made with plain Optuna in ``studies/<name>.db`` (the default store of ``--study name``)."""

    def setup(folder: Path) -> None:
        (folder / "studies").mkdir(exist_ok=True)
        study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db", **create)
        build(study)

    return setup


def _one_trial(study: optuna.Study) -> None:
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)


def app_database(name: str, table: str = "customers") -> Setup:
    """A SQLite file of another application: one table of its own, no Optuna store.

    Not named ``*.db``: the snapshot opens those as study stores (which would add Optuna's tables).
    """

    def setup(folder: Path) -> None:
        with contextlib.closing(sqlite3.connect(folder / name)) as con:
            con.execute(f"create table {table} (id integer primary key, name text)")
            con.commit()

    return setup


#: Nine levels of nine aliases each: 387 million strings once expanded.
ALIAS_BOMB = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))


def _pruned_and_failed(study: optuna.Study) -> None:
    t = study.ask()
    t.report(0.5, 0)
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)


def no_weights(folder: Path) -> None:
    """Delete every stored student weights file of the smoke study (the folder stays)."""
    store = folder / "studies" / "smoke-artifacts"
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files, "the smoke study should keep some student weights"
    for p in files:
        p.unlink()


def no_artifact_folder(folder: Path) -> None:
    shutil.rmtree(folder / "studies" / "smoke-artifacts")


def a_file(name: str) -> Setup:
    return text(name, "not a folder\n")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]
    """Substrings of the error line: the problem, and what is accepted."""
    setup: Setup = _nothing
    smoke: bool = False
    """Run in a private copy of the smoke study's folder (store ``studies/smoke.db``)."""
    marks: tuple[Any, ...] = field(default=())


def train(*extra: str, cfg: str = "bad.yaml") -> tuple[str, ...]:
    return ("train", "--config", cfg, "--out", "out", "--device", "cpu", *extra)


def run(*extra: str, study: str = "s", space_file: str = "space.yaml", budget: str = "2") -> tuple[str, ...]:
    return ("run", "--study", study, "--space", space_file, "--budget", budget, "--no-progress", *extra)


def _params(**params: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw["params"] = params

    return mutate


def _top(**values: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        raw.update(values)

    return mutate


CASES = [
    # --- config files and --set
    Case("config-missing", train(cfg="nosuch.yaml"), ("Cannot read the config file 'nosuch.yaml'", "No such file")),
    Case("config-yaml-syntax", train(), ("not valid YAML at line 2",),
         text("bad.yaml", "data: {dataset: digits\nteacher: [test_vit\n")),
    Case("config-not-a-mapping", train(), ("must hold a mapping of sections", "got list"), text("bad.yaml", "- digits\n")),
    Case("config-unknown-key", train(), ("Unknown setting 'reprogram.epoch'", "did you mean 'epochs'?", "accepted in reprogram:"),
         config({"reprogram.epoch": 2})),
    Case("config-unknown-section", train(), ("Unknown setting 'distil'", "did you mean 'distill'?", "accepted:"),
         config({"distil": {"epochs": 2}})),
    Case("config-wrong-type", train(), ("distill.epochs must be an integer; got 'ten'",), config({"distill.epochs": "ten"})),
    Case("config-wrong-type-bool", train(), ("student.pretrained must be true or false; got 'maybe'",),
         config({"student.pretrained": "maybe"})),
    Case("config-negative-temperature", train(), ("distill.temperature must be > 0.0", "got -1"),
         config({"distill.temperature": -1})),
    Case("config-zero-proxy-dim", train(), ("reprogram.proxy_dim must be >= 1", "got 0"), config({"reprogram.proxy_dim": 0})),
    Case("config-epochs-below-stages", train(), ("distill.epochs must be at least distill.n_stages (4)", "got 2"),
         config({"distill.n_stages": 4, "distill.epochs": 2})),
    Case("config-shots-and-fraction", train(), ("data.shots and data.fraction cannot both be set",),
         config({"data.fraction": 0.5})),
    Case("config-val-fraction", train(), ("data.val_fraction must be > 0.0 and <= 0.9", "got 1.5"),
         config({"data.val_fraction": 1.5})),
    Case("config-several-problems-at-once", train(), ("reprogram.proxy_dim must be >= 1", "distill.temperature must be > 0.0"),
         config({"reprogram.proxy_dim": 0, "distill.temperature": -2})),
    Case("set-without-equals", train("--set", "distill.temperature"),
         ("A --set flag must look like section.field=value", "'distill.temperature'"), config()),
    Case("set-negative-temperature", train("--set", "distill.temperature=-1"), ("distill.temperature must be > 0.0", "got -1"),
         config()),
    Case("set-unknown-section", train("--set", "distil.epochs=3"), ("Unknown config section 'distil'", "accepted sections:"),
         config()),
    # --- names: models, datasets, transforms, weight sources
    Case("unknown-teacher", train(), ("'test_vitt', which is not a timm model", "did you mean 'test_vit'"),
         config({"teacher.name": "test_vitt"})),
    Case("unknown-student", train(), ("'test_resnett', which is not a timm model", "did you mean 'test_resnet'"),
         config({"student.name": "test_resnett"})),
    Case("unknown-dataset", train(), ("Unknown dataset 'digit'", "accepted:", "did you mean 'digits'?"),
         config({"data.dataset": "digit"})),
    Case("unknown-transform", train(), ("reprogram.transform must be one of resize, additive, pad", "did you mean 'pad'?"),
         config({"reprogram.transform": "padd"})),
    Case("unknown-projector", train(), ("student.projector must be one of linear, mlp", "got 'mpl'"),
         config({"student.projector": "mpl"})),
    Case("unknown-weight-source", train(), ("unknown teacher weight source 'pretrained'", "accepted: hub, package, random"),
         config({"teacher.weights": "pretrained"})),
    # --- data
    Case("too-few-labels-to-split", train(), ("cannot be split into train and validation", "raise data.shots"),
         config({"data.shots": 1})),
    Case("more-shots-than-data", train(), ("data.shots=500 asks for more images than class", "accepted: at most"),
         config({"data.shots": 500})),
    Case("imagefolder-one-class", train(), ("has 1 class", "needs at least 2"),
         both(imagefolder(classes=("a",)), config({"data.dataset": "imagefolder:data", "data.shots": 4}))),
    Case("imagefolder-no-class-folders", train(), ("imagefolder: cannot read 'data'", "one folder of images per class"),
         both(imagefolder(classes=()), config({"data.dataset": "imagefolder:data", "data.shots": None}))),
    Case("imagefolder-no-images", train(), ("Found no valid file", "Supported extensions"),
         both(imagefolder(train=0, test=0), config({"data.dataset": "imagefolder:data", "data.shots": None}))),
    Case("imagefolder-not-a-folder", train(), ("'nowhere' is not a folder", "train/ and test/"),
         config({"data.dataset": "imagefolder:nowhere"})),
    Case("imagefolder-classes-differ", train(), ("different class folders", "test: a, c", "accepted: the same"),
         both(imagefolder(test_classes=("a", "c")), config({"data.dataset": "imagefolder:data", "data.shots": None}))),
    Case("imagefolder-corrupt-image", train(), ("Cannot read image file 'data/train/a/broken.png'", "accepted: image files"),
         both(imagefolder(corrupt=True), config({"data.dataset": "imagefolder:data", "data.shots": None,
                                                 "data.val_fraction": 0.5}))),
    Case("fashion-mnist-missing", train(), ("Fashion-MNIST file train-images-idx3-ubyte[.gz] is not in", "set data.root"),
         config({"data.dataset": "fashion-mnist", "data.root": "."})),
    Case("torchvision-dataset-offline", train(), ("'cifar10' is not in", "set data.download: true"),
         config({"data.dataset": "cifar10", "data.root": "nodata"})),
    # --- teacher weights files
    Case("teacher-weights-wrong-architecture", train(), ("does not fit teacher 'test_vit'", "accepted: a state dict"),
         both(weights_of("test_resnet", "resnet.pth"), config({"teacher.weights": "resnet.pth"}))),
    Case("teacher-weights-not-weights", train(), ("Cannot read the teacher weights file 'junk.pth'", "accepted: a .safetensors"),
         both(junk("junk.pth"), config({"teacher.weights": "junk.pth"}))),
    Case("teacher-weights-not-safetensors", train(), ("Cannot read the teacher weights file 'junk.safetensors'",),
         both(junk("junk.safetensors"), config({"teacher.weights": "junk.safetensors"}))),
    Case("teacher-weights-a-folder", train(), ("'wdir' is not a file", "accepted teacher.weights:"),
         both(lambda d: (d / "wdir").mkdir(), config({"teacher.weights": "wdir"}))),
    Case("teacher-weights-not-a-state-dict", train(), ("does not hold a state dict of tensors (it holds a list)", "accepted:"),
         both(saved([1, 2], "list.pth"), config({"teacher.weights": "list.pth"}))),
    Case("teacher-package-weights-for-other-model", train(),
         ("no packaged ImageNet weights for model 'test_vit'", "accepted: tf_efficientnet_lite0"),
         config({"teacher.weights": "package"})),
    Case("teacher-input-size-not-multiple-of-patch", train(),
         ("Teacher 'test_vit' cannot run at teacher.input_size=20", "multiple of its patch size"),
         config({"teacher.input_size": 20})),
    Case("student-resolution-not-multiple-of-patch", train(), ("student.resolution", "20"),
         config({"student.name": "test_vit", "student.resolution": 20})),
    Case("student-over-the-config-cap", train(), ("costs 1.21M FLOPs, over the cap max_flops=1k", "choose a smaller student"),
         config({"max_flops": "1k"})),
    Case("device-cuda-without-gpu", train("--device", "cuda"), ("no CUDA GPU is visible", "accepted here: auto, cpu"), config(),
         marks=(pytest.mark.skipif(_has_cuda(), reason="a CUDA GPU is visible"),)),
    Case("teacher-weights-missing", train(), ("'gone.pth' does not exist", "accepted teacher.weights: hub, package, random, or the path"),
         config({"teacher.weights": "gone.pth"})),
    # --- search spaces (validate and run)
    Case("space-missing", ("validate", "nosuch.yaml"), ("Cannot read the search space 'nosuch.yaml'",)),
    Case("space-yaml-syntax", ("validate", "space.yaml"), ("is not valid YAML at line",), text("space.yaml", "base: {a: [\n")),
    Case("space-unknown-top-key", ("validate", "space.yaml"), ("Unknown top-level key 'max_flop'", "did you mean 'max_flops'?"),
         space(_top(max_flop="2M"))),
    Case("space-bad-max-flops", ("validate", "space.yaml"), ("'max_flops' must be a FLOPs figure such as 50M", "'lots'"),
         space(_top(max_flops="lots"))),
    Case("space-unknown-student", ("validate", "space.yaml"), ("students.names names 'test_resnett'", "did you mean 'test_resnet'"),
         space(_top(students={"names": ["test_resnett"], "resolutions": [16]}))),
    Case("space-base-wrong-type", ("validate", "space.yaml"), ("base: Invalid config", "distill.epochs must be an integer"),
         space(lambda r: r["base"]["distill"].update(epochs="four"))),
    Case("space-param-not-a-setting", ("validate", "space.yaml"),
         ("'distill.temprature' is not a pipeline setting", "did you mean 'distill.temperature'?"),
         space(_params(**{"distill.temprature": {"type": "float", "low": 1.0, "high": 4.0}}))),
    Case("space-param-data-searched", ("validate", "space.yaml"), ("'data.shots' cannot be searched",),
         space(_params(**{"data.shots": {"type": "int", "low": 5, "high": 20}}))),
    Case("space-when-refers-to-later-param", ("validate", "space.yaml"),
         ("params.reprogram.pad.when refers to 'reprogram.transform', which must be a parameter listed before it",),
         space(_params(**{"reprogram.pad": {"type": "int", "low": 2, "high": 8, "when": {"reprogram.transform": ["pad"]}},
                          "reprogram.transform": {"type": "categorical", "choices": ["pad", "resize"]}}))),
    Case("space-param-bad-type", ("validate", "space.yaml"), ("params.distill.lr.type must be one of int, float, categorical",),
         space(_params(**{"distill.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}))),
    Case("space-param-low-above-high", ("validate", "space.yaml"), ("needs numbers low <= high", "low=8, high=2"),
         space(_params(**{"reprogram.pad": {"type": "int", "low": 8, "high": 2}}))),
    Case("space-param-unknown-choice", ("validate", "space.yaml"),
         ("params.reprogram.transform: choice 'padd' is not accepted", "must be one of resize", "did you mean 'pad'?"),
         space(_params(**{"reprogram.transform": {"type": "categorical", "choices": ["pad", "padd"]}}))),
    Case("space-param-negative-temperature", ("validate", "space.yaml"),
         ("params.distill.temperature: low -1.0 is not accepted", "distill.temperature must be > 0.0"),
         space(_params(**{"distill.temperature": {"type": "float", "low": -1.0, "high": 4.0}}))),
    Case("space-param-zero-proxy-dim", ("validate", "space.yaml"),
         ("params.reprogram.proxy_dim: low 0 is not accepted", "reprogram.proxy_dim must be >= 1"),
         space(_params(**{"reprogram.proxy_dim": {"type": "int", "low": 0, "high": 32}}))),
    Case("space-students-not-a-mapping", ("validate", "space.yaml"), ("students must be a mapping with names and resolutions",),
         space(_top(students=["test_resnet"]))),
    Case("space-students-unknown-key", ("validate", "space.yaml"), ("Unknown key students.name", "did you mean 'names'?"),
         space(_top(students={"name": ["test_resnet"], "resolutions": [16]}))),
    Case("space-student-name-in-params", ("validate", "space.yaml"), ("'student.name' is searched through students.names",),
         space(_params(**{"student.name": {"type": "categorical", "choices": ["test_vit"]}}))),
    Case("space-step-with-log", ("validate", "space.yaml"), ("a log-scale range cannot have a step",),
         space(_params(**{"distill.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True, "step": 1e-3}}))),
    Case("space-step-zero", ("validate", "space.yaml"), ("params.reprogram.pad.step must be a positive integer", "got 0"),
         space(_params(**{"reprogram.pad": {"type": "int", "low": 2, "high": 8, "step": 0}}))),
    Case("space-step-word", ("validate", "space.yaml"), ("params.distill.lr.step must be a positive number", "got 'x'"),
         space(_params(**{"distill.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "step": "x"}}))),
    Case("space-base-method", ("validate", "space.yaml"), ("base.method: a search always runs tdmr", "got 'kd'"),
         space(lambda r: r["base"].update(method="kd"))),
    Case("space-base-max-flops", ("validate", "space.yaml"), ("base.max_flops: set the FLOPs cap as the top-level max_flops",),
         space(lambda r: r["base"].update(max_flops="2M"))),
    Case("space-teacher-input-size-not-multiple-of-patch", ("validate", "space.yaml"),
         ("Teacher 'test_vit' cannot run at teacher.input_size=20", "multiple of its patch size"),
         space(lambda r: r["base"]["teacher"].update(input_size=20))),
    Case("space-no-student-can-be-built", ("validate", "space.yaml"),
         ("No student candidate can be built (e.g. test_vit@20:", "accepted: students.names / students.resolutions"),
         space(_top(students={"names": ["test_vit"], "resolutions": [20]}))),
    Case("flops-cap-below-every-student-validate", ("validate", "space.yaml"), ("No student fits the FLOPs cap", "cheapest"),
         space(_top(max_flops="10k"), mini=False)),
    Case("flops-cap-below-every-student-run", run(), ("No student fits the FLOPs cap", "cheapest"),
         space(_top(max_flops="10k"), mini=False)),
    Case("space-more-shots-than-data", ("validate", "space.yaml"), ("data.shots=1000 asks for more images",),
         space(lambda r: r["base"]["data"].update(shots=1000))),
    # --- run flags and stores
    Case("budget-word", run(budget="soon"), ("--budget must be a number of trials (20) or a duration", "got 'soon'"), space()),
    Case("budget-zero", run(budget="0"), ("--budget must be a number of trials", "got '0'"), space()),
    Case("budget-negative", run(budget="-3"), ("--budget must be a number of trials", "got '-3'"), space()),
    Case("budget-zero-seconds", run(budget="0s"), ("--budget must be", "got '0s'"), space()),
    Case("workers-zero", run("--workers", "0"), ("--workers must be at least 1", "got 0"), space()),
    Case("workers-too-many-on-sqlite", run("--workers", "9"), ("SQLite serves at most 4 local workers", "PostgreSQL"), space()),
    Case("sampler-unknown", run("--sampler", "nosuch"), ("--sampler must be one of tpe, random, gp, nsga2", "got 'nosuch'"),
         space()),
    Case("pruner-unknown", run("--pruner", "nosuch"), ("--pruner must be one of auto, median, halving, hyperband, none",), space()),
    Case("sampler-gp-two-objectives", run("--sampler", "gp", "--two-objective"), ("--sampler gp searches one objective",),
         space()),
    Case("study-name-invalid", run(study="my study!"), ("The study name must be 1-128 letters", "got 'my study!'"), space()),
    Case("store-under-proc", run("--storage", "sqlite:////proc/nope/x.db"),
         ("Cannot write the study store '/proc/nope/x.db'", "choose a writable --storage"), space()),
    Case("store-parent-is-a-file", run("--storage", "sqlite:///afile/x.db"),
         ("Cannot write the study store 'afile/x.db'", "choose a writable --storage"), both(space(), a_file("afile"))),
    Case("store-database-down", run("--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test"),
         ("Cannot open the study store 'postgresql+psycopg://postgres@127.0.0.1:1/test'",), space()),
    Case("store-unknown-dialect", run("--storage", "nosuchdb://host/x"), ("Cannot open the study store 'nosuchdb://host/x'",),
         space()),
    Case("store-not-a-database", ("status", "--study", "x"), ("Cannot open the study store 'sqlite:///studies/x.db'",
                                                              "file is not a database"), junk("studies/x.db")),
    Case("artifacts-folder-is-a-file", run("--artifacts", "afile"), ("Cannot write", "afile", "--artifacts"),
         both(space(), a_file("afile"))),
    Case("status-database-down", ("status", "--study", "s", "--storage", "postgresql+psycopg://postgres@127.0.0.1:1/test"),
         ("Cannot open the study store",)),
    Case("resume-with-other-objectives", run("--two-objective", study="smoke", space_file=str(SMOKE_SPACE), budget="4"),
         ("was created with 1 objective(s)", "without --two-objective"), smoke=True),
    # --- status, export, report
    Case("status-no-store", ("status", "--study", "nosuch"), ("No study store at 'studies/nosuch.db'", "--storage")),
    Case("status-unknown-study", ("status", "--study", "nosuch", "--storage", "sqlite:///studies/empty.db"),
         ("holds no study 'nosuch'", "it holds: empty"), optuna_store("empty")),
    Case("export-no-finished-trial", ("export", "--study", "empty", "--best", "--out", "exported"),
         ("Study 'empty' has no finished trial yet",), optuna_store("empty", direction="maximize")),
    Case("export-pruned-trial", ("export", "--study", "p", "--trial", "0", "--out", "exported"),
         ("Trial 0 of study 'p' is PRUNED, not COMPLETE", "only finished trials"),
         optuna_store("p", _pruned_and_failed, direction="maximize")),
    Case("export-failed-trial", ("export", "--study", "p", "--trial", "1", "--out", "exported"),
         ("Trial 1 of study 'p' is FAIL, not COMPLETE",), optuna_store("p", _pruned_and_failed, direction="maximize")),
    Case("export-no-such-trial", ("export", "--study", "p", "--trial", "7", "--out", "exported"),
         ("has no trial 7", "it has trials 0 to 1"), optuna_store("p", _pruned_and_failed, direction="maximize")),
    Case("export-best-of-two-objectives", ("export", "--study", "two", "--best", "--out", "exported"),
         ("has two objectives", "--pareto or --trial N"), optuna_store("two", directions=["maximize", "minimize"])),
    Case("export-weights-gone", ("export", "--study", "smoke", "--best", "--out", "exported"),
         ("student weights of trial", "are gone from the artifact store"), no_weights, smoke=True),
    Case("export-artifact-folder-gone", ("export", "--study", "smoke", "--best", "--out", "exported"),
         ("student weights of trial", "are gone from the artifact store"), no_artifact_folder, smoke=True),
    Case("export-out-is-a-file", ("export", "--study", "smoke", "--best", "--out", "afile"),
         ("Cannot write the export folder 'afile'",), a_file("afile"), smoke=True),
    Case("report-unwritable", ("report", "--study", "smoke", "--out", "/proc/nope/report.html"),
         ("Cannot write the report '/proc/nope/report.html'", "choose a writable --out"), smoke=True),
    Case("train-out-is-a-file", train(cfg="tiny.yaml")[:3] + ("--out", "afile"), ("Cannot write to the output folder 'afile'",),
         both(config(name="tiny.yaml"), a_file("afile"))),
    # --- issue 15: stores that are not ours, limits, names
    Case("run-foreign-maximize-study", run(study="plain"), ("Study 'plain'", "was not created by tdmr-search",
                                                            "--adopt-study"),
         both(space(), optuna_store("plain", _one_trial, direction="maximize"))),
    Case("run-foreign-minimize-study", run(study="plain"), ("was not created by tdmr-search", "a minimize study"),
         both(space(), optuna_store("plain", _one_trial, direction="minimize"))),
    Case("run-app-database", run("--storage", "sqlite:///app.sqlite"),
         ("not an Optuna study store", "customers", "--allow-other-tables"), both(space(), app_database("app.sqlite"))),
    Case("run-app-database-with-a-studies-table", run("--storage", "sqlite:///app.sqlite"),
         ("not an Optuna study store", "studies", "--allow-other-tables"),
         both(space(), app_database("app.sqlite", "studies"))),
    Case("status-app-database", ("status", "--study", "s", "--storage", "sqlite:///app.sqlite"),
         ("not an Optuna study store", "it holds no study to read"), app_database("app.sqlite")),
    Case("export-into-a-non-empty-folder", ("export", "--study", "smoke", "--best", "--out", "mine"),
         ("The export folder 'mine' is not empty", "notes.md", "--force"),
         text("mine/notes.md", "my notes\n"), smoke=True),
    Case("space-alias-bomb", ("validate", "space.yaml"), ("The search space 'space.yaml'", "YAML aliases"),
         text("space.yaml", ALIAS_BOMB)),
    Case("config-alias-bomb", train(), ("The config file 'bad.yaml'", "YAML aliases"), text("bad.yaml", ALIAS_BOMB)),
    Case("space-too-large", ("validate", "space.yaml"), ("The search space 'space.yaml' is 1.2 MB",
                                                         "accepted: YAML files up to 1 MB"),
         text("space.yaml", "# padding\n" * 120_000)),
    Case("study-name-trailing-newline", run(study="nl\n"), ("The study name must be", "got 'nl\\n'"), space()),
    Case("store-in-memory", run("--storage", "sqlite:///:memory:"), ("in-memory SQLite database", "sqlite:///PATH"),
         space()),
    Case("store-driver-missing", ("status", "--study", "s", "--storage", "postgresql+pg8000://postgres@127.0.0.1/test"),
         ("needs the PostgreSQL driver 'pg8000'", "cannot be imported", "postgresql+psycopg://")),
]


# ----------------------------------------------------------------------------- the checks


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every file's bytes (by hash; a SQLite store by its SQL dump) and each study's trials and states.

    A store is compared by its content, not its bytes: opening one switches it to WAL journaling,
    which rewrites the file header and nothing else.
    """
    files, stores = {}, []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.endswith(("-wal", "-shm", "-journal")):
            continue
        content = p.read_bytes()
        if p.suffix == ".db":
            try:
                with contextlib.closing(sqlite3.connect(p)) as conn:
                    content = "\n".join(conn.iterdump()).encode()
                stores.append(p)
            except sqlite3.DatabaseError:  # not a database: compare its bytes
                pass
        files[str(p.relative_to(folder))] = hashlib.sha256(content).hexdigest()
    studies = {}
    for db in stores:
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url):
            study = optuna.load_study(study_name=summary.study_name, storage=url)
            studies[f"{db.name}:{summary.study_name}"] = [(t.number, t.state.name, t.values) for t in study.trials]
    return {"files": files, "studies": studies}


def _main_in_process(args: tuple[str, ...], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    from tdmr_search.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # pytest owns the log handlers
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:  # noqa: BLE001 - what a user would see as a traceback
        pytest.fail(f"tdmr-search {' '.join(args)} raised {type(exc).__name__} instead of a one-line error:\n"
                    + "".join(traceback.format_exception(exc)))
    out, err = capsys.readouterr()
    return code, out, err


def check_error_output(code: int, stdout: str, stderr: str, expect: tuple[str, ...]) -> str:
    """Exit 2, no traceback, one 'error:' line and it is the last; returns that line."""
    assert code == 2, f"exit code {code}, stderr:\n{stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr
    line = errors[0]
    assert line.startswith("tdmr-search "), line
    for part in expect:
        assert part in line, f"{part!r} is not in the error line:\n{line}"
    return line


@pytest.fixture
def case_folder(request, tmp_path) -> Callable[[Case], Path]:
    def make(case: Case) -> Path:
        folder = tmp_path / case.id
        if case.smoke:
            shutil.copytree(request.getfixturevalue("smoke_study"), folder)
        else:
            folder.mkdir()
        case.setup(folder)
        return folder

    return make


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=(*c.marks, *([pytest.mark.slow] if c.smoke else [])))
                                  for c in CASES])
def test_bad_input(case: Case, case_folder, monkeypatch, capsys):
    folder = case_folder(case)
    before = _snapshot(folder)
    code, out, err = _main_in_process(case.args, folder, monkeypatch, capsys)
    check_error_output(code, out, err, case.expect)
    assert out == "", f"a failed command printed a result:\n{out}"
    assert _snapshot(folder) == before, "the command changed the files or the study store"


def test_catalogue_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 20


# What a user sees: real processes print INFO logs, then the single error line, and nothing else.
REAL = ("unknown-teacher", "store-database-down", "budget-word")


@pytest.mark.slow
def test_real_processes_print_one_error_line(case_folder):
    cases = {c.id: c for c in CASES}
    folders = {name: case_folder(cases[name]) for name in REAL}
    with ThreadPoolExecutor(len(REAL)) as pool:
        procs = dict(zip(REAL, pool.map(lambda n: run_cli(*cases[n].args, cwd=folders[n], check=False), REAL), strict=True))
    for name, proc in procs.items():
        check_error_output(proc.returncode, proc.stdout, proc.stderr, cases[name].expect)
