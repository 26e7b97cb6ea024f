"""What both halves of the seam agree on before any client releases anything.

A round is opened with its full plan: the mode, the cohort and every vector it will release, each a
`VectorSpec` with a typed kind. The client half checks the plan against its own policy; the server
half decodes sums in the same order. `AggregateResult` and `RoundReport` are what the server learns.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..exceptions import ConfigError

__all__ = [
    "AggregateResult",
    "DPStats",
    "Mode",
    "ReleaseKind",
    "RoundPlan",
    "RoundReport",
    "SecureStats",
    "VectorSpec",
    "release_context",
]


class Mode(enum.Enum):
    """How a release leaves a client. The order is the order of protection."""

    PLAIN = "plain"  # the server sees every vector
    SECURE = "secure"  # secure aggregation: the server learns only sums over survivors
    SECURE_DP = "secure+dp"  # secure aggregation of clipped vectors plus each client's noise share

    @property
    def rank(self) -> int:
        return list(Mode).index(self)

    @property
    def secure(self) -> bool:
        return self is not Mode.PLAIN

    @classmethod
    def parse(cls, value: Mode | str) -> Mode:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"unknown aggregation {value!r}; choose one of {[m.value for m in cls]}"
            ) from None


class ReleaseKind(enum.Enum):
    """What a released vector is; the learning layer dispatches on this, never on a name."""

    VECTOR = "vector"  # a generic vector (tests, benchmarks)
    CLASS_WEIGHTS = "class_weights"
    DREAM_GRADIENT = "dream"
    SOFT_LABELS = "soft_labels"


@dataclass(frozen=True, slots=True)
class VectorSpec:
    """What the seam must know about one released vector before any client sends it.

    Attributes:
        name: label used in reports, e.g. ``"dream/3"`` or ``"soft_labels"``.
        length: number of float coordinates every client sends.
        clip_norm: L2 bound each contribution is clipped to. It is also the sensitivity the DP
            mode calibrates noise to and the range the secure mode's fixed-point encoding must hold.
        kind: what the vector is.
        step: the global dream step of a dream gradient (0 otherwise).
    """

    name: str
    length: int
    clip_norm: float
    kind: ReleaseKind = ReleaseKind.VECTOR
    step: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length <= 0:
            raise ConfigError(f"vector {self.name!r}: length must be a positive int, got {self.length!r}")
        if not (
            isinstance(self.clip_norm, int | float) and math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ConfigError(f"vector {self.name!r}: clip_norm must be finite and > 0, got {self.clip_norm}")
        if not isinstance(self.kind, ReleaseKind):
            raise ConfigError(f"vector {self.name!r}: kind must be a ReleaseKind, got {self.kind!r}")
        if self.step < 0:
            raise ConfigError(f"vector {self.name!r}: step must be >= 0, got {self.step}")

    @classmethod
    def class_weights(cls, num_classes: int) -> VectorSpec:
        return cls("class_weights", num_classes, math.sqrt(num_classes), ReleaseKind.CLASS_WEIGHTS)

    @classmethod
    def dream_gradient(cls, step: int, length: int, clip_norm: float) -> VectorSpec:
        return cls(f"dream/{step}", length, clip_norm, ReleaseKind.DREAM_GRADIENT, step)

    @classmethod
    def soft_labels(cls, length: int, clip_norm: float) -> VectorSpec:
        return cls("soft_labels", length, clip_norm, ReleaseKind.SOFT_LABELS)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """One round as the server proposes it; every client checks it against its own policy.

    Attributes:
        round_index: the federation round.
        mode: how releases leave the clients.
        participants: the cohort, sorted.
        specs: every planned vector, in release order.
        session: the secure-aggregation session parameters (secure modes), else None.
        n_min: the fewest survivors a sum may cover; noise shares are calibrated for it.
        noise_headroom: per spec, the float headroom the encoding leaves for summed DP noise
            (0 outside secure+dp); a client refuses a plan whose headroom its own noise overflows.
    """

    round_index: int
    mode: Mode
    participants: tuple[int, ...]
    specs: tuple[VectorSpec, ...]
    session: object | None = None  # secagg.SessionConfig; typed loosely so this module needs no crypto
    n_min: int = 1
    noise_headroom: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(self.participants))
        object.__setattr__(self, "specs", tuple(self.specs))
        if not self.participants:
            raise ConfigError("an aggregation round needs at least one participant")
        if list(self.participants) != sorted(set(self.participants)):
            raise ConfigError(f"participants must be unique and sorted, got {list(self.participants)}")
        if not self.specs:
            raise ConfigError("an aggregation round needs at least one planned vector")
        if self.mode.secure and self.session is None:
            raise ConfigError(f"a {self.mode.value} round needs its session parameters")
        if not 1 <= self.n_min <= len(self.participants):
            raise ConfigError(f"n_min must lie in [1, {len(self.participants)}], got {self.n_min}")
        if self.noise_headroom and len(self.noise_headroom) != len(self.specs):
            raise ConfigError("noise_headroom needs one value per planned vector")


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The sum of one vector over the clients whose contribution survived.

    Attributes:
        total: float64 array, the (decoded, possibly noised) sum over `contributors`.
        contributors: ids of the clients included in `total`, sorted.
        clipped: how many of those contributions were clipped to the spec's bound (summed inside
            the masked vectors; None under DP, where it is not released).
        overflowed: coordinates that saturated in fixed-point encoding (likewise).
    """

    total: np.ndarray
    contributors: tuple[int, ...]
    clipped: int | None = 0
    overflowed: int | None = 0

    @property
    def count(self) -> int:
        return len(self.contributors)

    @property
    def mean(self) -> np.ndarray:
        if not self.contributors:
            raise ValueError("no contributors: the mean is undefined")
        return self.total / len(self.contributors)


