"""Distributed integer noise for secure aggregation: exact integer samplers and each client's share.

Under `secure+dp` each client adds integer noise to its *encoded* vector before masking, so the server
only ever sees the sum of n clients' noise. Two noise families, both exact integer samplers (never a
float Gaussian rounded to integers, whose privacy analysis does not hold):

- Skellam (default): Sk(mu, mu) = Poisson(mu) - Poisson(mu). Sums of Skellams are Skellam, so the
  total noise is exactly Sk(n mu, n mu) ([AKL21], see `analysis.integer`).
- distributed discrete Gaussian: N_Z(0, s^2) by the rejection sampler of Canonne, Kamath & Steinke 2020
  ("The Discrete Gaussian for Differential Privacy", Algorithm 3): propose a discrete Laplace with
  scale t = floor(s) + 1, accept with probability exp(-(|Y| - s^2/t)^2 / (2 s^2)).

Each share is calibrated for `n_min` survivors minus the tolerated colluders, so dropouts (down to the
fewest survivors the round accepts) and colluders who subtract their own noise never leave less noise
than the accountant assumed. The sensitivity is the L2 clip norm in encoded units, inflated by sqrt(d)
for stochastic rounding, and the share is raised until the integer mechanism's Gaussian equivalent
reaches the target noise multiplier.

Randomness: `sampling.NoiseStream`, AES-256-CTR keyed with 256 bits from `os.urandom` (a key hashed
from an explicit seed only in reproducible tests). Masks never come from here.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..exceptions import ConfigError
from .analysis.integer import (
    ddg_concentrated_epsilon,
    ddg_share_variance,
    l1_sensitivity_bound,
    rounded_l2_sensitivity,
    skellam_gaussian_equivalent,
    skellam_share_variance,
    wraparound_probability,
)
from .sampling import NoiseStream, sample_skellam_table

__all__ = [
    "DistributedNoise",
    "NoiseKind",
    "NoiseStream",
    "ShareCalibration",
    "noise_generator",
    "sample_discrete_gaussian",
    "sample_skellam",
]

logger = logging.getLogger(__name__)

_MAX_VARIANCE = float(2**60)


class VectorSpec(Protocol):
    """What noise sizing reads of a planned release (the seam's `VectorSpec` has these fields)."""

    @property
    def name(self) -> str: ...

    @property
    def length(self) -> int: ...

    @property
    def clip_norm(self) -> float: ...


class NoiseKind(enum.Enum):
    SKELLAM = "skellam"
    DISCRETE_GAUSSIAN = "discrete_gaussian"


def noise_generator(seed: int | None = None) -> NoiseStream:
    """The noise's randomness: AES-256-CTR keyed from `os.urandom(32)`, or from `seed` (tests only).

    Raises:
        ConfigError: a negative seed.
    """
    return NoiseStream(seed)


def _check_variance(variance: float, size: int) -> None:
    if not (math.isfinite(variance) and variance > 0):
        raise ConfigError(f"noise variance must be finite and > 0, got {variance}")
    if variance > _MAX_VARIANCE:
        raise ConfigError(
            f"noise variance {variance:g} does not fit int64 arithmetic (max {_MAX_VARIANCE:g})"
        )
    if size < 0:
        raise ConfigError(f"size must be >= 0, got {size}")


def sample_skellam(rng: NoiseStream, *, variance: float, size: int) -> np.ndarray:
    """`size` iid Sk(mu, mu) integers with variance 2 mu = `variance`: the law of Poisson(mu) -
    Poisson(mu), drawn in one exact rejection step per coordinate (`sampling.sample_skellam_table`).

    Returns:
        int64 array of shape (size,).
    """
    _check_variance(variance, size)
    return sample_skellam_table(rng, variance=variance, size=size)


def _geometric(rng: NoiseStream, p: float, size: int) -> np.ndarray:
    """Geometric on {0, 1, ...}: P(G >= j) = (1 - p)^j, by inversion of a uniform on (0, 1]."""
    return np.floor(np.log(rng.open_uniforms(size)) / math.log1p(-p)).astype(np.int64)


def sample_discrete_gaussian(rng: NoiseStream, *, variance: float, size: int) -> np.ndarray:
    """`size` iid discrete Gaussians N_Z(0, s^2), P(x) proportional to exp(-x^2 / (2 s^2)), s^2 = `variance`.

    Canonne, Kamath & Steinke 2020, Algorithm 3, vectorised: the discrete Laplace proposal with scale t
    is drawn as the difference of two geometric variables on {0, 1, ...} with success probability
    1 - exp(-1/t), which has P(y) proportional to exp(-|y| / t); every uniform comes from `rng`.

    Returns:
        int64 array of shape (size,).
    """
    _check_variance(variance, size)
    sigma = math.sqrt(variance)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        want = size - filled
        batch = int(want * 1.6) + 16  # acceptance is above 1/e; one or two passes in practice
        y = _geometric(rng, p, batch) - _geometric(rng, p, batch)
        gap = np.abs(y).astype(np.float64) - variance / t
        accept = rng.uniforms(batch) < np.exp(-(gap * gap) / (2.0 * variance))
        kept = y[accept][:want]
        out[filled : filled + kept.size] = kept
        filled += kept.size
    return out


@dataclass(frozen=True, slots=True)
class ShareCalibration:
    """How one client's noise share for one release was sized.

    Attributes:
        spec_name: the release.
        kind: noise family.
        noise_multiplier: target z_i of the release.
        scale: encoded units per float unit.
        l2: L2 sensitivity in encoded units (clip norm * scale + sqrt(d)).
        l1: L1 sensitivity bound in encoded units.
        shares: honest shares the calibration counts on (n_min - colluders).
        share_variance: per-coordinate variance of one client's share (encoded units).
        achieved_noise_multiplier: Gaussian-equivalent z of `shares` summed shares (>= target).
    """

    spec_name: str
    kind: NoiseKind
    noise_multiplier: float
    scale: float
    l2: float
    l1: float
    shares: int
    share_variance: float
    achieved_noise_multiplier: float

    @property
    def min_total_std(self) -> float:
        """Per-coordinate std of the guaranteed total noise, in float units."""
        return math.sqrt(self.shares * self.share_variance) / self.scale


class DistributedNoise:
    """The `ClientNoise` of `secure+dp`: sizes and draws each client's integer noise share.

    Args:
        noise_multiplier: z_i each release must reach (the round's z_eff times sqrt(releases)); may be
            set later with `set_noise_multiplier` when the plan of the round is known.
        kind: Skellam (default) or distributed discrete Gaussian.
        min_survivors: n_min, the fewest survivors a round accepts; None means every participant.
        colluders: clients that may pool their own noise with the server; their shares are not counted.
        wrap_target: wrap-around probability the noise headroom is sized for, per vector.
        seed: None for noise keyed from `os.urandom`; an integer only for reproducible tests.
    Raises:
        ConfigError: for invalid parameters.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float | None = None,
        kind: NoiseKind | str = NoiseKind.SKELLAM,
        min_survivors: int | None = None,
        colluders: int = 0,
        wrap_target: float = 1e-9,
        seed: int | None = None,
    ) -> None:
        try:
            self.kind = NoiseKind(kind)
        except ValueError:
            raise ConfigError(
                f"unknown noise kind {kind!r}; choose one of {[k.value for k in NoiseKind]}"
            ) from None
        if min_survivors is not None and min_survivors < 1:
            raise ConfigError(f"min_survivors must be >= 1, got {min_survivors}")
        if colluders < 0:
            raise ConfigError(f"colluders must be >= 0, got {colluders}")
        if min_survivors is not None and colluders >= min_survivors:
            raise ConfigError(f"colluders ({colluders}) must be fewer than min_survivors ({min_survivors})")
        if not (0 < wrap_target < 1):
            raise ConfigError(f"wrap_target must be in (0, 1), got {wrap_target}")
        self.min_survivors = min_survivors
        self.colluders = colluders
        self.wrap_target = wrap_target
        self._rng = noise_generator(seed)
        self._z: float | None = None
        if noise_multiplier is not None:
            self.set_noise_multiplier(noise_multiplier)
        self._bounds: dict[str, tuple[float, int]] = {}
        self.calibrations: dict[str, ShareCalibration] = {}
        self.wraparound: dict[str, float] = {}

    @property
    def noise_multiplier(self) -> float:
        if self._z is None:
            raise ConfigError("no noise multiplier set: call set_noise_multiplier before the round")
        return self._z

    def set_noise_multiplier(self, noise_multiplier: float) -> None:
        """Set the per-release z_i (the aggregator does this when a round's plan is known)."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
        self._z = float(noise_multiplier)

    def _n_min(self, num_clients: int) -> int:
        return num_clients if self.min_survivors is None else min(self.min_survivors, num_clients)

    def noise_bound(self, *, spec: VectorSpec, num_clients: int) -> float:
        """Headroom, in float units, the encoding must leave for the summed noise of up to `num_clients`.

        All `num_clients` shares may survive, so the bound covers num_clients / shares times the
        calibrated variance, at a sub-Gaussian tail sized so that d coordinates wrap with probability
        at most `wrap_target`; 2% slack covers the rounding inflation and the integer correction, and
        the actual wrap-around bound is recomputed once the scale is known.
        """
        if num_clients < 1:
            raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
        shares = self._honest_shares(self._n_min(num_clients))
        std = self.noise_multiplier * spec.clip_norm * math.sqrt(num_clients / shares)
        k = math.sqrt(2.0 * math.log(2.0 * spec.length / self.wrap_target))
        bound = 1.02 * k * std
        self._bounds[spec.name] = (bound, num_clients)
        return bound

    def _honest_shares(self, n_min: int) -> int:
        shares = n_min - self.colluders
        if shares < 1:
            raise ConfigError(
                f"n_min={n_min} survivors with {self.colluders} colluders leave no honest noise share"
            )
        return shares

    def calibrate(self, *, spec: VectorSpec, scale: float, n_min: int) -> ShareCalibration:
        """Size one client's share for `spec` at encoding `scale` for `n_min` survivors (no sampling)."""
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"scale must be finite and > 0, got {scale}")
        shares = self._honest_shares(n_min)
        z = self.noise_multiplier
        l2 = rounded_l2_sensitivity(spec.clip_norm * scale, dimension=spec.length)
        l1 = l1_sensitivity_bound(l2, dimension=spec.length)
        if self.kind is NoiseKind.SKELLAM:
            share_var = skellam_share_variance(noise_multiplier=z, l2=l2, l1=l1, shares=shares)
            achieved = skellam_gaussian_equivalent(variance=shares * share_var, l2=l2, l1=l1)
        else:
            share_var = ddg_share_variance(noise_multiplier=z, l2=l2, dimension=spec.length, shares=shares)
            achieved = 1.0 / ddg_concentrated_epsilon(
                share_variance=share_var, shares=shares, l2=l2, dimension=spec.length
            )
        return ShareCalibration(
            spec_name=spec.name,
            kind=self.kind,
            noise_multiplier=z,
            scale=scale,
            l2=l2,
            l1=l1,
            shares=shares,
            share_variance=share_var,
            achieved_noise_multiplier=achieved,
        )

    def sample(self, *, spec: VectorSpec, scale: float, length: int, n_min: int) -> np.ndarray:
        """One client's noise share for `spec`, in encoded units (int64, shape (length,)).

        Also records the calibration and the wrap-around bound for the round report.
        """
        if length != spec.length:
            raise ConfigError(
                f"vector {spec.name!r}: asked for {length} noise coordinates, spec has {spec.length}"
            )
        cal = self.calibrations.get(spec.name)
        if (
            cal is None
            or cal.scale != scale
            or cal.shares != self._honest_shares(n_min)
            or (cal.noise_multiplier != self.noise_multiplier)
        ):
            cal = self.calibrate(spec=spec, scale=scale, n_min=n_min)
            self.calibrations[spec.name] = cal
            self.wraparound[spec.name] = self._wrap_bound(spec, cal)
        if self.kind is NoiseKind.SKELLAM:
            return sample_skellam(self._rng, variance=cal.share_variance, size=length)
        return sample_discrete_gaussian(self._rng, variance=cal.share_variance, size=length)

    def _wrap_bound(self, spec: VectorSpec, cal: ShareCalibration) -> float:
        bound, num_clients = self._bounds.get(spec.name, (0.0, cal.shares + self.colluders))
        prob = wraparound_probability(
            headroom=bound * cal.scale,
            variance=num_clients * cal.share_variance,
            dimension=spec.length,
            skellam=self.kind is NoiseKind.SKELLAM,
        )
        if prob > self.wrap_target:
            logger.warning(
                "vector %r: wrap-around probability bound %.3g exceeds the target %.3g",
                spec.name,
                prob,
                self.wrap_target,
            )
        return prob
