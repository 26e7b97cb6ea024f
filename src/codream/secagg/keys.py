"""Derivations both sides of the protocol must compute identically.

Session id, advertisement digests, seed commitments, who holds whose shares, the plaintext layout of
a share bundle and the masks themselves. The primitives (HKDF labels, AES-CTR expansion, Shamir)
come from `codream.crypto`; this module fixes how the protocol combines them (protocols/secagg.md).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..crypto.agreement import X25519KeyPair
from ..crypto.kdf import pairwise_mask_key, pairwise_mask_keys, self_mask_key
from ..crypto.prg import MaskAccumulator, mask_words
from ..crypto.shamir import SHARE_BYTES, Share
from ..exceptions import AbortReason, ConfigError, InvalidShare, ProtocolAbort
from .messages import AdvertiseKeys

__all__ = [
    "SECRET_BYTES",
    "KEY_SHARE",
    "SEED_SHARE",
    "context_digest",
    "mask_salt",
    "pairwise_key",
    "seed_share_root",
    "seed_share_roots",
    "share_commitment",
    "share_commitments",
    "share_commitments_signed_bytes",
    "self_mask_key_for",
    "advertisement_digest",
    "decode_share_bundle",
    "encode_share_bundle",
    "mask_sign",
    "masked_words",
    "pairwise_mask",
    "pairwise_secrets",
    "seed_commitment",
    "self_mask",
    "session_id",
    "share_associated_data",
    "roster_digest",
    "session_id_of_digest",
    "share_holders",
    "share_indices",
    "word_mask",
]

#: Both shared secrets (an X25519 private key and a self-mask seed) are 32 bytes.
SECRET_BYTES = 32
_BUNDLE_LABEL = b"codream/v1/share-bundle"
#: The two kinds of share, as they are numbered in share commitments.
SEED_SHARE, KEY_SHARE = 0, 1


def advertisement_digest(advert: AdvertiseKeys) -> bytes:
    """SHA-256 of the advertisement's wire bytes (signature included): what the roster lists."""
    return hashlib.sha256(advert.to_bytes()).digest()


def roster_digest(roster: Iterable[tuple[int, bytes]]) -> bytes:
    """SHA-256 over the sorted roster of (client id, advertisement digest), its size first."""
    entries = sorted(roster)
    h = hashlib.sha256(b"codream/v1/roster")
    h.update(struct.pack(">I", len(entries)))
    for cid, digest in entries:
        h.update(struct.pack(">I", cid) + digest)
    return h.digest()


def session_id(config_digest: bytes, roster: Iterable[tuple[int, bytes]]) -> bytes:
    """The session id of a roster: `session_id_of_digest(config_digest, roster_digest(roster))`."""
    return session_id_of_digest(config_digest, roster_digest(roster))


def session_id_of_digest(config_digest: bytes, digest: bytes) -> bytes:
    """SHA-256 over the config digest and the roster digest (`roster_digest`).

    Every key of the session is salted with it, so parties that saw different advertisements (or
    different configs) cannot decrypt each other's shares and abort instead of summing garbage.
    """
    return hashlib.sha256(b"codream/v1/session-id" + config_digest + digest).digest()


def seed_commitment(owner: int, vector: int, seed: bytes) -> bytes:
    """SHA-256 commitment to a self-mask seed b^j, advertised in round 0.

    The seed is 32 uniformly random bytes, so the hash hides it; it lets the server check a seed
    rebuilt from shares, which the advertised public key does for mask keys.
    """
    return hashlib.sha256(b"codream/v1/seed-commitment" + struct.pack(">II", owner, vector) + seed).digest()


def context_digest(context: bytes) -> bytes:
    """SHA-256("codream/v1/context" || context): the 32 bytes a client binds its vector j to.

    The context is whatever the round broadcast this client computed vector j from (dreams,
    targets, plan), as the caller encodes it; b"" when there is none.
    """
    if not isinstance(context, bytes | bytearray | memoryview):
        raise ConfigError(f"a context must be bytes, got {type(context).__name__}")
    return hashlib.sha256(b"codream/v1/context" + bytes(context)).digest()


def mask_salt(session: bytes, context: bytes) -> bytes:
    """The HKDF salt of the pairwise masks of one vector: SHA-256 over the session id and the
    client's context digest.

    Two neighbours given different broadcasts derive different pairwise masks, which then do not
    cancel: a sum over clients that saw different inputs is uniformly masked noise to the server,
    so it cannot isolate a client by sending it alone a different input.
    """
    return hashlib.sha256(b"codream/v1/mask-salt" + session + context).digest()


