"""The server half of the seam: it proposes each round's plan and decodes the sums it is handed.

The server chooses the session parameters (threshold, graph, ring width, n_min, the encoding's noise
headroom), but every client checks them against its own policy before releasing anything, so a
choice below what the clients accept only makes them refuse. Decoding strips the count words that
ride at the end of `secure` releases and refuses a sum over fewer than n_min survivors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..exceptions import AbortReason, ConfigError, ProtocolAbort
from ..privacy.noise import DistributedNoise
from ..secagg.config import GraphKind, SessionConfig
from ..secagg.encoding import FixedPointCodec
from ..secagg.graph import choose_parameters
from .client import COUNT_WORDS, codec_for, wire_lengths
from .plan import AggregateResult, Mode, RoundPlan, VectorSpec
from .policy import required_threshold

__all__ = ["DEFAULT_DP_BITS", "ServerSeam"]

# Fewer bits than plain secure aggregation: DP noise dwarfs the rounding error at 2^-24 of the range,
# and it keeps each client's integer noise share small enough for numpy's exact Poisson range.
DEFAULT_DP_BITS = 24


class ServerSeam:
    """The server's half: plans rounds and decodes their sums.

    Args:
        mode: plain, secure or secure+dp.
        threshold: Shamir threshold t; default: a majority (more than two thirds in malicious mode)
            of the holders of each client's shares.
        graph: ``"complete"`` or ``"harary"``.
        bits: ring width; sums are exact modulo 2^bits (default 32, 24 under DP).
        malicious: malicious-server mode (signed keys, consistency check before unmasking).
        min_survivors: n_min, the fewest survivors a sum may cover; never below the threshold.
        dropout, corrupt_fraction: what Harary parameters are chosen for.
        noise_multiplier, noise, colluders, wrap_target: the public DP parameters the encoding's
            headroom is sized for (secure+dp); each client draws its own noise from its own policy.
    """

    def __init__(
        self,
        mode: Mode | str = Mode.PLAIN,
        *,
        threshold: int | None = None,
        graph: str = "complete",
        bits: int | None = None,
        malicious: bool = False,
        min_survivors: int | None = None,
        dropout: float = 0.0,
        corrupt_fraction: float = 0.1,
        noise_multiplier: float | None = None,
        noise: str = "skellam",
        colluders: int = 0,
        wrap_target: float = 1e-9,
    ) -> None:
        self.mode = Mode.parse(mode)
        try:
            self.graph = GraphKind(graph)
        except ValueError:
            raise ConfigError(f"graph must be one of {[g.value for g in GraphKind]}, got {graph!r}") from None
        if threshold is not None and threshold < 2:
            raise ConfigError(f"threshold must be at least 2, got {threshold}")
        if min_survivors is not None and min_survivors < 1:
            raise ConfigError(f"min_survivors must be positive, got {min_survivors}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        self.bits = bits if bits is not None else (DEFAULT_DP_BITS if self.mode is Mode.SECURE_DP else 32)
        FixedPointCodec(clip_norm=1.0, num_summands=1, bits=self.bits)  # validates bits early
        self.threshold = threshold
        self.malicious = malicious
        self.min_survivors = min_survivors
        self.dropout = dropout
        self.corrupt_fraction = corrupt_fraction
        self.sizing: DistributedNoise | None = None
        self.noise_multiplier = noise_multiplier
        if self.mode is Mode.SECURE_DP:
            if noise_multiplier is None:
                raise ConfigError("secure+dp needs the round's noise multiplier to size the encoding")
            # Sizing only: this object never samples. The noise itself is each client's.
            self.sizing = DistributedNoise(kind=noise, colluders=colluders, wrap_target=wrap_target)

    # ------------------------------------------------------------------ planning

    def session_config(self, *, round_index: int, participants: Sequence[int], lengths: Sequence[int]):
        """The `SessionConfig` (without signing keys) a round with these participants uses."""
        ids = tuple(sorted(participants))
        n = len(ids)
        if n < 2:
            raise ConfigError(f"secure aggregation needs at least 2 participants, got {n}")
        kind, degree, threshold, assumed = GraphKind.COMPLETE, 0, self.threshold, None
        if self.graph is GraphKind.HARARY:
            # Semi-honest sessions may assume the planned dropout rate (graph.random_split_failure),
            # which keeps k of order log n; malicious ones take the rule that assumes nothing.
            params = choose_parameters(
                n,
                dropout_rate=self.dropout,
                corrupt_fraction=self.corrupt_fraction,
                malicious=self.malicious,
            )
            if params.k < n - 1:
                # The graph itself is drawn from the session id (SessionConfig.neighbours).
                kind, degree, assumed = GraphKind.HARARY, params.k, params.dropout
                if threshold is None:
                    threshold = max(
                        params.threshold, required_threshold(degree + 1, malicious=self.malicious)
                    )
        if threshold is None:
            threshold = required_threshold(n, malicious=self.malicious)
        # ceil(fraction * n) corrupt clients, but never so many that no sum could hold two honest
        # inputs (a session of two clients cannot tolerate a corrupt one).
        corrupt = min(n - 2, math.ceil(self.corrupt_fraction * n))
        # A sum must hold at least two honest inputs (SessionConfig refuses less).
        n_min = max(threshold, corrupt + 2, self.min_survivors or 0)
        return SessionConfig(
            round_index=round_index,
            client_ids=ids,
            threshold=threshold,
            vector_lengths=tuple(lengths),
            bits=self.bits,
            graph=kind,
            degree=degree,
            corrupt=corrupt,
            min_survivors=n_min if n_min <= n else None,
            dropout_rate=assumed,
        )

    def plan(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec], session=None
    ) -> RoundPlan:
        """The round the server proposes: mode, cohort, vectors, session, n_min and noise headroom.

        Args:
            session: a ready `SessionConfig` (e.g. with malicious-mode verify keys); default: built here.
        Raises:
            ConfigError: too few participants, or n_min above them.
        """
        ids = tuple(sorted(participants))
        specs = tuple(specs)
        if not ids:
            raise ConfigError("an aggregation round needs at least one participant")
        if not specs:
            raise ConfigError("an aggregation round needs at least one planned vector")
        if len(set(ids)) != len(ids):
            raise ConfigError(f"participants repeat: {list(participants)}")
        if not self.mode.secure:
            return RoundPlan(round_index, self.mode, ids, specs)
        if session is None:
            session = self.session_config(
                round_index=round_index, participants=ids, lengths=wire_lengths(self.mode, specs)
            )
        n_min = max(session.min_survivors, self.min_survivors or 0)
        if n_min > len(ids):
            raise ConfigError(f"min_survivors {n_min} exceeds the {len(ids)} participants")
        headroom: tuple[float, ...] = ()
        if self.sizing is not None:
            from ..privacy.analysis.composition import per_release_noise_multiplier

            assert self.noise_multiplier is not None
            self.sizing.set_noise_multiplier(
                per_release_noise_multiplier(self.noise_multiplier, releases=len(specs))
            )
            self.sizing.min_survivors = n_min
            headroom = tuple(self.sizing.noise_bound(spec=s, num_clients=len(ids)) for s in specs)
        return RoundPlan(round_index, self.mode, ids, specs, session, n_min, headroom)

    def codec(self, plan: RoundPlan, j: int) -> FixedPointCodec:
        """The codec of vector j of `plan` (secure modes)."""
        headroom = plan.noise_headroom[j] if plan.noise_headroom else 0.0
        return codec_for(plan.specs[j], plan, headroom)

    # ------------------------------------------------------------------ decoding

    def decode(self, plan: RoundPlan, j: int, total: np.ndarray, survivors: Sequence[int]) -> AggregateResult:
        """The sum of vector j over `survivors`: float64 for plain, ring words for the secure modes.

        Raises:
            ProtocolAbort: fewer survivors than n_min.
        """
        spec = plan.specs[j]
        survivors = tuple(sorted(survivors))
        if plan.mode.secure and len(survivors) < plan.n_min:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {spec.name!r}: {len(survivors)} survivors, fewer than n_min = {plan.n_min}",
            )
        if not plan.mode.secure:
            total = np.asarray(total, dtype=np.float64)
            body, counts = total[: spec.length], total[spec.length :]
            return AggregateResult(body, survivors, clipped=int(round(counts[0])) if counts.size else 0)
        codec = self.codec(plan, j)
        words = np.asarray(total, dtype=np.uint64)
        if plan.mode is Mode.SECURE:
            body, counts = words[: spec.length], words[spec.length : spec.length + COUNT_WORDS]
            return AggregateResult(
                codec.decode_sum(body), survivors, clipped=int(counts[0]), overflowed=int(counts[1])
            )
        return AggregateResult(codec.decode_sum(words), survivors, clipped=None, overflowed=None)

    def quantisation_bound(self, plan: RoundPlan, j: int, num_summands: int) -> float:
        """Largest per-coordinate error of a decoded sum of `num_summands` against the float sum."""
        if not plan.mode.secure:
            return 0.0
        return self.codec(plan, j).quantisation_bound(num_summands)
