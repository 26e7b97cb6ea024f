"""AES-256-CTR as the pseudo-random generator that expands a 32-byte key into mask words.

Every mask key is derived freshly through HKDF for one (pair or seed, session, vector), so each
key encrypts exactly one keystream and the initial counter block can be all zeros. The keystream
is produced by OpenSSL in one call and reinterpreted by numpy: no Python loop touches the words.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..exceptions import ConfigError

__all__ = ["KEY_LENGTH", "keystream", "mask_words"]

KEY_LENGTH = 32
_ZERO_BLOCK = bytes(16)


def keystream(key: bytes, length: int) -> bytes:
    """The first `length` bytes of the AES-256-CTR keystream under `key`, counter block 0.

    The counter block is a 128-bit big-endian integer starting at zero and incremented once per
    16-byte block (so block i of the keystream is AES_key(i.to_bytes(16, "big"))).

    Raises:
        ConfigError: the key is not 32 bytes or `length` is negative.
    """
    if len(key) != KEY_LENGTH:
        raise ConfigError(f"mask key must be {KEY_LENGTH} bytes, got {len(key)}")
    if length < 0:
        raise ConfigError(f"keystream length must be >= 0, got {length}")
    encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_BLOCK)).encryptor()
    return encryptor.update(bytes(length))


def mask_words(key: bytes, count: int, *, bits: int) -> np.ndarray:
    """Expand `key` into `count` uniformly random words of `bits` bits.

    For ``bits <= 32`` the keystream is read as little-endian uint32 words (4 bytes per word),
    otherwise as little-endian uint64 words (8 bytes per word); each word is then reduced to its
    low `bits` bits. Both widths keep every word uniform on [0, 2^bits).

    Args:
        key: 32-byte AES-256 key, used for this one expansion only.
        count: number of words.
        bits: word width of the ring Z_{2^bits}, 1..64.

    Returns:
        uint64 array of shape (count,), every entry in [0, 2^bits).

    Raises:
        ConfigError: bad key length, negative count or `bits` outside 1..64.
    """
    if not 1 <= bits <= 64:
        raise ConfigError(f"bits must be in 1..64, got {bits}")
    if count < 0:
        raise ConfigError(f"word count must be >= 0, got {count}")
    if bits <= 32:
        words = np.frombuffer(keystream(key, 4 * count), dtype="<u4").astype(np.uint64)
        if bits < 32:
            words &= np.uint64((1 << bits) - 1)
        return words
    words = np.frombuffer(keystream(key, 8 * count), dtype="<u8").astype(np.uint64)
    if bits < 64:
        words &= np.uint64((1 << bits) - 1)
    return words
