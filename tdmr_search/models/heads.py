"""Projectors into the proxy space and the proxy classifier."""

from __future__ import annotations

import torch.nn as nn

from tdmr_search.registry import PROJECTORS

__all__ = ["PROJECTORS", "build_projector", "build_classifier"]


@PROJECTORS.register("linear")
def _linear(in_dim: int, proxy_dim: int) -> nn.Module:
    return nn.Linear(in_dim, proxy_dim)


@PROJECTORS.register("mlp")
def _mlp(in_dim: int, proxy_dim: int) -> nn.Module:
    hidden = max(proxy_dim, min(in_dim, 2 * proxy_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, proxy_dim))


def build_projector(name: str, in_dim: int, proxy_dim: int) -> nn.Module:
    """Create the projector registered under ``name`` mapping ``in_dim`` to ``proxy_dim``."""
    return PROJECTORS.create(name, in_dim=in_dim, proxy_dim=proxy_dim)


def build_classifier(proxy_dim: int, num_classes: int) -> nn.Module:
    """The proxy classifier H, shared by the teacher and the student sides."""
    return nn.Linear(proxy_dim, num_classes)
