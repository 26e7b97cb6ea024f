"""The ``secure`` implementation of the aggregation seam: the server learns only sums.

Each round opens one secure-aggregation session for its participants and its whole plan of
vectors. For every planned vector each client clips its float vector to the spec's L2 bound,
encodes it in Z_{2^bits} with a `FixedPointCodec` sized for all participants (plus headroom for
DP noise when a `ClientNoise` is given), adds its integer noise share, and masks; the server
unmasks the sum over the survivors and decodes it. Clipped contributions and saturated coordinates
are counted and reported, never hidden.

Importing this module registers the aggregator as ``"secure"``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..aggregation import (
    AggregateResult,
    AggregationRound,
    Aggregator,
    RoundReport,
    VectorSpec,
    clip_l2,
    register_aggregator,
)
from ..exceptions import AbortReason, ConfigError, ProtocolAbort
from .config import GraphKind, SessionConfig
from .encoding import FixedPointCodec
from .graph import choose_parameters
from .runner import DropoutSchedule, InProcessSession, SessionStats, provision_signers

__all__ = ["ClientNoise", "SecureAggregator", "default_threshold"]

logger = logging.getLogger("codream.secagg.aggregator")


@runtime_checkable
class ClientNoise(Protocol):
    """One client's share of the distributed DP noise, in encoded (integer) units.

    The secure aggregator calls `noise_bound` once per vector to size the encoding's headroom,
    then `sample` once per client and vector, and adds the sample to the encoded words before
    masking, so the server only ever sees noised sums.
    """

    def noise_bound(self, *, spec: VectorSpec, num_clients: int) -> float:
        """Headroom, in float units, that the summed noise of `num_clients` clients stays within."""
        ...

    def sample(self, *, spec: VectorSpec, scale: float, length: int, n_min: int) -> np.ndarray:
        """One client's int64 noise share of `length` coordinates, for encoding scale `scale`,
        calibrated so that any `n_min` or more shares together carry the target noise."""
        ...


def default_threshold(num_clients: int, *, malicious: bool) -> int:
    """The Shamir threshold of a complete graph when none is given.

    A majority (n // 2 + 1) against an honest-but-curious server; more than two thirds in
    malicious mode, the bound Bonawitz et al. (2017) need for their consistency check.
    """
    t = 2 * num_clients // 3 + 1 if malicious else num_clients // 2 + 1
    return min(num_clients, max(2, t))


class SecureAggregator(Aggregator):
    """Secure aggregation (Bonawitz et al. 2017; SecAgg+ graph of Bell et al. 2020) behind the seam.

    Args:
        threshold: Shamir threshold t; default: `default_threshold` for complete graphs, or the
            threshold `graph.choose_parameters` picks for Harary graphs.
        graph: ``"complete"`` or ``"harary"``.
        bits: ring width; sums are exact modulo 2^bits.
        dropout: each participant crashes with this probability, at a stage and vector drawn from
            a schedule seeded by (`seed`, round index). Also the dropout rate Harary parameters
            are chosen for.
        seed: seed of the dropout schedule (simulation only; keys never depend on it).
        malicious: malicious-server mode (signed keys, consistency check before unmasking).
        noise: per-client DP noise added after encoding and before masking (``secure+dp``).
        min_survivors: a vector whose sum has fewer contributors raises ProtocolAbort; default
            (and never less than) the threshold. It is the ``n_min`` the noise is calibrated for.
        corrupt_fraction: fraction of clients assumed to collude with the server, for Harary
            parameters.
        rounding_seed: seed of the stochastic-rounding coins, for reproducible tests; default
            fresh OS randomness every round.
    """

    name = "secure"

    def __init__(
        self,
        *,
        threshold: int | None = None,
        graph: str = "complete",
        bits: int = 32,
        dropout: float = 0.0,
        seed: int = 0,
        malicious: bool = False,
        noise: ClientNoise | None = None,
        min_survivors: int | None = None,
        corrupt_fraction: float = 0.1,
        rounding_seed: int | None = None,
    ) -> None:
        try:
            self.graph = GraphKind(graph)
        except ValueError:
            raise ConfigError(f"graph must be one of {[g.value for g in GraphKind]}, got {graph!r}") from None
        if threshold is not None and threshold < 2:
            raise ConfigError(f"threshold must be at least 2, got {threshold}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        if min_survivors is not None and min_survivors < 1:
            raise ConfigError(f"min_survivors must be positive, got {min_survivors}")
        if noise is not None and not isinstance(noise, ClientNoise):
            raise ConfigError("noise must implement ClientNoise (noise_bound and sample)")
        FixedPointCodec(clip_norm=1.0, num_summands=1, bits=bits)  # validates bits early
        self.threshold = threshold
        self.bits = bits
        self.dropout = dropout
        self.seed = seed
        self.malicious = malicious
        self.noise = noise
        self.min_survivors = min_survivors
        self.corrupt_fraction = corrupt_fraction
        self.rounding_seed = rounding_seed

    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        return _SecureRound(self, round_index=round_index, participants=participants, specs=specs)

    def session_config(self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]):
        """The `SessionConfig` (without signing keys) a round with these participants uses.

        Raises:
            ConfigError: fewer than 2 participants, or a threshold that does not fit the graph.
        """
        ids = tuple(sorted(participants))
        n = len(ids)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 participants, got {n}")
        kind, degree, seed, threshold = GraphKind.COMPLETE, 0, b"", self.threshold
        if self.graph is GraphKind.HARARY:
            params = choose_parameters(n, dropout_rate=self.dropout, corrupt_fraction=self.corrupt_fraction)
            if params.k < n - 1:
                kind, degree, seed = GraphKind.HARARY, params.k, os.urandom(32)
            threshold = threshold if threshold is not None else params.threshold
        if threshold is None:
            threshold = default_threshold(n, malicious=self.malicious)
        return SessionConfig(
            round_index=round_index,
            client_ids=ids,
            threshold=threshold,
            vector_lengths=tuple(s.length for s in specs),
            bits=self.bits,
            graph=kind,
            degree=degree,
            graph_seed=seed,
        )


class _SecureRound(AggregationRound):
    def __init__(self, owner: SecureAggregator, **kwargs) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        config = owner.session_config(
            round_index=self.round_index, participants=self.participants, specs=self.specs
        )
        signers = None
        if owner.malicious:
            verify_keys, signers = provision_signers(config.client_ids)
            config = dataclasses.replace(config, malicious=True, verify_keys=verify_keys)
        self.config = config
        self.n_min = max(config.threshold, owner.min_survivors or config.threshold)
        if self.n_min > len(self.participants):
            raise ConfigError(f"min_survivors {self.n_min} exceeds the {len(self.participants)} participants")
        n = len(self.participants)
        self._codecs = [
            FixedPointCodec(
                clip_norm=spec.clip_norm,
                num_summands=n,
                bits=owner.bits,
                noise_bound=owner.noise.noise_bound(spec=spec, num_clients=n) if owner.noise else 0.0,
            )
            for spec in self.specs
        ]
        rounding_seed = (
            owner.rounding_seed if owner.rounding_seed is not None else int.from_bytes(os.urandom(16), "big")
        )
        self._rng = np.random.default_rng([rounding_seed, self.round_index])
        schedule = DropoutSchedule.random(
            config.client_ids,
            rate=owner.dropout,
            num_vectors=config.num_vectors,
            seed=[owner.seed, self.round_index],
            malicious=owner.malicious,
        )
        self._session = InProcessSession(config, dropouts=schedule, signers=signers)
        self._started = False
        self._clipped = 0
        self._overflowed = 0
        self._survivors: tuple[int, ...] = ()
        self._aborted: ProtocolAbort | None = None

    @property
    def stats(self) -> SessionStats:
        return self._session.stats

    def sum(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray]) -> AggregateResult:
        self._check_contributions(spec, vectors)
        if self._aborted is not None:
            raise ProtocolAbort(
                self._aborted.reason, f"the round's session already aborted: {self._aborted.detail}"
            )
        j = self._next
        codec = self._codecs[j]
        mask = np.uint64((1 << self.config.bits) - 1)
        words: dict[int, np.ndarray] = {}
        clipped: dict[int, bool] = {}
        saturated: dict[int, int] = {}
        for cid in sorted(vectors):
            vector, clipped[cid] = clip_l2(np.asarray(vectors[cid], dtype=np.float64), spec.clip_norm)
            # No coordinate of an L2-clipped vector exceeds clip_norm, except by the last bit of float
            # rounding in the rescaling; clamp that bit rather than report it as saturation.
            vector = np.clip(vector, -spec.clip_norm, spec.clip_norm)
            encoded = codec.encode(vector, rng=self._rng)
            saturated[cid] = encoded.saturated
            w = encoded.words
            if self._owner.noise is not None:
                share = self._owner.noise.sample(
                    spec=spec, scale=codec.scale, length=spec.length, n_min=self.n_min
                )
                w = (w + codec.to_words(np.asarray(share, dtype=np.int64))) & mask
            words[cid] = w
        try:
            if not self._started:
                self._started = True
                self._session.setup()
            result = self._session.aggregate(j, words)
            if len(result.survivors) < self.n_min:
                raise ProtocolAbort(
                    AbortReason.TOO_FEW_PEERS,
                    f"vector {spec.name!r}: {len(result.survivors)} survivors; min_survivors is {self.n_min}",
                )
        except ProtocolAbort as exc:
            self._aborted = exc
            raise
        self._next += 1
        survivors = result.survivors
        n_clipped = sum(clipped.get(c, False) for c in survivors)
        n_saturated = sum(saturated.get(c, 0) for c in survivors)
        if n_saturated:
            logger.warning(
                "vector %r: %d coordinates saturated in fixed-point encoding", spec.name, n_saturated
            )
        self._clipped += n_clipped
        self._overflowed += n_saturated
        self._survivors = survivors
        return AggregateResult(
            total=codec.decode_sum(result.words),
            contributors=survivors,
            clipped=n_clipped,
            overflowed=n_saturated,
        )

    def quantisation_bound(self, vector: int, num_summands: int) -> float:
        """Largest per-coordinate error of a decoded sum of `num_summands` against the float sum."""
        return self._codecs[vector].quantisation_bound(num_summands)

    def close(self) -> RoundReport:
        stats = self._session.stats
        seconds = list(stats.client_seconds.values())
        extra = {
            "threshold": float(self.config.threshold),
            "degree": float(
                self.config.degree if self.config.graph is GraphKind.HARARY else len(self.participants) - 1
            ),
            "server_seconds": stats.server_seconds,
            "client_seconds_mean": float(np.mean(seconds)),
            "client_seconds_max": float(np.max(seconds)),
            "bytes_received_per_client_mean": float(np.mean(list(stats.bytes_received.values()))),
            "aborted": float(self._aborted is not None),
        }
        return RoundReport(
            participants=self.participants,
            survivors=self._survivors,
            vectors=self._next,
            clipped=self._clipped,
            overflowed=self._overflowed,
            bytes_sent_per_client=dict(stats.bytes_sent),
            bytes_received_by_server=stats.server_bytes_received,
            extra=extra,
        )


register_aggregator("secure", SecureAggregator)
