"""The defects a new user found (issue 15), one test (or a few) per item, each with real processes,
real Optuna studies on SQLite (and PostgreSQL where it answers) and real training on the smoke
space cut to short trials:

1. resumed and concurrent runs never repeat a trial's parameters;
2. SIGTERM and SIGINT at any point stop a run: exit 130, one line, no traceback, the running trial
   closed as interrupted and not counted toward a trial budget; workers stop too;
3. a resume with another space is refused in one line (or allowed with a flag and recorded);
4. a full disk (a small tmpfs) gives one line and leaves no partial file;
5. a study (or a database) that tdmr-search did not make is refused;
6. export refuses a non-empty folder unless --force;
7. input limits: an alias bomb is refused before it expands; 16-bit images keep their values;
8. the --budget deadline covers the baselines; a failed run leaves no empty folder behind; workers
   get the storage password by environment, not on their command line.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from conftest import ROOT, SMOKE_SPACE, cli_args, run_cli
from optuna.trial import TrialState

pytestmark = pytest.mark.slow  # real studies run from the command line

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), TDMR_HEARTBEAT_SECONDS="1", TDMR_GRACE_SECONDS="4", **extra)


def _fast_space(folder: Path, epochs: int = 4, name: str = "fast.yaml", mutate=None) -> Path:
    """The smoke space cut to one student and a few epochs: trials of about a second."""
    space = yaml.safe_load(SMOKE_SPACE.read_text())
    space["students"] = {"names": ["test_vit"], "resolutions": [16]}
    space["base"]["reprogram"]["epochs"] = 1
    space["base"]["distill"]["epochs"] = epochs
    if mutate is not None:
        mutate(space)
    path = folder / name
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _start(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tdmr_search", *cli_args(args)], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")


def _one_error_line(proc: subprocess.CompletedProcess | tuple[int, str, str], *expect: str) -> str:
    code, out, err = proc if isinstance(proc, tuple) else (proc.returncode, proc.stdout, proc.stderr)
    assert code == 2, f"exit {code}:\n{err}"
    assert "Traceback" not in err + out, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for part in expect:
        assert part in errors[0], f"{part!r} is not in:\n{errors[0]}"
    return errors[0]


def _param_sets(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False) if t.params]


# ----------------------------------------------------------------------------- 1. no repeated trials


def test_a_resumed_random_search_draws_new_parameters(tmp_path):
    space = str(_fast_space(tmp_path))
    common = ["--study", "r", "--space", space, "--sampler", "random", "--no-baselines", "--no-progress"]
    run_cli("run", *common, "--budget", "3", cwd=tmp_path)
    run_cli("run", *common, "--budget", "6", cwd=tmp_path)
    study = _study(tmp_path, "r")
    sets = _param_sets(study)
    assert len(sets) == 6 and len(set(sets)) == 6, sets  # before: trials 3-5 repeated trials 0-2
    seeds = [t.user_attrs["sampler"]["trial_seed"] for t in study.trials]
    assert len(set(seeds)) == 6 and all(t.user_attrs["sampler"]["seed"] == 0 for t in study.trials)


def test_the_per_trial_seed_is_reproducible_and_differs_per_trial():
    from tdmr_search.search.samplers import make_sampler

    def draws(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler("random", seed, False))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
        return [t.params["x"] for t in study.trials]

    assert draws(0) == draws(0)  # the same --seed gives the same study
    assert len(set(draws(0))) == 5 and draws(0) != draws(1)


def test_two_concurrent_runs_on_one_study_repeat_no_trial(tmp_path):
    space = str(_fast_space(tmp_path))
    args = ["run", "--study", "c", "--space", space, "--sampler", "random", "--budget", "6", "--no-baselines",
            "--no-progress"]
    procs = [_start(args, tmp_path) for _ in range(2)]  # the README's several-machines recipe, on one machine
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    sets = _param_sets(_study(tmp_path, "c"))
    assert len(sets) >= 6 and len(set(sets)) == len(sets), sets  # before: identical pairs


# ----------------------------------------------------------------------------- 2. signals


def _check_stopped(proc: subprocess.Popen, sig: signal.Signals, out: str, err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err
    if proc.returncode == -sig:  # delivered before Python started tdmr-search: the default action
        return
    assert proc.returncode == 130, f"{sig.name}: exit {proc.returncode}\n{err[-3000:]}"
    last = err.strip().splitlines()[-1]
    assert last.startswith("tdmr-search run: interrupted"), err[-3000:]
    assert sum(line.startswith("tdmr-search run:") for line in err.splitlines()) == 1, err[-3000:]
    assert out.count("study store:") <= 1, out  # one summary at most


def test_sigterm_and_sigint_at_random_points_always_stop_the_run(tmp_path):
    """20 deliveries at random points (start-up, data, gate, trials, between trials), four runs at a time."""
    space = str(_fast_space(tmp_path))
    rng = random.Random(15)
    kinds = [signal.SIGTERM, signal.SIGINT] * 2
    for _ in range(5):
        procs = [(sig, _start(["run", "--study", f"s{i}", "--space", space, "--budget", "1d"], tmp_path))
                 for i, sig in enumerate(kinds)]
        delays = sorted((rng.uniform(1.5, 9.0), i) for i in range(len(procs)))
        start = time.monotonic()
        for delay, i in delays:
            time.sleep(max(0.0, delay - (time.monotonic() - start)))
            procs[i][1].send_signal(procs[i][0])
        for sig, proc in procs:
            out, err = proc.communicate(timeout=300)  # a lost signal would run for a day: fail, not hang
            _check_stopped(proc, sig, out, err)
    for i in range(len(kinds)):
        if not (tmp_path / "studies" / f"s{i}.db").exists():
            continue
        study = _study(tmp_path, f"s{i}")
        assert TrialState.RUNNING not in [t.state for t in study.trials]
        for t in study.trials:
            if t.state == TrialState.FAIL:
                assert t.user_attrs.get("interrupted") and t.user_attrs["failure_reason"].startswith("interrupted by")


def test_an_interrupted_trial_does_not_count_toward_the_trial_budget(tmp_path):
    from tdmr_search.search.budget import counts_toward_budget

    space = str(_fast_space(tmp_path, epochs=40))
    url = f"sqlite:///{tmp_path}/studies/b.db"
    proc = _start(["run", "--study", "b", "--space", space, "--budget", "2", "--pruner", "none", "--no-baselines"],
                  tmp_path)
    _wait_for_epoch(url, "b", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    _check_stopped(proc, signal.SIGTERM, out, err)
    assert proc.returncode == 130 and "study 'b'" in out  # the summary, once
    run_cli("run", "--study", "b", "--space", space, "--budget", "2", "--pruner", "none", "--no-baselines",
            "--no-progress", cwd=tmp_path)
    study = optuna.load_study(study_name="b", storage=url)
    assert sum(counts_toward_budget(t) for t in study.trials) == 2  # before: the interrupted trial counted
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state == TrialState.FAIL
    assert interrupted[0].user_attrs["failure_reason"] == "interrupted by SIGTERM"


def _wait_for_epoch(url: str, study: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()
        try:
            s = optuna.load_study(study_name=study, storage=url)
            if any(t.state == TrialState.RUNNING and t.user_attrs.get("val_curve") for t in s.get_trials()):
                return
        except Exception:  # no store or no study yet
            pass
        time.sleep(0.3)
    raise AssertionError("no trial reached an epoch in time")


def test_ctrl_c_stops_every_worker_with_one_summary_and_one_line(tmp_path):
    space = str(_fast_space(tmp_path, epochs=40))
    url = f"sqlite:///{tmp_path}/studies/w.db"
    proc = _start(["run", "--study", "w", "--space", space, "--budget", "1d", "--workers", "2", "--pruner", "none",
                   "--no-baselines"], tmp_path)
    _wait_for_epoch(url, "w", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    _check_stopped(proc, signal.SIGINT, out, err)
    assert proc.returncode == 130 and out.count("study store:") == 1  # before: four tracebacks, three summaries
    study = optuna.load_study(study_name="w", storage=url)
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    assert all(t.user_attrs.get("interrupted") for t in study.trials if t.state == TrialState.FAIL)


# ----------------------------------------------------------------------------- 3. a changed space


def test_a_resume_with_a_changed_space_is_refused_in_one_line(tmp_path):
    run_cli("run", "--study", "x", "--space", str(_fast_space(tmp_path)), "--budget", "1", "--no-baselines",
            cwd=tmp_path)
    before = [(t.number, t.state) for t in _study(tmp_path, "x").trials]
    longer = _fast_space(tmp_path, epochs=5, name="longer.yaml")
    proc = run_cli("run", "--study", "x", "--space", str(longer), "--budget", "2", "--no-baselines", cwd=tmp_path,
                   check=False)
    _one_error_line(proc, "another search space or data", "base.distill.epochs 4 -> 5", "--allow-changed-space")
    choices = _fast_space(tmp_path, name="choices.yaml",
                          mutate=lambda r: r["params"]["distill.feature_loss"].update(choices=["mse"]))
    proc = run_cli("run", "--study", "x", "--space", str(choices), "--budget", "2", "--no-baselines",
                   "--allow-changed-space", cwd=tmp_path, check=False)
    _one_error_line(proc, "params.distill.feature_loss", "even with --allow-changed-space")
    assert [(t.number, t.state) for t in _study(tmp_path, "x").trials] == before  # nothing ran
    run_cli("run", "--study", "x", "--space", str(longer), "--budget", "2", "--no-baselines",
            "--allow-changed-space", cwd=tmp_path)
    study = _study(tmp_path, "x")
    assert len(study.trials) == 2
    [change] = study.user_attrs["space_changes"]
    assert change["from_trial"] == 1 and change["changed"] == ["base.distill.epochs"]
    assert change["before"] == {"base.distill.epochs": 4}


# ----------------------------------------------------------------------------- 4. a full disk


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the full-disk test needs it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` until ``leave`` bytes are free."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave
    with open(folder / "filler", "wb") as fh:
        with contextlib.suppress(OSError):
            fh.write(b"\0" * max(0, free))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_a_full_disk_gives_one_line_and_no_partial_file(copy_study, tmp_path):
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        # export: the weights fit, the rest does not
        _fill(disk, leave=8192)
        proc = run_cli("export", "--study", "smoke", "--best", "--out", str(disk / "exported"), cwd=copy_study,
                       check=False)
        _one_error_line(proc, "No space left on device", str(disk / "exported"))
        assert "gone from the artifact store" not in proc.stderr  # before: a false claim
        assert _files(disk) == {"filler"}  # no 0-byte model.json, no half a weights file
        # report
        proc = run_cli("report", "--study", "smoke", "--out", str(disk / "r.html"), cwd=copy_study, check=False)
        _one_error_line(proc, "Cannot write the report", "No space left on device")
        assert _files(disk) == {"filler"}
        # the artifact store of a run: the run stops at once, it does not fail trial after trial
        space = _fast_space(tmp_path)
        proc = run_cli("run", "--study", "a", "--space", str(space), "--budget", "3", "--no-baselines",
                       "--artifacts", str(disk / "art"), cwd=tmp_path, check=False)
        _one_error_line(proc, "No space left on device")
        assert len(_study(tmp_path, "a").trials) == 1  # before: every trial failed and the run exited 0
        assert not [p for p in (disk / "art").rglob("*") if p.is_file()] if (disk / "art").exists() else True
        # the study store itself
        (disk / "filler").unlink()
        _fill(disk, leave=400 * 1024)  # room for the schema and a few trials, not for the whole run
        url = f"sqlite:///{disk}/full.db"
        proc = run_cli("run", "--study", "f", "--space", str(space), "--budget", "40", "--no-baselines",
                       "--storage", url, "--artifacts", str(tmp_path / "art"), cwd=tmp_path, check=False, timeout=600)
        _one_error_line(proc, "No space left on device")  # before: four chained tracebacks
        with sqlite3.connect(disk / "full.db") as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ----------------------------------------------------------------------------- 5. foreign stores


def test_a_study_not_made_by_tdmr_search_is_refused(tmp_path):
    (tmp_path / "studies").mkdir()
    url = f"sqlite:///{tmp_path}/studies/plain.db"
    plain = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    plain.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    space = str(_fast_space(tmp_path))
    proc = run_cli("run", "--study", "plain", "--space", space, "--budget", "2", "--no-baselines", cwd=tmp_path,
                   check=False)
    _one_error_line(proc, "was not created by tdmr-search", "--adopt-study")
    assert len(optuna.load_study(study_name="plain", storage=url).trials) == 1  # before: trials appended
    assert not (tmp_path / "studies" / "plain-artifacts").exists()  # item 8: no empty folder left behind
    proc = run_cli("run", "--study", "plain", "--space", space, "--budget", "2", "--no-baselines", "--adopt-study",
                   cwd=tmp_path)
    assert "study 'plain'" in proc.stdout and "KeyError" not in proc.stderr


def test_a_database_with_other_tables_is_refused(tmp_path):
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as con:
        con.execute("create table customers (id integer primary key, name text)")
    proc = run_cli("run", "--study", "s", "--space", str(_fast_space(tmp_path)), "--budget", "1", "--storage",
                   f"sqlite:///{db}", cwd=tmp_path, check=False)
    _one_error_line(proc, "not an Optuna study store", "customers", "--allow-other-tables")
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        assert tables == {"customers"}  # before: Optuna's tables and WAL mode added
        assert con.execute("pragma journal_mode").fetchone()[0] != "wal"


# ----------------------------------------------------------------------------- 6. export


def test_export_refuses_a_non_empty_folder_unless_forced(copy_study):
    out = copy_study / "mine"
    out.mkdir()
    (out / "README.md").write_text("my own notes\n")
    proc = run_cli("export", "--study", "smoke", "--best", "--out", "mine", cwd=copy_study, check=False)
    _one_error_line(proc, "The export folder 'mine' is not empty", "README.md", "--force")
    assert (out / "README.md").read_text() == "my own notes\n"  # before: replaced by the model card
    run_cli("export", "--study", "smoke", "--best", "--out", "mine", "--force", cwd=copy_study)
    assert (out / "model.json").exists() and (out / "README.md").read_text() != "my own notes\n"
    assert not [p for p in copy_study.iterdir() if "export-tmp" in p.name]  # no staging folder left


# ----------------------------------------------------------------------------- 7. input limits


def _alias_bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("command", ["validate", "train"])
def test_an_alias_bomb_is_refused_before_it_expands(command, tmp_path):
    (tmp_path / "bomb.yaml").write_text(_alias_bomb())
    args = ("validate", "bomb.yaml") if command == "validate" else ("train", "--config", "bomb.yaml", "--out", "o")
    proc = run_cli(*args, cwd=tmp_path, check=False)
    line = _one_error_line(proc, "'bomb.yaml'", "YAML aliases")
    assert len(proc.stderr) < 2000 and len(line) < 400  # before: a 39 MB line (7 levels), MemoryError (9)


def test_sixteen_bit_images_keep_their_values(tmp_path):
    from PIL import Image

    from tdmr_search.config import DataConfig
    from tdmr_search.data import load_data

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)).save(tmp_path / split / c / f"{i}.png")
    data = load_data(DataConfig(dataset=f"imagefolder:{tmp_path}", shots=None, val_fraction=0.25, image_size=8), 0)
    pixels = data.train.images.numpy()
    assert len(np.unique(pixels)) > 100  # before: every pixel clipped to 0 or 1 (0/255)
    assert 0.3 < float(pixels.mean()) < 0.7


@pytest.mark.parametrize("storage, expect", [
    ("sqlite:///:memory:", ("in-memory SQLite database", "sqlite:///PATH")),
    ("postgresql+pg8000://postgres@127.0.0.1/test", ("PostgreSQL driver 'pg8000'", "cannot be imported")),
])
def test_stores_that_cannot_work_are_named(storage, expect, tmp_path):
    proc = run_cli("status", "--study", "s", "--storage", storage, cwd=tmp_path, check=False)
    line = _one_error_line(proc, *expect)
    assert "(None)" not in line


def test_a_study_name_with_a_trailing_newline_is_refused(tmp_path):
    from tdmr_search.errors import ConfigError
    from tdmr_search.search.storage import check_study_name

    with pytest.raises(ConfigError, match="study name"):
        check_study_name("nl\n")


# ----------------------------------------------------------------------------- 8. housekeeping


def test_the_budget_deadline_covers_the_baselines(tmp_path):
    proc = run_cli("run", "--study", "d", "--space", str(_fast_space(tmp_path)), "--budget", "1s", cwd=tmp_path)
    study = _study(tmp_path, "d") if (tmp_path / "studies" / "d.db").exists() else None
    assert study is None or "baselines" not in study.user_attrs  # before: baselines ran past the deadline
    assert "baseline scratch" not in proc.stderr


@pytest.mark.db
def test_workers_get_the_storage_password_by_environment(tmp_path):
    import sqlalchemy

    try:
        sqlalchemy.create_engine(PG).connect().close()
    except Exception as err:  # server down or driver missing
        pytest.skip(f"PostgreSQL at {PG} does not answer ({type(err).__name__})")
    name = f"pw-{uuid.uuid4().hex[:8]}"
    secret = "s3cr3t-pw"
    url = PG.replace("postgres@", f"postgres:{secret}@")  # trust auth ignores it
    proc = _start(["run", "--study", name, "--space", str(_fast_space(tmp_path)), "--budget", "4", "--workers", "2",
                   "--storage", url, "--no-baselines", "--no-progress"], tmp_path)
    seen_workers, leaked = 0, []
    try:
        while proc.poll() is None:
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or int(pid) == proc.pid:
                    continue
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    if parent == proc.pid and "tdmr_search\x00worker" in cmd:
                        seen_workers += 1
                        if secret in cmd:
                            leaked.append(cmd)
            time.sleep(0.2)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert seen_workers and not leaked, leaked  # before: visible in ps
        assert secret not in out + err
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG)
        shutil.rmtree(tmp_path / "studies", ignore_errors=True)
