"""Distributed integer noise: privacy of the summed noise, sensitivity after rounding, wrap-around tails.

Every quantity here is in *encoded units*: the fixed-point integers that secure aggregation sums mod
2^bits (a float x becomes about x * scale). Sources:

- [AKL21] Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private Federated
  Learning", NeurIPS 2021, Theorem 3.5 (RDP of the multi-dimensional Skellam mechanism).
- [KLS21] Kairouz, Liu & Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
  with Secure Aggregation", ICML 2021, Theorem 1 (concentrated DP of a sum of n discrete Gaussians) and
  Section 4.1 (norm of a stochastically rounded vector).
- [CKS20] Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020,
  Corollary 9 (the discrete Gaussian N_Z(0, s^2) is s^2-subgaussian).
- [BLM13] Boucheron, Lugosi & Massart, "Concentration Inequalities", 2013, Section 2.4 (a centred
  Poisson is sub-gamma with variance factor mu and scale 1/3; Bernstein's inequality).

The Skellam sum is exactly Skellam (Poisson laws add), so n clients each adding Sk(mu/n, mu/n) give
Sk(mu, mu) whatever n is. The discrete Gaussian is not closed under sums, which is what the tau term of
[KLS21] pays for.
"""

from __future__ import annotations

import math

from ...exceptions import ConfigError


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be finite and > 0, got {value}")


def rounded_l2_sensitivity(clip_norm: float, *, dimension: int) -> float:
    """L2 norm bound of an L2-clipped vector after stochastic rounding to integers.

    Each coordinate moves by less than one unit when rounded, so ||round(x)||_2 <= ||x||_2 + sqrt(d)
    holds with certainty ([KLS21] Section 4.1). [KLS21] also give a tighter bound,
    sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)), that holds with probability 1 - beta and needs
    *conditional* rounding (re-round until the bound holds); the encoding rounds unconditionally, so
    codream uses the certain bound.

    Args:
        clip_norm: the clip norm in encoded units (float clip norm times the codec's scale).
        dimension: number of coordinates d.
    Returns:
        clip_norm + sqrt(dimension).
    Raises:
        ConfigError: for a non-positive clip norm or dimension.
    """
    _positive("clip_norm", clip_norm)
    if dimension < 1:
        raise ConfigError(f"dimension must be >= 1, got {dimension}")
    return clip_norm + math.sqrt(dimension)


def l1_sensitivity_bound(l2: float, *, dimension: int) -> float:
    """L1 bound of an integer vector with L2 norm at most `l2`: min(sqrt(d) l2, l2^2).

    Cauchy-Schwarz gives sqrt(d) l2; for integers |v_i| <= v_i^2 gives l2^2.
    """
    _positive("l2", l2)
    if dimension < 1:
        raise ConfigError(f"dimension must be >= 1, got {dimension}")
    return min(math.sqrt(dimension) * l2, l2 * l2)


def skellam_rdp(alpha: float, *, variance: float, l2: float, l1: float) -> float:
    """Renyi DP of order `alpha` of adding Skellam noise of total per-coordinate `variance`.

    [AKL21] Theorem 3.5, with Sk(mu, mu) noise (variance 2 mu):
        eps(alpha) = alpha l2^2 / (4 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (16 mu^2), 3 l1 / (4 mu)).

    Args:
        alpha: Renyi order, >= 1.
        variance: per-coordinate variance of the summed noise (= 2 mu).
        l2: L2 sensitivity; l1: L1 sensitivity (encoded units).
    Returns:
        the RDP epsilon at `alpha`.
    """
    if alpha < 1:
        raise ConfigError(f"Renyi order must be >= 1, got {alpha}")
    _positive("variance", variance)
    _positive("l2", l2)
    _positive("l1", l1)
    mu = variance / 2.0
    gaussian = alpha * l2 * l2 / (4.0 * mu)
    correction = min(((2.0 * alpha - 1.0) * l2 * l2 + 6.0 * l1) / (16.0 * mu * mu), 3.0 * l1 / (4.0 * mu))
    return gaussian + correction


def _skellam_excess(l2: float, l1: float) -> float:
    # With sigma^2 = 2 mu the first branch of [AKL21]'s min divided by alpha is
    # ((2 - 1/alpha) l2^2 + 6 l1 / alpha) / (4 sigma^4), largest at alpha = 1 or as alpha grows:
    # at most max(l2^2 + 6 l1, 2 l2^2) / (4 sigma^4).
    return max(l2 * l2 + 6.0 * l1, 2.0 * l2 * l2)


def skellam_gaussian_equivalent(*, variance: float, l2: float, l1: float) -> float:
    """Noise multiplier z' of a Gaussian whose RDP curve dominates the Skellam's at every order.

    alpha / (2 z'^2) >= skellam_rdp(alpha) for all alpha >= 1, with
    1 / z'^2 = l2^2 / sigma^2 + max(l2^2 + 6 l1, 2 l2^2) / (2 sigma^4). The accountant then treats the
    release as a Gaussian with multiplier z' (the Skellam approaches the Gaussian as sigma grows; the
    second term is the price of the integer lattice).

    Args:
        variance: per-coordinate variance sigma^2 of the summed noise.
        l2, l1: sensitivities in encoded units.
    Returns:
        z', always slightly below sigma / l2.
    """
    _positive("variance", variance)
    _positive("l2", l2)
    _positive("l1", l1)
    inv = l2 * l2 / variance + _skellam_excess(l2, l1) / (2.0 * variance * variance)
    return inv**-0.5


