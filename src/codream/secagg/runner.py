"""Run a secure-aggregation session for n clients inside one process.

The runner plays the network: it serialises every message to bytes and parses it back (so the wire
format is exercised and counted), delivers it, closes each server round once every client that is
still alive has spoken, and makes clients crash where a `DropoutSchedule` says. It is used by the
tests, by the `secure` aggregator and by the cost benchmark.

A crash here is silent, as on a real network: the client simply sends nothing more, and the server
finds out at the round's deadline (`close`). That is the case the protocol must survive.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..crypto.signing import Ed25519KeyPair
from ..exceptions import ConfigError, ProtocolAbort
from .client import Aborted, ClientState, Completed, MaskedInputState, start_client
from .config import SessionConfig
from .messages import Message, decode_message
from .server import ServerAborted, ServerCompleted, ServerMaskedInput, ServerState, SessionSum, start_server

__all__ = [
    "Dropout",
    "DropoutSchedule",
    "InProcessSession",
    "SessionResult",
    "SessionStats",
    "SessionSum",
    "Stage",
    "provision_signers",
    "run_session",
]

logger = logging.getLogger("codream.secagg.runner")


class Stage(enum.Enum):
    """Where a client crashes. Each name is the step it never completes."""

    ADVERTISE_KEYS = "advertise_keys"  # never advertises keys
    SHARE_KEYS = "share_keys"  # advertised keys, never sends its shares
    MASKED_INPUT = "masked_input"  # shared keys (and finished earlier vectors), never sends y^j
    CONSISTENCY_CHECK = "consistency_check"  # sent y^j, never signs the lists (malicious mode)
    UNMASK = "unmask"  # sent y^j, never answers the unmask request of vector j

    @property
    def per_vector(self) -> bool:
        return self not in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS)


@dataclass(frozen=True, slots=True)
class Dropout:
    """One client's crash: at `stage`, and for per-vector stages at vector `vector`."""

    stage: Stage
    vector: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class DropoutSchedule:
    """Which client crashes where. Clients not listed never crash."""

    drops: Mapping[int, Dropout] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drops", dict(self.drops))
        for cid, d in self.drops.items():
            if not isinstance(d, Dropout) or d.vector < 0:
                raise ConfigError(f"client {cid}: a dropout must be a Dropout with vector >= 0, got {d!r}")

    def drops_at(self, client_id: int, stage: Stage, vector: int = 0) -> bool:
        d = self.drops.get(client_id)
        return d is not None and d.stage is stage and (not stage.per_vector or d.vector == vector)

    @classmethod
    def random(
        cls,
        client_ids: Iterable[int],
        *,
        rate: float,
        num_vectors: int,
        seed: int | Sequence[int],
        malicious: bool = False,
    ) -> DropoutSchedule:
        """Each client crashes with probability `rate`, at a uniformly drawn stage and vector.

        Simulation randomness only (a seeded numpy Generator), never key material.
        """
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"dropout rate must lie in [0, 1], got {rate}")
        rng = np.random.default_rng(seed)
        stages = [s for s in Stage if malicious or s is not Stage.CONSISTENCY_CHECK]
        drops = {}
        for cid in sorted(client_ids):
            if rng.random() < rate:
                stage = stages[int(rng.integers(len(stages)))]
                drops[cid] = Dropout(stage, int(rng.integers(num_vectors)) if stage.per_vector else 0)
        return cls(drops)


@dataclass(slots=True)
class SessionStats:
    """What a session cost: bytes on the wire and seconds of computation per party (each party's
    seconds include serialising what it sends and parsing what it receives, read from the session's
    clock: wall time by default, CPU time with `time.process_time`, which the cost benchmark uses so
    that a loaded machine does not inflate them)."""

    bytes_sent: dict[int, int]
    bytes_received: dict[int, int]
    messages_sent: dict[int, int]
    client_seconds: dict[int, float]
    server_seconds: float = 0.0

    @classmethod
    def empty(cls, client_ids: Iterable[int]) -> SessionStats:
        ids = list(client_ids)
        return cls(
            dict.fromkeys(ids, 0), dict.fromkeys(ids, 0), dict.fromkeys(ids, 0), dict.fromkeys(ids, 0.0)
        )

    @property
    def server_bytes_received(self) -> int:
        return sum(self.bytes_sent.values())

    @property
    def server_bytes_sent(self) -> int:
        return sum(self.bytes_received.values())


@dataclass(frozen=True, slots=True)
class SessionResult:
    """Every vector's sum and the session's cost."""

    sums: tuple[SessionSum, ...]
    stats: SessionStats


