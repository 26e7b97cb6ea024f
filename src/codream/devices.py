"""Turning a device name into a `torch.device`, and pinning every CPU thread pool of a process."""

from __future__ import annotations

import os

import numpy as np  # noqa: F401 - loads numpy's BLAS so that `pin_threads` can reach it
import threadpoolctl
import torch

from .exceptions import ConfigError

__all__ = ["THREAD_ENV_VARS", "pin_threads", "resolve_device"]

#: Read by OpenMP, OpenBLAS, MKL, BLIS and Accelerate when they load; set by `pin_threads` so that a
#: library loaded later (scipy's own OpenBLAS) and any child process start with the same count.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def pin_threads(threads: int | None) -> None:
    """Limit torch and every native thread pool of this process (BLAS, OpenMP) to `threads`.

    `torch.set_num_threads` reaches only torch's pools. numpy's OpenBLAS keeps its own, one thread
    per core, and wakes it for a norm of a long vector: on a shared machine the one-thread run then
    spends most of a secure-sum step waiting for its second thread. The pools already loaded are
    limited with threadpoolctl; the environment variables cover those loaded later.

    Args:
        threads: threads per pool, >= 1; None leaves every library's own choice.

    Raises:
        ConfigError: `threads` is below 1.
    """
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    torch.set_num_threads(threads)
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    threadpoolctl.threadpool_limits(limits=threads)


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
