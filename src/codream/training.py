"""Plain supervised training with seeded shuffling, shared by the baselines.

Batches are drawn from an endless stream of seeded permutations of the training set, so every batch is
full (BatchNorm never sees a batch of one) and ``epochs`` is simply ``ceil(epochs * N / batch_size)``
steps. The permutation comes from a caller-owned `torch.Generator`, so a run is reproducible and can be
resumed by keeping the generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .exceptions import ConfigError

__all__ = ["BatchStream", "TrainStats", "train_supervised"]


@dataclass(frozen=True, slots=True)
class TrainStats:
    """What one call of `train_supervised` did.

    Attributes:
        steps: optimiser steps taken.
        examples: examples seen (steps x batch size).
        mean_loss: mean cross-entropy over all steps.
        last_loss: cross-entropy of the last batch.
    """

    steps: int
    examples: int
    mean_loss: float
    last_loss: float


class BatchStream:
    """Index batches from consecutive seeded permutations of range(n); batches may span two epochs."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        if n < 1:
            raise ConfigError("cannot draw batches from an empty training set")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = generator
        self._perm = torch.randperm(n, generator=generator)
        self._pos = 0

    def next(self) -> torch.Tensor:
        """The next batch of `batch_size` distinct-within-epoch indices (int64, CPU)."""
        parts = []
        need = self.batch_size
        while need > 0:
            if self._pos == self.n:
                self._perm = torch.randperm(self.n, generator=self.generator)
                self._pos = 0
            take = min(need, self.n - self._pos)
            parts.append(self._perm[self._pos : self._pos + take])
            self._pos += take
            need -= take
        return torch.cat(parts)


def train_supervised(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> TrainStats:
    """Train `model` in place with SGD on cross-entropy; a fresh optimiser per call.

    Args:
        model: the classifier; moved to `device` if given.
        x: inputs (N, C, H, W).
        y: int64 labels (N,).
        steps: optimiser steps to take; give exactly one of `steps` and `epochs`.
        epochs: passes over the data, converted to ``ceil(epochs * N / batch_size)`` steps.
        batch_size: examples per step (capped at N).
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        generator: CPU generator that orders the batches; it advances, so successive calls continue
            the sequence.
        device: where to train; default the device of the model's parameters.

    Returns:
        `TrainStats` of the call.

    Raises:
        ConfigError: both or neither of steps/epochs, non-positive values, or x and y of different lengths.
    """
    if (steps is None) == (epochs is None):
        raise ConfigError("give exactly one of steps and epochs")
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} examples but y has {len(y)}")
    if lr <= 0 or momentum < 0 or weight_decay < 0:
        raise ConfigError(
            f"need lr > 0, momentum >= 0, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}"
        )
    stream = BatchStream(len(x), batch_size, generator)
    if steps is None:
        if not (epochs is not None and epochs > 0):
            raise ConfigError(f"epochs must be > 0, got {epochs}")
        steps = math.ceil(epochs * len(x) / stream.batch_size)
    if steps < 0:
        raise ConfigError(f"steps must be >= 0, got {steps}")

    if device is not None:
        model.to(device)
    else:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x_dev, y_dev = x.to(device), y.to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    was_training = model.training
    model.train()
    total, last = 0.0, float("nan")
    try:
        for _ in range(steps):
            idx = stream.next().to(device)
            loss = F.cross_entropy(model(x_dev[idx]), y_dev[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            last = float(loss.detach())
            total += last
    finally:
        model.train(was_training)
    return TrainStats(
        steps=steps,
        examples=steps * stream.batch_size,
        mean_loss=total / steps if steps else float("nan"),
        last_loss=last,
    )