def provision_signers(client_ids: Iterable[int]) -> tuple[tuple[bytes, ...], dict[int, Ed25519KeyPair]]:
    """Fresh Ed25519 keys for malicious mode: the verify keys for `SessionConfig.verify_keys` (in id
    order) and each client's signer. A deployment would distribute the verify keys out of band."""
    signers = {cid: Ed25519KeyPair.generate() for cid in sorted(client_ids)}
    return tuple(s.public_bytes() for s in signers.values()), signers


class InProcessSession:
    """One session, driven step by step: `setup()` once, then `aggregate(j, ...)` for j = 0, 1, ...

    Args:
        config: the session parameters.
        dropouts: which clients crash where (default: nobody).
        signers: each client's Ed25519 key, required in malicious mode.
        randbytes: the clients' secret randomness (keep the default outside tests).
        clock: what `stats` seconds are read from: wall time by default; `time.process_time` gives
            each party's CPU time (the whole session runs in this one thread).
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        dropouts: DropoutSchedule | None = None,
        signers: Mapping[int, Ed25519KeyPair] | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if config.malicious and (signers is None or set(signers) != set(config.client_ids)):
            raise ConfigError("malicious mode needs a signer for every client (see provision_signers)")
        self.config = config
        self.dropouts = dropouts or DropoutSchedule()
        self._signers = dict(signers or {})
        self._randbytes = randbytes
        self._clock = clock
        self._server: ServerState = start_server(config)
        self._clients: dict[int, ClientState] = {}
        self._live: set[int] = set()
        self._next_vector = -1  # -1: setup not run yet
        self.stats = SessionStats.empty(config.client_ids)

    # ------------------------------------------------------------------ public steps

    @property
    def server_state(self) -> ServerState:
        return self._server

    @property
    def client_states(self) -> Mapping[int, ClientState]:
        return dict(self._clients)

    @property
    def live(self) -> tuple[int, ...]:
        """Clients still taking part."""
        return tuple(sorted(self._live))

    def setup(self) -> None:
        """Rounds 0 and 1: advertise keys, share keys.

        Raises:
            ProtocolAbort: the server aborted (too few clients), with its reason.
            ConfigError: called twice.
        """
        if self._next_vector != -1:
            raise ConfigError("setup() runs once per session")
        for cid in self.config.client_ids:
            if self.dropouts.drops_at(cid, Stage.ADVERTISE_KEYS):
                continue
            t0 = self._clock()
            state, advert = start_client(
                self.config, cid, signer=self._signers.get(cid), randbytes=self._randbytes
            )
            self.stats.client_seconds[cid] += self._clock() - t0
            self._clients[cid] = state
            self._live.add(cid)
            self._send(cid, advert)
        self._deliver(self._close(), Stage.SHARE_KEYS, 0)
        self._deliver(self._close(), None, 0)
        self._live = {cid for cid in self._live if isinstance(self._clients[cid], MaskedInputState)}
        self._next_vector = 0

    def aggregate(
        self,
        vector: int,
        inputs: Mapping[int, np.ndarray],
        *,
        dropouts: Mapping[int, Stage] | None = None,
        context: bytes = b"",
    ) -> SessionSum:
        """Rounds 2 and 3 for vector `vector`: mask, collect, unmask.

        Args:
            vector: j; vectors are aggregated in order 0, 1, ...
            inputs: each client's encoded words (uint32 or uint64, < 2^bits). Live clients without an entry
                crash before sending y^j; entries of clients already gone are ignored.
            dropouts: extra crashes for this vector only, by client.
            context: what every client computed vector j from (the broadcast it received), bound
                into the masks and the consistency signatures; the server expects the same.

        Returns:
            The sum modulo 2^bits over the clients whose y^j arrived, and who they are.

        Raises:
            ProtocolAbort: the server aborted (too few clients, or a rebuilt secret failed), with
                its reason.
            ConfigError: out of order, before `setup`, or malformed input words.
        """
        if self._next_vector < 0:
            raise ConfigError("call setup() before aggregate()")
        if vector != self._next_vector:
            raise ConfigError(f"expected vector {self._next_vector} next, got {vector}")
        extra = dict(dropouts or {})
        self._check_inputs(vector, inputs)

        def crashes(cid: int, stage: Stage) -> bool:
            return self.dropouts.drops_at(cid, stage, vector) or extra.get(cid) is stage

        if not isinstance(self._server, ServerMaskedInput):
            raise ConfigError(f"the session is over ({self._server.name}); no vector {vector}")
        self._server = self._server.expect_context(context)
        for cid in sorted(self._live):
            if crashes(cid, Stage.MASKED_INPUT) or cid not in inputs:
                self._live.discard(cid)
                continue
            t0 = self._clock()
            state, message = self._clients[cid].submit(inputs[cid], context)
            self.stats.client_seconds[cid] += self._clock() - t0
            self._clients[cid] = state
            if message is not None:
                self._send(cid, message)
        outgoing = self._close()
        if self.config.malicious:
            self._deliver(outgoing, Stage.CONSISTENCY_CHECK, vector, crashes)
            outgoing = self._close()
        self._deliver(outgoing, Stage.UNMASK, vector, crashes)
        outgoing = self._close()
        while outgoing:  # malicious mode: pairwise keys with a client excluded for bad shares
            self._deliver(outgoing, None, vector)
            outgoing = self._close()
        self._live = {
            cid for cid in self._live if isinstance(self._clients[cid], MaskedInputState | Completed)
        }
        self._next_vector += 1
        server = self._server
        assert isinstance(server, ServerMaskedInput | ServerCompleted)  # _close raised otherwise
        return server.sums[-1]

    def _check_inputs(self, vector: int, inputs: Mapping[int, np.ndarray]) -> None:
        """Refuse malformed words before any client masks, so a bad call changes nothing."""
        length, bits = self.config.vector_lengths[vector], self.config.bits
        for cid in sorted(set(inputs) & self._live):
            words = inputs[cid]
            if (
                not isinstance(words, np.ndarray)
                or words.dtype not in (np.uint32, np.uint64)
                or words.shape != (length,)
            ):
                raise ConfigError(
                    f"client {cid}: vector {vector} must be uint32 or uint64 words of shape ({length},)"
                )
            if bits < 64 and words.size and int(words.max()) >> bits:
                raise ConfigError(f"client {cid}: vector {vector} holds a word outside [0, 2^{bits})")

    # ------------------------------------------------------------------ the network

    def _send(self, cid: int, message: Message) -> None:
        t0 = self._clock()
        data = message.to_bytes()  # the sender's work
        self.stats.client_seconds[cid] += self._clock() - t0
        self.stats.bytes_sent[cid] += len(data)
        self.stats.messages_sent[cid] += 1
        t0 = self._clock()
        self._server = self._server.handle(decode_message(data))
        self.stats.server_seconds += self._clock() - t0

    def _close(self) -> dict[int, Message]:
        t0 = self._clock()
        self._server, outgoing = self._server.close()
        self.stats.server_seconds += self._clock() - t0
        if isinstance(self._server, ServerAborted):
            for cid, message in outgoing.items():
                if cid in self._live and not self._clients[cid].terminal:
                    self._receive(cid, message)
            self._live.clear()
            raise ProtocolAbort(self._server.reason, self._server.detail)
        return outgoing

    def _receive(self, cid: int, message: Message) -> Message | None:
        t0 = self._clock()
        data = message.to_bytes()  # the server's work
        self.stats.server_seconds += self._clock() - t0
        self.stats.bytes_received[cid] += len(data)
        t0 = self._clock()
        state, reply = self._clients[cid].handle(decode_message(data))
        self.stats.client_seconds[cid] += self._clock() - t0
        self._clients[cid] = state
        if isinstance(state, Aborted):
            logger.warning("client %d aborted: %s (%s)", cid, state.reason.value, state.detail)
            self._live.discard(cid)
        return reply

    def _deliver(
        self,
        outgoing: Mapping[int, Message],
        stage: Stage | None,
        vector: int,
        crashes: Callable[[int, Stage], bool] | None = None,
    ) -> None:
        """Hand each live client its message (unless it crashes at `stage`) and forward its reply."""
        for cid in sorted(outgoing):
            if cid not in self._live:
                continue
            if stage is not None and (
                crashes(cid, stage) if crashes else self.dropouts.drops_at(cid, stage, vector)
            ):
                self._live.discard(cid)
                continue
            reply = self._receive(cid, outgoing[cid])
            if reply is not None:
                self._send(cid, reply)


def run_session(
    config: SessionConfig,
    inputs: Sequence[Mapping[int, np.ndarray]],
    *,
    dropouts: DropoutSchedule | None = None,
    signers: Mapping[int, Ed25519KeyPair] | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> SessionResult:
    """A whole session: setup, then every vector of `inputs` (one mapping per planned vector).

    Raises:
        ProtocolAbort: the server aborted, with its reason.
        ConfigError: `inputs` does not hold one mapping per planned vector.
    """
    if len(inputs) != config.num_vectors:
        raise ConfigError(f"{len(inputs)} input mappings for {config.num_vectors} planned vectors")
    session = InProcessSession(config, dropouts=dropouts, signers=signers, randbytes=randbytes)
    session.setup()
    sums = tuple(session.aggregate(j, inputs[j]) for j in range(config.num_vectors))
    return SessionResult(sums, session.stats)
