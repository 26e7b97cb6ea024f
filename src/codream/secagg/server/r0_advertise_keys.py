"""Round 0, server side: collect key advertisements, then send each client the roster and its
neighbours' keys.

Every advertised key is checked (well-formed, canonical, not of small order, never used twice) and
a client whose advertisement fails is excluded with the reason, so one bad key cannot make its
neighbours abort. The roster is every client whose advertisement was accepted; it fixes the
session id, and the session id fixes the Harary graph, so the graph is known only at the deadline.

Next states: ServerShareKeys, ServerAborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ...crypto.agreement import check_public_key
from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, ProtocolAbort
from ..config import SessionConfig
from ..keys import advertisement_digest, roster_digest, session_id_of_digest
from ..messages import SERVER_ID, AbortMessage, AdvertiseKeys, KeysBroadcast, Message
from .base import Rejection, ServerState, Transition, abort, reject
from .ledger import Ledger

__all__ = ["ServerAdvertiseKeys", "prune", "start_server"]


def start_server(config: SessionConfig) -> ServerAdvertiseKeys:
    """The server's first state for a session described by `config`."""
    return ServerAdvertiseKeys(config=config, config_digest=config.digest())


def prune(members: frozenset[int], graph: Mapping[int, frozenset[int]], threshold: int) -> frozenset[int]:
    """Drop, until none is left, every member that fewer than `threshold` members (itself included)
    would hold shares for: its secrets could never be rebuilt, so it cannot take part safely."""
    members = frozenset(members)
    while True:
        weak = {u for u in members if len((graph[u] & members) | {u}) < threshold}
        if not weak:
            return members
        members -= weak


@dataclass(frozen=True, slots=True, eq=False)
class ServerAdvertiseKeys(ServerState):
    """Collecting `AdvertiseKeys` messages.

    Attributes:
        received: every advertisement that passed its checks, in arrival order (an excluded
            client's stays here; `adverts` leaves it out).
        excluded: clients left out, with the reason.
        keys: every public key of `received`, with its advertiser: a key is checked against all
            earlier ones in O(1).
    """

    config: SessionConfig
    config_digest: bytes
    received: Ledger[int, AdvertiseKeys] = field(default_factory=Ledger)
    excluded: Ledger[int, AbortReason] = field(default_factory=Ledger)
    keys: Ledger[bytes, int] = field(default_factory=Ledger)
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (AdvertiseKeys,)

    @property
    def adverts(self) -> dict[int, AdvertiseKeys]:
        """The accepted advertisements of the clients not excluded."""
        return {cid: a for cid, a in self.received.items() if cid not in self.excluded}

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if not self.config.invites(sender):
            return replace(
                self, rejections=reject(self.rejections, sender, AbortReason.UNKNOWN_PEER, "not invited")
            )
        if sender in self.excluded:
            return self
        if isinstance(message, AbortMessage):
            return self._exclude(sender, message.reason, f"client aborted: {message.detail}")
        if sender in self.received:
            return self._exclude(sender, AbortReason.REPEATED_PEER, "advertised twice")
        if message.num_vectors != self.config.num_vectors:
            return self._exclude(sender, AbortReason.MALFORMED_MESSAGE, f"{message.num_vectors} mask keys")
        if self.config.malicious:
            try:
                verify_signature(
                    self.config.verify_key(sender),
                    message.signature,
                    message.signed_bytes(self.config_digest),
                )
            except ProtocolAbort as exc:
                return self._exclude(sender, exc.reason, "advertisement signature does not verify")
        try:
            for key in (message.encryption_key, *message.mask_keys):
                check_public_key(key)
        except ProtocolAbort as exc:
            return self._exclude(sender, exc.reason, f"advertised a bad public key: {exc.detail}")
        new = (message.encryption_key, *message.mask_keys)
        # A key any earlier advertisement used (even one excluded since) is refused: a key seen twice
        # in a session is a copy, and one look-up per key keeps round 0 linear in n.
        if len(set(new)) != len(new) or any(key in self.keys for key in new):
            return self._exclude(sender, AbortReason.DUPLICATE_KEY, "reuses a public key")
        keys = self.keys
        for key in new:
            keys = keys.with_item(key, sender)
        return replace(self, received=self.received.with_item(sender, message), keys=keys)

    def _exclude(self, sender: int, reason: AbortReason, detail: str) -> ServerAdvertiseKeys:
        return replace(
            self,
            excluded=self.excluded.with_item(sender, reason),
            rejections=reject(self.rejections, sender, reason, detail),
        )

    def _close(self) -> Transition:
        from .r1_share_keys import ServerShareKeys

        config = self.config
        adverts = self.adverts
        advertised = frozenset(adverts)
        if len(advertised) < config.min_survivors:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"{len(advertised)} clients advertised keys; min_survivors {config.min_survivors}",
                advertised,
                rejections=self.rejections,
            )
        entries = {cid: advertisement_digest(a) for cid, a in adverts.items()}
        digest = roster_digest(entries.items())
        sid = session_id_of_digest(self.config_digest, digest)
        graph = config.neighbours(sid)
        # Every advertiser is on the roster (it fixed the session id); those too few others could
        # hold shares for are told to stop now and will be left out at round 1.
        usable = prune(advertised, graph, config.threshold)
        if len(usable) < config.min_survivors:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"{len(advertised)} clients advertised keys, {len(usable)} usable; "
                f"min_survivors {config.min_survivors}",
                advertised,
                rejections=self.rejections,
            )
        outgoing: dict[int, Message] = {}
        # Malicious mode: the whole roster to everyone (its quorum counts the roster). Semi-honest:
        # each client gets the entries around it and the digest: O(k) bytes, not O(n).
        whole = tuple(sorted(entries.items())) if config.malicious else None
        for u in sorted(usable):
            neighbours = sorted(graph[u] & advertised)
            peer_adverts = tuple(adverts[v] for v in neighbours)
            if whole is not None:
                outgoing[u] = KeysBroadcast(whole, peer_adverts)
            else:
                around = tuple(sorted((v, entries[v]) for v in (*neighbours, u)))
                outgoing[u] = KeysBroadcast(around, peer_adverts, len(entries), digest)
        for u in sorted(advertised - usable):
            outgoing[u] = AbortMessage(
                SERVER_ID, AbortReason.TOO_FEW_PEERS, "too few neighbours advertised keys"
            )
        state = ServerShareKeys(
            config=config,
            session_id=sid,
            adverts=adverts,
            graph=graph,
            roster=advertised,
            rejections=self.rejections,
        )
        return state, outgoing
