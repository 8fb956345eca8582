"""An HTML report of a study: numbers first, figures second.

The table functions (``history_table``, ``importance_table``, ``pareto_table``, ``curves_table``,
``stage_time_table``, ``baseline_table``) turn a study, or a list of its trials, into plain lists
of dicts and never import plotly. The figure functions turn those rows into plotly figures, and
``write_report`` puts a header, the figures and a trial table into one self-contained HTML file
(plotly's JavaScript inline, so it opens offline). This is the only module that imports plotly.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tdmr_search.config import format_flops
from tdmr_search.fsio import write_text
from tdmr_search.search.record import BASELINE_METHODS, baseline_results, number, trials_table
from tdmr_search.search.reevaluate import best_trials
from tdmr_search.search.secrets import redact
from tdmr_search.version import __version__

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = [
    "write_report",
    "render_report",
    "history_table",
    "importance_table",
    "pareto_table",
    "curves_table",
    "stage_time_table",
    "baseline_table",
    "history_figure",
    "importance_figure",
    "pareto_figure",
    "curves_figure",
    "stage_time_figure",
    "baseline_figure",
    "SECTION_TITLES",
    "STAGES",
]

logger = logging.getLogger(__name__)

#: The report's sections, in order: key -> title.
SECTION_TITLES: dict[str, str] = {
    "history": "Optimization history",
    "importance": "Parameter importances",
    "pareto": "Accuracy vs FLOPs",
    "curves": "Stage-2 learning curves",
    "time": "Time per stage",
    "baselines": "TDMR vs baselines",
    "trials": "All trials",
}

#: Per-stage seconds recorded by the objective, in pipeline order; ``other`` is what no stage accounts for.
STAGES = ("gate", "data", "stage1", "stage2", "eval", "other")

_STATE_COLOURS = {"COMPLETE": "#1f77b4", "PRUNED": "#999999", "FAIL": "#d62728", "RUNNING": "#2ca02c",
                  "WAITING": "#bcbd22"}

StudyOrTrials = optuna.Study | Sequence[FrozenTrial]


# ----------------------------------------------------------------------------------------------- tables


def _trials(source: StudyOrTrials) -> list[FrozenTrial]:
    if isinstance(source, optuna.Study):
        return list(source.get_trials(deepcopy=False))
    return list(source)


def _maximize(source: StudyOrTrials) -> bool:
    """Whether the first objective (val_acc) is maximised; a bare trial list is taken to be a TDMR study."""
    if isinstance(source, optuna.Study):
        return source.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return True


def _last_val_acc(t: FrozenTrial) -> float | None:
    """A pruned trial's last validation accuracy (its curve; older studies: its last intermediate value)."""
    curve = t.user_attrs.get("val_curve") or []
    if curve:
        return number(curve[-1])
    return number(t.intermediate_values[max(t.intermediate_values)]) if t.intermediate_values else None


def _val_acc(t: FrozenTrial) -> float | None:
    """The trial's validation accuracy: the user attr, else the first objective value."""
    v = number(t.user_attrs.get("val_acc"))
    if v is None and t.values:
        v = number(t.values[0])
    return v


def _flops(t: FrozenTrial) -> float | None:
    v = number(t.user_attrs.get("flops"))
    if v is None and t.values and len(t.values) > 1:
        v = number(t.values[1])
    return v


def _student(t: FrozenTrial) -> str:
    st = t.user_attrs.get("config", {}).get("student", {})
    if st.get("name"):
        return f"{st['name']}@{st.get('resolution', '?')}"
    return str(t.params.get("student", "-"))


def history_table(source: StudyOrTrials) -> list[dict[str, Any]]:
    """One row per trial: number, state, value and the best value so far.

    ``value`` is the first objective (the student's validation accuracy) of a complete trial, the last
    reported accuracy of a pruned one, and None otherwise. ``best_so_far`` counts complete trials only.
    """
    maximize = _maximize(source)
    rows = []
    best: float | None = None
    for t in sorted(_trials(source), key=lambda t: t.number):
        value: float | None = None
        if t.state == TrialState.COMPLETE:
            value = number(t.values[0]) if t.values else None
            if value is not None and (best is None or (value > best if maximize else value < best)):
                best = value
        elif t.state == TrialState.PRUNED:
            value = _last_val_acc(t)
        rows.append({"number": t.number, "state": t.state.name, "value": value, "best_so_far": best})
    return rows


