"""Small helpers around timm's factory: name checks and resolution-aware creation."""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch.nn as nn

from tdmr_search.errors import ModelError
from tdmr_search.registry import did_you_mean

__all__ = ["check_model_name", "create_timm", "feature_dim"]

logger = logging.getLogger(__name__)


def check_model_name(name: str, field: str) -> None:
    """Raise :class:`ModelError` unless ``name`` is a timm model, suggesting close names."""
    if timm.is_model(name):
        return
    raise ModelError(f"{field} names {name!r}, which is not a timm model; accepted: any name in timm.list_models()"
                     + did_you_mean(name, timm.list_models()))


def create_timm(name: str, field: str, img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that passes ``img_size`` only to models that take it (ViTs)."""
    check_model_name(name, field)
    if img_size is not None:
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, **kwargs)


def feature_dim(model: nn.Module) -> int:
    """Width of the pooled pre-logit features of a timm model."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)
