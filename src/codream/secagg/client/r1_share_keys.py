"""Round 1, client side: shares sent; receive the neighbours' encrypted shares.

The senders of the ciphertexts relayed here are exactly the peers this client masks with in round 2:
a neighbour that advertised keys but dropped before sharing them is simply not among them, so its
absence can never leave an uncancelled mask.

A bundle that does not open, or whose shares miss their index or the sender's commitments, is set
aside: the client holds (and will reveal) nothing of that sender, but still masks with it, so one
corrupt sender cannot knock its honest neighbours out. More bad bundles than the `corrupt` clients
the session tolerates can only come from the server, and the client aborts.

Next states: MaskedInputState (vector 0), Aborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ...crypto.aead import open_sealed
from ...crypto.shamir import Share
from ...exceptions import AbortReason, DecryptionError, ProtocolAbort
from ..keys import (
    decode_share_bundle,
    pairwise_secrets,
    share_associated_data,
    share_commitments,
    share_indices,
)
from ..messages import AdvertiseKeys, SharesDelivery
from .base import ClientContext, ClientSecrets, ClientSession, ClientState, Transition

__all__ = ["ShareKeysState"]


@dataclass(frozen=True, slots=True, eq=False)
class ShareKeysState(ClientState):
    """Own shares sent; waiting for the shares the neighbours sent this client.

    Attributes:
        session_id: the session id derived from the roster.
        roster: every client that advertised keys.
        graph: the neighbours of the client and of each of its neighbours, drawn from the
            session id (`SessionConfig.neighbourhood`).
        adverts: the neighbours' advertisements.
        share_keys: per neighbour, the AES-GCM key shares travel under.
        own_shares: per vector, this client's own share of its b^j and s_sk^j.
    """

    ctx: ClientContext
    secrets: ClientSecrets
    session_id: bytes
    roster: frozenset[int]
    graph: Mapping[int, frozenset[int]]
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

        config, me = self.ctx.config, self.ctx.client_id
        senders = [sender for sender, _ in message.ciphertexts]
        for sender in senders:
            if sender not in self.share_keys:
                raise ProtocolAbort(AbortReason.UNKNOWN_PEER, f"shares from client {sender}, not a neighbour")
        if len(set(senders)) != len(senders):
            raise ProtocolAbort(AbortReason.REPEATED_PEER, "two share ciphertexts from one client")
        if len(senders) + 1 < config.threshold:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"shares from only {len(senders)} neighbours; threshold {config.threshold}",
            )
        commitments = dict(message.commitments)
        if len(commitments) != len(message.commitments) or set(commitments) != set(senders):
            raise ProtocolAbort(AbortReason.MALFORMED_MESSAGE, "share commitments not one per ciphertext")
        held: dict[int, tuple[tuple[Share, Share], ...]] = {me: self.own_shares}
        set_aside: dict[int, str] = {}
        failures: list[ProtocolAbort] = []
        for sender, blob in message.ciphertexts:
            try:
                held[sender] = self._open(sender, blob, commitments[sender])
            except ProtocolAbort as exc:
                set_aside[sender] = f"{exc.reason.value}: {exc.detail}"
                failures.append(exc)
        # With an honest server only a corrupt sender sends a bad bundle; more than `corrupt` of
        # them means the server tampered with them or gave this client another roster.
        if len(failures) > config.corrupt:
            first = failures[0]
            raise ProtocolAbort(
                first.reason,
                f"{len(failures)} bad share bundles, more than corrupt={config.corrupt}: {first.detail}",
            )
        # Every pairwise secret of the session, once: k * J agreements here instead of k per vector
        # on the path from an input to its masked words.
        peers = {v: self.adverts[v].mask_keys for v in senders}
        shared = tuple(
            pairwise_secrets(own, {v: keys[j] for v, keys in peers.items()})
            for j, own in enumerate(self.secrets.masks)
        )
        session = ClientSession(
            ctx=self.ctx,
            secrets=self.secrets,
            session_id=self.session_id,
            roster=self.roster,
            graph=self.graph,
            peers=peers,
            shared=shared,
            held=held,
            set_aside=set_aside,
            seed_commitments={v: self.adverts[v].seed_commitments for v in senders},
        )
        return MaskedInputState(session, 0), None

    def _open(
        self, sender: int, blob: bytes, commitments: tuple[bytes, ...]
    ) -> tuple[tuple[Share, Share], ...]:
        """Decrypt and check one bundle: names, J, share indices, and the sender's commitments.

        Raises:
            ProtocolAbort: DECRYPTION_FAILED or INVALID_SHARE.
        """
        config, me = self.ctx.config, self.ctx.client_id
        try:
            plaintext = open_sealed(
                self.share_keys[sender],
                blob,
                associated_data=share_associated_data(self.session_id, sender, me),
            )
        except DecryptionError:
            raise ProtocolAbort(
                AbortReason.DECRYPTION_FAILED, f"the share ciphertext of client {sender} does not open"
            ) from None
        index = share_indices(sender, self.graph[sender])[me]
        bundle = decode_share_bundle(
            plaintext, owner=sender, recipient=me, num_vectors=config.num_vectors, index=index
        )
        if share_commitments(self.session_id, sender, me, bundle) != tuple(commitments):
            raise ProtocolAbort(
                AbortReason.INVALID_SHARE, f"shares of client {sender} miss the commitments it sent"
            )
        return bundle
