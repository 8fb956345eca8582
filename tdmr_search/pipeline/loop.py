"""A small training loop over in-memory tensors that knows nothing of the search.

Whole small datasets stay on the device; batches are index slices drawn with a seeded
generator, so a CPU run with a fixed seed repeats exactly. :func:`fit` is the one loop every
stage trains with: stage 1, stage 2 and the linear probe differ only in their step function.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from tdmr_search import progress
from tdmr_search.errors import ConfigError, TrialFailed

__all__ = [
    "EpochCallback", "StepFn", "no_callback", "Runtime", "resolve_device", "seed_everything", "batches", "train_batches",
    "steps_per_epoch", "fit", "infer", "EVAL_BATCH", "cosine_schedule", "check_finite", "accuracy",
    "recalibrate_batchnorm",
]

logger = logging.getLogger(__name__)

#: ``on_epoch_end(step, metrics)``: called after every epoch; may raise to stop the run.
EpochCallback = Callable[[int, dict], None]
#: ``step(idx)``: the losses of one batch given its row indices (on the device); ``"loss"`` is minimised.
StepFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def no_callback(step: int, metrics: dict) -> None:
    """The default ``on_epoch_end``: does nothing."""


#: Images per batch when a model only predicts (:func:`infer`, batch-norm re-estimation).
EVAL_BATCH = 256


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked but no CUDA GPU is visible; accepted here: auto, cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class Runtime:
    """Where and how tensors are computed: device, autocast and channels-last."""

    device: torch.device

    @classmethod
    def create(cls, device: str, compile: bool = False) -> Runtime:
        """Runtime for a ``device`` setting; turns on cudnn autotuning on CUDA."""
        runtime = cls(resolve_device(device), compile=compile)
        if runtime.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        return runtime

    @property
    def cuda(self) -> bool:
        """Whether this runs on a GPU."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA; nothing on the CPU (exact, repeatable)."""
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """Move a tensor to the device (pinned and non-blocking on CUDA)."""
        if self.cuda:
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    compile: bool = False

    def compiled(self, module: nn.Module, method: str = "forward") -> nn.Module:
        """Compile ``module.method`` in place when asked (parameters and state-dict keys unchanged)."""
        if self.compile:
            setattr(module, method, torch.compile(getattr(module, method)))
        return module

    def module(self, module: nn.Module) -> nn.Module:
        """Move a module to the device (channels-last on CUDA)."""
        module = module.to(self.device)
        if self.cuda:
            module = module.to(memory_format=torch.channels_last)
        return module


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items; a seeded generator fixes the order."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def train_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of seeded index batches; a trailing batch of one is dropped (batch norm cannot train on it)."""
    out = list(batches(n, batch_size, generator))
    if len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


def steps_per_epoch(n: int, batch_size: int) -> int:
    """How many batches :func:`train_batches` gives for ``n`` items (without drawing an order)."""
    full = -(-n // batch_size)
    return full - 1 if full > 1 and n - (full - 1) * batch_size == 1 else full


def fit(model: nn.Module, step: StepFn, optimizer: torch.optim.Optimizer, n: int, batch_size: int,
        generator: torch.Generator, epochs: int, runtime: Runtime, where: str,
        end_epoch: Callable[[int, dict[str, float]], None] | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """Train ``model`` for ``epochs`` passes over ``n`` rows.

    Every epoch draws a fresh order of the rows from ``generator`` (:func:`train_batches`); every
    batch runs ``step`` on its indices, stops the run when the loss is not finite, and takes an
    optimizer step (and a ``scheduler`` step). After each epoch the model is put in eval mode and
    ``end_epoch(epoch, means)`` gets the mean of each loss ``step`` returned, per row.

    Args:
        model: Put in train mode for every epoch and in eval mode after it.
        step: The losses of one batch (its own forward pass, under autocast where it wants it).
        where: Names the loss in the error when it turns NaN or infinite ("stage-1 cross-entropy").
    """
    for epoch in range(epochs):
        model.train()
        sums: dict[str, float] = {}
        count = 0
        for idx in train_batches(n, batch_size, generator):
            idx = idx.to(runtime.device)
            losses = step(idx)
            check_finite(losses["loss"], where)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            count += len(idx)
        model.eval()
        if end_epoch is not None:
            end_epoch(epoch, {k: v / max(count, 1) for k, v in sums.items()})


@torch.no_grad()
def infer(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, runtime: Runtime, batch: int = EVAL_BATCH,
          label: str | None = None) -> torch.Tensor:
    """``fn`` over ``images`` in batches, without gradients, as float32 on the device.

    A ``label`` reports the pass's progress (``tdmr_search.progress``; long teacher passes).
    """
    outs = []
    starts = range(0, len(images), batch)
    for start in (progress.track(starts, label=label, unit=f"batches of {batch}") if label else starts):
        with runtime.autocast():
            outs.append(fn(runtime.put(images[start : start + batch])).float())
    return torch.cat(outs) if outs else torch.zeros(0)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero over ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_finite(loss: torch.Tensor, where: str) -> None:
    """Stop the run when a loss turns NaN or infinite."""
    if not torch.isfinite(loss.detach()).all():
        raise TrialFailed(f"the {where} loss became {loss.detach().float().item()} (not finite); lower the learning rate")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of correct top-1 predictions."""
    return float((logits.argmax(dim=1) == labels).float().mean().item()) if len(labels) else float("nan")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, runtime: Runtime,
                          batch_size: int = EVAL_BATCH) -> bool:
    """Recompute every batch-norm layer's running mean and variance over ``images``.

    The statistics are reset and then averaged exactly (momentum None) over one pass in batches
    of ``batch_size``; only the batch-norm layers are in training mode for that pass (dropout and
    drop-path stay off). The model is left in eval mode. Returns False when the model has no
    batch-norm layer (nothing to do).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not len(images):
        return False
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if len(chunk) == 1 and start:  # a trailing lone image: 1-d batch norm cannot train on it
                break
            if chunk.device.type != runtime.device.type:  # already on the GPU: used as it is
                chunk = runtime.put(chunk)
            with runtime.autocast():
                model(chunk)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return True
