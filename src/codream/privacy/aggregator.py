"""The ``secure+dp`` implementation of the aggregation seam: secure aggregation plus distributed DP noise.

Client-level DP (neighbouring federations differ by one client's whole data set). Each client clips
each released vector to its spec's L2 bound, encodes it, adds its share of integer noise
(`DistributedNoise`) and masks it; the server learns only the noised sum over the survivors.

Accounting rule: every release of a round uses the same sampled cohort, so the round is ONE
Poisson-sampled Gaussian event with the round's z_eff; each of the round's J releases gets
z_i = z_eff * sqrt(J) so that they compose to exactly z_eff (see `analysis.composition`). The ledger
is asked before the round opens (`PrivacyBudgetExceeded` if it would overspend) and records the event
as soon as the first vector is released, so an aborted round is still charged.

Importing this module registers the aggregator as ``"secure+dp"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..aggregation import (
    AggregateResult,
    AggregationRound,
    Aggregator,
    RoundReport,
    VectorSpec,
    register_aggregator,
)
from ..exceptions import ConfigError
from ..secagg.aggregator import SecureAggregator
from .accountant import PrivacyEvent
from .analysis.composition import effective_noise_multiplier, per_release_noise_multiplier
from .clipping import ClipCounter, ClipStats
from .ledger import Granularity, PrivacyLedger
from .noise import DistributedNoise, NoiseKind

__all__ = ["SecureDPAggregator"]

logger = logging.getLogger(__name__)

# Fewer bits than plain secure aggregation: DP noise dwarfs the rounding error at 2^-24 of the range,
# and it keeps each client's integer noise share small enough for numpy's exact Poisson range.
DEFAULT_DP_BITS = 24


class SecureDPAggregator(Aggregator):
    """Secure aggregation with client-level DP noise, clipping counts and budget enforcement.

    Args:
        noise_multiplier: z_eff of each round (from `calibration.plan_noise` for a target).
        sample_rate: q, the probability that a client is in a round's cohort (cohort / population);
            1.0 when every client takes part in every round.
        delta: the delta epsilon is reported at.
        target_epsilon: the budget; a round that would exceed it is refused. None: record only.
        noise: "skellam" (default) or "discrete_gaussian".
        colluders: clients that may pool their noise with the server; shares are sized without them.
        accountant: "rdp" (default) or "prv".
        ledger: an existing ledger to record into; otherwise one is made (written to `ledger_path`).
        ledger_path: JSON file the ledger rewrites after every round.
        allow_overspend: explicit override to continue past the target.
        noise_seed: seed of the noise generator for reproducible tests; None (default) keys it from
            the operating system.
        wrap_target: wrap-around probability the encoding headroom is sized for, per vector.
        bits, threshold, graph, dropout, seed, malicious, min_survivors, corrupt_fraction,
        rounding_seed: passed to `SecureAggregator`. `min_survivors` is the n_min every noise share
            is calibrated for (never below the Shamir threshold).
    Raises:
        ConfigError: for invalid options.
    """

    name = "secure+dp"

    def __init__(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float = 1.0,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        noise: NoiseKind | str = NoiseKind.SKELLAM,
        colluders: int = 0,
        accountant: str = "rdp",
        ledger: PrivacyLedger | None = None,
        ledger_path: str | Path | None = None,
        allow_overspend: bool = False,
        noise_seed: int | None = None,
        wrap_target: float = 1e-9,
        bits: int = DEFAULT_DP_BITS,
        min_survivors: int | None = None,
        **secure_options: Any,
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
        if not (0 < sample_rate <= 1):
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self.noise = DistributedNoise(
            noise_multiplier=noise_multiplier,
            kind=noise,
            min_survivors=min_survivors,
            colluders=colluders,
            wrap_target=wrap_target,
            seed=noise_seed,
        )
        self.min_survivors = min_survivors
        self.secure = SecureAggregator(
            noise=self.noise, bits=bits, min_survivors=min_survivors, **secure_options
        )
        if ledger is None:
            ledger = PrivacyLedger(
                delta=delta,
                target_epsilon=target_epsilon,
                granularity=Granularity.CLIENT,
                accountant=accountant,
                path=ledger_path,
                allow_overspend=allow_overspend,
            )
        elif ledger.granularity is not Granularity.CLIENT:
            raise ConfigError("secure+dp needs a client-level ledger")
        self.ledger = ledger

    def round_event(self) -> PrivacyEvent:
        """The event every round is accounted as: (z_eff, q), once per round."""
        return PrivacyEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)

    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        """Open a round after checking its privacy cost against the budget.

        Raises:
            PrivacyBudgetExceeded: the round would overspend (nothing is released, no state changes).
            ConfigError: invalid participants or specs, or n_min not met by the participants.
        """
        if not specs:
            raise ConfigError("an aggregation round needs at least one planned vector")
        event = self.round_event()
        self.ledger.check([event], round_index=round_index)
        config = self.secure.session_config(round_index=round_index, participants=participants, specs=specs)
        n_min = max(config.threshold, self.min_survivors or config.threshold)
        self.noise.min_survivors = n_min
        self.noise.set_noise_multiplier(
            per_release_noise_multiplier(self.noise_multiplier, releases=len(specs))
        )
        self.noise.calibrations.clear()
        self.noise.wraparound.clear()
        inner = self.secure.open_round(round_index=round_index, participants=participants, specs=specs)
        return _DPRound(
            self,
            inner,
            event=event,
            n_min=n_min,
            round_index=round_index,
            participants=participants,
            specs=specs,
        )


class _DPRound(AggregationRound):
    def __init__(
        self, owner: SecureDPAggregator, inner: AggregationRound, *, event: PrivacyEvent, n_min: int, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        self._inner = inner
        self._event = event
        self._n_min = n_min
        self._charged = False
        self._clips = ClipCounter()
        self._noise_std: dict[str, float] = {}

    def sum(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray]) -> AggregateResult:
        self._check_contributions(spec, vectors)
        result = self._inner.sum(spec, vectors)
        self._next += 1
        if not self._charged:
            # The first release spends the round's whole composed event: charge it now, so a round that
            # aborts later is still on the record.
            self._owner.ledger.record_round(round_index=self.round_index, events=[self._event])
            self._charged = True
        self._clips.add(spec.name, ClipStats(clipped=result.clipped, total=result.count))
        cal = self._owner.noise.calibrations.get(spec.name)
        if cal is not None:
            self._noise_std[spec.name] = cal.min_total_std
        return result

    def close(self) -> RoundReport:
        report = self._inner.close()
        noise = self._owner.noise
        cals = [noise.calibrations[s.name] for s in self.specs[: self._next] if s.name in noise.calibrations]
        details: dict[str, float] = {
            "dp_noise_multiplier": self._event.noise_multiplier,
            "dp_sample_rate": self._event.sample_rate,
            "dp_releases": float(len(self.specs)),
            "dp_release_noise_multiplier": noise.noise_multiplier,
            "dp_n_min": float(self._n_min),
            "dp_colluders": float(noise.colluders),
            "dp_clipped": float(self._clips.total.clipped),
            "dp_contributions": float(self._clips.total.total),
            "dp_clipped_fraction": self._clips.total.fraction,
            "dp_wraparound_bound": min(1.0, sum(noise.wraparound.values())),
        }
        if cals:
            details["dp_achieved_noise_multiplier"] = effective_noise_multiplier(
                [c.achieved_noise_multiplier for c in cals]
            )
        for name, std in self._noise_std.items():
            details[f"dp_noise_std/{name}"] = std
        for name, stats in self._clips.counts.items():
            details[f"dp_clipped/{name}"] = float(stats.clipped)
        if self._charged:
            details["dp_epsilon"] = self._owner.ledger.spent
            self._owner.ledger.update_details(
                self.round_index, {**details, "survivors": float(len(report.survivors))}
            )
        return RoundReport(
            participants=report.participants,
            survivors=report.survivors,
            vectors=report.vectors,
            clipped=report.clipped,
            overflowed=report.overflowed,
            bytes_sent_per_client=report.bytes_sent_per_client,
            bytes_received_by_server=report.bytes_received_by_server,
            extra={**report.extra, **details},
        )


register_aggregator("secure+dp", SecureDPAggregator)
