"""HKDF-SHA256 (RFC 5869) and the labels that separate every key codream derives.

Every derived key is bound to the session (salt = the 32-byte session id) and to its purpose and
vector (the `info` label), so a key derived for one vector or one use is useless for any other.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from ..exceptions import ConfigError

__all__ = [
    "KEY_LENGTH",
    "PAIRWISE_MASK_INFO",
    "SELF_MASK_INFO",
    "SESSION_ID_LENGTH",
    "SHARE_ENCRYPTION_INFO",
    "hkdf_sha256",
    "pairwise_mask_key",
    "pairwise_mask_keys",
    "self_mask_key",
    "share_encryption_key",
]

KEY_LENGTH = 32
SESSION_ID_LENGTH = 32
PAIRWISE_MASK_INFO = b"codream/v1/pairwise-mask"
SELF_MASK_INFO = b"codream/v1/self-mask"
SHARE_ENCRYPTION_INFO = b"codream/v1/share-encryption"

# RFC 5869: at most 255 blocks of the hash output.
_MAX_LENGTH = 255 * 32


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = KEY_LENGTH) -> bytes:
    """Derive `length` bytes from input keying material with HKDF-SHA256.

    Args:
        ikm: input keying material (a Diffie-Hellman output or a random seed).
        salt: HKDF salt; codream always passes the session id.
        info: purpose label, e.g. ``PAIRWISE_MASK_INFO + j.to_bytes(4, "big")``.
        length: output length in bytes, 1..8160.

    Returns:
        The derived key.

    Raises:
        ConfigError: `length` is out of range or an argument is not bytes.
    """
    for name, value in (("ikm", ikm), ("salt", salt), ("info", info)):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ConfigError(f"hkdf_sha256: {name} must be bytes, got {type(value).__name__}")
    if not 1 <= length <= _MAX_LENGTH:
        raise ConfigError(f"hkdf_sha256: length must be in 1..{_MAX_LENGTH}, got {length}")
    # RFC 5869 written out over the one-shot HMAC of the standard library (OpenSSL underneath):
    # the same bytes as a generic HKDF object, at a third of the cost, which matters because a
    # client derives one key per neighbour per vector on the masking path. An empty salt is the
    # RFC's default (HMAC pads its key with zeros, so b"" and 32 zero bytes agree).
    if length <= 32:  # one block, the case of every key codream derives
        return _one_block(bytes(ikm), bytes(salt), bytes(info) + b"\x01")[:length]
    prk = hmac.digest(bytes(salt), bytes(ikm), "sha256")
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.digest(prk, block + bytes(info) + bytes((counter,)), "sha256")
        okm += block
        counter += 1
    return okm[:length]


def _one_block(ikm: bytes, salt: bytes, info_and_counter: bytes) -> bytes:
    """RFC 5869's first output block: HMAC(HMAC(salt, ikm), info || 0x01)."""
    return hmac.digest(hmac.digest(salt, ikm, "sha256"), info_and_counter, "sha256")


def _check_session_id(session_id: bytes) -> None:
    if len(session_id) != SESSION_ID_LENGTH:
        raise ConfigError(f"session id must be {SESSION_ID_LENGTH} bytes, got {len(session_id)}")


def _vector_label(base: bytes, vector_index: int) -> bytes:
    if not 0 <= vector_index < 2**32:
        raise ConfigError(f"vector index must fit 4 bytes, got {vector_index}")
    return base + vector_index.to_bytes(4, "big")


def pairwise_mask_key(shared_secret: bytes, *, session_id: bytes, vector_index: int) -> bytes:
    """Key of the pairwise mask between two clients for vector `vector_index`.

    Args:
        shared_secret: X25519(s_sk_u^j, s_pk_v^j), the same for both ends of the pair.
        session_id: the 32-byte session id (salt).
        vector_index: j, the position of the vector in the round's plan.

    Returns:
        A 32-byte AES-256 key for :func:`codream.crypto.prg.mask_words`.

    Raises:
        ConfigError: the session id is not 32 bytes or j does not fit 4 bytes.
    """
    _check_session_id(session_id)
    return hkdf_sha256(shared_secret, salt=session_id, info=_vector_label(PAIRWISE_MASK_INFO, vector_index))


def pairwise_mask_keys(
    shared_secrets: Mapping[int, bytes], *, session_id: bytes, vector_index: int
) -> dict[int, bytes]:
    """`pairwise_mask_key` for every peer's secret at once: the same keys, without repeating the
    argument checks and label per peer (a client derives k of them per vector, on the masking path).

    Raises:
        ConfigError: the session id is not 32 bytes, j does not fit 4 bytes or a secret is not bytes.
    """
    _check_session_id(session_id)
    salt = bytes(session_id)
    info = _vector_label(PAIRWISE_MASK_INFO, vector_index) + b"\x01"
    keys = {}
    for peer, secret in shared_secrets.items():
        if not isinstance(secret, bytes):
            raise ConfigError(f"pairwise secret of peer {peer} must be bytes, got {type(secret).__name__}")
        keys[peer] = _one_block(secret, salt, info)
    return keys


def self_mask_key(seed: bytes, *, session_id: bytes, vector_index: int) -> bytes:
    """Key of a client's self mask for vector `vector_index`, from its 32-byte seed b_u^j.

    Raises:
        ConfigError: the session id is not 32 bytes or j does not fit 4 bytes.
    """
    _check_session_id(session_id)
    return hkdf_sha256(seed, salt=session_id, info=_vector_label(SELF_MASK_INFO, vector_index))


def share_encryption_key(shared_secret: bytes, *, session_id: bytes) -> bytes:
    """AES-256-GCM key under which client u encrypts its shares for neighbour v (and v for u).

    Raises:
        ConfigError: the session id is not 32 bytes.
    """
    _check_session_id(session_id)
    return hkdf_sha256(shared_secret, salt=session_id, info=SHARE_ENCRYPTION_INFO)
