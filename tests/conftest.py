"""Shared fixtures: tiny real configs (digits, timm test_* models) and one real smoke study."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SPACE = ROOT / "spaces" / "smoke.yaml"

# One OpenMP thread per process (unless the caller chose): tests start up to five processes at
# once on a 2-core machine, and OpenMP threads waiting for busy cores slow every process down
# (the two four-worker tests: 105 s with 2 threads each, 59 s with 1; the suite: 755 s -> 720 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")


TINY_CONFIG = {
    "device": "cpu",
    "seed": 0,
    "data": {"dataset": "digits", "shots": 20, "val_fraction": 0.25},
    "teacher": {"name": "test_vit", "weights": "random", "input_size": 32},
    "reprogram": {"transform": "pad", "pad": 4, "proxy_dim": 32, "epochs": 2, "lr": 0.003},
    "student": {"name": "test_resnet", "resolution": 16},
    "distill": {"n_stages": 2, "epochs": 3, "lr": 0.005},
}


@pytest.fixture
def tiny_config():
    """A validated config that trains in seconds on digits with timm test_* models."""
    from tdmr_search.config import config_from_dict

    return config_from_dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def digits_data():
    """The digits splits of TINY_CONFIG (loaded once)."""
    from tdmr_search.config import DataConfig
    from tdmr_search.data import load_data

    return load_data(DataConfig(**TINY_CONFIG["data"]), 0)


def cli_args(args: tuple[str, ...] | list[str]) -> list[str]:
    """``args`` for ``tdmr-search``; a ``run`` without ``--reevaluate`` gets ``--reevaluate 0``.

    Re-evaluation (on by default for users) adds up to K x (folds - 1) training runs to a study;
    only the tests of re-evaluation itself (test_selection.py) need them, and they ask explicitly.
    """
    args = list(args)
    if args[:1] == ["run"] and "--reevaluate" not in args:
        args += ["--reevaluate", "0"]
    return args


def run_cli(*args: str, cwd: Path, check: bool = True, timeout: float = 300,
            user_defaults: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m tdmr_search ARGS`` in ``cwd`` as a user would.

    A ``run`` gets ``--reevaluate 0`` (see ``cli_args``) unless ``user_defaults``: then it runs
    with every default a user gets, re-evaluation included.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = tuple(args if user_defaults else cli_args(args))
    proc = subprocess.run([sys.executable, "-m", "tdmr_search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"tdmr-search {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> Path:
    """A real 3-trial study of spaces/smoke.yaml run from the CLI on SQLite; returns its folder.

    Tests must not change it: copy it first (``copy_study``) to write to it.
    """
    folder = tmp_path_factory.mktemp("smoke-study")
    proc = run_cli("run", "--study", "smoke", "--space", str(SMOKE_SPACE), "--budget", "3", cwd=folder,
                   user_defaults=True)  # the defaults: re-evaluation of the 3 best, then the baselines
    (folder / "run.log").write_text(proc.stderr)  # what the user saw on stderr (the log)
    return folder


@pytest.fixture
def copy_study(smoke_study, tmp_path) -> Path:
    """A private, writable copy of the smoke study's folder."""
    dst = tmp_path / "study"
    shutil.copytree(smoke_study, dst)
    return dst


#: Fixtures that start a real study: a test using one is slow.
STUDY_FIXTURES = {"smoke_study", "copy_study"}


def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` every test that uses a real study fixture (``make test-fast`` leaves them out);
    tests that start studies themselves carry the marker in their module or on their function."""
    for item in items:
        if STUDY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