@dataclass(frozen=True, slots=True)
class SecureStats:
    """The secure-aggregation session of a round, as the server saw it."""

    threshold: int
    degree: int
    n_min: int
    aborted: bool
    server_seconds: float
    client_seconds_mean: float
    client_seconds_max: float
    bytes_received_per_client_mean: float


@dataclass(frozen=True, slots=True)
class DPStats:
    """The public side of a secure+dp round: what was planned, never anything measured on client data.

    Attributes:
        noise_multiplier: z_eff of the round (per client, composed over its releases).
        release_noise_multiplier: z_i of each release.
        releases: J, the round's planned releases.
        n_min: survivors every noise share is calibrated for.
        colluders: clients whose shares are not counted.
        achieved_noise_multiplier: the composed z the integer noise gives at the survivors' floor.
        noise_std: per release name, the least total noise std (float units) at n_min survivors.
        wraparound_bound: the probability bound that any coordinate of the round wrapped.
    """

    noise_multiplier: float
    release_noise_multiplier: float
    releases: int
    n_min: int
    colluders: int
    achieved_noise_multiplier: float | None
    noise_std: dict[str, float] = field(default_factory=dict)
    wraparound_bound: float = 0.0


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What one aggregation round cost and who took part, for metrics and the privacy ledgers."""

    participants: tuple[int, ...]
    survivors: tuple[int, ...]
    vectors: int
    clipped: int | None
    overflowed: int | None
    bytes_sent_per_client: dict[int, int] = field(default_factory=dict)
    bytes_received_by_server: int = 0
    secure: SecureStats | None = None
    dp: DPStats | None = None
    projection_signal_fraction: float | None = None


def release_context(round_index: int, spec: VectorSpec, *arrays: np.ndarray | None) -> bytes:
    """What a client computed a release from, as bytes every honest client of the round agrees on.

    The round, the release and the broadcast it read (the dreams and their targets): the secure
    aggregation client signs it in malicious mode and keys its pairwise masks with it, so a server
    that sends clients different broadcasts gets refusals or a sum that does not unmask, never a
    sum over inputs computed from different dreams.
    """
    h = hashlib.sha256(b"codream/v1/release-context")
    h.update(f"{round_index}/{spec.kind.value}/{spec.step}/{spec.length}/{spec.clip_norm!r}".encode())
    for a in arrays:
        if a is None:
            h.update(b"\x00")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"\x01{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.digest()
