"""Reprogramming input transforms T placed in front of the frozen teacher (DESIGN.md section 2).

Each takes target images (N x C x H x W in [0, 1], C = 1 or 3) and returns normalised 3-channel
images at the teacher's input size. ``resize`` has no parameters; every other one starts from it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmr_search.registry import TRANSFORMS

__all__ = ["TRANSFORMS", "InputTransform", "build_transform", "to_rgb_resized"]


def to_rgb_resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to ``size`` x ``size`` (bilinear) and repeat a grey channel to three."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


class InputTransform(nn.Module):
    """Base: resize, grey to RGB and the teacher's mean/std.

    Args:
        size: The teacher's input side.
        mean: The teacher's per-channel mean.
        std: The teacher's per-channel std.
    """

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], **_: object) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def base(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """The ``resize`` transform: resized, RGB and normalised."""
        return (to_rgb_resized(x, size or self.size) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)


@TRANSFORMS.register("resize")
class Resize(InputTransform):
    """Resize to the teacher's input, grey to RGB, the teacher's normalisation. No parameters."""


@TRANSFORMS.register("additive")
class Additive(InputTransform):
    """A learnable full-frame perturbation added to the resized image, initialised at zero."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], **kw: object) -> None:
        super().__init__(size, mean, std)
        self.delta = nn.Parameter(torch.zeros(1, 3, self.size, self.size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta


@TRANSFORMS.register("pad")
class Pad(InputTransform):
    """The image shrunk to ``size - 2 * pad`` inside a learnable frame of width ``pad``."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 16, **kw: object) -> None:
        super().__init__(size, mean, std)
        self.pad = int(min(max(pad, 1), (self.size - 4) // 2))
        self.prompt = nn.Parameter(torch.zeros(1, 3, self.size, self.size))
        mask = torch.ones(1, 1, self.size, self.size)
        mask[..., self.pad : self.size - self.pad, self.pad : self.size - self.pad] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.base(x, self.size - 2 * self.pad)
        return F.pad(inner, (self.pad,) * 4) + self.mask * self.prompt


@TRANSFORMS.register("scale_pad")
class ScalePad(InputTransform):
    """Like ``pad``, with a learnable scale for how much of the frame the image fills."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 16, **kw: object) -> None:
        super().__init__(size, mean, std)
        start = min(max((self.size - 2 * int(pad)) / self.size, 0.1), 0.99)
        self.scale_logit = nn.Parameter(torch.tensor(math.log(start / (1 - start))))
        self.prompt = nn.Parameter(torch.zeros(1, 3, self.size, self.size))

    @property
    def scale(self) -> torch.Tensor:
        """Share of the frame's side the image fills, in (0, 1)."""
        return torch.sigmoid(self.scale_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        full = self.base(x)
        n = full.shape[0]
        inv = 1.0 / self.scale
        zero = torch.zeros((), device=full.device, dtype=inv.dtype)
        theta = torch.stack([torch.stack([inv, zero, zero]), torch.stack([zero, inv, zero])]).unsqueeze(0)
        grid = F.affine_grid(theta.expand(n, -1, -1).to(full.dtype), list(full.shape), align_corners=False)
        inner = F.grid_sample(full, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        ones = torch.ones(1, 1, self.size, self.size, device=full.device, dtype=full.dtype)
        mask = F.grid_sample(ones, grid[:1], mode="bilinear", padding_mode="zeros", align_corners=False)
        return inner + (1 - mask) * self.prompt


@TRANSFORMS.register("conv")
class ConvAdapter(InputTransform):
    """A tiny residual conv adapter adding a sample-specific perturbation (zero at the start)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...], width: int = 8, **kw: object) -> None:
        super().__init__(size, mean, std)
        self.adapter = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 3, 3, padding=1)
        )
        nn.init.zeros_(self.adapter[-1].weight)
        nn.init.zeros_(self.adapter[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base(x)
        return base + self.adapter(base)


def build_transform(name: str, size: int, mean: tuple[float, ...], std: tuple[float, ...], pad: int = 16) -> InputTransform:
    """Create the input transform registered under ``name``."""
    return TRANSFORMS.create(name, size=size, mean=mean, std=std, pad=pad)  # type: ignore[return-value]
