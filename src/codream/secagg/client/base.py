"""What every client state shares: the event methods and the context that never changes.

Two kinds of failure stay apart. A message the state does not accept at all (wrong kind, or any
message after the end) is a caller bug: `UnexpectedMessage` is raised and the state object is left
exactly as it was, so the caller may go on. A message of an accepted kind whose *content* is wrong
(too few peers, a duplicate key, a bad ciphertext...) moves the client to `Aborted` and produces an
`AbortMessage` for the server: the client refuses to go on, and says why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...crypto.agreement import X25519KeyPair
from ...crypto.shamir import Share
from ...crypto.signing import Ed25519KeyPair
from ...exceptions import AbortReason, DecryptionError, InvalidShare, ProtocolAbort, UnexpectedMessage
from ..config import SessionConfig
from ..messages import AbortMessage, Message

__all__ = ["ClientContext", "ClientSecrets", "ClientSession", "ClientState", "Transition"]

Transition = tuple["ClientState", Message | None]


@dataclass(frozen=True, slots=True, eq=False)
class ClientContext:
    """What a client knows before round 0 and never changes.

    Attributes:
        config: the public session parameters.
        client_id: this client.
        config_digest: `config.digest()`, computed once.
        signer: this client's Ed25519 key (malicious mode), else None.
        randbytes: source of secret randomness (`os.urandom`; deterministic only in tests).
    """

    config: SessionConfig
    client_id: int
    config_digest: bytes
    signer: Ed25519KeyPair | None = None
    randbytes: Callable[[int], bytes] = os.urandom

    def abort(self, reason: AbortReason, detail: str) -> Transition:
        """Move to `Aborted` and tell the server why."""
        from .aborted import Aborted

        return Aborted(self.client_id, reason, detail), AbortMessage(self.client_id, reason, detail[:1000])


@dataclass(frozen=True, slots=True, eq=False)
class ClientSecrets:
    """A client's secret key material for one session: the share-encryption key pair, and per
    vector j the mask key pair (s_sk^j, s_pk^j) and the self-mask seed b^j."""

    encryption: X25519KeyPair
    masks: tuple[X25519KeyPair, ...]
    seeds: tuple[bytes, ...]

    def __repr__(self) -> str:
        return f"ClientSecrets(vectors={len(self.masks)}, <redacted>)"


@dataclass(frozen=True, slots=True, eq=False)
class ClientSession:
    """What a client carries from round 1 to the end.

    Attributes:
        ctx: the fixed context.
        secrets: its own key material.
        session_id: hash of the config and of every advertisement (the HKDF salt).
        roster: every client that advertised keys.
        graph: the neighbours of the client and of each of its neighbours, drawn from the
            session id (`SessionConfig.neighbourhood`).
        peers: the neighbours whose shares were relayed to it, with their mask public keys per
            vector. These are exactly the peers it masks with.
        shared: per vector, per peer, the X25519 secret of the pair (derived once, when the
            shares arrive, so that no key agreement sits on the per-vector path).
        held: per owner (itself and the peers whose bundle checked out), per vector, its
            (b^j share, s_sk^j share) of that owner.
        set_aside: peers whose bundle did not open or failed its checks, with the reason; it holds
            nothing of them (so it never reveals anything of them) but still masks with them.
        seed_commitments: per peer, its advertised seed commitments (one per vector), against
            which evidence that the peer dealt bad seed shares is checked (round 3b).
    """

    ctx: ClientContext
    secrets: ClientSecrets
    session_id: bytes
    roster: frozenset[int]
    graph: Mapping[int, frozenset[int]]
    peers: Mapping[int, tuple[bytes, ...]]
    shared: tuple[Mapping[int, bytes], ...]
    held: Mapping[int, tuple[tuple[Share, Share], ...]]
    set_aside: Mapping[int, str] = field(default_factory=dict)
    seed_commitments: Mapping[int, tuple[bytes, ...]] = field(default_factory=dict)

    @property
    def neighbours(self) -> frozenset[int]:
        return self.graph[self.ctx.client_id]


class ClientState:
    """Base of all client states. A state overrides `_handle` and lists the kinds it `accepts`."""

    __slots__ = ()
    accepts: ClassVar[tuple[type[Message], ...]] = ()
    terminal: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def client_id(self) -> int:
        raise NotImplementedError

    def handle(self, message: Message) -> Transition:
        """Process one message from the server.

        Returns:
            The next state and the message to send to the server (None when there is none).

        Raises:
            UnexpectedMessage: this state does not accept this kind of message; nothing changed.
        """
        if self.terminal or not isinstance(message, (*self.accepts, AbortMessage)):
            raise UnexpectedMessage(
                f"illegal transition: {self.name} does not accept {type(message).__name__}"
            )
        if isinstance(message, AbortMessage):
            from .aborted import Aborted

            detail = f"server aborted: {message.detail}" if message.detail else "server aborted"
            return Aborted(self.client_id, message.reason, detail), None
        return self._guarded(self._handle, message)

    def submit(self, words: np.ndarray, context: bytes = b"") -> Transition:
        """Provide this client's encoded input for the current vector (round 2 only), and the
        context it was computed from (e.g. SHA-256 of the dreams, targets and plan the server
        sent this client; b"" when there is none).

        Raises:
            UnexpectedMessage: this state takes no input.
        """
        raise UnexpectedMessage(f"illegal transition: {self.name} takes no input")

    def _handle(self, message: Message) -> Transition:  # pragma: no cover - overridden
        raise NotImplementedError

    def _context(self) -> ClientContext:  # pragma: no cover - overridden
        raise NotImplementedError

    def _guarded(self, step: Callable[..., Transition], *args: object) -> Transition:
        """Run a step; any content error becomes an abort with its reason."""
        try:
            return step(*args)
        except ProtocolAbort as exc:
            return self._context().abort(exc.reason, exc.detail)
        except DecryptionError:
            return self._context().abort(AbortReason.DECRYPTION_FAILED, "a share ciphertext does not open")
        except InvalidShare as exc:
            return self._context().abort(AbortReason.INVALID_SHARE, str(exc))
