"""The HTML report: its tables on the real smoke study, the page it writes, and its edge cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tdmr_search.errors import StudyError
from tdmr_search.report import (
    SECTION_TITLES,
    STAGES,
    baseline_table,
    curves_table,
    history_table,
    importance_table,
    pareto_table,
    render_report,
    stage_time_table,
    write_report,
)

STUDY = "smoke"
ROOT = Path(__file__).resolve().parents[1]


def _storage(folder: Path) -> str:
    return f"sqlite:///{folder}/studies/{STUDY}.db"


@pytest.fixture(scope="module")
def study(smoke_study) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=_storage(smoke_study))


def _dominates(a: dict, b: dict) -> bool:
    return a["val_acc"] >= b["val_acc"] and a["flops"] <= b["flops"] and (
        a["val_acc"] > b["val_acc"] or a["flops"] < b["flops"])


def test_history_table(study):
    rows = history_table(study)
    trials = study.get_trials()
    assert [r["number"] for r in rows] == sorted(t.number for t in trials)
    assert [r["state"] for r in rows] == [t.state.name for t in sorted(trials, key=lambda t: t.number)]
    done = [t.value for t in sorted(trials, key=lambda t: t.number) if t.state == TrialState.COMPLETE]
    assert rows[-1]["best_so_far"] == max(done) == study.best_value
    bests = [r["best_so_far"] for r in rows if r["best_so_far"] is not None]
    assert bests == sorted(bests)  # maximised: never goes down
    assert history_table(study.get_trials()) == rows  # a bare trial list reads the same


def test_pareto_table_matches_a_brute_force_front(study):
    rows = pareto_table(study)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert sorted(r["number"] for r in rows) == sorted(t.number for t in complete)
    for r in rows:
        t = next(t for t in complete if t.number == r["number"])
        assert r["val_acc"] == t.user_attrs["val_acc"] and r["flops"] == t.user_attrs["flops"]
        assert r["on_front"] == (not any(_dominates(q, r) for q in rows if q is not r))
    assert [r["flops"] for r in rows] == sorted(r["flops"] for r in rows)
    best = max(rows, key=lambda r: r["val_acc"])
    cheapest = min(rows, key=lambda r: (r["flops"], -r["val_acc"]))
    assert best["on_front"] and cheapest["on_front"]


def test_curves_table_shows_every_trial_with_epochs(study):
    rows = curves_table(study)
    by_number = {r["number"]: r for r in rows}
    for t in study.get_trials():
        if t.intermediate_values:
            r = by_number[t.number]
            assert r["state"] == t.state.name
            assert r["epoch"] == sorted(t.intermediate_values)
            assert r["val_acc"] == t.user_attrs["val_curve"]  # accuracy, not the pruning signal
    pruned = [t.number for t in study.get_trials() if t.state == TrialState.PRUNED and t.intermediate_values]
    assert all(by_number[n]["state"] == "PRUNED" for n in pruned)
    assert {r["number"] for r in rows} >= {t.number for t in study.get_trials() if t.state == TrialState.COMPLETE}


def test_stage_time_table_adds_up(study):
    rows = stage_time_table(study)
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert [r["number"] for r in rows] == sorted(t.number for t in finished)
    for r in rows:
        assert all(r[s] >= 0 for s in STAGES)
        assert sum(r[s] for s in STAGES) == pytest.approx(r["total"], abs=1e-6)
        t = next(t for t in finished if t.number == r["number"])
        if t.state == TrialState.COMPLETE:  # pruned and failed trials record the stages they reached only
            assert r["total"] == t.user_attrs["seconds"]["total"]
            assert r["stage2"] == t.user_attrs["seconds"]["stage2"] > 0


def test_importance_table(study, tmp_path):
    """fANOVA over hand-made trials whose accuracy follows one parameter: it must rank that one first."""
    from optuna.distributions import FloatDistribution, IntDistribution

    made = optuna.create_study(storage=f"sqlite:///{tmp_path / 'imp.db'}", direction="maximize")
    dists = {"distill.lr": FloatDistribution(1e-3, 1e-2, log=True), "distill.n_stages": IntDistribution(1, 4)}
    for i in range(12):
        lr, stages = 1e-3 * (1 + (7 * i) % 9), 1 + i % 4
        made.add_trial(optuna.trial.create_trial(value=0.5 + 0.1 * stages, params={"distill.lr": lr, "distill.n_stages": stages},
                                                 distributions=dists, user_attrs={"val_acc": 0.5 + 0.1 * stages}))
    rows = importance_table(made)
    assert [r["param"] for r in rows][0] == "distill.n_stages"
    assert sum(r["importance"] for r in rows) == pytest.approx(1.0)
    assert [r["importance"] for r in rows] == sorted((r["importance"] for r in rows), reverse=True)
    assert importance_table(made) == rows  # seeded
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert importance_table(complete[:1]) == []  # one trial: nothing to compare


def test_baseline_table(study):
    rows = baseline_table(study)
    key = study.user_attrs["baselines_for_best"]
    base = study.user_attrs["baselines"][key]
    assert [r["method"] for r in rows] == ["tdmr", "scratch", "kd"]
    tdmr = study.trials[base["tdmr_trial"]]
    assert rows[0]["trial"] == tdmr.number == study.best_trial.number
    assert (rows[0]["val_acc"], rows[0]["test_acc"]) == (tdmr.user_attrs["val_acc"], tdmr.user_attrs["test_acc"])
    for r in rows[1:]:
        assert (r["val_acc"], r["test_acc"]) == (base[r["method"]]["val_acc"], base[r["method"]]["test_acc"])
    assert baseline_table(study.get_trials()) == []


def test_tables_do_not_import_plotly(smoke_study):
    code = (
        "import sys, optuna, tdmr_search.report as r\n"
        f"s = optuna.load_study(study_name='{STUDY}', storage='{_storage(smoke_study)}')\n"
        "for f in (r.history_table, r.importance_table, r.pareto_table, r.curves_table, r.stage_time_table,"
        " r.baseline_table):\n"
        "    f(s)\n"
        "assert 'plotly' not in sys.modules, 'a table function imported plotly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_write_report(smoke_study, tmp_path):
    from plotly.offline import get_plotlyjs

    out = tmp_path / "deep" / "folder" / "report.html"
    message = write_report(STUDY, _storage(smoke_study), out)
    assert "\n" not in message and str(out) in message
    page = out.read_text(encoding="utf-8")
    assert get_plotlyjs()[:2000] in page  # inline, so it opens offline
    assert "<script src" not in page  # nothing fetched from a CDN
    for title in SECTION_TITLES.values():
        assert f"<h2>{title}</h2>" in page
    assert page.count("Plotly.newPlot") == 6
    assert "FLOPs cap" in page and "Best trial" in page


def test_report_redacts_storage_passwords(study):
    page = render_report(study, "postgresql+psycopg://alice:s3cr3t@db.example.org/tdmr")
    assert "s3cr3t" not in page and "alice:***@db.example.org" in page


def test_unwritable_out_is_a_study_error(smoke_study, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StudyError, match="Cannot write the report"):
        write_report(STUDY, _storage(smoke_study), blocker / "report.html")
    with pytest.raises(StudyError, match="Cannot write the report"):
        write_report(STUDY, _storage(smoke_study), tmp_path)  # a folder


def test_missing_study_is_a_study_error(smoke_study, tmp_path):
    with pytest.raises(StudyError, match="holds no study"):
        write_report("no-such-study", _storage(smoke_study), tmp_path / "r.html")


def test_report_of_a_study_with_no_finished_trial(tmp_path):
    storage = f"sqlite:///{tmp_path}/empty.db"
    study = optuna.create_study(study_name="empty", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})  # a waiting trial, never run
    assert history_table(study) == [{"number": 0, "state": "WAITING", "value": None, "best_so_far": None}]
    for table in (importance_table, pareto_table, curves_table, stage_time_table, baseline_table):
        assert table(study) == []
    out = tmp_path / "empty.html"
    write_report("empty", storage, out)
    page = out.read_text(encoding="utf-8")
    assert "No trial has finished yet" in page
    for title in SECTION_TITLES.values():
        assert f"<h2>{title}</h2>" in page
    assert "Plotly.newPlot" not in page


def test_report_of_a_two_objective_study(study, tmp_path):
    """The smoke trials copied into a (val_acc, flops) study: the front agrees with Optuna's own."""
    storage = f"sqlite:///{tmp_path}/two.db"
    two = optuna.create_study(study_name="two", storage=storage, directions=["maximize", "minimize"])
    for t in study.get_trials():
        if t.state == TrialState.COMPLETE:
            two.add_trial(optuna.trial.create_trial(
                values=[t.user_attrs["val_acc"], t.user_attrs["flops"]], params=t.params,
                distributions=t.distributions, user_attrs=t.user_attrs))
    front = {r["number"] for r in pareto_table(two) if r["on_front"]}
    assert front == {t.number for t in two.best_trials}
    assert [r["best_so_far"] is not None for r in history_table(two)] == [True] * len(two.trials)
    out = tmp_path / "two.html"
    write_report("two", storage, out)
    page = out.read_text(encoding="utf-8")
    assert "Pareto front:" in page and "No baselines in this study" in page
