"""Accountant engines backed by Opacus: Renyi DP and privacy random variables.

The maths is Opacus' own (`opacus.accountants`); these classes only hand it a history. Each
`PrivacyEvent` is a Poisson-sampled Gaussian, which is exactly the mechanism both Opacus analyses cover:

- "rdp": Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism",
  converted to (epsilon, delta) with Balle et al. 2020 ("Hypothesis testing interpretations and Renyi
  DP", Theorem 21) as Opacus does. Orders default to Opacus' `RDPAccountant.DEFAULT_ALPHAS`.
- "prv": Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy" (privacy random
  variables composed by FFT); the reported epsilon is the upper end of its error interval.
"""

from __future__ import annotations

from collections.abc import Sequence

from opacus.accountants import PRVAccountant as _OpacusPRV
from opacus.accountants import RDPAccountant as _OpacusRDP

from ..exceptions import ConfigError
from .accountant import Accountant, PrivacyEvent, register_accountant

__all__ = ["PRVAccountant", "RDPAccountant"]


def _opacus_state(history: Sequence[PrivacyEvent], mechanism: str) -> dict:
    # Opacus' public way to give an accountant a history is load_state_dict.
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
        engine = _OpacusRDP()
        engine.load_state_dict(_opacus_state(history, "rdp"))
        eps, order = engine.get_privacy_spent(delta=delta, alphas=list(self.orders))
        return float(eps), float(order)


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

    def _epsilon(self, history: tuple[PrivacyEvent, ...], delta: float) -> float:
        engine = _OpacusPRV()
        engine.load_state_dict(_opacus_state(history, "prv"))
        return float(engine.get_epsilon(delta=delta, eps_error=self.eps_error))


register_accountant(RDPAccountant)
register_accountant(PRVAccountant)
