"""Pure functions behind codream's privacy accounting: no state, no I/O, each citing its source.

- `composition`: several Gaussian releases on the same sampled clients as one event.
- `integer`: distributed integer noise (Skellam, distributed discrete Gaussian), the sensitivity of
  stochastically rounded vectors, and tail bounds for modular wrap-around.
"""

from .composition import effective_noise_multiplier, per_release_noise_multiplier
from .integer import (
    ddg_concentrated_epsilon,
    ddg_share_variance,
    discrete_gaussian_tail,
    l1_sensitivity_bound,
    rounded_l2_sensitivity,
    skellam_gaussian_equivalent,
    skellam_rdp,
    skellam_share_variance,
    skellam_tail,
    wraparound_probability,
)

__all__ = [
    "ddg_concentrated_epsilon",
    "ddg_share_variance",
    "discrete_gaussian_tail",
    "effective_noise_multiplier",
    "l1_sensitivity_bound",
    "per_release_noise_multiplier",
    "rounded_l2_sensitivity",
    "skellam_gaussian_equivalent",
    "skellam_rdp",
    "skellam_share_variance",
    "skellam_tail",
    "wraparound_probability",
]