def share_commitment(
    session: bytes, *, owner: int, holder: int, vector: int, kind: int, share: Share
) -> bytes:
    """SHA-256 commitment to one share, sent by its owner in round 1 and relayed to its holder.

    The holder checks the share it decrypted against it; the server checks a revealed share
    against it. A share is a uniform field element (t >= 2), so its hash reveals nothing usable.
    """
    return hashlib.sha256(
        b"codream/v1/share-commitment"
        + session
        + struct.pack(">IIIB", owner, holder, vector, kind)
        + share.to_bytes()
    ).digest()


def share_commitments(
    session: bytes, owner: int, holder: int, shares: Sequence[tuple[Share, Share]]
) -> tuple[bytes, ...]:
    """The 2J commitments of one holder's bundle, in order: seed share then key share, per vector."""
    out = []
    for j, (seed_share, key_share) in enumerate(shares):
        out.append(
            share_commitment(session, owner=owner, holder=holder, vector=j, kind=SEED_SHARE, share=seed_share)
        )
        out.append(
            share_commitment(session, owner=owner, holder=holder, vector=j, kind=KEY_SHARE, share=key_share)
        )
    return tuple(out)


def seed_share_root(
    session: bytes, owner: int, vector: int, commitments: Sequence[tuple[int, bytes]]
) -> bytes:
    """SHA-256 over the commitments to every holder's seed share of `owner`'s b^j, in holder order.

    The owner signs these roots (malicious mode), so a set of revealed seed shares, each matching
    its commitment, is evidence that anyone can check of what the owner dealt (round 3b).
    """
    h = hashlib.sha256(
        b"codream/v1/seed-share-root" + session + struct.pack(">III", owner, vector, len(commitments))
    )
    for holder, commitment in commitments:
        h.update(struct.pack(">I", holder) + commitment)
    return h.digest()


def seed_share_roots(
    session: bytes, owner: int, commitments: Sequence[tuple[int, Sequence[bytes]]], num_vectors: int
) -> tuple[bytes, ...]:
    """The J roots of `owner`'s seed-share commitments, from its round-1 (holder, 2J digests) lists."""
    return tuple(
        seed_share_root(session, owner, j, [(h, d[2 * j + SEED_SHARE]) for h, d in commitments])
        for j in range(num_vectors)
    )


def share_commitments_signed_bytes(session: bytes, owner: int, roots: Sequence[bytes]) -> bytes:
    """What an owner signs in round 1 (malicious mode): the session, itself and its J seed-share roots."""
    return b"codream/v1/share-commitments" + session + struct.pack(">II", owner, len(roots)) + b"".join(roots)


def share_holders(owner: int, neighbours: frozenset[int], present: frozenset[int]) -> tuple[int, ...]:
    """Who holds `owner`'s shares: itself and its neighbours that advertised, sorted."""
    return tuple(sorted((neighbours & present) | {owner}))


def share_indices(owner: int, neighbours: frozenset[int]) -> dict[int, int]:
    """The Shamir index of each possible holder of `owner`'s shares: 1 + its position in the sorted
    list of `owner` and all its graph neighbours, whether they advertised or not.

    Any party that knows the graph computes the same indices, so a holder can check the index of
    the share it got without knowing which of the owner's other neighbours advertised (a client
    learns the roster only around itself, §5.0).
    """
    return {h: i + 1 for i, h in enumerate(sorted(neighbours | {owner}))}


def share_associated_data(session: bytes, owner: int, recipient: int) -> bytes:
    """AES-GCM associated data of a share bundle: the session and the direction of the pair."""
    return _BUNDLE_LABEL + session + struct.pack(">II", owner, recipient)


def encode_share_bundle(owner: int, recipient: int, shares: Sequence[tuple[Share, Share]]) -> bytes:
    """Plaintext of one ciphertext: owner, recipient, J, then per vector the b^j and s_sk^j shares."""
    parts = [struct.pack(">III", owner, recipient, len(shares))]
    for seed_share, key_share in shares:
        parts.append(seed_share.to_bytes())
        parts.append(key_share.to_bytes())
    return b"".join(parts)


