"""FLOPs and parameters, counted as DESIGN.md section 3 says.

One fused multiply-add counts as one FLOP (timm's GMACs). The model is built and run on the
``meta`` device under ``FlopCounterMode``, whose figure (2 per multiply-add) is halved; nothing is
allocated and fused attention is counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from tdmr_search.config import StudentConfig
from tdmr_search.models.students import build_student
from tdmr_search.models.timm_utils import create_timm

__all__ = ["count_flops", "model_flops", "student_cost"]


def count_flops(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> tuple[float, int]:
    """FLOPs (multiply-adds) of one forward pass and the parameter count of ``build()``.

    Args:
        build: Creates the model; called under ``torch.device('meta')``.
        input_shape: Shape of the input batch, batch size included (use 1).
    """
    with torch.device("meta"):
        model = build()
        x = torch.empty(input_shape)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2.0, int(params)


def model_flops(name: str, resolution: int = 224, in_chans: int = 3) -> float:
    """FLOPs of a timm model (with its classifier) on one image of side ``resolution``."""
    flops, _ = count_flops(
        lambda: create_timm(name, "model", img_size=resolution, pretrained=False, in_chans=in_chans),
        (1, in_chans, resolution, resolution),
    )
    return flops


@functools.lru_cache(maxsize=512)
def student_cost(cfg: StudentConfig, in_chans: int, image_size: int, proxy_dim: int, num_classes: int) -> tuple[float, int]:
    """FLOPs and parameters of the deployed student (S + P_S + H) on one target-size image.

    Remembered per process: the FLOPs gate and every trial of a search ask for the same few.
    """
    return count_flops(
        lambda: build_student(cfg, in_chans, proxy_dim, num_classes, pretrained=False),
        (1, in_chans, image_size, image_size),
    )
