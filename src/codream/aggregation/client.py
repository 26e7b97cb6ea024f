"""The client half of the seam: one planned release in, the words that leave the client out.

A `ClientSeam` lives with its client and is built from the client's own `ClientPolicy`. For each
round it first `admit`s the server's plan (policy and, under DP, its own budget), then turns every
planned vector into what leaves the client, in the one safe order:

    bound (L2 clip) -> encode (fixed point, stochastic rounding) -> its own noise share -> [mask]

Masking is the secure-aggregation client state's job (`codream.secagg.client`), fed with these words.
In `secure` mode two count words ride at the end of the masked vector (was it clipped, how many
coordinates saturated), so the server learns only their sums; under DP they are not released at all
and stay in `local_stats`. Nothing per client travels in the clear beside a masked release.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..exceptions import ConfigError, PolicyRefusal
from ..privacy.accountant import PrivacyEvent
from ..privacy.analysis.composition import per_release_noise_multiplier
from ..privacy.client_ledger import ClientLedger, client_round_event
from ..privacy.clipping import clip_l2
from ..privacy.noise import DistributedNoise
from ..secagg.encoding import FixedPointCodec
from .plan import Mode, RoundPlan, VectorSpec
from .policy import ClientPolicy

__all__ = ["COUNT_WORDS", "ClientSeam", "LocalStats", "wire_lengths"]

#: Words appended to every `secure` release: [clipped (0 or 1), saturated coordinates].
COUNT_WORDS = 2


def wire_lengths(mode: Mode, specs: tuple[VectorSpec, ...]) -> tuple[int, ...]:
    """The session's vector lengths for `specs`: the count words ride along in `secure` mode only."""
    tail = COUNT_WORDS if mode is Mode.SECURE else 0
    return tuple(s.length + tail for s in specs)


def codec_for(spec: VectorSpec, plan: RoundPlan, headroom: float) -> FixedPointCodec:
    """The codec both halves derive from the plan, so the server decodes what clients encoded."""
    session = plan.session
    return FixedPointCodec(
        clip_norm=spec.clip_norm,
        num_summands=len(plan.participants),
        bits=int(session.bits),  # type: ignore[union-attr]
        noise_bound=headroom,
    )


@dataclass(slots=True)
class LocalStats:
    """What this client knows about its own releases; kept on the client, never sent under DP."""

    released: int = 0
    clipped: int = 0
    saturated: int = 0