def decode_share_bundle(
    data: bytes, *, owner: int, recipient: int, num_vectors: int, index: int
) -> tuple[tuple[Share, Share], ...]:
    """Parse and check a decrypted share bundle.

    Raises:
        ProtocolAbort: INVALID_SHARE when the layout, the names inside, the vector count or a
            share index differ from what the recipient expects.
    """
    expected = 12 + 2 * SHARE_BYTES * num_vectors
    if len(data) != expected:
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"share bundle from {owner} is {len(data)} bytes")
    got_owner, got_recipient, got_vectors = struct.unpack(">III", data[:12])
    if (got_owner, got_recipient, got_vectors) != (owner, recipient, num_vectors):
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"share bundle from {owner} names the wrong parties")
    out = []
    pos = 12
    try:
        for _ in range(num_vectors):
            seed_share = Share.from_bytes(data[pos : pos + SHARE_BYTES])
            key_share = Share.from_bytes(data[pos + SHARE_BYTES : pos + 2 * SHARE_BYTES])
            pos += 2 * SHARE_BYTES
            out.append((seed_share, key_share))
    except InvalidShare as exc:
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"share from {owner}: {exc}") from None
    if any(s.index != index or k.index != index for s, k in out):
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"share from {owner} carries the wrong index")
    return tuple(out)


def word_mask(bits: int) -> np.uint64:
    """All-ones in the low `bits` bits: reduction modulo 2^bits of uint64 words."""
    return np.uint64((1 << bits) - 1)


def mask_sign(own: int, peer: int) -> int:
    """+1 if the lower id adds the pairwise mask, -1 for the higher: each pair's masks cancel."""
    return 1 if own < peer else -1


def self_mask_key_for(seed: bytes, *, session: bytes, vector: int) -> bytes:
    """The AES key of PRG(b^j)."""
    return self_mask_key(seed, session_id=session, vector_index=vector)


def pairwise_key(own: X25519KeyPair, peer_public: bytes, *, session: bytes, vector: int) -> bytes:
    """The AES key of the pairwise mask between `own` and `peer_public` for vector j.

    Raises:
        ProtocolAbort: INVALID_PUBLIC_KEY for a malformed or low-order peer key.
    """
    return pairwise_mask_key(own.exchange(peer_public), session_id=session, vector_index=vector)


def self_mask(seed: bytes, *, session: bytes, vector: int, count: int, bits: int) -> np.ndarray:
    """PRG(b^j): the self mask of one client for vector j."""
    return mask_words(self_mask_key_for(seed, session=session, vector=vector), count, bits=bits)


def pairwise_mask(
    own: X25519KeyPair, peer_public: bytes, *, session: bytes, vector: int, count: int, bits: int
) -> np.ndarray:
    """PRG(HKDF(X25519(s_sk_u^j, s_pk_v^j))): the same words at both ends of the pair.

    Raises:
        ProtocolAbort: INVALID_PUBLIC_KEY for a malformed or low-order peer key.
    """
    return mask_words(pairwise_key(own, peer_public, session=session, vector=vector), count, bits=bits)


def pairwise_secrets(own: X25519KeyPair, peers: Mapping[int, bytes]) -> dict[int, bytes]:
    """X25519(s_sk_u^j, s_pk_v^j) for each peer v: computed once, when the keys arrive, so that
    masking a vector (`masked_words`) costs no key agreement.

    Raises:
        ProtocolAbort: INVALID_PUBLIC_KEY for a malformed or low-order peer key.
    """
    return {peer: own.exchange(public) for peer, public in peers.items()}


def masked_words(
    words: np.ndarray,
    *,
    own_id: int,
    seed: bytes,
    shared: Mapping[int, bytes],
    session: bytes,
    vector: int,
    bits: int,
    salt: bytes | None = None,
) -> np.ndarray:
    """y = x + PRG(b^j) + sum_v sign(u, v) PRG(k_uv^j) mod 2^bits, over the peers masked with.

    `shared` holds each peer's X25519 secret of vector j (`pairwise_secrets`); k_uv^j is its HKDF
    with `salt` (the vector's `mask_salt`, which binds the context; default the session id) and
    the vector index, so every vector, and every context, gets masks of its own. The self mask is
    keyed with the session id. The masks are summed by `prg.MaskAccumulator`, which never widens a
    mask to uint64.
    """
    acc = MaskAccumulator(words.shape[0], bits=bits)
    acc.add_words(words)
    keys = pairwise_mask_keys(shared, session_id=session if salt is None else salt, vector_index=vector)
    masks = [(self_mask_key_for(seed, session=session, vector=vector), 1)]
    masks += [(keys[peer], mask_sign(own_id, peer)) for peer in sorted(keys)]
    acc.add_masks(masks)
    return acc.result()
