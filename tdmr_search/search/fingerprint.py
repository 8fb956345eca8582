"""What a study's trials were scored on: the search space and the data, compared on resume.

A study mixes only trials scored under one space and one validation set: resuming with other
shots, epochs, parameter ranges or a different FLOPs cap would rank trials that are not
comparable, and Optuna refuses outright a categorical parameter (such as ``student``) whose
choices changed. The fingerprint is a flat mapping from part names (``base.distill.epochs``,
``params.distill.temperature``, ``max_flops``, ``students``, ``data``) to JSON-able values, stored
as the study's user attr ``fingerprint`` and compared part by part.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from tdmr_search.search.space import SearchSpace, StudentChoice

__all__ = ["fingerprint", "changes", "incompatible", "describe"]

#: Settings that say where or how a run happens, not what it computes: they may differ between
#: machines sharing one study (the data folder, the device).
WHERE_NOT_WHAT = ("device", "data.root", "data.download", "data.num_workers", "teacher.cache_dir")


def _data_digest(data: Any) -> str:  # noqa: ANN401
    """A digest of the labelled splits as loaded: labels of all three, images of train and val."""
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        h.update(str(tuple(split.images.shape)).encode())
        h.update(np.ascontiguousarray(split.labels.numpy() if hasattr(split.labels, "numpy") else split.labels).tobytes())
    for split in (data.train, data.val):
        h.update(np.ascontiguousarray(split.images.numpy()).tobytes())
    return h.hexdigest()[:16]


def fingerprint(space: SearchSpace, students: list[StudentChoice], data: Any = None) -> dict[str, Any]:  # noqa: ANN401
    """The parts of ``space`` (and the loaded ``data``) a study's trials depend on."""
    parts: dict[str, Any] = {}
    base = space.base.to_dict()
    for section, values in base.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if f"{section}.{key}" not in WHERE_NOT_WHAT:
                    parts[f"base.{section}.{key}"] = value
        elif section not in WHERE_NOT_WHAT:
            parts[f"base.{section}"] = values
    parts["max_flops"] = space.max_flops
    parts["students"] = sorted(c.key for c in students)
    for p in space.params:
        parts[f"params.{p.name}"] = {"type": p.type, "low": p.low, "high": p.high, "log": p.log, "step": p.step,
                                     "choices": list(p.choices), "when": {k: list(v) for k, v in p.when.items()}}
    if data is not None:
        parts["data"] = _data_digest(data)
    return json.loads(json.dumps(parts, default=str))  # as the store will give it back


def changes(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The part names whose values differ.

    A ``base.*`` setting known to only one side is a setting another version of tdmr-search added or
    dropped, not a change; ``data`` is compared only when both sides have it.
    """
    out = []
    for key in dict.fromkeys([*current, *stored]):
        if (key.startswith("base.") or key == "data") and (key not in stored or key not in current):
            continue
        if key not in stored or key not in current or stored[key] != current[key]:
            out.append(key)
    return out


def incompatible(stored: dict[str, Any], current: dict[str, Any], changed: list[str]) -> list[str]:
    """Changed parts Optuna cannot mix in one study: a categorical's choices, a parameter's type."""
    bad = []
    for key in changed:
        old, new = stored.get(key), current.get(key)
        if key == "students" or (key == "max_flops" and stored.get("students") != current.get("students")):
            bad.append("students")  # the categorical parameter 'student' takes other choices
        elif key.startswith("params.") and isinstance(old, dict) and isinstance(new, dict):
            if old.get("type") != new.get("type") or (new.get("type") == "categorical"
                                                      and old.get("choices") != new.get("choices")):
                bad.append(key)
    return list(dict.fromkeys(bad))


def describe(stored: dict[str, Any], current: dict[str, Any], changed: list[str], limit: int = 6) -> str:
    """'base.distill.epochs 4 -> 6, students [...] -> [...]', short values shown, long ones named."""
    out = []
    for key in changed[:limit]:
        old, new = stored.get(key, "absent"), current.get(key, "absent")
        text = f"{key} {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"
        out.append(text if len(text) <= 120 else key)
    if len(changed) > limit:
        out.append(f"and {len(changed) - limit} more")
    return ", ".join(out)
