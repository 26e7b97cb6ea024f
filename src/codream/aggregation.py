"""The one seam through which every client-to-server value passes.

Everything a client releases in a round (the dream gradient at every global step, the soft labels, any
weights or counts) is a vector whose *sum* over clients is all the server needs. The learning code asks
for sums through this interface only, so `plain`, `secure` and `secure+dp` are interchangeable and the
learning layer never imports the protocol.

A round is opened with the full plan of vectors it will release (secure aggregation derives per-vector
key material up front, and DP accounts for a round as one sampled event over all of its releases).
`sum` is then called once per planned vector, in order.

Each contribution is clipped to the spec's L2 bound before it leaves the client, in every mode, and the
clipped contributions are counted: nothing is clipped silently.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .exceptions import ConfigError

__all__ = [
    "AggregateResult",
    "AggregationRound",
    "Aggregator",
    "PlainAggregator",
    "RoundReport",
    "VectorSpec",
    "clip_l2",
    "create_aggregator",
    "register_aggregator",
]


@dataclass(frozen=True, slots=True)
class VectorSpec:
    """What the seam must know about one released vector before any client sends it.

    Attributes:
        name: label used in reports, e.g. ``"dream/3"`` or ``"soft_labels"``.
        length: number of float coordinates every client sends.
        clip_norm: L2 bound each contribution is clipped to. It is also the sensitivity the DP
            mode calibrates noise to and the range the secure mode's fixed-point encoding must hold.
    """

    name: str
    length: int
    clip_norm: float

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ConfigError(f"vector {self.name!r}: length must be positive, got {self.length}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"vector {self.name!r}: clip_norm must be finite and > 0, got {self.clip_norm}")


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The sum of one vector over the clients whose contribution survived.

    Attributes:
        total: float64 array, the (decoded, possibly noised) sum over `contributors`.
        contributors: ids of the clients included in `total`, sorted.
        clipped: how many of those contributions were clipped to the spec's bound.
        overflowed: coordinates that saturated in fixed-point encoding (0 for plain).
    """

    total: np.ndarray
    contributors: tuple[int, ...]
    clipped: int = 0
    overflowed: int = 0

    @property
    def count(self) -> int:
        return len(self.contributors)

    @property
    def mean(self) -> np.ndarray:
        if not self.contributors:
            raise ValueError("no contributors: the mean is undefined")
        return self.total / len(self.contributors)


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one aggregation round cost and who took part, for metrics and the privacy ledger."""

    participants: tuple[int, ...]
    survivors: tuple[int, ...]
    vectors: int
    clipped: int
    overflowed: int
    bytes_sent_per_client: dict[int, int] = field(default_factory=dict)
    bytes_received_by_server: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def clip_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, bool]:
    """Scale `vector` down to L2 norm `bound` if it is longer; return it and whether it was clipped."""
    norm = float(np.linalg.norm(vector))
    if norm > bound:
        return vector * (bound / norm), True
    return vector, False


class AggregationRound(ABC):
    """One round of releases: a fixed participant set and a fixed, ordered plan of vectors."""

    def __init__(self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]) -> None:
        if not participants:
            raise ConfigError("an aggregation round needs at least one participant")
        if len(set(participants)) != len(participants):
            raise ConfigError(f"participants repeat: {list(participants)}")
        if not specs:
            raise ConfigError("an aggregation round needs at least one planned vector")
        self.round_index = round_index
        self.participants = tuple(sorted(participants))
        self.specs = tuple(specs)
        self._next = 0

    @property
    def next_spec(self) -> VectorSpec:
        """The spec the next call to `sum` must follow."""
        if self._next >= len(self.specs):
            raise ConfigError(f"all {len(self.specs)} planned vectors of this round were already summed")
        return self.specs[self._next]

    def _check_contributions(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray]) -> None:
        if spec is not self.next_spec and spec != self.next_spec:
            raise ConfigError(f"expected vector {self.next_spec.name!r} next, got {spec.name!r}")
        unknown = set(vectors) - set(self.participants)
        if unknown:
            raise ConfigError(f"contributions from clients outside this round: {sorted(unknown)}")
        for cid, v in vectors.items():
            if v.shape != (spec.length,):
                raise ConfigError(
                    f"client {cid}: vector {spec.name!r} has shape {v.shape}, expected ({spec.length},)"
                )
            if not np.all(np.isfinite(v)):
                raise ConfigError(f"client {cid}: vector {spec.name!r} holds NaN or infinity")

    @abstractmethod
    def sum(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray]) -> AggregateResult:
        """Sum one planned vector over the participants that are still alive.

        Args:
            spec: the next planned spec (`next_spec`).
            vectors: each alive participant's float vector of shape ``(spec.length,)``. In the
                in-process simulation the caller computes every participant's vector; which of them
                survive is the aggregator's business (dropouts), reported in the result.
        Raises:
            ConfigError: for a spec out of plan order, unknown clients or malformed vectors.
            ProtocolAbort: when too few clients survive to finish securely.
        """

    @abstractmethod
    def close(self) -> RoundReport:
        """Finish the round and report its cost. Call once, after the last planned `sum`."""


class Aggregator(ABC):
    """Factory of rounds; one instance per federation, configured once."""

    name: str = ""

    @abstractmethod
    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        """Start a round for `participants` that will release `specs`, in that order."""


class _PlainRound(AggregationRound):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._clipped = 0
        self._bytes: dict[int, int] = dict.fromkeys(self.participants, 0)

    def sum(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray]) -> AggregateResult:
        self._check_contributions(spec, vectors)
        total = np.zeros(spec.length, dtype=np.float64)
        clipped = 0
        for cid in sorted(vectors):
            v, was_clipped = clip_l2(np.asarray(vectors[cid], dtype=np.float64), spec.clip_norm)
            clipped += was_clipped
            total += v
            self._bytes[cid] += 8 * spec.length
        self._clipped += clipped
        self._next += 1
        return AggregateResult(total=total, contributors=tuple(sorted(vectors)), clipped=clipped)

    def close(self) -> RoundReport:
        return RoundReport(
            participants=self.participants,
            survivors=self.participants,
            vectors=self._next,
            clipped=self._clipped,
            overflowed=0,
            bytes_sent_per_client=dict(self._bytes),
            bytes_received_by_server=sum(self._bytes.values()),
        )


class PlainAggregator(Aggregator):
    """The server sees every vector. For baselines and debugging; no privacy at all."""

    name = "plain"

    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        return _PlainRound(round_index=round_index, participants=participants, specs=specs)


_REGISTRY: dict[str, type[Aggregator]] = {"plain": PlainAggregator}


def register_aggregator(name: str, cls: type[Aggregator], *, force: bool = False) -> None:
    """Make `cls` available to `create_aggregator(name)`; refuses to replace silently."""
    if name in _REGISTRY and not force:
        raise ConfigError(f"aggregator {name!r} is already registered")
    _REGISTRY[name] = cls


def create_aggregator(name: str, **options) -> Aggregator:
    """Build the aggregator registered as `name` with its keyword options."""
    if name not in _REGISTRY:
        _load_builtin(name)
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown aggregation {name!r}; choose one of {sorted(_REGISTRY)}") from None
    return cls(**options)


def _load_builtin(name: str) -> None:
    """Import the modules that register the secure modes, only when asked (they pull in crypto)."""
    if name == "secure":
        from .secagg import aggregator as _  # noqa: F401
    elif name == "secure+dp":
        from .privacy import aggregator as _  # noqa: F401
