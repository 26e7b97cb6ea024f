"""What every server state shares: message and deadline events, the session data fixed after
round 1 and the per-vector result.

The server collects messages of one round until its deadline (`close`), then decides. A client
message that is not the kind the round expects raises `UnexpectedMessage` and changes nothing. A
message of the right kind with bad content (unknown sender, a second message from one client, a
wrong length, a bad key or signature, a share that misses its index or commitment) is *rejected*:
that client is excluded (treated as dropped) with the reason logged and kept in `rejections`,
because one misbehaving client must not stop the others. The server itself aborts, with a reason,
only when too few clients (or valid shares) remain, or, in semi-honest mode, when a secret rebuilt
from valid shares fails its check (its owner dealt bad shares; malicious mode excludes that owner
and finishes the vector, `r3_exclude`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...exceptions import AbortReason, UnexpectedMessage
from ..config import SessionConfig
from ..messages import SERVER_ID, AbortMessage, AdvertiseKeys, Message

__all__ = [
    "Rejection",
    "ServerSession",
    "ServerState",
    "SessionSum",
    "Transition",
]

logger = logging.getLogger("codream.secagg.server")

Transition = tuple["ServerState", dict[int, Message]]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A client message the server refused, and why; that client counts as dropped."""

    client_id: int
    reason: AbortReason
    detail: str


@dataclass(frozen=True, slots=True, eq=False)
class SessionSum:
    """The unmasked sum of one vector.

    Attributes:
        vector: j, the vector's position in the plan.
        words: uint64 array, the sum modulo 2^bits of the survivors' inputs.
        survivors: the clients whose input is in the sum, sorted.
        excluded: clients whose unmask response was refused (and why): out from the next vector
            on, their input (if alive) still in this sum; and (malicious mode) clients whose
            shares did not rebuild their secret: out of this sum and of the next vectors.
    """

    vector: int
    words: np.ndarray
    survivors: tuple[int, ...]
    excluded: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class ServerSession:
    """What the server carries from round 1 to the end.

    Attributes:
        config: the public session parameters.
        session_id: hash of the config and of every advertisement.
        adverts: the advertisement of every client on the roster.
        graph: every client's neighbours, drawn from the session id.
        roster: every client whose advertisement made the session id.
        shared: the clients whose shares were relayed (U2); nobody masks with anyone else.
        peers: per client in `shared`, the neighbours in `shared` it masks with.
        commitments: per owner in `shared`, per holder, the owner's 2J commitments to that
            holder's shares (seed share then key share, per vector).
        indices: per owner in `shared`, per holder, the share index that holder must reveal.
        share_signatures: per owner in `shared`, its signature over its seed-share roots
            (malicious mode; `keys.share_commitments_signed_bytes`), the evidence of round 3b.
    """

    config: SessionConfig
    session_id: bytes
    adverts: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, frozenset[int]]
    roster: frozenset[int]
    shared: frozenset[int]
    peers: Mapping[int, frozenset[int]]
    commitments: Mapping[int, Mapping[int, tuple[bytes, ...]]]
    indices: Mapping[int, Mapping[int, int]]
    share_signatures: Mapping[int, bytes] = field(default_factory=dict)

    @property
    def quorum(self) -> int:
        """Consistency signatures needed (malicious mode), for this session's roster."""
        return self.config.quorum(len(self.roster))

    @property
    def min_alive(self) -> int:
        """The fewest masked inputs a vector can go on with."""
        need = self.config.min_survivors
        return max(need, self.quorum) if self.config.malicious else need


class ServerState:
    """Base of all server states: `handle` one client message, `close` the round at its deadline."""

    __slots__ = ()
    accepts: ClassVar[tuple[type[Message], ...]] = ()
    terminal: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def handle(self, message: Message) -> ServerState:
        """Record one client message.

        Returns:
            The state with the message recorded (or rejected, see the module docstring).

        Raises:
            UnexpectedMessage: this state does not accept this kind of message; nothing changed.
        """
        if self.terminal or not isinstance(message, (*self.accepts, AbortMessage)):
            raise UnexpectedMessage(
                f"illegal transition: {self.name} does not accept {type(message).__name__}"
            )
        return self._handle(message)

    def close(self) -> Transition:
        """The round's deadline: decide with what arrived.

        Returns:
            The next state and the messages to send, by recipient.

        Raises:
            UnexpectedMessage: a terminal state has no round to close.
        """
        if self.terminal:
            raise UnexpectedMessage(f"illegal transition: {self.name} has no round to close")
        return self._close()

    def _handle(self, message: Message) -> ServerState:  # pragma: no cover - overridden
        raise NotImplementedError

    def _close(self) -> Transition:  # pragma: no cover - overridden
        raise NotImplementedError


def reject(rejections: tuple[Rejection, ...], client_id: int, reason: AbortReason, detail: str) -> tuple:
    """Log a refused message and append it to `rejections`."""
    logger.warning("secagg server rejects client %d: %s (%s)", client_id, reason.value, detail)
    return (*rejections, Rejection(client_id, reason, detail))


def abort(
    reason: AbortReason,
    detail: str,
    notify: frozenset[int] | set[int],
    sums: tuple[SessionSum, ...] = (),
    rejections: tuple[Rejection, ...] = (),
) -> Transition:
    """Move to `ServerAborted` and tell every client still taking part."""
    from .aborted import ServerAborted

    logger.warning("secagg server aborts: %s (%s)", reason.value, detail)
    message = AbortMessage(SERVER_ID, reason, detail[:1000])
    return ServerAborted(reason, detail, sums, rejections), dict.fromkeys(sorted(notify), message)
