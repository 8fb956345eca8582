"""tdmr-search: AutoML search for Task-Driven Model Reprogramming (TDMR).

Reprogram a frozen vision foundation model into a task-specific proxy space, distil it
progressively into a small student under a FLOPs budget, and search the choices with Optuna.
Heavy parts (torch, optuna) load only when used.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "__version__",
    "TdmrError",
    "PipelineConfig",
    "load_config",
    "run_pipeline",
    "load_deployed",
]

from tdmr_search.config import PipelineConfig, load_config
from tdmr_search.errors import TdmrError
from tdmr_search.version import __version__


def __getattr__(name: str) -> Any:
    if name in ("run_pipeline", "load_deployed"):
        from tdmr_search.pipeline import run

        return getattr(run, name)
    raise AttributeError(f"module 'tdmr_search' has no attribute {name!r}")
