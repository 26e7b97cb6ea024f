"""Privacy amplification by Poisson subsampling for a mechanism known only through its Renyi curve.

The tight subsampled-Gaussian analyses (Mironov, Talwar & Zhang 2019, which Opacus implements) use the
Gaussian's exact privacy loss. Distributed integer noise (Skellam, distributed discrete Gaussian) is not
Gaussian: all codream knows about it is an upper bound on its Renyi DP at every order (calibrated to be
at most that of a Gaussian, see `analysis.integer`). For such a mechanism only the general bound holds:

- [ZW19] Zhu & Wang, "Poisson Subsampled Renyi Differential Privacy", ICML 2019, Theorem 5 (general
  upper bound): for a mechanism with RDP eps(l) at every integer order l >= 2, Poisson subsampling at
  rate g gives, at every integer order a >= 2,

      eps'(a) <= 1/(a-1) log( (1-g)^(a-1) (a g - g + 1) + C(a,2) g^2 (1-g)^(a-2) e^eps(2)
                              + 3 sum_{l=3}^{a} C(a,l) (1-g)^(a-l) g^l e^((l-1) eps(l)) ).

  The factor 3 is the price of knowing nothing but the curve, so sampled integer noise costs more
  epsilon than the Gaussian analysis would claim. The reference code of Kairouz, Liu & Steinke 2021 and
  Agarwal, Kairouz & Liu 2021 accounts their sampled integer mechanisms with this bound. Subsampling
  never hurts, so the answer is also capped by eps(a).

The bound exists only at integer orders; at fractional orders this module returns infinity, which the
(epsilon, delta) conversion then simply never picks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ...exceptions import ConfigError

__all__ = ["gaussian_rdp", "poisson_subsampled_rdp", "subsampled_rdp_curve"]


def gaussian_rdp(order: float, *, noise_multiplier: float) -> float:
    """Renyi DP of the (unsampled) Gaussian mechanism: order / (2 z^2) (Mironov 2017, Proposition 7)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    return order / (2.0 * noise_multiplier * noise_multiplier)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _log_sum_exp(terms: Sequence[float]) -> float:
    top = max(terms)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.fsum(math.exp(t - top) for t in terms))


def poisson_subsampled_rdp(order: int, *, sample_rate: float, rdp: Callable[[int], float]) -> float:
    """[ZW19] Theorem 5 at one integer order, capped by the unsampled curve.

    Args:
        order: integer Renyi order a >= 2.
        sample_rate: Poisson sampling rate g in (0, 1].
        rdp: the unsampled mechanism's RDP bound eps(l), called at l = 2..a.
    Returns:
        an upper bound on the subsampled mechanism's RDP at `order`.
    Raises:
        ConfigError: for a non-integer order below 2 or a rate outside (0, 1].
    """
    if isinstance(order, bool) or int(order) != order or order < 2:
        raise ConfigError(f"the general subsampling bound needs an integer order >= 2, got {order}")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
    a = int(order)
    unsampled = float(rdp(a))
    if sample_rate == 1:
        return unsampled
    g = sample_rate
    log_g, log_1mg = math.log(g), math.log1p(-g)
    # First term: (1-g)^(a-1) (a g - g + 1); a g - g + 1 > 0 for every g in (0, 1).
    terms = [(a - 1) * log_1mg + math.log1p((a - 1) * g)]
    terms.append(_log_comb(a, 2) + 2 * log_g + (a - 2) * log_1mg + float(rdp(2)))
    log3 = math.log(3.0)
    for k in range(3, a + 1):
        terms.append(log3 + _log_comb(a, k) + k * log_g + (a - k) * log_1mg + (k - 1) * float(rdp(k)))
    return min(unsampled, _log_sum_exp(terms) / (a - 1))


def subsampled_rdp_curve(
    orders: Sequence[float], *, sample_rate: float, rdp: Callable[[int], float]
) -> list[float]:
    """`poisson_subsampled_rdp` at each of `orders`; infinity at a fractional order (no bound there).

    At sample rate 1 there is no subsampling and every order, fractional or not, gets rdp(order).
    """
    if sample_rate == 1:
        return [float(rdp(a)) for a in orders]  # type: ignore[arg-type]
    return [
        poisson_subsampled_rdp(int(a), sample_rate=sample_rate, rdp=rdp)
        if float(a).is_integer() and a >= 2
        else math.inf
        for a in orders
    ]
