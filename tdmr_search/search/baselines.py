"""The baselines of a search: scratch and classic KD on the pick's student, run after the search.

Their results go to the study's ``baselines`` user attr (keyed by student, resolution, proxy size
and projector, so a resumed study reuses them) and ``baselines_for_best`` names the pick's key;
:func:`~tdmr_search.search.record.baseline_results` reads them back.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

from tdmr_search.errors import Interrupted, TdmrError
from tdmr_search.search.budget import check_stop
from tdmr_search.search.record import BASELINE_METHODS
from tdmr_search.search.reevaluate import pick
from tdmr_search.search.space import SearchSpace

__all__ = ["run_baselines"]

logger = logging.getLogger(__name__)


def run_baselines(study: optuna.Study, space: SearchSpace, data: Any, deadline: float | None = None,
                  cache: Any = None) -> None:
    """Run (or reuse) the scratch and kd baselines for the pick's student, within the deadline.

    ``cache`` (the study's teacher cache) gives kd the teacher's features of the same views the
    trials distilled on, without another pass over the pool.
    """
    from tdmr_search.config import config_from_dict
    from tdmr_search.pipeline.run import run_pipeline

    try:
        best = pick(study)
    except ValueError:
        return
    if "config" not in best.user_attrs:  # an adopted study's own trial
        return
    config = config_from_dict(best.user_attrs["config"])
    key = f"{config.student.name}@{config.student.resolution}/proxy{config.reprogram.proxy_dim}/{config.student.projector}"
    done = dict(study.user_attrs.get("baselines", {}))
    if key in done:
        return

    def on_epoch_end(step: int, metrics: dict) -> None:
        check_stop(deadline)

    results = {}
    for method in BASELINE_METHODS:
        check_stop(deadline)
        logger.info("baseline %s for %s", method, key)
        try:
            m = run_pipeline(config.replace({"method": method}), on_epoch_end, data=data, cache=cache).metrics
        except Interrupted:
            raise
        except TdmrError as err:
            results[method] = {"failure_reason": str(err)}
            continue
        results[method] = {k: m.get(k) for k in ("val_acc", "test_acc", "teacher_val_acc", "flops", "params")}
        results[method]["seconds"] = m.get("seconds")
        results[method]["val_curve"] = [h["val_acc"] for h in m.get("history", [])]
    results["tdmr_trial"] = best.number
    done[key] = results
    study.set_user_attr("baselines", done)
    study.set_user_attr("baselines_for_best", key)
