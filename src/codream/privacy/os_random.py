"""Randomness that DP rests on, drawn from the operating system: sampling coins and Gaussian noise.

A generator seeded from the run seed (or from anything the adversary may learn) makes DP's sampling
public: whoever knows the seed knows every DP-SGD batch, and amplification by sampling is gone. So the
coins come straight from `os.urandom`, vectorised: 64 random bits per draw, the top 53 of them as a
uniform double in [0, 1). A Bernoulli(q) coin is then `u < q`, whose probability is q rounded up to a
multiple of 2^-53.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..exceptions import ConfigError

__all__ = ["os_bernoulli", "os_gaussian", "os_uniform"]

_DOUBLE = 2.0**-53


def os_uniform(n: int) -> np.ndarray:
    """`n` independent uniforms in [0, 1) from `os.urandom`, float64, shape (n,)."""
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ConfigError(f"the number of draws must be an integer >= 0, got {n!r}")
    raw = np.frombuffer(os.urandom(8 * int(n)), dtype=np.uint64)
    return (raw >> np.uint64(11)).astype(np.float64) * _DOUBLE


def os_bernoulli(n: int, probability: float) -> np.ndarray:
    """`n` independent coins that are True with `probability`, from `os.urandom`; bool, shape (n,)."""
    if not (0 <= probability <= 1):
        raise ConfigError(f"probability must be in [0, 1], got {probability}")
    return os_uniform(n) < probability


def os_gaussian(n: int, *, std: float) -> np.ndarray:
    """`n` independent N(0, std^2) draws from `os.urandom` (Box-Muller), float64, shape (n,).

    Floating-point Gaussian noise has the known weaknesses of any float sampler (Mironov 2012); it is
    used where the accountant assumes a continuous Gaussian.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"std must be finite and >= 0, got {std}")
    pairs = (int(n) + 1) // 2
    u1 = 1.0 - os_uniform(pairs)  # (0, 1]: the logarithm stays finite
    u2 = os_uniform(pairs)
    radius = np.sqrt(-2.0 * np.log(u1))
    draws = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return std * draws[: int(n)]