def importance_table(source: StudyOrTrials, seed: int = 0) -> list[dict[str, Any]]:
    """Parameter importances of the first objective (fANOVA, seeded), most important first.

    Empty when fewer than two complete trials exist, when their values do not vary, or when Optuna
    cannot compute importances (for instance no parameter shared by every complete trial).
    """
    done = [t for t in _trials(source) if t.state == TrialState.COMPLETE and t.values
            and number(t.values[0]) is not None]
    if len(done) < 2 or len({t.values[0] for t in done}) < 2:
        return []
    n_obj = len(done[0].values)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        study = optuna.create_study(directions=["maximize"] + ["minimize"] * (n_obj - 1))
        study.add_trials(done)
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
            target=(lambda t: t.values[0]) if n_obj > 1 else None,
        )
    except Exception as err:  # importances are a nicety: a report is never lost to them
        logger.warning("parameter importances not computed: %s: %s", type(err).__name__, err)
        return []
    finally:
        optuna.logging.set_verbosity(verbosity)
    return [{"param": name, "importance": float(value)} for name, value in importances.items()]


def pareto_table(source: StudyOrTrials) -> list[dict[str, Any]]:
    """Every complete trial's val_acc and FLOPs, ordered by FLOPs, flagged when on the Pareto front.

    A trial is on the front when no other trial has at least its accuracy at no more FLOPs, and is
    strictly better in one of the two (maximise val_acc, minimise FLOPs).
    """
    points = []
    for t in _trials(source):
        if t.state != TrialState.COMPLETE:
            continue
        acc, flops = _val_acc(t), _flops(t)
        if acc is None or flops is None:
            continue
        points.append({"number": t.number, "val_acc": acc, "flops": flops,
                       "test_acc": number(t.user_attrs.get("test_acc")), "student": _student(t)})
    for p in points:
        p["on_front"] = not any(
            q["val_acc"] >= p["val_acc"] and q["flops"] <= p["flops"]
            and (q["val_acc"] > p["val_acc"] or q["flops"] < p["flops"])
            for q in points
        )
    return sorted(points, key=lambda p: (p["flops"], -p["val_acc"], p["number"]))


def curves_table(source: StudyOrTrials) -> list[dict[str, Any]]:
    """Per trial, the student's validation accuracy after each stage-2 epoch, with the trial's state.

    Read from the ``val_curve`` user attr (the intermediate values are the pruning signal, see the
    study's ``intermediate_values`` attr); studies from before that fall back to the intermediate
    values. Trials with no epoch at all are left out.
    """
    rows = []
    for t in sorted(_trials(source), key=lambda t: t.number):
        accs = list(t.user_attrs.get("val_curve") or [])
        epochs = list(range(len(accs)))
        if not accs and t.intermediate_values:
            epochs = sorted(t.intermediate_values)
            accs = [t.intermediate_values[e] for e in epochs]
        if not accs:
            continue
        rows.append({"number": t.number, "state": t.state.name, "epoch": [int(e) for e in epochs],
                     "val_acc": [float(a) for a in accs]})
    return rows


def stage_time_table(source: StudyOrTrials) -> list[dict[str, Any]]:
    """Seconds per stage per finished trial (keys of ``STAGES``), plus ``total`` and ``teacher_cached``.

    ``other`` is the total minus the itemised stages (uploading weights, bookkeeping); a trial that
    recorded no ``seconds`` (pruned or failed midway) has its wall-clock time as ``other``.
    """
    rows = []
    for t in sorted(_trials(source), key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        recorded = t.user_attrs.get("seconds") or {}
        row: dict[str, Any] = {"number": t.number, "state": t.state.name,
                               "teacher_cached": bool(t.user_attrs.get("teacher_cached"))}
        for stage in STAGES[:-1]:
            row[stage] = number(recorded.get(stage)) or 0.0
        total = number(recorded.get("total"))
        if total is None and t.datetime_start and t.datetime_complete:
            total = (t.datetime_complete - t.datetime_start).total_seconds()
        if total is None:
            continue
        row["other"] = max(0.0, total - sum(row[s] for s in STAGES[:-1]))
        row["total"] = total
        rows.append(row)
    return rows


def baseline_table(source: StudyOrTrials) -> list[dict[str, Any]]:
    """TDMR's best trial against the ``scratch`` and ``kd`` baselines run for its student.

    Rows: method, trial (TDMR only), val_acc, test_acc, note (a baseline's failure reason). Empty
    when the study holds no baselines (a bare trial list, a two-objective study, ``--no-baselines``).
    """
    if not isinstance(source, optuna.Study):
        return []
    base = baseline_results(source)
    if not base:
        return []
    by_number = {t.number: t for t in _trials(source)}
    tdmr = by_number.get(base.get("tdmr_trial", -1))
    rows = []
    if tdmr is not None:
        rows.append({"method": "tdmr", "trial": tdmr.number, "val_acc": _val_acc(tdmr),
                     "test_acc": number(tdmr.user_attrs.get("test_acc")), "note": ""})
    for method in BASELINE_METHODS:
        if method not in base:
            continue
        b = base[method]
        rows.append({"method": method, "trial": None, "val_acc": number(b.get("val_acc")),
                     "test_acc": number(b.get("test_acc")), "note": redact(str(b.get("failure_reason") or ""))})
    return rows


# ---------------------------------------------------------------------------------------------- figures


def _layout(fig: go.Figure, x: str, y: str) -> go.Figure:
    fig.update_layout(template="plotly_white", xaxis_title=x, yaxis_title=y, height=420,
                      margin={"l": 60, "r": 20, "t": 30, "b": 50}, legend={"orientation": "h", "y": -0.2})
    return fig


def history_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Each trial's value coloured by state, and the best-so-far line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for state in dict.fromkeys(r["state"] for r in rows):
        pts = [r for r in rows if r["state"] == state and r["value"] is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[r["number"] for r in pts], y=[r["value"] for r in pts], mode="markers",
                                     name=state.lower(), marker={"color": _STATE_COLOURS.get(state), "size": 9}))
    best = [r for r in rows if r["best_so_far"] is not None]
    fig.add_trace(go.Scatter(x=[r["number"] for r in best], y=[r["best_so_far"] for r in best], mode="lines",
                             line={"shape": "hv", "color": "#ff7f0e"}, name="best so far"))
    return _layout(fig, "trial", "val_acc")