class ClientSeam:
    """One client's half of the seam.

    Args:
        client_id: this client.
        policy: what it accepts, from its own configuration.
        ledger: its own client-level privacy ledger (secure+dp); made from `policy.dp` when omitted,
            written to `ledger_path` (an existing file there is adopted: the ledger never shrinks).
        ledger_path: where that ledger lives.
        rounding_seed: seed of the stochastic-rounding coins (they protect nothing; the masks do), for
            reproducible runs; None draws them from the OS.
        noise_seed: seeded DP noise, for tests only; None (default) keys it from the OS.
    """

    def __init__(
        self,
        client_id: int,
        policy: ClientPolicy,
        *,
        ledger: ClientLedger | None = None,
        ledger_path: str | Path | None = None,
        rounding_seed: int | None = None,
        noise_seed: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.policy = policy
        self.rounding_seed = rounding_seed
        self.noise: DistributedNoise | None = None
        self.ledger: ClientLedger | None = None
        dp = policy.dp
        if dp is not None:
            self.noise = DistributedNoise(
                kind=dp.noise, colluders=dp.colluders, wrap_target=dp.wrap_target, seed=noise_seed
            )
            if ledger is None:
                ledger = ClientLedger(
                    client_id=client_id,
                    # With an explicit override the client records past its target instead of refusing.
                    target_epsilon=None if dp.allow_overspend else dp.target_epsilon,
                    delta=dp.delta,
                    accountant=dp.accountant,
                    path=ledger_path,
                    not_private=("seeded DP noise (a test run)",) if noise_seed is not None else (),
                )
            elif ledger.client_id != client_id:
                raise ConfigError(f"client {client_id} was given client {ledger.client_id}'s ledger")
            self.ledger = ledger
        self.local_stats = LocalStats()
        self._plan: RoundPlan | None = None
        self._codecs: list[FixedPointCodec] = []
        self._next = 0
        self._charged = False
        self._attempt = ""
        self._rng: np.random.Generator | None = None

    # ------------------------------------------------------------------ a round

    @property
    def plan(self) -> RoundPlan:
        if self._plan is None:
            raise ConfigError(f"client {self.client_id}: no round admitted")
        return self._plan

    def event(self) -> PrivacyEvent:
        """What one round this client takes part in costs it: its own z_eff, unamplified.

        The server knows who takes part in every round (it runs the protocol with them), so sampling
        amplifies nothing against it: each round a client is in composes in full.
        """
        assert self.policy.dp is not None
        return client_round_event(self.policy.dp.noise_multiplier)

    def admit(self, plan: RoundPlan) -> None:
        """Accept the server's plan for a round, or refuse it and release nothing.

        Raises:
            PolicyRefusal: the plan is below this client's policy, or its noise would not fit the
                plan's encoding headroom.
            PrivacyBudgetExceeded: the round would take this client past its own budget.
        """
        self.policy.check(plan, self.client_id, lengths_on_wire=wire_lengths(plan.mode, plan.specs))
        codecs: list[FixedPointCodec] = []
        if plan.mode.secure:
            headroom = plan.noise_headroom or (0.0,) * len(plan.specs)
            if plan.mode is Mode.SECURE_DP:
                assert self.noise is not None and self.ledger is not None and self.policy.dp is not None
                self.ledger.check(plan.round_index, self.event())
                z_i = per_release_noise_multiplier(self.policy.dp.noise_multiplier, releases=len(plan.specs))
                self.noise.set_noise_multiplier(z_i)
                self.noise.min_survivors = plan.n_min
                self.noise.calibrations.clear()
                self.noise.wraparound.clear()
                for spec, room in zip(plan.specs, headroom, strict=True):
                    need = self.noise.noise_bound(spec=spec, num_clients=len(plan.participants))
                    if room < need * (1 - 1e-9):
                        raise PolicyRefusal(
                            f"client {self.client_id} refuses round {plan.round_index}: vector {spec.name!r} "
                            f"leaves {room:.4g} of noise headroom, its own noise needs {need:.4g}"
                        )
            codecs = [codec_for(s, plan, h) for s, h in zip(plan.specs, headroom, strict=True)]
        seed = self.rounding_seed if self.rounding_seed is not None else int.from_bytes(os.urandom(16), "big")
        self._rng = np.random.default_rng([seed, plan.round_index, self.client_id])
        self._plan = plan
        self._codecs = codecs
        self._next = 0
        self._charged = False
        # One attempt at a round is one charge: a round run again (after a crash) is charged again.
        self._attempt = os.urandom(16).hex()

    def prepare(self, vector: np.ndarray) -> np.ndarray:
        """The next planned vector as it leaves this client (before masking).

        Returns:
            plain: the clipped float64 vector followed by the count words; secure: the words of the
            encoded vector (uint32 up to 32 bits, `secagg.encoding.word_dtype`) followed by the count
            words; secure+dp: the encoded words plus this client's noise share. Under DP the round is
            charged to the client's ledger here, before the first release can leave.
        Raises:
            ConfigError: out of plan, or a vector of the wrong shape or holding NaN or infinity.
        """
        plan = self.plan
        if self._next >= len(plan.specs):
            raise ConfigError(f"client {self.client_id}: all {len(plan.specs)} planned vectors were released")
        j = self._next
        spec = plan.specs[j]
        v = np.asarray(vector, dtype=np.float64)
        if v.shape != (spec.length,):
            raise ConfigError(
                f"client {self.client_id}: vector {spec.name!r} has shape {v.shape}, "
                f"expected ({spec.length},)"
            )
        if not np.all(np.isfinite(v)):
            raise ConfigError(f"client {self.client_id}: vector {spec.name!r} holds NaN or infinity")
        v, clipped = clip_l2(v, spec.clip_norm)
        # No coordinate of an L2-clipped vector exceeds clip_norm but by the last bit of float rounding
        # in the rescaling; clamp that bit rather than count it as saturation.
        v = np.clip(v, -spec.clip_norm, spec.clip_norm)
        self._next += 1
        self.local_stats.released += 1
        self.local_stats.clipped += int(clipped)
        if not plan.mode.secure:
            return np.concatenate([v, [float(clipped), 0.0]])
        codec = self._codecs[j]
        assert self._rng is not None
        encoded = codec.encode(v, rng=self._rng)
        self.local_stats.saturated += encoded.saturated
        words = encoded.words
        if plan.mode is Mode.SECURE:
            return np.concatenate([words, np.array([int(clipped), encoded.saturated], dtype=words.dtype)])
        assert self.noise is not None and self.ledger is not None
        if not self._charged:
            # The first release spends the round's whole composed event: charge it before anything
            # leaves, so a round that aborts later is still on this client's record.
            self.ledger.charge(plan.round_index, self.event(), session=self._attempt)
            self._charged = True
        share = self.noise.sample(spec=spec, scale=codec.scale, length=spec.length, n_min=plan.n_min)
        mask = words.dtype.type((1 << codec.bits) - 1)
        return (words + codec.to_words(np.asarray(share, dtype=np.int64))) & mask

    @property
    def epsilon(self) -> float | None:
        """This client's epsilon so far (secure+dp), at its own delta."""
        return None if self.ledger is None else float(self.ledger.spent)

    @property
    def charged(self) -> bool:
        return self._charged
