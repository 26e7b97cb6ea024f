"""The seam in one process: every client's half and the server's half, with simulated dropouts.

`LocalAggregator` is what the in-process engine, the benchmarks and the tests sum through. It holds one
`ClientSeam` per client (each built from the client policy, with its own noise and its own ledger)
and one `ServerSeam`; a round admits the plan at every client, has each client prepare its words,
runs the secure-aggregation state machines between them (`secagg.runner.InProcessSession`, which
plays the network and crashes clients where a seeded `DropoutSchedule` says), and decodes. The same
client and server halves run on the Flower engine; only the network differs.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..exceptions import ConfigError, ProtocolAbort
from ..privacy.analysis.composition import effective_noise_multiplier
from ..privacy.client_ledger import ClientLedger, client_ledger_path, read_client_ledger_json
from ..privacy.ledger import Granularity, PrivacyLedger
from ..secagg.config import GraphKind
from ..secagg.runner import DropoutSchedule, InProcessSession, SessionStats, Stage, provision_signers
from .client import ClientSeam
from .plan import AggregateResult, DPStats, Mode, RoundPlan, RoundReport, SecureStats, VectorSpec
from .policy import ClientPolicy, DPPolicy
from .server import ServerSeam

__all__ = ["AggregationRound", "Aggregator", "LocalAggregator", "create_aggregator"]

logger = logging.getLogger("codream.aggregation")


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
        if spec != self.next_spec:
            raise ConfigError(f"expected vector {self.next_spec.name!r} next, got {spec.name!r}")
        unknown = set(vectors) - set(self.participants)
        if unknown:
            raise ConfigError(f"contributions from clients outside this round: {sorted(unknown)}")
        for cid, v in vectors.items():
            if np.shape(v) != (spec.length,):
                raise ConfigError(
                    f"client {cid}: vector {spec.name!r} has shape {np.shape(v)}, expected ({spec.length},)"
                )
            if not np.all(np.isfinite(v)):
                raise ConfigError(f"client {cid}: vector {spec.name!r} holds NaN or infinity")

    @abstractmethod
    def sum(
        self, spec: VectorSpec, vectors: Mapping[int, np.ndarray], *, context: bytes = b""
    ) -> AggregateResult:
        """Sum one planned vector over the participants that are still alive.

        Args:
            spec: the next planned spec (`next_spec`).
            vectors: each alive participant's float vector of shape ``(spec.length,)``.
            context: what the participants computed it from (`release_context`); secure sessions
                sign it (malicious mode) and key their masks with it.
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
    #: How releases leave the clients (the in-process engine reports per-client losses only in plain).
    mode: Mode = Mode.PLAIN

    @abstractmethod
    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        """Start a round for `participants` that will release `specs`, in that order."""


