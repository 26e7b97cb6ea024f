"""Round 2, server side: add up the masked inputs y^j as they arrive.

The server never keeps one client's y^j, only the running sum modulo 2^bits. At the deadline the
clients whose y^j arrived are alive for vector j; every other client that shared keys is dropped
for vector j (whenever it dropped). Both lists go to the alive clients.

Next states: ServerUnmask or ServerConsistencyCheck (malicious mode), ServerAborted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from ...exceptions import AbortReason
from ..keys import word_mask
from ..messages import AbortMessage, MaskedInput, Message, UnmaskRequest
from .base import Rejection, ServerSession, ServerState, SessionSum, Transition, abort, reject

__all__ = ["ServerMaskedInput"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerMaskedInput(ServerState):
    """Collecting `MaskedInput` messages of vector `vector` from the `active` clients.

    Attributes:
        active: clients still taking part (they answered every earlier unmask request).
        partial: sum of the y^j received so far, modulo 2^bits.
        arrived: whose y^j is in `partial`.
        sums: results of the earlier vectors.
    """

    session: ServerSession
    vector: int
    active: frozenset[int]
    partial: np.ndarray
    arrived: frozenset[int] = frozenset()
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (MaskedInput,)

    @classmethod
    def first(cls, session: ServerSession) -> ServerMaskedInput:
        return cls.next_vector(session, 0, session.shared, ())

    @classmethod
    def next_vector(
        cls, session: ServerSession, vector: int, active: frozenset[int], sums: tuple[SessionSum, ...]
    ) -> ServerMaskedInput:
        length = session.config.vector_lengths[vector]
        return cls(session, vector, frozenset(active), np.zeros(length, dtype=np.uint64), sums=sums)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        config = self.session.config
        if sender not in self.active:
            return replace(
                self, rejections=reject(self.rejections, sender, AbortReason.UNKNOWN_PEER, "not active")
            )
        if isinstance(message, AbortMessage):
            if sender in self.arrived:  # its y^j is in the sum already; unmasking will recover it
                return self
            return self._drop(sender, message.reason, f"client aborted: {message.detail}")
        if sender in self.arrived:
            return replace(
                self,
                rejections=reject(self.rejections, sender, AbortReason.REPEATED_PEER, "second masked input"),
            )
        if message.vector != self.vector:
            return self._drop(sender, AbortReason.UNEXPECTED_VECTOR, f"sent vector {message.vector}")
        if message.bits != config.bits or message.words.shape != self.partial.shape:
            return self._drop(sender, AbortReason.MALFORMED_MESSAGE, "masked input of the wrong size")
        partial = (self.partial + message.words) & word_mask(config.bits)
        return replace(self, partial=partial, arrived=self.arrived | {sender})

    def _drop(self, sender: int, reason: AbortReason, detail: str) -> ServerMaskedInput:
        return replace(
            self, active=self.active - {sender}, rejections=reject(self.rejections, sender, reason, detail)
        )

    def _close(self) -> Transition:
        from .r3_unmask import ServerConsistencyCheck, ServerUnmask

        t = self.session.config.threshold
        if len(self.arrived) < t:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {self.vector}: {len(self.arrived)} masked inputs arrived; threshold {t}",
                self.active,
                self.sums,
            )
        request = UnmaskRequest(
            self.vector, tuple(sorted(self.arrived)), tuple(sorted(self.session.shared - self.arrived))
        )
        outgoing: dict[int, Message] = dict.fromkeys(sorted(self.arrived), request)
        if self.session.config.malicious:
            return ServerConsistencyCheck(
                self.session, self.vector, request, self.partial, sums=self.sums
            ), outgoing
        state = ServerUnmask(
            self.session, self.vector, request, self.partial, allowed=self.arrived, sums=self.sums
        )
        return state, outgoing
