"""Batched, gradient-free evaluation that leaves the model's train/eval mode as it found it."""

from __future__ import annotations

import torch
from torch import nn

from .exceptions import ConfigError

__all__ = ["accuracy", "predict_proba"]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device | None) -> torch.Tensor:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = _model_device(model) if device is None else device
    was_training = model.training
    model.eval()  # BatchNorm uses running statistics and does not update them
    try:
        chunks = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        raise ConfigError("cannot evaluate on an empty set")
    return torch.cat(chunks)


def predict_proba(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024, device: torch.device | None = None
) -> torch.Tensor:
    """Softmax probabilities of `model` on `x`, in eval mode.

    Args:
        model: a classifier returning logits (B, K); it must already be on `device`.
        x: inputs (N, C, H, W) on any device.
        batch_size: examples per forward pass.
        device: where to run; default the device of the model's parameters.

    Returns:
        float32 (N, K) probabilities on the CPU.

    Raises:
        ConfigError: empty input or a non-positive batch size.
    """
    return torch.softmax(_logits(model, x, batch_size, device), dim=1)


def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 1024,
    device: torch.device | None = None,
) -> float:
    """Top-1 accuracy in [0, 1] of `model` on (x, y), in eval mode, without gradients.

    Args:
        model: a classifier returning logits; it must already be on `device`.
        x: inputs (N, C, H, W).
        y: int labels (N,).
        batch_size: examples per forward pass.
        device: where to run; default the device of the model's parameters.

    Returns:
        The fraction of examples whose argmax logit equals the label.

    Raises:
        ConfigError: x and y of different lengths, empty input or a non-positive batch size.
    """
    if len(x) != len(y):
        raise ConfigError(f"x has {len(x)} examples but y has {len(y)}")
    predictions = _logits(model, x, batch_size, device).argmax(dim=1)
    return float((predictions == y.cpu()).float().mean())
