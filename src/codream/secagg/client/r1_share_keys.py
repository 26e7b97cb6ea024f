"""Round 1, client side: shares sent; receive the neighbours' encrypted shares.

The senders of the ciphertexts relayed here are exactly the peers this client masks with in round 2:
a neighbour that advertised keys but dropped before sharing them is simply not among them, so its
absence can never leave an uncancelled mask.

Next states: MaskedInputState (vector 0), Aborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ...crypto.aead import open_sealed
from ...crypto.shamir import Share
from ...exceptions import AbortReason, ProtocolAbort
from ..keys import decode_share_bundle, share_associated_data, share_holders
from ..messages import AdvertiseKeys, SharesDelivery
from .base import ClientContext, ClientSecrets, ClientSession, ClientState, Transition

__all__ = ["ShareKeysState"]


@dataclass(frozen=True, slots=True, eq=False)
class ShareKeysState(ClientState):
    """Own shares sent; waiting for the shares the neighbours sent this client.

    Attributes:
        session_id: the session id derived from the roster.
        roster: every client that advertised keys.
        adverts: the neighbours' advertisements.
        share_keys: per neighbour, the AES-GCM key shares travel under.
        own_shares: per vector, this client's own share of its b^j and s_sk^j.
    """

    ctx: ClientContext
    secrets: ClientSecrets
    session_id: bytes
    roster: frozenset[int]
    adverts: Mapping[int, AdvertiseKeys]
    share_keys: Mapping[int, bytes]
    own_shares: tuple[tuple[Share, Share], ...]
    accepts: ClassVar[tuple[type, ...]] = (SharesDelivery,)

    @property
    def client_id(self) -> int:
        return self.ctx.client_id

    def _context(self) -> ClientContext:
        return self.ctx

    def _handle(self, message: SharesDelivery) -> Transition:
        from .r2_masked_input import MaskedInputState

        ctx, config, me = self.ctx, self.ctx.config, self.ctx.client_id
        held: dict[int, tuple[tuple[Share, Share], ...]] = {me: self.own_shares}
        for sender, blob in message.ciphertexts:
            if sender not in self.share_keys:
                raise ProtocolAbort(AbortReason.UNKNOWN_PEER, f"shares from client {sender}, not a neighbour")
            if sender in held:
                raise ProtocolAbort(AbortReason.REPEATED_PEER, f"two share ciphertexts from client {sender}")
            plaintext = open_sealed(
                self.share_keys[sender],
                blob,
                associated_data=share_associated_data(self.session_id, sender, me),
            )
            index = share_holders(sender, ctx.graph[sender], self.roster).index(me) + 1
            held[sender] = decode_share_bundle(
                plaintext, owner=sender, recipient=me, num_vectors=config.num_vectors, index=index
            )
        if len(held) < config.threshold:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"shares from only {len(held) - 1} neighbours; threshold {config.threshold}",
            )
        peers = {v: self.adverts[v].mask_keys for v in held if v != me}
        session = ClientSession(
            ctx=ctx,
            secrets=self.secrets,
            session_id=self.session_id,
            roster=self.roster,
            peers=peers,
            held=held,
        )
        return MaskedInputState(session, 0), None