def importance_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Horizontal bars of parameter importance, most important on top."""
    import plotly.graph_objects as go

    ordered = list(reversed(rows))
    fig = go.Figure(go.Bar(x=[r["importance"] for r in ordered], y=[r["param"] for r in ordered], orientation="h",
                           marker={"color": "#1f77b4"}))
    fig = _layout(fig, "importance (fANOVA, share of val_acc variance)", "")
    fig.update_layout(height=max(300, 30 * len(rows) + 100))
    return fig


def pareto_figure(rows: list[dict[str, Any]], max_flops: float | None = None) -> go.Figure:
    """Accuracy against FLOPs for complete trials, the Pareto front as a step line, the FLOPs cap dashed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for on_front, name, colour in ((False, "dominated", "#9ecae1"), (True, "Pareto front", "#d62728")):
        pts = [r for r in rows if r["on_front"] == on_front]
        if pts:
            fig.add_trace(go.Scatter(
                x=[r["flops"] for r in pts], y=[r["val_acc"] for r in pts], mode="markers", name=name,
                marker={"color": colour, "size": 10},
                text=[f"trial {r['number']}<br>{r['student']}<br>{format_flops(r['flops'])} FLOPs" for r in pts],
                hovertemplate="%{text}<br>val_acc %{y:.4f}<extra></extra>",
            ))
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["flops"])
    if front:
        fig.add_trace(go.Scatter(x=[r["flops"] for r in front], y=[r["val_acc"] for r in front], mode="lines",
                                 line={"shape": "hv", "color": "#d62728"}, name="front", showlegend=False,
                                 hoverinfo="skip"))
    if max_flops:
        fig.add_vline(x=max_flops, line_dash="dash", line_color="#555555",
                      annotation_text=f"cap {format_flops(max_flops)}", annotation_position="top left")
    return _layout(fig, "FLOPs of the deployed student (multiply-adds)", "val_acc")


def curves_figure(rows: list[dict[str, Any]], best: int | None = None) -> go.Figure:
    """Stage-2 validation accuracy per epoch; pruned trials grey and dashed, failed red and dotted."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for r in rows:
        line: dict[str, Any] = {"width": 2}
        if r["state"] == "PRUNED":
            line.update(color="#999999", dash="dash")
        elif r["state"] == "FAIL":
            line.update(color="#d62728", dash="dot")
        if r["number"] == best:
            line.update(width=4, color="#ff7f0e")
        label = f"trial {r['number']}" + ("" if r["state"] == "COMPLETE" else f" ({r['state'].lower()})")
        fig.add_trace(go.Scatter(x=[e + 1 for e in r["epoch"]], y=r["val_acc"], mode="lines+markers", name=label,
                                 line=line, opacity=0.85))
    return _layout(fig, "stage-2 epoch", "student val_acc")


def stage_time_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Stacked bars of seconds per stage, one bar per trial."""
    import plotly.graph_objects as go

    x = [f"#{r['number']}" + (" (cached teacher)" if r["teacher_cached"] else "") for r in rows]
    fig = go.Figure([go.Bar(x=x, y=[r[stage] for r in rows], name=stage) for stage in STAGES])
    fig.update_layout(barmode="stack")
    return _layout(fig, "trial", "seconds")


