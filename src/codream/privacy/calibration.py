"""From a target (epsilon, delta) and a schedule to the noise multiplier that meets it.

Epsilon falls monotonically as the noise multiplier grows, so the multiplier is found by bisection on
the accountant itself; the answer is the upper end of the final bracket, so it never spends more than
the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..exceptions import ConfigError
from .accountant import Mechanism, PrivacyEvent, create_accountant
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
    """Client-level DP against the server: one accounted event per round a client takes part in.

    The server knows every cohort (it runs secure aggregation with them), so sampling clients into
    cohorts amplifies nothing against it: a client's epsilon is the unamplified composition of the
    rounds it took part in, and the schedule to plan for is the most rounds one client may take part in.

    Attributes:
        rounds: the rounds one client takes part in at most (all of the federation's, unless clients
            stop at a smaller number).
        sample_rate: 1 (default, no amplification). A rate below 1 holds only where the adversary cannot
            learn who took part, e.g. clients that sample themselves with OS coins and stay silent
            otherwise (not what codream's federation does; see protocols/privacy.md).
        releases_per_round: vectors released per round (dream steps + soft labels), composed into one event.
        mechanism: the noise family; client-level noise in codream is integer (Skellam or distributed
            discrete Gaussian), which only the RDP accountant can account.
    """

    rounds: int
    sample_rate: float = 1.0
    releases_per_round: int = 1
    mechanism: Mechanism = Mechanism.INTEGER

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
        except ValueError:
            raise ConfigError(
                f"unknown mechanism {self.mechanism!r}; choose one of {[m.value for m in Mechanism]}"
            ) from None
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.releases_per_round < 1:
            raise ConfigError(f"releases_per_round must be >= 1, got {self.releases_per_round}")

    @property
    def steps(self) -> int:
        return self.rounds

    @property
    def extra_events(self) -> tuple[PrivacyEvent, ...]:
        return ()


@dataclass(frozen=True, slots=True)
class ExampleLevelSchedule:
    """Example-level DP-SGD on one client: one accounted event per optimiser step.

    Attributes:
        local_steps: DP-SGD steps over the whole run (warm-up plus every round's CE steps).
        batch_size: expected Poisson batch size.
        data_size: the client's number of training examples.
        extra_events: fixed releases charged to the same accountant beside the steps (e.g. the label
            histogram, `label_histogram.label_histogram_event(z)`); calibration leaves room for them.
    """

    local_steps: int
    batch_size: int
    data_size: int
    extra_events: tuple[PrivacyEvent, ...] = ()

    def __post_init__(self) -> None:
        if self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps}")
        if self.data_size < 1 or not (1 <= self.batch_size <= self.data_size):
            raise ConfigError(
                "need 1 <= batch_size <= data_size, "
                f"got batch_size={self.batch_size}, data_size={self.data_size}"
            )
        if not all(isinstance(e, PrivacyEvent) for e in self.extra_events):
            raise ConfigError(f"extra_events must be PrivacyEvents, got {self.extra_events!r}")
        object.__setattr__(self, "extra_events", tuple(self.extra_events))

    @classmethod
    def from_epochs(
        cls, *, epochs: float, batch_size: int, data_size: int, extra_events: tuple[PrivacyEvent, ...] = ()
    ) -> ExampleLevelSchedule:
        """Schedule of `epochs` passes (in expectation) over the data."""
        if not (epochs > 0):
            raise ConfigError(f"epochs must be > 0, got {epochs}")
        return cls(
            local_steps=max(1, math.ceil(epochs * data_size / batch_size)),
            batch_size=batch_size,
            data_size=data_size,
            extra_events=tuple(extra_events),
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

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.GAUSSIAN  # Opacus' DP-SGD adds continuous Gaussian noise


@dataclass(frozen=True, slots=True)
class NoisePlan:
    """What calibration chose and what it spends.

    Attributes:
        noise_multiplier: z of each accounted event (a round's z_eff, or a DP-SGD step's z).
        per_release_noise_multiplier: z_i of each of the round's releases (z_eff * sqrt(J)).
        epsilon: the epsilon this plan spends (<= target).
        delta, sample_rate, steps, accountant, mechanism: the inputs it was computed for.
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
    mechanism: Mechanism = Mechanism.GAUSSIAN

    def to_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "mechanism": self.mechanism.value}


def epsilon_for(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
    mechanism: Mechanism | str = Mechanism.GAUSSIAN,
    extra_events: Sequence[PrivacyEvent] = (),
) -> float:
    """Epsilon spent by `steps` Poisson-sampled events of this noise family with these parameters.

    `extra_events` are composed in too (fixed releases beside the schedule, e.g. a label histogram).

    Raises:
        ConfigError: for invalid parameters, or an accountant that cannot account the mechanism
            (PRV and integer noise).
    """
    acc = create_accountant(accountant)
    for event in extra_events:
        acc.add(event)
    acc.add(
        PrivacyEvent(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            mechanism=Mechanism(mechanism),
        )
    )
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
    mechanism: Mechanism | str = Mechanism.GAUSSIAN,
    extra_events: Sequence[PrivacyEvent] = (),
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
        mechanism: the noise family of every event (integer noise: RDP only).
        extra_events: fixed releases charged beside the events, whose cost the answer leaves room for.
    Returns:
        z with epsilon_for(z) <= target_epsilon.
    Raises:
        ConfigError: for a non-positive target, both or neither of steps/rounds, a target no
            multiplier up to 1e4 meets, or an accountant that cannot account the mechanism.
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
            noise_multiplier=z,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=accountant,
            mechanism=mechanism,
            extra_events=extra_events,
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
        mechanism=schedule.mechanism,
        extra_events=schedule.extra_events,
    )
    spent = epsilon_for(
        noise_multiplier=z,
        sample_rate=schedule.sample_rate,
        steps=schedule.steps,
        delta=delta,
        accountant=accountant,
        mechanism=schedule.mechanism,
        extra_events=schedule.extra_events,
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
        mechanism=schedule.mechanism,
    )
