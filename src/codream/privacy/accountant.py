"""Privacy accountants: a typed history of sampled Gaussian events, and the epsilon it has spent.

State is kept apart from the maths: an `Accountant` only records `PrivacyEvent`s; the engines in
`codream.privacy.engines` turn a history into epsilon through Opacus' analysis. Numeric arguments are
keyword-only so that a noise multiplier and a sample rate cannot be swapped silently.

An event is one Poisson-sampled noise mechanism: in client-level DP, one federation round a client
took part in (all of its releases composed into z_eff, see `analysis.composition`; sample rate 1,
because the server knows the cohort); in example-level DP, one DP-SGD step. Its `mechanism` says what
the accountant may assume about the noise: `GAUSSIAN` (the tight subsampled-Gaussian analyses apply) or
`INTEGER` (Skellam or distributed discrete Gaussian noise, known only through a Renyi curve at most a
Gaussian's of the same multiplier, so only RDP applies, with the general subsampling bound).
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "Accountant",
    "Mechanism",
    "PrivacyEvent",
    "accountant_names",
    "create_accountant",
    "register_accountant",
]


class Mechanism(enum.Enum):
    """What an event's noise is, i.e. which analyses may account it."""

    # Continuous Gaussian noise: its privacy loss distribution is known, every accountant applies.
    GAUSSIAN = "gaussian"
    # Integer noise (Skellam, distributed discrete Gaussian) calibrated so that its Renyi DP is at most
    # order / (2 z^2) at every order: only Renyi accounting applies, and under sampling only the
    # general bound of `analysis.subsampling`, at integer orders.
    INTEGER = "integer"


@dataclass(frozen=True, slots=True)
class PrivacyEvent:
    """`steps` compositions of a Poisson-sampled noise mechanism.

    Attributes:
        noise_multiplier: z = noise std / sensitivity (> 0); for an INTEGER mechanism, the multiplier
            of a Gaussian whose Renyi curve dominates the mechanism's at every order.
        sample_rate: Poisson sampling probability q in (0, 1].
        steps: how many times the event repeats (>= 1).
        mechanism: the noise family (see `Mechanism`).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    mechanism: Mechanism = Mechanism.GAUSSIAN

    def __post_init__(self) -> None:
        if not isinstance(self.mechanism, Mechanism):
            try:
                object.__setattr__(self, "mechanism", Mechanism(self.mechanism))
            except ValueError:
                raise ConfigError(
                    f"unknown mechanism {self.mechanism!r}; choose one of {[m.value for m in Mechanism]}"
                ) from None
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be finite and > 0, got {self.noise_multiplier}")
        if not (0 < self.sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {self.steps!r}")

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "mechanism": self.mechanism.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyEvent:
        try:
            return cls(
                noise_multiplier=float(data["noise_multiplier"]),
                sample_rate=float(data["sample_rate"]),
                steps=int(data["steps"]),
                # Files written before integer events were told apart hold Gaussian events only.
                mechanism=Mechanism(data.get("mechanism", Mechanism.GAUSSIAN.value)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed privacy event {dict(data)!r}: {exc}") from None


class Accountant(ABC):
    """Records privacy events and reports the epsilon they spend at a given delta."""

    def __init__(self) -> None:
        self._history: list[PrivacyEvent] = []

    @classmethod
    @abstractmethod
    def mechanism(cls) -> str:
        """The registry name of this accounting method, e.g. ``"rdp"``."""

    @abstractmethod
    def _epsilon(self, history: tuple[PrivacyEvent, ...], delta: float) -> float:
        """Epsilon of a non-empty `history` at `delta`."""

    def check_event(self, event: PrivacyEvent) -> None:
        """Refuse an event this accounting method cannot account (all are accepted by default).

        Raises:
            ConfigError: naming the event and a method that can.
        """
        return None

    @property
    def history(self) -> tuple[PrivacyEvent, ...]:
        """The recorded events, consecutive identical events merged into one with more steps."""
        return tuple(self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record `steps` sampled Gaussian events.

        Raises:
            ConfigError: for an invalid multiplier, rate or count (the history is left unchanged).
        """
        self.add(PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps))

    def add(self, event: PrivacyEvent) -> None:
        """Record an already-validated event.

        Raises:
            ConfigError: when this method cannot account the event (the history is left unchanged).
        """
        self.check_event(event)
        _append_merged(self._history, event)

    def get_epsilon(self, *, delta: float) -> float:
        """Epsilon spent by the whole history at `delta` (0 for an empty history).

        Raises:
            ConfigError: unless 0 < delta < 1.
        """
        _check_delta(delta)
        if not self._history:
            return 0.0
        return float(self._epsilon(tuple(self._history), delta))

    def epsilon_with(self, events: Iterable[PrivacyEvent], *, delta: float) -> float:
        """Epsilon the history would have after also recording `events`; the history is not changed."""
        _check_delta(delta)
        trial = list(self._history)
        for event in events:
            self.check_event(event)
            _append_merged(trial, event)
        if not trial:
            return 0.0
        return float(self._epsilon(tuple(trial), delta))

    @property
    def total_steps(self) -> int:
        return sum(e.steps for e in self._history)

    def __len__(self) -> int:
        return self.total_steps

    def state_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism(), "history": [e.to_dict() for e in self._history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a history saved by `state_dict`.

        Raises:
            ConfigError: when the state was saved by another mechanism (both are named) or is malformed;
                the current history is then kept.
        """
        mechanism = state.get("mechanism")
        if mechanism != self.mechanism():
            raise ConfigError(
                f"cannot load a {mechanism!r} accountant state into a {self.mechanism()!r} accountant"
            )
        events = [PrivacyEvent.from_dict(e) for e in state.get("history", [])]
        for event in events:
            self.check_event(event)
        self._history = []
        for event in events:
            self.add(event)


def _append_merged(history: list[PrivacyEvent], event: PrivacyEvent) -> None:
    last = history[-1] if history else None
    if last is not None and (last.noise_multiplier, last.sample_rate, last.mechanism) == (
        event.noise_multiplier,
        event.sample_rate,
        event.mechanism,
    ):
        history[-1] = PrivacyEvent(
            noise_multiplier=last.noise_multiplier,
            sample_rate=last.sample_rate,
            steps=last.steps + event.steps,
            mechanism=last.mechanism,
        )
    else:
        history.append(event)


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


_ACCOUNTANTS: dict[str, type[Accountant]] = {}


def register_accountant(cls: type[Accountant], *, force: bool = False) -> type[Accountant]:
    """Make `cls` available to `create_accountant(cls.mechanism())`.

    Raises:
        ConfigError: if the name is taken and `force` is False.
    """
    name = cls.mechanism()
    if name in _ACCOUNTANTS and not force:
        raise ConfigError(
            f"an accountant named {name!r} is already registered ({_ACCOUNTANTS[name].__name__})"
        )
    _ACCOUNTANTS[name] = cls
    return cls


def accountant_names() -> list[str]:
    _load_builtin()
    return sorted(_ACCOUNTANTS)


def create_accountant(name: str, **options: Any) -> Accountant:
    """Build the accountant registered as `name` ("rdp" or "prv" built in).

    Raises:
        ConfigError: for an unknown name, listing the registered ones.
    """
    _load_builtin()
    try:
        cls = _ACCOUNTANTS[name]
    except KeyError:
        raise ConfigError(f"unknown accountant {name!r}; choose one of {sorted(_ACCOUNTANTS)}") from None
    return cls(**options)


def _load_builtin() -> None:
    from . import engines as _  # noqa: F401  (registers "rdp" and "prv")