def baseline_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Grouped bars of val_acc and test_acc for TDMR's best trial and each baseline."""
    import plotly.graph_objects as go

    names = [r["method"] + (f" (trial {r['trial']})" if r["trial"] is not None else "") for r in rows]
    fig = go.Figure([
        go.Bar(x=names, y=[r[key] for r in rows], name=key, text=[f"{r[key]:.3f}" if r[key] is not None else "failed"
                                                                  for r in rows], textposition="auto")
        for key in ("val_acc", "test_acc")
    ])
    fig.update_layout(barmode="group")
    return _layout(fig, "", "accuracy")


# ----------------------------------------------------------------------------------------------- report


def _esc(text: Any) -> str:
    return html.escape(redact(str(text)))


def _fmt(value: Any, spec: str = ".4f") -> str:
    v = number(value)
    return "-" if v is None else format(v, spec)


def _config_summary(t: FrozenTrial) -> str:
    a = t.user_attrs
    cfg = a.get("config", {})
    st, rp, ds = cfg.get("student", {}), cfg.get("reprogram", {}), cfg.get("distill", {})
    teacher = cfg.get("teacher", {})
    items = [
        ("val_acc", _fmt(a.get("val_acc"))), ("test_acc", _fmt(a.get("test_acc"))),
        ("teacher val_acc", _fmt(a.get("teacher_val_acc"))),
        ("FLOPs", format_flops(a["flops"]) if number(a.get("flops")) else "-"),
        ("params", f"{a['params']:,}" if isinstance(a.get("params"), int) else "-"),
        ("student", f"{st.get('name', '-')} at {st.get('resolution', '-')}px, {st.get('projector', '-')} projector"),
        ("teacher", f"{teacher.get('name', '-')} ({teacher.get('weights', '-')})"),
        ("transform", rp.get("transform", "-") + (f" (pad {rp.get('pad')})" if rp.get("transform") in
                                                  ("pad", "scale_pad") else "")),
        ("proxy_dim", rp.get("proxy_dim", "-")), ("teacher projector", rp.get("projector", "-")),
        ("stages", ds.get("n_stages", "-")),
        ("temperature", f"{_fmt(ds.get('temperature'), '.3g')} ({ds.get('temperature_schedule', '-')})"),
        ("feature loss", ds.get("feature_loss", "-")),
        ("lr (stage 1 / stage 2)", f"{_fmt(rp.get('lr'), '.3g')} / {_fmt(ds.get('lr'), '.3g')}"),
        ("epochs (stage 1 / stage 2)", f"{rp.get('epochs', '-')} / {ds.get('epochs', '-')}"),
    ]
    cells = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in items)
    return f"<table class='kv'>{cells}</table>"


def _header(study: optuna.Study, url: str) -> str:
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{s.name.lower()} {n}" for s in TrialState
                       if (n := sum(t.state == s for t in trials)))
    objectives = attrs.get("objectives") or ["val_acc"] + (["flops"] if len(study.directions) > 1 else [])
    directions = ", ".join(f"{o} ({d.name.lower()})" for o, d in zip(objectives, study.directions, strict=False))
    facts = [
        ("study", study.study_name), ("store", url), ("search space", attrs.get("space_name", "?")),
        ("FLOPs cap", attrs.get("max_flops_text") or "none"), ("objectives", directions),
        ("trials", f"{len(trials)} ({counts or 'none yet'})"),
        ("searched with", f"tdmr-search {attrs.get('tdmr_search_version', '?')}"),
        ("reported", f"{datetime.now().strftime('%Y-%m-%d %H:%M')} by tdmr-search {__version__}"),
    ]
    parts = [f"<h1>tdmr-search report: {_esc(study.study_name)}</h1>",
             "<table class='kv'>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts)
             + "</table>"]
    best = best_trials(study)
    if not best:
        parts.append("<p class='note'><b>No trial has finished yet</b>: there is nothing to chart. "
                     "Run <code>tdmr-search run</code> on this study and report again.</p>")
    elif len(study.directions) == 1:
        parts.append(f"<h2>Best trial: {best[0].number}</h2>" + _config_summary(best[0]))
    else:
        parts.append(f"<h2>Pareto front: {len(best)} trial(s)</h2>")
        parts += [f"<h3>Trial {t.number}</h3>" + _config_summary(t) for t in sorted(best, key=lambda t: t.number)]
    return "\n".join(parts)


