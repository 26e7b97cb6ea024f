"""Round 2, server side: add up the masked inputs y^j as they arrive.

The server never keeps one client's y^j, only the running sum modulo 2^bits, and each client's
declared context digest (its pairwise masks are keyed with it). At the deadline the clients whose
y^j arrived are alive for vector j; every other client that shared keys is dropped for vector j
(whenever it dropped). Both lists go to the alive clients.

In malicious mode it also keeps each y^j until vector j is unmasked: a client found in round 3
to have dealt seed shares that do not rebuild its seed is then left out of the sum (round 3b).

A caller that knows the context every client should have used (it sent the broadcast) passes it
to `expect_context`; a masked input computed from another context is then refused, so its
uncancelled masks do not spoil the sum.

Next states: ServerUnmask or ServerConsistencyCheck (malicious mode), ServerAborted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from ...exceptions import AbortReason
from ..keys import context_digest, word_mask
from ..messages import AbortMessage, MaskedInput, Message, UnmaskRequest
from .base import Rejection, ServerSession, ServerState, SessionSum, Transition, abort, reject
from .ledger import Ledger

__all__ = ["ServerMaskedInput"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerMaskedInput(ServerState):
    """Collecting `MaskedInput` messages of vector `vector` from the `active` clients.

    Attributes:
        active: clients still taking part (they answered every earlier unmask request).
        partial: sum of the y^j received so far, modulo 2^bits.
        contexts: the context digest each client whose y^j is in `partial` declared (`arrived`).
        expected: the context digest every client must have used, when the caller set one.
        inputs: malicious mode only, each arrived client's y^j (to leave out a bad dealer's).
        sums: results of the earlier vectors.
    """

    session: ServerSession
    vector: int
    active: frozenset[int]
    partial: np.ndarray
    contexts: Ledger[int, bytes] = field(default_factory=Ledger)
    expected: bytes | None = None
    inputs: Ledger[int, np.ndarray] = field(default_factory=Ledger)
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (MaskedInput,)

    @property
    def arrived(self) -> frozenset[int]:
        """Whose y^j is in `partial`."""
        return frozenset(self.contexts)

    @classmethod
    def first(cls, session: ServerSession, rejections: tuple[Rejection, ...] = ()) -> ServerMaskedInput:
        return cls.next_vector(session, 0, session.shared, (), rejections)

    @classmethod
    def next_vector(
        cls,
        session: ServerSession,
        vector: int,
        active: frozenset[int],
        sums: tuple[SessionSum, ...],
        rejections: tuple[Rejection, ...] = (),
    ) -> ServerMaskedInput:
        length = session.config.vector_lengths[vector]
        return cls(
            session,
            vector,
            frozenset(active),
            np.zeros(length, dtype=np.uint64),
            sums=sums,
            rejections=rejections,
        )

    def expect_context(self, context: bytes) -> ServerMaskedInput:
        """The same state, refusing masked inputs computed from anything but `context` (the bytes
        the clients pass to `submit`). Call before the first masked input of the vector."""
        if self.contexts:
            raise ValueError("set the expected context before any masked input arrives")
        return replace(self, expected=context_digest(context))

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        config = self.session.config
        if sender not in self.active:
            return replace(
                self, rejections=reject(self.rejections, sender, AbortReason.UNKNOWN_PEER, "not active")
            )
        if isinstance(message, AbortMessage):
            if sender in self.contexts:  # its y^j is in the sum already; unmasking will recover it
                return self
            return self._drop(sender, message.reason, f"client aborted: {message.detail}")
        if sender in self.contexts:
            return replace(
                self,
                rejections=reject(self.rejections, sender, AbortReason.REPEATED_PEER, "second masked input"),
            )
        if message.vector != self.vector:
            return self._drop(sender, AbortReason.UNEXPECTED_VECTOR, f"sent vector {message.vector}")
        if message.bits != config.bits or message.words.shape != self.partial.shape:
            return self._drop(sender, AbortReason.MALFORMED_MESSAGE, "masked input of the wrong size")
        if self.expected is not None and message.context != self.expected:
            return self._drop(
                sender, AbortReason.INCONSISTENT_VIEW, f"vector {self.vector} computed from another context"
            )
        partial = (self.partial + message.words) & word_mask(config.bits)
        return replace(
            self,
            partial=partial,
            contexts=self.contexts.with_item(sender, message.context),
            inputs=self.inputs.with_item(sender, message.words) if config.malicious else self.inputs,
        )

    def _drop(self, sender: int, reason: AbortReason, detail: str) -> ServerMaskedInput:
        return replace(
            self, active=self.active - {sender}, rejections=reject(self.rejections, sender, reason, detail)
        )

    def _close(self) -> Transition:
        from .r3_unmask import ServerConsistencyCheck, ServerUnmask

        need = self.session.min_alive
        alive = self.arrived
        if len(alive) < need:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {self.vector}: {len(alive)} masked inputs arrived; need {need}",
                self.active,
                self.sums,
                self.rejections,
            )
        dropped = self.session.shared - alive
        request = UnmaskRequest(self.vector, tuple(sorted(alive)), tuple(sorted(dropped)))
        if self.session.config.malicious:
            # Every client signs the whole lists, so every client gets them.
            outgoing: dict[int, Message] = dict.fromkeys(sorted(alive), request)
        else:
            # A client needs only its own and its neighbours' entries (and the count): O(k) each.
            outgoing = {u: _around(self.session, request, u, alive) for u in sorted(alive)}
        common = dict(
            session=self.session,
            vector=self.vector,
            request=request,
            partial=self.partial,
            contexts=self.contexts,
            sums=self.sums,
            rejections=self.rejections,
            alive=alive,
            dropped=dropped,
        )
        if self.session.config.malicious:
            return ServerConsistencyCheck(**common, inputs=self.inputs), outgoing
        return ServerUnmask(**common, allowed=alive), outgoing


def _around(
    session: ServerSession, request: UnmaskRequest, client: int, alive: frozenset[int]
) -> UnmaskRequest:
    """The part of `request` that concerns `client`: itself and the neighbours it masks with."""
    peers = session.peers[client]
    return UnmaskRequest(
        request.vector,
        tuple(sorted({v for v in peers if v in alive} | {client})),
        tuple(sorted(v for v in peers if v not in alive)),
        len(request.alive),
    )
