"""From a target (epsilon, delta) and a schedule to the noise multiplier that meets it.

Epsilon falls monotonically as the noise multiplier grows, so the multiplier is found by bisection on
the accountant itself; the answer is the upper end of the final bracket, so it never spends more than
the target.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..exceptions import ConfigError
from .accountant import PrivacyEvent, create_accountant
from .analysis.composition import per_release_noise_multiplier

__all__ = [
    "ClientLevelSchedule",
    "ExampleLevelSchedule",
    "NoisePlan",
    "calibrate_noise_multiplier",
    "epsilon_for",
    "plan_noise",
]

_Z_MIN = 0.05  # below this, one event alone costs so much that no useful target is met
_Z_MAX = 1e4


@dataclass(frozen=True, slots=True)
class ClientLevelSchedule:
    """Client-level DP: one accounted event per round.

    Attributes:
        rounds: federation rounds T.
        sample_rate: q, the probability a client is in a round's cohort (cohort / population).
        releases_per_round: vectors released per round (dream steps + soft labels), composed into one event.
    """

    rounds: int
    sample_rate: float
    releases_per_round: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.releases_per_round < 1:
            raise ConfigError(f"releases_per_round must be >= 1, got {self.releases_per_round}")

    @property
    def steps(self) -> int:
        return self.rounds


@dataclass(frozen=True, slots=True)
class ExampleLevelSchedule:
    """Example-level DP-SGD on one client: one accounted event per optimiser step.

    Attributes:
        local_steps: DP-SGD steps over the whole run (warm-up plus every round's CE steps).
        batch_size: expected Poisson batch size.
        data_size: the client's number of training examples.
    """

    local_steps: int
    batch_size: int
    data_size: int

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps}")
        if self.data_size < 1 or not (1 <= self.batch_size <= self.data_size):
            raise ConfigError(
                "need 1 <= batch_size <= data_size, "
                f"got batch_size={self.batch_size}, data_size={self.data_size}"
            )

    @classmethod
    def from_epochs(cls, *, epochs: float, batch_size: int, data_size: int) -> ExampleLevelSchedule:
        """Schedule of `epochs` passes (in expectation) over the data."""
        if not (epochs > 0):
            raise ConfigError(f"epochs must be > 0, got {epochs}")
        return cls(
            local_steps=max(1, math.ceil(epochs * data_size / batch_size)),
            batch_size=batch_size,
            data_size=data_size,
        )

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.data_size

    @property
    def steps(self) -> int:
        return self.local_steps

    @property
    def releases_per_round(self) -> int:
        return 1


@dataclass(frozen=True, slots=True)
class NoisePlan:
    """What calibration chose and what it spends.

    Attributes:
        noise_multiplier: z of each accounted event (a round's z_eff, or a DP-SGD step's z).
        per_release_noise_multiplier: z_i of each of the round's releases (z_eff * sqrt(J)).
        epsilon: the epsilon this plan spends (<= target).
        delta, sample_rate, steps, accountant: the inputs it was computed for.
    """

    noise_multiplier: float
    per_release_noise_multiplier: float
    epsilon: float
    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    releases_per_round: int
    accountant: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def epsilon_for(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon spent by `steps` Poisson-sampled Gaussian events with these parameters."""
    acc = create_accountant(accountant)
    acc.add(PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps))
    return acc.get_epsilon(delta=delta)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int | None = None,
    rounds: int | None = None,
    releases_per_round: int = 1,
    accountant: str = "rdp",
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier (within `tolerance`, relative) whose epsilon is <= target.

    Args:
        target_epsilon: epsilon to stay within.
        delta: target delta.
        sample_rate: Poisson sampling rate q of each event.
        steps: number of accounted events (DP-SGD steps, or rounds); `rounds` is the same for
            client-level callers. Give exactly one.
        releases_per_round: client-level: a round's releases compose into ONE event, so this does
            not change the answer, which is the round's z_eff; each release then uses
            z_eff * sqrt(releases_per_round) (see `per_release_noise_multiplier`).
        accountant: registry name of the accountant ("rdp", "prv").
        tolerance: relative width of the final bracket.
    Returns:
        z with epsilon_for(z) <= target_epsilon.
    Raises:
        ConfigError: for a non-positive target, both or neither of steps/rounds, or a target no
            multiplier up to 1e4 meets.
    """
    if (steps is None) == (rounds is None):
        raise ConfigError("give exactly one of steps= (events) or rounds= (client-level rounds)")
    steps = steps if steps is not None else rounds
    if releases_per_round < 1:
        raise ConfigError(f"releases_per_round must be >= 1, got {releases_per_round}")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be finite and > 0, got {target_epsilon}")
    if not (0 < tolerance < 1):
        raise ConfigError(f"tolerance must be in (0, 1), got {tolerance}")

    def eps(z: float) -> float:
        return epsilon_for(
            noise_multiplier=z, sample_rate=sample_rate, steps=steps, delta=delta, accountant=accountant
        )

    lo, hi = 1.0, 1.0
    if eps(hi) > target_epsilon:
        while eps(hi) > target_epsilon:
            lo, hi = hi, hi * 2.0
            if hi > _Z_MAX:
                raise ConfigError(
                    f"no noise multiplier up to {_Z_MAX:g} reaches epsilon {target_epsilon} at delta {delta} "
                    f"over {steps} steps with sample rate {sample_rate}"
                )
    else:
        while eps(lo) <= target_epsilon:
            hi, lo = lo, lo / 2.0
            if lo < _Z_MIN:
                return hi
    while (hi - lo) > tolerance * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi


def plan_noise(
    schedule: ClientLevelSchedule | ExampleLevelSchedule,
    *,
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    tolerance: float = 1e-3,
) -> NoisePlan:
    """Calibrate the noise for a whole schedule and report what it spends.

    Returns:
        a `NoisePlan`; for a client-level schedule its `per_release_noise_multiplier` is what each of a
        round's releases must use so that the round composes to `noise_multiplier`.
    """
    z = calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=schedule.sample_rate,
        steps=schedule.steps,
        accountant=accountant,
        tolerance=tolerance,
    )
    spent = epsilon_for(
        noise_multiplier=z,
        sample_rate=schedule.sample_rate,
        steps=schedule.steps,
        delta=delta,
        accountant=accountant,
    )
    return NoisePlan(
        noise_multiplier=z,
        per_release_noise_multiplier=per_release_noise_multiplier(z, releases=schedule.releases_per_round),
        epsilon=spent,
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=schedule.sample_rate,
        steps=schedule.steps,
        releases_per_round=schedule.releases_per_round,
        accountant=accountant,
    )
