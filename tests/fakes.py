"""Test doubles shared by the tests.

`DeterministicRandom` replaces `os.urandom` so that a failing example replays exactly; it is a
SHA-256 counter stream, fine for tests and never used by library code. `Harness` steps a session
message by message so that a test can stop anywhere and play a dishonest server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from codream.aggregation import AggregationRound, Aggregator, VectorSpec, create_aggregator
from codream.secagg.client import ClientState, start_client
from codream.secagg.config import SessionConfig
from codream.secagg.messages import Message, decode_message
from codream.secagg.server import ServerState, start_server


class DeterministicRandom:
    """A reproducible stand-in for `os.urandom`: SHA-256(seed || counter) blocks."""

    def __init__(self, seed: int | bytes) -> None:
        self._seed = seed if isinstance(seed, bytes) else seed.to_bytes(16, "big")
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._buffer += block
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def wire(message: Message) -> Message:
    """The message as the other side sees it: encoded, then decoded."""
    return decode_message(message.to_bytes())


class Harness:
    """A session driven by hand: every client state and the server state are exposed.

    Typical use: ``h.send(h.start())``, ``h.send(h.deliver(h.close()))`` for round 0, and so on.
    """

    def __init__(self, config: SessionConfig, *, signers: Mapping | None = None, seed: int = 0) -> None:
        self.config = config
        self.signers = dict(signers or {})
        self.randbytes = DeterministicRandom(seed)
        self.server: ServerState = start_server(config)
        self.clients: dict[int, ClientState] = {}

    def start(self, ids: Iterable[int] | None = None) -> dict[int, Message]:
        out = {}
        for cid in self.config.client_ids if ids is None else ids:
            state, advert = start_client(
                self.config, cid, signer=self.signers.get(cid), randbytes=self.randbytes
            )
            self.clients[cid] = state
            out[cid] = advert
        return out

    def send(self, messages: Mapping[int, Message | None], skip: Iterable[int] = ()) -> None:
        """Client messages to the server, except from `skip`."""
        skip = set(skip)
        for cid in sorted(messages):
            if cid not in skip and messages[cid] is not None:
                self.server = self.server.handle(wire(messages[cid]))

    def close(self) -> dict[int, Message]:
        self.server, outgoing = self.server.close()
        return outgoing

    def deliver(self, outgoing: Mapping[int, Message], skip: Iterable[int] = ()) -> dict[int, Message | None]:
        """Server messages to the clients, except to `skip`; returns the replies."""
        skip = set(skip)
        replies = {}
        for cid in sorted(outgoing):
            if cid in skip:
                continue
            self.clients[cid], replies[cid] = self.clients[cid].handle(wire(outgoing[cid]))
        return replies

    def submit(self, inputs: Mapping[int, np.ndarray], skip: Iterable[int] = ()) -> dict[int, Message]:
        skip = set(skip)
        out = {}
        for cid in sorted(inputs):
            if cid in skip:
                continue
            self.clients[cid], out[cid] = self.clients[cid].submit(inputs[cid])
        return out

    def setup(self, *, skip_advertise: Iterable[int] = (), skip_share: Iterable[int] = ()) -> None:
        """Rounds 0 and 1, with some clients crashing."""
        skip_advertise = set(skip_advertise)
        self.send(self.start(cid for cid in self.config.client_ids if cid not in skip_advertise))
        self.send(self.deliver(self.close(), skip=skip_share))
        self.deliver(self.close())

    def to_unmask(self, inputs: Mapping[int, np.ndarray], skip: Iterable[int] = ()) -> dict[int, Message]:
        """Round 2 of the next vector; returns the server's unmask requests."""
        self.send(self.submit(inputs, skip=skip))
        return self.close()


def random_words(rng: np.random.Generator, length: int, bits: int) -> np.ndarray:
    """Uniform ring elements of `bits` bits as uint64."""
    if bits == 64:
        return rng.integers(0, 2**64, size=length, dtype=np.uint64, endpoint=False)
    return rng.integers(0, 1 << bits, size=length, dtype=np.uint64)


def plain_sum(inputs: Mapping[int, np.ndarray], ids: Iterable[int], bits: int, length: int) -> np.ndarray:
    """The reference: sum over `ids` modulo 2^bits, with Python integers (no wrap-around tricks)."""
    total = [0] * length
    for cid in ids:
        for i, w in enumerate(inputs[cid].tolist()):
            total[i] += int(w)
    return np.array([t % (1 << bits) for t in total], dtype=np.uint64)


class RecordingAggregator(Aggregator):
    """The sums of `inner` (default plain), plus a log of each round's participants and plan, of
    every (round, vector name, contributing clients, vector length), and of every decoded sum as the
    server sees it: (round, spec, contributors, total) in `seen`."""

    name = "recording"

    def __init__(self, inner: Aggregator | None = None) -> None:
        self.inner = create_aggregator("plain") if inner is None else inner
        self.mode = self.inner.mode
        self.plans: list[tuple[int, list[str]]] = []
        self.participants: list[tuple[int, ...]] = []
        self.sums: list[tuple[int, str, tuple[int, ...], int]] = []
        self.contexts: list[bytes] = []
        self.seen: list[tuple[int, VectorSpec, tuple[int, ...], np.ndarray]] = []

    def released(self, kind) -> list[tuple[int, tuple[int, ...], np.ndarray]]:
        """(round, contributors, total) of every sum of releases of `kind`."""
        return [(r, c, t) for r, spec, c, t in self.seen if spec.kind is kind]

    def open_round(self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]):
        self.plans.append((round_index, [s.name for s in specs]))
        self.participants.append(tuple(participants))
        inner = self.inner.open_round(round_index=round_index, participants=participants, specs=specs)
        outer = self

        class _Round(AggregationRound):
            def __init__(self) -> None:
                super().__init__(round_index=round_index, participants=participants, specs=specs)

            def sum(self, spec: VectorSpec, vectors: Mapping[int, np.ndarray], *, context: bytes = b""):
                lengths = {v.shape for v in vectors.values()}
                outer.sums.append((round_index, spec.name, tuple(sorted(vectors)), *[s[0] for s in lengths]))
                outer.contexts.append(context)
                res = inner.sum(spec, vectors, context=context)
                outer.seen.append((round_index, spec, tuple(res.contributors), np.asarray(res.total)))
                return res

            def close(self):
                return inner.close()

        return _Round()
