"""Round 0, client side: advertise public keys, then check what the server says everyone advertised.

`start_client` draws the secrets and returns the first state with the `AdvertiseKeys` message.
`AdvertiseKeysState` accepts the server's `KeysBroadcast` and, if every check passes, answers with
its encrypted shares (`ShareKeys`) and moves to round 1.

Next states: ShareKeysState, Aborted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ...crypto.aead import seal
from ...crypto.agreement import X25519KeyPair, check_public_key
from ...crypto.kdf import share_encryption_key
from ...crypto.shamir import split_secret
from ...crypto.signing import Ed25519KeyPair, verify_signature
from ...exceptions import AbortReason, ConfigError, ProtocolAbort
from ..config import SessionConfig
from ..keys import (
    SECRET_BYTES,
    advertisement_digest,
    encode_share_bundle,
    roster_digest,
    seed_commitment,
    seed_share_roots,
    session_id_of_digest,
    share_associated_data,
    share_commitments,
    share_commitments_signed_bytes,
    share_holders,
    share_indices,
)
from ..messages import AdvertiseKeys, KeysBroadcast, ShareKeys
from .base import ClientContext, ClientSecrets, ClientState, Transition

__all__ = ["AdvertiseKeysState", "start_client"]


def start_client(
    config: SessionConfig,
    client_id: int,
    *,
    signer: Ed25519KeyPair | None = None,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> tuple[AdvertiseKeysState, AdvertiseKeys]:
    """Create a client for one session and its round-0 advertisement.

    Args:
        config: the session parameters every party shares.
        client_id: this client; must be one of `config.client_ids`.
        signer: this client's Ed25519 key, required in malicious mode (its public key must be the
            one `config` lists for `client_id`).
        randbytes: secret randomness (keep the default outside tests).

    Returns:
        The round-0 state and the message to send to the server.

    Raises:
        ConfigError: unknown client id, or a signer missing, superfluous or not matching the config.
    """
    if not config.invites(client_id):
        raise ConfigError(f"client {client_id} is not part of this session")
    if config.malicious:
        if signer is None or signer.public_bytes() != config.verify_key(client_id):
            raise ConfigError(f"malicious mode: client {client_id} needs the signing key the config lists")
    elif signer is not None:
        raise ConfigError("a signing key is only used in malicious mode")
    ctx = ClientContext(
        config=config,
        client_id=client_id,
        config_digest=config.digest(),
        signer=signer,
        randbytes=randbytes,
    )
    secrets = ClientSecrets(
        encryption=X25519KeyPair.from_private_bytes(randbytes(32)),
        masks=tuple(X25519KeyPair.from_private_bytes(randbytes(32)) for _ in config.vector_lengths),
        seeds=tuple(randbytes(SECRET_BYTES) for _ in config.vector_lengths),
    )
    advert = AdvertiseKeys(
        sender=client_id,
        encryption_key=secrets.encryption.public_bytes(),
        mask_keys=tuple(m.public_bytes() for m in secrets.masks),
        seed_commitments=tuple(seed_commitment(client_id, j, b) for j, b in enumerate(secrets.seeds)),
    )
    if signer is not None:
        signature = signer.sign(advert.signed_bytes(ctx.config_digest))
        advert = AdvertiseKeys(
            advert.sender, advert.encryption_key, advert.mask_keys, advert.seed_commitments, signature
        )
    return AdvertiseKeysState(ctx, secrets, advert), advert


@dataclass(frozen=True, slots=True, eq=False)
class AdvertiseKeysState(ClientState):
    """Keys advertised; waiting for the roster and the neighbours' keys."""

    ctx: ClientContext
    secrets: ClientSecrets
    advert: AdvertiseKeys
    accepts: ClassVar[tuple[type, ...]] = (KeysBroadcast,)

    @property
    def client_id(self) -> int:
        return self.ctx.client_id

    def _context(self) -> ClientContext:
        return self.ctx

    def _handle(self, message: KeysBroadcast) -> Transition:
        from .r1_share_keys import ShareKeysState

        ctx, config, me = self.ctx, self.ctx.config, self.ctx.client_id
        roster, digest = self._check_roster(message)
        present = frozenset(roster)
        sid = session_id_of_digest(ctx.config_digest, digest)
        # The graph is drawn from the session id, i.e. from every advertised key: fixed only now.
        # A client reads only its own and its neighbours' neighbours (O(k^2), not the whole graph).
        graph = config.neighbourhood(me, sid)
        strangers = present - graph[me] - {me}
        if not message.whole and strangers:
            raise ProtocolAbort(
                AbortReason.UNKNOWN_PEER, f"the roster lists non-neighbours {sorted(strangers)[:10]}"
            )
        adverts = self._check_advertisements(message, roster, graph[me])
        holders = share_holders(me, graph[me], present)
        if len(holders) < config.threshold:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"only {len(holders) - 1} neighbours advertised keys; threshold {config.threshold}",
            )
        share_keys = {
            v: share_encryption_key(self.secrets.encryption.exchange(a.encryption_key), session_id=sid)
            for v, a in adverts.items()
        }
        # One sharing per secret, with an index for each graph neighbour (`share_indices`): the
        # holders that advertised get theirs, itself included.
        index = share_indices(me, graph[me])
        seed_shares = [
            split_secret(b, threshold=config.threshold, num_shares=len(index), randbytes=ctx.randbytes)
            for b in self.secrets.seeds
        ]
        key_shares = [
            split_secret(
                m.private_bytes(),
                threshold=config.threshold,
                num_shares=len(index),
                randbytes=ctx.randbytes,
            )
            for m in self.secrets.masks
        ]
        own: dict[int, tuple] = {}
        ciphertexts = []
        commitments = []
        for holder in holders:
            i = index[holder] - 1
            bundle = tuple((seed_shares[j][i], key_shares[j][i]) for j in range(config.num_vectors))
            commitments.append((holder, share_commitments(sid, me, holder, bundle)))
            if holder == me:
                own[me] = bundle
                continue
            plaintext = encode_share_bundle(me, holder, bundle)
            blob = seal(share_keys[holder], plaintext, associated_data=share_associated_data(sid, me, holder))
            ciphertexts.append((holder, blob))
        state = ShareKeysState(
            ctx=ctx,
            secrets=self.secrets,
            session_id=sid,
            roster=present,
            graph=graph,
            adverts=adverts,
            share_keys=share_keys,
            own_shares=own[me],
        )
        signature = b""
        if ctx.signer is not None:
            # Signed, an owner's seed-share commitments make the shares it dealt evidence against
            # it if they do not rebuild its committed seed (round 3b); the server cannot forge them.
            roots = seed_share_roots(sid, me, commitments, config.num_vectors)
            signature = ctx.signer.sign(share_commitments_signed_bytes(sid, me, roots))
        return state, ShareKeys(me, tuple(ciphertexts), tuple(commitments), signature)

    def _check_roster(self, message: KeysBroadcast) -> tuple[dict[int, bytes], bytes]:
        """The roster entries this client got, and the digest of the whole roster."""
        config, me = self.ctx.config, self.ctx.client_id
        ids = [cid for cid, _ in message.roster]
        if len(set(ids)) != len(ids):
            raise ProtocolAbort(AbortReason.REPEATED_PEER, "the roster names a client twice")
        unknown = [cid for cid in ids if not config.invites(cid)]
        if unknown:
            raise ProtocolAbort(
                AbortReason.UNKNOWN_PEER, f"the roster names unknown clients {sorted(unknown)}"
            )
        roster = dict(message.roster)
        if roster.get(me) != advertisement_digest(self.advert):
            raise ProtocolAbort(AbortReason.KEY_MISMATCH, "the roster lacks or alters this client's own keys")
        if message.whole:
            size, digest = len(roster), roster_digest(roster.items())
        elif config.malicious:
            # The quorum counts the roster, so a malicious-mode client must see all of it.
            raise ProtocolAbort(AbortReason.INCONSISTENT_VIEW, "malicious mode needs the whole roster")
        elif message.roster_size < len(roster):
            raise ProtocolAbort(
                AbortReason.MALFORMED_MESSAGE,
                f"a roster of {message.roster_size} cannot hold the {len(roster)} entries sent",
            )
        else:
            size, digest = message.roster_size, message.roster_digest
        if size < config.min_survivors:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"{size} clients advertised keys; min_survivors {config.min_survivors}",
            )
        if config.malicious and config.quorum(size) > size:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"a roster of {size} cannot give {config.quorum(size)} consistency signatures",
            )
        return roster, digest

    def _check_advertisements(
        self, message: KeysBroadcast, roster: dict[int, bytes], neighbours: frozenset[int]
    ) -> dict[int, AdvertiseKeys]:
        ctx, config = self.ctx, self.ctx.config
        expected = neighbours & frozenset(roster)
        adverts: dict[int, AdvertiseKeys] = {}
        for a in message.advertisements:
            if a.sender in adverts:
                raise ProtocolAbort(AbortReason.REPEATED_PEER, f"two advertisements for client {a.sender}")
            if a.sender not in expected:
                raise ProtocolAbort(AbortReason.UNKNOWN_PEER, f"client {a.sender} is not a listed neighbour")
            if advertisement_digest(a) != roster[a.sender]:
                raise ProtocolAbort(
                    AbortReason.KEY_MISMATCH, f"keys of client {a.sender} differ from the roster"
                )
            if a.num_vectors != config.num_vectors:
                raise ProtocolAbort(
                    AbortReason.MALFORMED_MESSAGE, f"client {a.sender} advertised {a.num_vectors} mask keys"
                )
            if config.malicious:
                if not a.signature:
                    raise ProtocolAbort(
                        AbortReason.INVALID_SIGNATURE, f"client {a.sender}'s keys are unsigned"
                    )
                verify_signature(config.verify_key(a.sender), a.signature, a.signed_bytes(ctx.config_digest))
            adverts[a.sender] = a
        missing = expected - set(adverts)
        if missing:
            raise ProtocolAbort(
                AbortReason.INCONSISTENT_VIEW,
                f"the roster lists neighbours without their keys: {sorted(missing)}",
            )
        seen: set[bytes] = set()
        for a in (self.advert, *adverts.values()):
            for key in (a.encryption_key, *a.mask_keys):
                # A server must have refused such a key at round 0; relaying it is its fault.
                check_public_key(key)
                if key in seen:
                    raise ProtocolAbort(AbortReason.DUPLICATE_KEY, f"client {a.sender} reuses a public key")
                seen.add(key)
        return adverts
