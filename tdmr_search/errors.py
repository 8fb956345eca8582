"""The exception tree of tdmr-search.

Every error a user can cause is a :class:`TdmrError`; the CLI prints its message as one line
on stderr and exits non-zero. Messages say what is wrong, where, what is accepted and what was
received.
"""

from __future__ import annotations

__all__ = [
    "TdmrError",
    "ConfigError",
    "DataError",
    "ModelError",
    "BudgetError",
    "StudyError",
    "TrialFailed",
    "Interrupted",
    "DiskError",
]


class TdmrError(Exception):
    """Base class of every error tdmr-search raises on purpose."""


class ConfigError(TdmrError, ValueError):
    """A configuration value, file or combination of values is invalid."""


class DataError(TdmrError):
    """A dataset cannot be found, read or sampled as asked."""


class ModelError(TdmrError):
    """A model cannot be built or its weights cannot be loaded."""


class BudgetError(TdmrError):
    """No candidate fits the FLOPs cap, or a budget cannot be understood."""


class StudyError(TdmrError):
    """A study store cannot be opened, or holds nothing to act on."""


class TrialFailed(TdmrError):
    """A single trial cannot go on (non-finite loss, out of memory); the study goes on."""


class Interrupted(TdmrError):
    """SIGINT or SIGTERM asked the search to stop; it stopped between steps (the CLI exits 130).

    ``summary`` holds what the run had done by then, when there is one to show.
    """

    summary: str | None = None


class DiskError(StudyError):
    """A file cannot be written (disk full, read-only file system, permission denied): the run stops."""
