"""Turning a device name from a config or the command line into a `torch.device`."""

from __future__ import annotations

import torch

from .exceptions import ConfigError

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device specification.

    Args:
        spec: ``"auto"`` (or None): CUDA when available, else the CPU; ``"cpu"``; ``"cuda"`` or
            ``"cuda:N"``; or a `torch.device`, returned as is once checked.

    Returns:
        The device.

    Raises:
        ConfigError: an unparsable name, or CUDA requested where it is not available or the index
            does not exist.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(spec.strip().lower())
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ConfigError(f"unknown device {spec!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device type {device.type!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