def skellam_share_variance(*, noise_multiplier: float, l2: float, l1: float, shares: int) -> float:
    """Per-client Skellam variance so that `shares` honest shares reach Gaussian-equivalent z >= target.

    Solves 1/z^2 = l2^2 u + (M / 2) u^2 for u = 1 / sigma^2 (M as in `skellam_gaussian_equivalent`),
    written without cancellation, then divides sigma^2 among the shares.

    Args:
        noise_multiplier: target z for this release.
        l2, l1: sensitivities in encoded units.
        shares: the fewest honest shares that will be summed (n_min minus tolerated colluders).
    Returns:
        per-share variance sigma^2 / shares.
    """
    _positive("noise_multiplier", noise_multiplier)
    _positive("l2", l2)
    _positive("l1", l1)
    if shares < 1:
        raise ConfigError(f"shares must be >= 1, got {shares}")
    m = _skellam_excess(l2, l1)
    target = 1.0 / (noise_multiplier * noise_multiplier)
    u = 2.0 * target / (l2 * l2 + math.sqrt(l2**4 + 2.0 * m * target))
    return (1.0 / u) / shares


def _ddg_tau(share_variance: float, shares: int) -> float:
    # [KLS21] Theorem 1: tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)).
    tau = 0.0
    for k in range(1, shares):
        term = math.exp(-2.0 * math.pi**2 * share_variance * k / (k + 1))
        tau += term
        if term < 1e-300:
            break
    return 10.0 * tau


def ddg_concentrated_epsilon(*, share_variance: float, shares: int, l2: float, dimension: int) -> float:
    """Concentrated-DP parameter of the sum of `shares` discrete Gaussians N_Z(0, share_variance).

    [KLS21] Theorem 1: the sum satisfies (eps^2 / 2)-concentrated DP (so RDP alpha eps^2 / 2) with
        eps = min(sqrt(l2^2 / (n s^2) + tau d / 2), l2 / (sqrt(n) s) + tau sqrt(d)).
    A Gaussian with noise multiplier 1 / eps has the same RDP curve.

    Args:
        share_variance: s^2, the per-client discrete Gaussian parameter.
        shares: n, how many shares are summed (honest survivors).
        l2: L2 sensitivity (encoded units).
        dimension: d.
    Returns:
        eps.
    """
    _positive("share_variance", share_variance)
    _positive("l2", l2)
    if shares < 1 or dimension < 1:
        raise ConfigError(f"shares and dimension must be >= 1, got {shares} and {dimension}")
    tau = _ddg_tau(share_variance, shares)
    total = shares * share_variance
    first = math.sqrt(l2 * l2 / total + 0.5 * tau * dimension)
    second = l2 / math.sqrt(total) + tau * math.sqrt(dimension)
    return min(first, second)


def ddg_share_variance(*, noise_multiplier: float, l2: float, dimension: int, shares: int) -> float:
    """Per-client discrete Gaussian parameter s^2 so that `shares` shares give 1/eps >= target z.

    Starts from the Gaussian answer z^2 l2^2 / n and raises it by bisection (eps falls as s grows).

    Returns:
        s^2 (per share).
    """
    _positive("noise_multiplier", noise_multiplier)
    _positive("l2", l2)
    if shares < 1:
        raise ConfigError(f"shares must be >= 1, got {shares}")
    target = 1.0 / noise_multiplier

    def ok(s2: float) -> bool:
        return (
            ddg_concentrated_epsilon(share_variance=s2, shares=shares, l2=l2, dimension=dimension) <= target
        )

    lo = (noise_multiplier * l2) ** 2 / shares
    if ok(lo):
        return lo
    hi = 2.0 * lo
    while not ok(hi):
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi


def skellam_tail(threshold: float, *, variance: float) -> float:
    """Bound on P(|X| >= threshold) for X ~ Sk(mu, mu) with variance 2 mu ([BLM13] Bernstein).

    X is a difference of two independent centred Poissons, each sub-gamma with variance factor mu and
    scale 1/3, so P(|X| >= t) <= 2 exp(-t^2 / (2 (variance + t / 3))).
    """
    _positive("variance", variance)
    if threshold <= 0:
        return 1.0
    return min(1.0, 2.0 * math.exp(-threshold * threshold / (2.0 * (variance + threshold / 3.0))))


def discrete_gaussian_tail(threshold: float, *, variance: float) -> float:
    """Bound on P(|X| >= threshold) for a sum of discrete Gaussians with total parameter `variance`.

    Each N_Z(0, s^2) is s^2-subgaussian ([CKS20] Corollary 9), so a sum of independent ones is
    (sum s^2)-subgaussian: P(|X| >= t) <= 2 exp(-t^2 / (2 variance)).
    """
    _positive("variance", variance)
    if threshold <= 0:
        return 1.0
    return min(1.0, 2.0 * math.exp(-threshold * threshold / (2.0 * variance)))


def wraparound_probability(*, headroom: float, variance: float, dimension: int, skellam: bool) -> float:
    """Union bound on the probability that summed noise pushes any coordinate past the modulus.

    The encoding leaves `headroom` encoded units between the largest possible signal sum and the edge
    of the signed range; the sum wraps only where the noise exceeds it.

    Args:
        headroom: encoded units reserved for noise per coordinate.
        variance: per-coordinate variance of the summed noise (encoded units).
        dimension: number of coordinates.
        skellam: True for Skellam noise, False for discrete Gaussian.
    Returns:
        min(1, d * P(|noise| >= headroom)).
    """
    tail = skellam_tail if skellam else discrete_gaussian_tail
    return min(1.0, dimension * tail(headroom, variance=variance))
