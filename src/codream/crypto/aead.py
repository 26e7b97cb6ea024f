"""AES-256-GCM sealing of Shamir shares in transit between clients (relayed by the server).

A sealed blob is ``nonce (12 bytes) || ciphertext || tag (16 bytes)`` with a fresh random nonce.
Each share-encryption key seals one message per (sender, receiver) pair, so random nonces never
collide in practice. Every way opening can fail raises the same :class:`DecryptionError`, so a
caller cannot learn *why* from the error.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..exceptions import ConfigError, DecryptionError

__all__ = ["KEY_LENGTH", "NONCE_LENGTH", "OVERHEAD", "TAG_LENGTH", "open_sealed", "seal"]

KEY_LENGTH = 32
NONCE_LENGTH = 12
TAG_LENGTH = 16
OVERHEAD = NONCE_LENGTH + TAG_LENGTH


def _seal_from_parts(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Deterministic core of :func:`seal`; known-answer vectors call it with a fixed nonce."""
    if len(key) != KEY_LENGTH:
        raise ConfigError(f"an AES-256-GCM key is {KEY_LENGTH} bytes, got {len(key)}")
    if len(nonce) != NONCE_LENGTH:
        raise ConfigError(f"a GCM nonce is {NONCE_LENGTH} bytes, got {len(nonce)}")
    return bytes(nonce) + AESGCM(bytes(key)).encrypt(bytes(nonce), bytes(plaintext), bytes(associated_data))


def seal(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """Encrypt and authenticate `plaintext`, binding `associated_data` (sender, receiver, session).

    Args:
        key: 32-byte key from :func:`codream.crypto.kdf.share_encryption_key`.
        plaintext: the message to protect.
        associated_data: authenticated but not encrypted context.

    Returns:
        nonce || ciphertext || tag; 28 bytes longer than `plaintext`.

    Raises:
        ConfigError: the key is not 32 bytes.
    """
    return _seal_from_parts(key, os.urandom(NONCE_LENGTH), plaintext, associated_data)


def open_sealed(key: bytes, blob: bytes, *, associated_data: bytes) -> bytes:
    """Decrypt and verify a blob made by :func:`seal`.

    Raises:
        DecryptionError: on any failure: wrong key or key length, blob too short, altered
            nonce, ciphertext, tag or associated data.
    """
    try:
        if len(key) != KEY_LENGTH or len(blob) < OVERHEAD:
            raise DecryptionError("cannot open sealed blob")
        blob = bytes(blob)
        return AESGCM(bytes(key)).decrypt(blob[:NONCE_LENGTH], blob[NONCE_LENGTH:], bytes(associated_data))
    except (InvalidTag, ValueError, TypeError) as exc:
        raise DecryptionError("cannot open sealed blob") from exc
