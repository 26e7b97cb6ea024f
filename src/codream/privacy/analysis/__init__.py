"""Pure functions behind codream's privacy accounting: no state, no I/O, each citing its source.

- `composition`: several Gaussian releases on the same sampled clients as one event.
- `integer`: distributed integer noise (Skellam, distributed discrete Gaussian), the sensitivity of
  stochastically rounded vectors, and tail bounds for modular wrap-around.
- `subsampling`: amplification by Poisson sampling for a mechanism known only by its Renyi curve
  (Zhu & Wang 2019), which is all codream knows about integer noise.
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
from .subsampling import gaussian_rdp, poisson_subsampled_rdp, subsampled_rdp_curve

__all__ = [
    "ddg_concentrated_epsilon",
    "ddg_share_variance",
    "discrete_gaussian_tail",
    "effective_noise_multiplier",
    "gaussian_rdp",
    "l1_sensitivity_bound",
    "per_release_noise_multiplier",
    "poisson_subsampled_rdp",
    "rounded_l2_sensitivity",
    "skellam_gaussian_equivalent",
    "skellam_rdp",
    "skellam_share_variance",
    "skellam_tail",
    "subsampled_rdp_curve",
    "wraparound_probability",
]
