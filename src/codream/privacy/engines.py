"""Accountant engines backed by Opacus: Renyi DP and privacy random variables.

For Gaussian events the maths is Opacus' own (`opacus.accountants`); these classes only hand it a
history. A Gaussian `PrivacyEvent` is a Poisson-sampled Gaussian, exactly what both Opacus analyses cover:

- "rdp": Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism",
  converted to (epsilon, delta) with Balle et al. 2020 ("Hypothesis testing interpretations and Renyi
  DP", Theorem 21) as Opacus does. Orders default to Opacus' `RDPAccountant.DEFAULT_ALPHAS`.
- "prv": Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy" (privacy random
  variables composed by FFT); the reported epsilon is the upper end of its error interval.

Integer events (Skellam, distributed discrete Gaussian) are known only through a Renyi curve that a
Gaussian's dominates, so only "rdp" accounts them: unsampled with that curve at every order, sampled
with the general bound of `analysis.subsampling` at integer orders. "prv" refuses them: a bound on the
Renyi curve says nothing about the privacy loss distribution PRV composes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from opacus.accountants import PRVAccountant as _OpacusPRV
from opacus.accountants import RDPAccountant as _OpacusRDP
from opacus.accountants.analysis import rdp as _opacus_rdp

from ..exceptions import ConfigError
from .accountant import Accountant, Mechanism, PrivacyEvent, register_accountant
from .analysis.subsampling import gaussian_rdp, subsampled_rdp_curve

__all__ = ["PRVAccountant", "RDPAccountant"]


def _opacus_state(history: Sequence[PrivacyEvent], mechanism: str) -> dict:
    # Opacus' public way to give an accountant a history is load_state_dict (Gaussian events only).
    assert all(e.mechanism is Mechanism.GAUSSIAN for e in history)
    return {
        "mechanism": mechanism,
        "history": [(e.noise_multiplier, e.sample_rate, e.steps) for e in history],
    }


class RDPAccountant(Accountant):
    """Renyi DP accounting (Opacus' analysis) over a set of orders.

    Args:
        orders: Renyi orders searched for the best conversion; None for Opacus' defaults.
    """

    def __init__(self, *, orders: Sequence[float] | None = None) -> None:
        super().__init__()
        if orders is not None:
            orders = [float(a) for a in orders]
            if not orders or any(a <= 1 for a in orders):
                raise ConfigError(f"Renyi orders must be > 1, got {orders}")
        self.orders = tuple(orders) if orders is not None else tuple(_OpacusRDP.DEFAULT_ALPHAS)

    @classmethod
    def mechanism(cls) -> str:
        return "rdp"

    def _epsilon(self, history: tuple[PrivacyEvent, ...], delta: float) -> float:
        return self.epsilon_and_order(history, delta)[0]

    def epsilon_and_order(self, history: tuple[PrivacyEvent, ...], delta: float) -> tuple[float, float]:
        """Epsilon and the Renyi order that achieved it."""
        gaussian = [e for e in history if e.mechanism is Mechanism.GAUSSIAN]
        integer = [e for e in history if e.mechanism is Mechanism.INTEGER]
        if not integer:
            engine = _OpacusRDP()
            engine.load_state_dict(_opacus_state(gaussian, "rdp"))
            eps, order = engine.get_privacy_spent(delta=delta, alphas=list(self.orders))
            return float(eps), float(order)
        orders = list(self.orders)
        rdp = np.zeros(len(orders))
        for e in gaussian:
            rdp += _opacus_rdp.compute_rdp(
                q=e.sample_rate, noise_multiplier=e.noise_multiplier, steps=e.steps, orders=orders
            )
        for e in integer:
            rdp += e.steps * np.asarray(integer_rdp_curve(tuple(orders), e.noise_multiplier, e.sample_rate))
        if not np.isfinite(rdp).any():
            raise ConfigError(
                "sampled integer noise is accounted at integer Renyi orders only, and none of "
                f"{orders} is an integer >= 2"
            )
        eps, order = _opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
        return float(eps), float(order)


@functools.lru_cache(maxsize=256)
def integer_rdp_curve(
    orders: tuple[float, ...], noise_multiplier: float, sample_rate: float
) -> tuple[float, ...]:
    """RDP of one integer event at `orders`: the dominating Gaussian curve, subsampled by [ZW19] if q < 1.

    Cached: calibration asks for the same curve many times while it bisects on the number of steps.
    """
    curve = functools.partial(gaussian_rdp, noise_multiplier=noise_multiplier)
    return tuple(subsampled_rdp_curve(orders, sample_rate=sample_rate, rdp=curve))


class PRVAccountant(Accountant):
    """Numerical composition of privacy random variables (Opacus' PRV accountant).

    Args:
        eps_error: allowed error of the epsilon estimate; the upper bound is reported.
    """

    def __init__(self, *, eps_error: float = 0.01) -> None:
        super().__init__()
        if not (0 < eps_error < 1):
            raise ConfigError(f"eps_error must be in (0, 1), got {eps_error}")
        self.eps_error = eps_error

    @classmethod
    def mechanism(cls) -> str:
        return "prv"

    def check_event(self, event: PrivacyEvent) -> None:
        if event.mechanism is not Mechanism.GAUSSIAN:
            raise ConfigError(
                f"the PRV accountant cannot account {event.mechanism.value} noise (Skellam or discrete "
                "Gaussian): PRV composes the Gaussian's privacy loss distribution, and integer noise is "
                "bounded only through its Renyi curve. Use the 'rdp' accountant."
            )

    def _epsilon(self, history: tuple[PrivacyEvent, ...], delta: float) -> float:
        engine = _OpacusPRV()
        engine.load_state_dict(_opacus_state(history, "prv"))
        return float(engine.get_epsilon(delta=delta, eps_error=self.eps_error))


register_accountant(RDPAccountant)
register_accountant(PRVAccountant)
