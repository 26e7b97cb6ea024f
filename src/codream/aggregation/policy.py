"""What a client accepts, from its own configuration: the server proposes, the client's policy disposes.

Everything a client's privacy rests on is fixed here, on the client's side: the least protective mode
it releases under (never downgraded), its own DP parameters, the fewest clients, threshold and
survivors it accepts, the graphs it allows, and the largest round it will build (so a server cannot
make it allocate without bound). A plan below the policy raises `PolicyRefusal` with the reason, and
the client releases nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..exceptions import ConfigError, PolicyRefusal
from .plan import Mode, RoundPlan

__all__ = ["ClientPolicy", "DPPolicy", "required_threshold"]


@dataclass(frozen=True, slots=True)
class DPPolicy:
    """A client's own client-level DP parameters (secure+dp): its noise, its budget, its accountant.

    Attributes:
        noise_multiplier: z_eff each round must reach; the client splits it over the round's releases.
        delta: the delta its epsilon is stated at.
        target_epsilon: its budget; a round that would exceed it is refused. None: record only.
        noise: "skellam" or "discrete_gaussian".
        colluders: clients that may pool their noise with the server; shares are sized without them.
        accountant: "rdp" (PRV does not apply to integer noise).
        wrap_target: the wrap-around probability the encoding headroom must keep.
        allow_overspend: go on past the target (each such round is marked overspent).
    """

    noise_multiplier: float
    delta: float = 1e-5
    target_epsilon: float | None = None
    noise: str = "skellam"
    colluders: int = 0
    accountant: str = "rdp"
    wrap_target: float = 1e-9
    allow_overspend: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be finite and > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise ConfigError(f"target epsilon must be finite and > 0, got {self.target_epsilon}")
        if self.colluders < 0:
            raise ConfigError(f"colluders must be >= 0, got {self.colluders}")
        if self.accountant != "rdp":
            raise ConfigError(
                f"accountant {self.accountant!r} does not apply to integer (Skellam or discrete Gaussian) "
                "noise; use 'rdp'"
            )


def required_threshold(num_clients: int, *, malicious: bool) -> int:
    """The least Shamir threshold a complete-graph session of `num_clients` may have.

    A majority (n // 2 + 1) against an honest-but-curious server; more than two thirds in malicious
    mode, the bound Bonawitz et al. (2017) need for their consistency check.
    """
    t = 2 * num_clients // 3 + 1 if malicious else num_clients // 2 + 1
    return min(num_clients, max(2, t))


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """The least a client accepts. Defaults refuse nothing a correct server proposes.

    Attributes:
        mode: the least protective mode it releases under; a plan below it is a downgrade.
        dp: its own DP parameters; required for secure+dp, whatever the server says.
        malicious: demand malicious-server mode (signed keys and the consistency check).
        min_clients: the fewest participants a secure round may have.
        min_threshold: the least Shamir threshold; None: the library's rule for the graph.
        min_survivors: the fewest survivors a sum may cover (n_min); None: the threshold.
        graphs: the neighbour graphs it accepts.
        max_clients, max_vectors, max_vector_length, max_total_length: the largest round it builds.
    """

    mode: Mode = Mode.PLAIN
    dp: DPPolicy | None = None
    malicious: bool = False
    min_clients: int = 2
    min_threshold: int | None = None
    min_survivors: int | None = None
    graphs: frozenset[str] = field(default_factory=lambda: frozenset({"complete", "harary"}))
    max_clients: int = 10_000
    max_vectors: int = 100_000
    max_vector_length: int = 1 << 26
    max_total_length: int = 1 << 30

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode.parse(self.mode))
        object.__setattr__(self, "graphs", frozenset(self.graphs))
        if self.mode is Mode.SECURE_DP and self.dp is None:
            raise ConfigError("a secure+dp client needs its own DP parameters (dp=DPPolicy(...))")
        if self.min_clients < 1:
            raise ConfigError(f"min_clients must be >= 1, got {self.min_clients}")
        for name in ("min_threshold", "min_survivors"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")

    def check(self, plan: RoundPlan, client_id: int, *, lengths_on_wire: tuple[int, ...] = ()) -> None:
        """Refuse `plan` unless it meets this policy.

        Args:
            plan: the round the server proposes.
            client_id: this client.
            lengths_on_wire: the session vector lengths the client expects for the plan.
        Raises:
            PolicyRefusal: naming the first rule the plan breaks.
        """

        def refuse(why: str) -> None:
            raise PolicyRefusal(f"client {client_id} refuses round {plan.round_index}: {why}")

        n = len(plan.participants)
        if client_id not in plan.participants:
            refuse(f"it is not among the participants {list(plan.participants)[:8]}")
        if plan.mode.rank < self.mode.rank:
            refuse(f"mode {plan.mode.value!r} is below its policy {self.mode.value!r}")
        if plan.mode is Mode.SECURE_DP and self.dp is None:
            refuse("secure+dp needs the client's own DP parameters, and it has none")
        if n > self.max_clients:
            refuse(f"{n} participants, more than its maximum {self.max_clients}")
        if len(plan.specs) > self.max_vectors:
            refuse(f"{len(plan.specs)} planned vectors, more than its maximum {self.max_vectors}")
        longest = max(s.length for s in plan.specs)
        if longest > self.max_vector_length:
            refuse(f"a vector of {longest} coordinates, more than its maximum {self.max_vector_length}")
        total = sum(s.length for s in plan.specs)
        if total > self.max_total_length:
            refuse(f"{total} coordinates in the round, more than its maximum {self.max_total_length}")
        if not plan.mode.secure:
            return  # a plain release protects nothing that a larger cohort would add to
        if n < self.min_clients:
            refuse(f"{n} participants, fewer than its minimum {self.min_clients}")
        session = plan.session
        if tuple(session.client_ids) != plan.participants:  # type: ignore[attr-defined]
            refuse("the session's clients differ from the round's participants")
        if lengths_on_wire and tuple(session.vector_lengths) != lengths_on_wire:  # type: ignore[attr-defined]
            refuse("the session's vector lengths do not match the round's plan")
        graph = session.graph.value  # type: ignore[attr-defined]
        if graph not in self.graphs:
            refuse(f"graph {graph!r} is not among the graphs it allows {sorted(self.graphs)}")
        malicious = bool(session.malicious)  # type: ignore[attr-defined]
        if self.malicious and not malicious:
            refuse("it demands malicious-server mode")
        threshold = int(session.threshold)  # type: ignore[attr-defined]
        # The holders of a client's shares: everyone on a complete graph, its k neighbours and itself
        # on a Harary graph; the threshold must be the rule's fraction of them.
        holders = n if graph == "complete" else int(session.degree) + 1  # type: ignore[attr-defined]
        least = max(required_threshold(holders, malicious=malicious), self.min_threshold or 0)
        if threshold < least:
            refuse(f"threshold {threshold} is below the least it accepts ({least})")
        n_min = max(threshold, self.min_survivors or 0)
        if plan.n_min < n_min:
            refuse(f"min_survivors {plan.n_min} is below the least it accepts ({n_min})")
