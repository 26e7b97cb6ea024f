"""Composition of Gaussian releases that share one sampled participant set.

A federation round releases J vectors (one per dream step, plus the soft labels), all computed by the
*same* sampled clients. Release i is a Gaussian mechanism with noise multiplier z_i = sigma_i / C_i.
Gaussian mechanisms compose exactly in Gaussian DP (Dong, Roth & Su 2019, "Gaussian Differential
Privacy", Corollary 3.3): mu-GDP releases compose to sqrt(sum mu_i^2)-GDP with mu_i = 1 / z_i, so the
round, before sampling, is a single Gaussian mechanism with

    z_eff = (sum_i z_i^-2)^(-1/2).

The same holds for Renyi DP (Mironov 2017, Proposition 1 with the Gaussian's alpha / (2 z^2) curve).
Client sampling then amplifies the round ONCE, because every release uses the same sample; stepping an
accountant once per release would amplify each release by an independent sample and under-report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ...exceptions import ConfigError


def effective_noise_multiplier(noise_multipliers: Sequence[float]) -> float:
    """The single Gaussian equivalent to composing `noise_multipliers` on the same data.

    Args:
        noise_multipliers: z_i = sigma_i / sensitivity_i of each release, all > 0.
    Returns:
        z_eff = (sum_i z_i^-2)^(-1/2).
    Raises:
        ConfigError: on an empty sequence or a non-positive or non-finite multiplier.
    """
    if not noise_multipliers:
        raise ConfigError("at least one release is needed to compose")
    total = 0.0
    for z in noise_multipliers:
        if not (math.isfinite(z) and z > 0):
            raise ConfigError(f"noise multipliers must be finite and > 0, got {z}")
        total += z**-2
    return total**-0.5


def per_release_noise_multiplier(noise_multiplier: float, *, releases: int) -> float:
    """Split a round's z_eff equally over `releases`: each release gets z_eff * sqrt(releases).

    Args:
        noise_multiplier: the round's effective noise multiplier z_eff.
        releases: how many vectors the round releases (J >= 1).
    Returns:
        the per-release z_i such that effective_noise_multiplier([z_i] * J) == z_eff.
    Raises:
        ConfigError: for a non-positive multiplier or release count.
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    if releases < 1:
        raise ConfigError(f"releases must be >= 1, got {releases}")
    return noise_multiplier * math.sqrt(releases)
