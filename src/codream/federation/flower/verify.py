"""Check a Flower run against the in-process engine, sum by sum.

A Flower run with ``record_trace`` writes every sum the server used (its value, its contributors and
the codec's quantisation bound). `replay_in_process` runs the in-process `Federation` with the same
configuration and seed, and an aggregator that, for each planned vector, (1) sums the in-process
clients' own vectors over the traced contributors, in the clear, (2) checks that the Flower sum lies
within the quantisation bound of that plain sum, and (3) hands the Flower sum to the server, so both
engines continue from the same state. If the two engines drive the roles the same way, every check
passes and the surviving clients end with the same models, dreams and accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...aggregation import AggregateResult, AggregationRound, Aggregator, RoundReport, VectorSpec
from ...exceptions import ConfigError
from ...privacy.clipping import clip_l2
from ..config import FederationConfig

__all__ = ["ReplayReport", "SumCheck", "replay_in_process"]


@dataclass(frozen=True, slots=True)
class SumCheck:
    """One sum: the Flower engine's against the plain sum of the in-process clients' vectors."""

    round: int
    vector: str
    contributors: tuple[int, ...]
    error: float  # max absolute coordinate difference
    bound: float  # the quantisation bound of that sum (0 for plain sums)

    @property
    def within_bound(self) -> bool:
        return self.error <= self.bound + 1e-6


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What the replay found; `accuracies[r][c]` is client c's in-process accuracy after round r."""

    checks: tuple[SumCheck, ...]
    accuracies: tuple[tuple[float, ...], ...]
    dreams: np.ndarray = field(repr=False)
    soft_labels: np.ndarray = field(repr=False)

    @property
    def violations(self) -> list[SumCheck]:
        return [c for c in self.checks if not c.within_bound]


class _ReplayRound(AggregationRound):
    def __init__(self, trace: Mapping[str, np.ndarray], checks: list[SumCheck], **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace = trace
        self._checks = checks

    def sum(
        self, spec: VectorSpec, vectors: Mapping[int, np.ndarray], *, context: bytes = b""
    ) -> AggregateResult:
        self._check_contributions(spec, vectors)
        key = f"r{self.round_index}_v{self._next}"
        try:
            total = np.asarray(self._trace[f"{key}_total"], dtype=np.float64)
            contributors = tuple(int(c) for c in self._trace[f"{key}_contributors"])
            bound = float(self._trace[f"{key}_bound"])
        except KeyError:
            raise ConfigError(
                f"the trace has no sum for round {self.round_index}, vector {self._next}"
            ) from None
        plain = np.zeros(spec.length, dtype=np.float64)
        for c in contributors:
            plain += clip_l2(np.asarray(vectors[c], dtype=np.float64), spec.clip_norm)[0]
        error = float(np.max(np.abs(plain - total))) if spec.length else 0.0
        self._checks.append(SumCheck(self.round_index, spec.name, contributors, error, bound))
        self._next += 1
        return AggregateResult(total=total, contributors=contributors)

    def close(self) -> RoundReport:
        return RoundReport(self.participants, self.participants, self._next, 0, 0)


class _ReplayAggregator(Aggregator):
    name = "replay"

    def __init__(self, trace: Mapping[str, np.ndarray]) -> None:
        self.trace = trace
        self.checks: list[SumCheck] = []

    def open_round(self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]):
        return _ReplayRound(
            self.trace, self.checks, round_index=round_index, participants=participants, specs=specs
        )


def replay_in_process(
    config: FederationConfig, trace: str | Path | Mapping[str, np.ndarray], *, rounds: int
) -> ReplayReport:
    """Replay `rounds` rounds of a traced Flower run in process; see the module docstring.

    Args:
        config: the configuration the Flower run used.
        trace: the run's trace.npz (or its loaded arrays).
        rounds: how many rounds the trace holds.

    Returns:
        Every sum check and the in-process accuracies, dreams and soft labels.
    """
    from ..simulation import Federation

    data = dict(np.load(trace)) if isinstance(trace, str | Path) else dict(trace)
    aggregator = _ReplayAggregator(data)
    federation = Federation(config, aggregator=aggregator)
    accuracies = tuple(tuple(m.accuracies) for m in federation.run(rounds))
    x, y = federation.last_dreams
    return ReplayReport(tuple(aggregator.checks), accuracies, x.numpy(), y.numpy())