class LocalAggregator(Aggregator):
    """Every client's seam half and the server's, in one process.

    Args:
        mode: plain, secure or secure+dp.
        policy: every client's policy (each client gets its own `ClientSeam`, noise and ledger);
            default: the least that `mode` and the DP options need.
        noise_multiplier, delta, target_epsilon, noise, colluders, accountant, allow_overspend,
        wrap_target: the clients' DP parameters (secure+dp), when `policy` is not given.
        ledger_path: JSON file of the run's ledger: each client's epsilon after every round.
        run_dir: where each client's own ledger file lives (`client_ledgers/`); see `attach`.
        dropout: each participant crashes with this probability, at a stage and vector drawn from a
            schedule seeded by (`seed`, round index); also what Harary parameters are chosen for.
        schedules: explicit crashes by round index (simulation only), in place of the drawn ones for
            the rounds listed; e.g. to replay a deployment in which a node was killed.
        seed: seed of the dropout schedule (simulation only; keys never depend on it).
        rounding_seed: seed of the clients' stochastic-rounding coins, for reproducible runs; None
            draws them from the OS every round.
        noise_seed: seeded DP noise, for tests only.
        threshold, graph, bits, malicious, min_survivors, corrupt_fraction: the server's session
            choices (see `ServerSeam`).
    """

    def __init__(
        self,
        mode: Mode | str = Mode.PLAIN,
        *,
        policy: ClientPolicy | None = None,
        noise_multiplier: float | None = None,
        delta: float = 1e-5,
        target_epsilon: float | None = None,
        noise: str = "skellam",
        colluders: int = 0,
        accountant: str = "rdp",
        allow_overspend: bool = False,
        wrap_target: float = 1e-9,
        ledger_path: str | Path | None = None,
        run_dir: str | Path | None = None,
        dropout: float = 0.0,
        seed: int = 0,
        rounding_seed: int | None = None,
        noise_seed: int | None = None,
        threshold: int | None = None,
        graph: str = "complete",
        bits: int | None = None,
        malicious: bool = False,
        min_survivors: int | None = None,
        corrupt_fraction: float = 0.1,
        schedules: Mapping[int, DropoutSchedule] | None = None,
    ) -> None:
        self.mode = Mode.parse(mode)
        self.name = self.mode.value
        if policy is None:
            dp = None
            if self.mode is Mode.SECURE_DP:
                if noise_multiplier is None:
                    raise ConfigError("secure+dp needs a noise_multiplier")
                dp = DPPolicy(
                    noise_multiplier=float(noise_multiplier),
                    delta=delta,
                    target_epsilon=target_epsilon,
                    noise=str(getattr(noise, "value", noise)),
                    colluders=colluders,
                    accountant=accountant,
                    wrap_target=wrap_target,
                    allow_overspend=allow_overspend,
                )
            policy = ClientPolicy(mode=self.mode, dp=dp, malicious=malicious)
        self.policy = policy
        dp = policy.dp
        self.server = ServerSeam(
            self.mode,
            threshold=threshold,
            graph=graph,
            bits=bits,
            malicious=malicious,
            min_survivors=min_survivors,
            dropout=dropout,
            corrupt_fraction=corrupt_fraction,
            noise_multiplier=None if dp is None else dp.noise_multiplier,
            noise=noise if dp is None else dp.noise,
            colluders=colluders if dp is None else dp.colluders,
            wrap_target=wrap_target if dp is None else dp.wrap_target,
        )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = dropout
        self.schedules = dict(schedules or {})
        self.seed = seed
        self.malicious = malicious
        self.rounding_seed = rounding_seed
        self.noise_seed = noise_seed
        self.clients: dict[int, ClientSeam] = {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # The run's record: every client's own epsilon after each round; the run's is their maximum.
        self.ledger: PrivacyLedger | None = None
        if dp is not None:
            self.ledger = PrivacyLedger(
                delta=dp.delta,
                target_epsilon=dp.target_epsilon,
                granularity=Granularity.CLIENT,
                accountant=dp.accountant,
                path=ledger_path,
                allow_overspend=dp.allow_overspend,
            )

    @property
    def noise_multiplier(self) -> float | None:
        return None if self.policy.dp is None else self.policy.dp.noise_multiplier

    def client(self, client_id: int) -> ClientSeam:
        """This client's half, made on first use from the client policy."""
        seam = self.clients.get(client_id)
        if seam is None:
            noise_seed = None if self.noise_seed is None else self.noise_seed * 1_000_003 + client_id
            path = None
            if self.run_dir is not None and self.policy.dp is not None:
                path = client_ledger_path(self.run_dir, client_id)
            seam = ClientSeam(
                client_id,
                self.policy,
                ledger_path=path,
                rounding_seed=self.rounding_seed,
                noise_seed=noise_seed,
            )
            self.clients[client_id] = seam
        return seam

    def client_epsilons(self) -> dict[int, float]:
        """Each client's own epsilon so far (secure+dp)."""
        return {cid: float(s.epsilon or 0.0) for cid, s in sorted(self.clients.items())}

    def session_config(self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]):
        """The `SessionConfig` a round with these participants uses (without signing keys)."""
        from .client import wire_lengths

        return self.server.session_config(
            round_index=round_index, participants=participants, lengths=wire_lengths(self.mode, tuple(specs))
        )

    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        """Plan the round and have every participant admit it.

        Raises:
            PolicyRefusal, PrivacyBudgetExceeded: a client refuses the round (nothing is released).
            ConfigError: invalid participants or specs.
        """
        return _LocalRound(self, round_index=round_index, participants=participants, specs=specs)

    def attach(self, run_dir: str | Path) -> None:
        """Keep every client's ledger in `run_dir/client_ledgers/` from now on.

        A file already there is the truth: charges it holds beyond what the client's ledger knows (a
        round released after the last checkpoint) are adopted, never dropped.
        """
        self.run_dir = Path(run_dir)
        for cid, seam in self.clients.items():
            if seam.ledger is None:
                continue
            path = client_ledger_path(self.run_dir, cid)
            if path.exists():
                seam.ledger.merge(read_client_ledger_json(path), save=False)
            seam.ledger.path = path
            seam.ledger.merge(seam.ledger.state_dict())  # nothing new; writes the file

    def state_dict(self) -> dict:
        """The clients' ledgers and the run's, for resuming."""
        return {
            "clients": {
                cid: s.ledger.state_dict() for cid, s in self.clients.items() if s.ledger is not None
            },
            "ledger": None if self.ledger is None else self.ledger.state_dict(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the clients' ledgers; with a run directory, merged with their files (never shrunk)."""
        for cid, ledger_state in state.get("clients", {}).items():
            seam = self.client(int(cid))
            assert seam.ledger is not None
            path = None if self.run_dir is None else client_ledger_path(self.run_dir, int(cid))
            seam.ledger = ClientLedger.from_state(ledger_state, path=path)
        if self.ledger is not None and state.get("ledger") is not None:
            self.ledger.load_state_dict(state["ledger"])


class _LocalRound(AggregationRound):
    def __init__(self, owner: LocalAggregator, **kwargs) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        server = owner.server
        signers = None
        session = None
        if owner.mode.secure:
            session = owner.session_config(
                round_index=self.round_index, participants=self.participants, specs=self.specs
            )
            if owner.malicious:
                verify_keys, signers = provision_signers(session.client_ids)
                session = dataclasses.replace(session, malicious=True, verify_keys=verify_keys)
        plan = server.plan(
            round_index=self.round_index, participants=self.participants, specs=self.specs, session=session
        )
        seams = {cid: owner.client(cid) for cid in self.participants}
        for seam in seams.values():  # a refusal raises here, before any client released anything
            seam.admit(plan)
        self.plan: RoundPlan = plan
        self._seams = seams
        self._session: InProcessSession | None = None
        if plan.mode.secure:
            schedule = owner.schedules.get(self.round_index) or DropoutSchedule.random(
                plan.participants,
                rate=owner.dropout,
                num_vectors=len(plan.specs),
                seed=[owner.seed, self.round_index],
                malicious=owner.malicious,
            )
            self._session = InProcessSession(plan.session, dropouts=schedule, signers=signers)  # type: ignore[arg-type]
        # Plain rounds crash only where an explicit schedule says: from the vector a client never sends.
        self._plain_schedule = owner.schedules.get(self.round_index) if not plan.mode.secure else None
        self._plain_crashed: set[int] = set()
        self._started = False
        self._clipped = 0
        self._overflowed = 0
        self._survivors: tuple[int, ...] = ()
        self._aborted: ProtocolAbort | None = None
        self._plain_bytes: dict[int, int] = dict.fromkeys(self.participants, 0)

    @property
    def stats(self) -> SessionStats | None:
        return None if self._session is None else self._session.stats

    def quantisation_bound(self, vector: int, num_summands: int) -> float:
        """Largest per-coordinate error of a decoded sum of `num_summands` against the float sum."""
        return self._owner.server.quantisation_bound(self.plan, vector, num_summands)

    def sum(
        self, spec: VectorSpec, vectors: Mapping[int, np.ndarray], *, context: bytes = b""
    ) -> AggregateResult:
        self._check_contributions(spec, vectors)
        if self._aborted is not None:
            raise ProtocolAbort(
                self._aborted.reason, f"the round's session already aborted: {self._aborted.detail}"
            )
        j = self._next
        try:
            if self._session is not None and not self._started:
                self._started = True
                self._session.setup()
            # Clients that crashed earlier in the session release nothing more.
            if self._session is None:
                if self._plain_schedule is not None:
                    self._plain_crashed |= {
                        c for c in vectors if self._plain_schedule.drops_at(c, Stage.MASKED_INPUT, j)
                    }
                live = sorted(set(vectors) - self._plain_crashed)
            else:
                live = sorted(set(vectors) & set(self._session.live))
            words = {cid: self._seams[cid].prepare(vectors[cid]) for cid in live}
            if self._session is None:
                total = np.sum([words[c] for c in live], axis=0) if live else np.zeros(spec.length + 2)
                for c in live:
                    self._plain_bytes[c] += 8 * spec.length
                survivors: tuple[int, ...] = tuple(live)
            else:
                result = self._session.aggregate(j, words, context=context)
                total, survivors = result.words, tuple(result.survivors)
            out = self._owner.server.decode(self.plan, j, total, survivors)
        except ProtocolAbort as exc:
            self._aborted = exc
            raise
        self._next += 1
        if out.clipped is not None:
            self._clipped += out.clipped
        if out.overflowed:
            self._overflowed += out.overflowed
            logger.warning(
                "vector %r: %d coordinates saturated in fixed-point encoding", spec.name, out.overflowed
            )
        self._survivors = out.contributors
        return out

    def close(self) -> RoundReport:
        plan = self.plan
        dp_mode = plan.mode is Mode.SECURE_DP
        secure = None
        if self._session is not None:
            stats = self._session.stats
            seconds = list(stats.client_seconds.values())
            session = plan.session
            secure = SecureStats(
                threshold=int(session.threshold),  # type: ignore[union-attr]
                degree=int(
                    session.degree if session.graph is GraphKind.HARARY else len(self.participants) - 1  # type: ignore[union-attr]
                ),
                n_min=plan.n_min,
                aborted=self._aborted is not None,
                server_seconds=stats.server_seconds,
                client_seconds_mean=float(np.mean(seconds)),
                client_seconds_max=float(np.max(seconds)),
                bytes_received_per_client_mean=float(np.mean(list(stats.bytes_received.values()))),
            )
            bytes_sent, bytes_in = dict(stats.bytes_sent), stats.server_bytes_received
        else:
            bytes_sent, bytes_in = dict(self._plain_bytes), sum(self._plain_bytes.values())
        dp = None
        if dp_mode:
            dp = self._dp_stats()
        return RoundReport(
            participants=self.participants,
            survivors=self._survivors,
            vectors=self._next,
            clipped=None if dp_mode else self._clipped,
            overflowed=None if dp_mode else self._overflowed,
            bytes_sent_per_client=bytes_sent,
            bytes_received_by_server=bytes_in,
            secure=secure,
            dp=dp,
        )

    def _dp_stats(self) -> DPStats:
        owner, plan = self._owner, self.plan
        dp = owner.policy.dp
        assert dp is not None and owner.ledger is not None
        # Every client calibrates the same way from the same policy; any one of them reports it.
        noise = next(iter(self._seams.values())).noise
        assert noise is not None
        cals = [noise.calibrations[s.name] for s in plan.specs[: self._next] if s.name in noise.calibrations]
        stats = DPStats(
            noise_multiplier=dp.noise_multiplier,
            release_noise_multiplier=noise.noise_multiplier,
            releases=len(plan.specs),
            n_min=plan.n_min,
            colluders=dp.colluders,
            achieved_noise_multiplier=(
                effective_noise_multiplier([c.achieved_noise_multiplier for c in cals]) if cals else None
            ),
            noise_std={name: c.min_total_std for name, c in noise.calibrations.items()},
            wraparound_bound=min(1.0, sum(noise.wraparound.values())),
        )
        charged = {cid: s.epsilon or 0.0 for cid, s in self._seams.items() if s.charged}
        if charged:
            owner.ledger.record_client_epsilons(
                round_index=self.round_index,
                client_epsilons=owner.client_epsilons(),
                details={"survivors": float(len(self._survivors)), "charged_clients": float(len(charged))},
            )
        return stats


def create_aggregator(name: Mode | str, **options) -> LocalAggregator:
    """The in-process seam for aggregation mode `name` ("plain", "secure", "secure+dp")."""
    return LocalAggregator(Mode.parse(name), **options)