def _trial_rows(study: optuna.Study) -> str:
    head = ["#", "state", "val_acc", "test_acc", "teacher val_acc", "FLOPs", "student", "transform", "proxy",
            "stages", "T", "seconds", "note"]
    body = []
    for row in trials_table(study):
        r = row.record
        rp, ds = r.section("reprogram"), r.section("distill")
        t = row.trial
        val = _val_acc(t) if t.state == TrialState.COMPLETE else None
        if t.state == TrialState.PRUNED and t.intermediate_values:
            val = _last_val_acc(t)
        cells = [r.number, r.state.lower(), _fmt(val), _fmt(r.test_acc), _fmt(r.teacher_val_acc),
                 format_flops(r.flops) if number(r.flops) else "-", _student(t),
                 rp.get("transform", "-"), rp.get("proxy_dim", "-"), ds.get("n_stages", "-"),
                 _fmt(ds.get("temperature"), ".2f"), _fmt(r.seconds.get("total"), ".1f"), row.note]
        body.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    return ("<table class='trials'><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:.9em}th,td{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}
table.kv th{color:#555;font-weight:600}table.trials th{background:#f5f5f5}
.note{color:#555;font-style:italic}code{background:#f3f3f3;padding:1px 4px}
"""


def _sections(study: optuna.Study) -> list[tuple[str, str]]:
    """(title, HTML body) for each section; figures go in as plotly divs without the library."""
    trials = study.get_trials(deepcopy=False)
    best = best_trials(study)
    cap = number(study.user_attrs.get("max_flops"))

    def fig_html(fig: go.Figure) -> str:
        return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})

    def empty(why: str) -> str:
        return f"<p class='note'>{_esc(why)}</p>"

    out: list[tuple[str, str]] = []
    hist = history_table(study)
    out.append(("history", fig_html(history_figure(hist)) if any(r["value"] is not None for r in hist)
                else empty("No trial has a value yet.")))
    imp = importance_table(trials)
    n_done = sum(t.state == TrialState.COMPLETE for t in trials)
    out.append(("importance", empty(f"fANOVA over the {n_done} complete trials and the parameters all of them "
                                    "share; with few trials this is a rough guide.") + fig_html(importance_figure(imp))
                if imp else empty("Importances need at least two complete trials whose accuracies differ.")))
    par = pareto_table(trials)
    out.append(("pareto", fig_html(pareto_figure(par, cap)) if par else empty("No complete trial yet.")))
    cur = curves_table(trials)
    out.append(("curves", fig_html(curves_figure(cur, best[0].number if len(best) == 1 else None)) if cur
                else empty("No trial has finished a stage-2 epoch yet.")))
    tim = stage_time_table(trials)
    out.append(("time", fig_html(stage_time_figure(tim)) if tim else empty("No trial has finished yet.")))
    bas = baseline_table(study)
    out.append(("baselines", fig_html(baseline_figure(bas)) if bas else empty(
        "No baselines in this study (two-objective search, --no-baselines, or no finished trial).")))
    out.append(("trials", _trial_rows(study) if trials else empty("The study holds no trial.")))
    return [(SECTION_TITLES[key], body) for key, body in out]


def render_report(study: optuna.Study, url: str = "") -> str:
    """The whole report of ``study`` as one self-contained HTML page (plotly's JavaScript inline)."""
    from plotly.offline import get_plotlyjs

    body = [_header(study, redact(url))]
    for title, section in _sections(study):
        body.append(f"<h2>{_esc(title)}</h2>\n{section}")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>tdmr-search report: {_esc(study.study_name)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(study_name: str, storage: str | None, out: str | Path) -> str:
    """Write an HTML report of a study and return a one-line message naming the file.

    Args:
        study_name: The study to report on.
        storage: Its SQLAlchemy URL; default ``sqlite:///studies/<study>.db``.
        out: The HTML file to write; missing parent folders are created.

    Raises:
        StudyError: The study cannot be loaded, or ``out`` cannot be written.
    """
    from tdmr_search.search.storage import default_storage, load_study

    study = load_study(study_name, storage)
    page = render_report(study, storage or default_storage(study_name))
    path = Path(out)
    write_text(path, page, "report", "choose a writable --out")  # whole or not at all: no half-written page
    n = len(study.get_trials(deepcopy=False))
    logger.debug("report of study %r written to %s", study_name, path)
    return f"report of study {study_name!r} ({n} trials) written to {path} ({path.stat().st_size / 1e6:.1f} MB)"
