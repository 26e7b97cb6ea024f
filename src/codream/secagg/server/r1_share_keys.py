"""Round 1, server side: collect every client's encrypted shares and relay them.

A client that advertised keys but sends no shares is left out of the relay, so no one masks with
it and nothing of it is ever needed to unmask. After that, any client fewer than t members would
hold shares for is left out too, repeatedly, until the rest is stable. Each sender's commitments
to its shares are kept (to check the shares revealed in round 3) and relayed with the ciphertexts
(so each holder can check its shares against them first).

Next states: ServerMaskedInput (vector 0), ServerAborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, ProtocolAbort
from ..config import SessionConfig
from ..keys import seed_share_roots, share_commitments_signed_bytes, share_holders, share_indices
from ..messages import SERVER_ID, AbortMessage, AdvertiseKeys, Message, ShareKeys, SharesDelivery
from .base import Rejection, ServerSession, ServerState, Transition, abort, reject
from .ledger import Ledger
from .r0_advertise_keys import prune

__all__ = ["ServerShareKeys"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerShareKeys(ServerState):
    """Collecting `ShareKeys` messages from the clients on the roster."""

    config: SessionConfig
    session_id: bytes
    adverts: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, frozenset[int]]
    roster: frozenset[int]
    received: Ledger[int, ShareKeys] = field(default_factory=Ledger)
    excluded: Ledger[int, AbortReason] = field(default_factory=Ledger)
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (ShareKeys,)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if sender not in self.roster:
            return replace(
                self, rejections=reject(self.rejections, sender, AbortReason.UNKNOWN_PEER, "not on roster")
            )
        if sender in self.excluded:
            return self
        if isinstance(message, AbortMessage):
            return self._exclude(sender, message.reason, f"client aborted: {message.detail}")
        if sender in self.received:
            return self._exclude(sender, AbortReason.REPEATED_PEER, "shared keys twice")
        recipients = [r for r, _ in message.ciphertexts]
        expected = self.graph[sender] & self.roster
        if len(set(recipients)) != len(recipients) or set(recipients) != expected:
            return self._exclude(
                sender, AbortReason.MALFORMED_MESSAGE, "ciphertexts not one per listed neighbour"
            )
        holders = share_holders(sender, self.graph[sender], self.roster)
        per_vector = 2 * self.config.num_vectors
        if tuple(h for h, _ in message.commitments) != holders or any(
            len(digests) != per_vector for _, digests in message.commitments
        ):
            return self._exclude(
                sender, AbortReason.MALFORMED_MESSAGE, f"share commitments not {per_vector} per holder"
            )
        if self.config.malicious:
            # The signed seed-share roots let round 3b prove that this client dealt bad shares.
            try:
                roots = seed_share_roots(
                    self.session_id, sender, message.commitments, self.config.num_vectors
                )
                verify_signature(
                    self.config.verify_key(sender),
                    message.signature,
                    share_commitments_signed_bytes(self.session_id, sender, roots),
                )
            except ProtocolAbort as exc:
                return self._exclude(sender, exc.reason, f"share commitments: {exc.detail}")
        return replace(self, received=self.received.with_item(sender, message))

    def _exclude(self, sender: int, reason: AbortReason, detail: str) -> ServerShareKeys:
        # `received` keeps an excluded client's shares; `_close` leaves them out.
        return replace(
            self,
            excluded=self.excluded.with_item(sender, reason),
            rejections=reject(self.rejections, sender, reason, detail),
        )

    def _close(self) -> Transition:
        from .r2_masked_input import ServerMaskedInput

        config, t = self.config, self.config.threshold
        sent = frozenset(cid for cid in self.received if cid not in self.excluded)
        shared = prune(sent, self.graph, t)
        if len(shared) < config.min_survivors:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"{len(sent)} clients shared keys, {len(shared)} usable; need {config.min_survivors}",
                frozenset(cid for cid in self.roster if cid not in self.excluded),
                rejections=self.rejections,
            )
        inbox: dict[int, list[tuple[int, bytes]]] = {u: [] for u in shared}
        commitments = {u: dict(self.received[u].commitments) for u in shared}
        for sender in sorted(shared):
            for recipient, blob in self.received[sender].ciphertexts:
                if recipient in shared:
                    inbox[recipient].append((sender, blob))
        outgoing: dict[int, Message] = {
            u: SharesDelivery(tuple(inbox[u]), tuple((v, commitments[v][u]) for v, _ in inbox[u]))
            for u in sorted(shared)
        }
        for u in sorted(sent - shared):
            outgoing[u] = AbortMessage(SERVER_ID, AbortReason.TOO_FEW_PEERS, "too few neighbours shared keys")
        session = ServerSession(
            config=self.config,
            session_id=self.session_id,
            adverts=self.adverts,
            graph=self.graph,
            roster=self.roster,
            shared=shared,
            peers={u: self.graph[u] & shared for u in shared},
            commitments=commitments,
            indices={u: share_indices(u, self.graph[u]) for u in shared},
            share_signatures={u: self.received[u].signature for u in shared},
        )
        return ServerMaskedInput.first(session, self.rejections), outgoing
