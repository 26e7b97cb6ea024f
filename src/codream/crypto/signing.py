"""Ed25519 signatures for the optional malicious-server mode (signed keys, consistency check).

Verification raises instead of returning a bool, so a forgotten check cannot pass silently.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..exceptions import AbortReason, ConfigError, ProtocolAbort

__all__ = ["PUBLIC_KEY_LENGTH", "SIGNATURE_LENGTH", "Ed25519KeyPair", "verify_signature"]

PUBLIC_KEY_LENGTH = 32
SIGNATURE_LENGTH = 64


class Ed25519KeyPair:
    """An Ed25519 signing key and its public key."""

    __slots__ = ("_private", "_public_bytes")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> Ed25519KeyPair:
        """A fresh signing key from the operating system's CSPRNG."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Ed25519KeyPair:
        """The key pair of a 32-byte seed (RFC 8032).

        Raises:
            ConfigError: `data` is not 32 bytes.
        """
        if len(data) != 32:
            raise ConfigError(f"an Ed25519 private key is 32 bytes, got {len(data)}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return self._public_bytes

    def sign(self, message: bytes) -> bytes:
        """A 64-byte signature of `message`."""
        return self._private.sign(bytes(message))

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(public={self._public_bytes.hex()})"


def verify_signature(public: bytes, signature: bytes, message: bytes) -> None:
    """Check that `signature` is `public`'s signature of `message`.

    Raises:
        ProtocolAbort: reason INVALID_SIGNATURE for a malformed key, a malformed signature or a
            signature that does not verify.
    """
    try:
        if len(public) != PUBLIC_KEY_LENGTH or len(signature) != SIGNATURE_LENGTH:
            raise ValueError("wrong length")
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ProtocolAbort(AbortReason.INVALID_SIGNATURE, "signature does not verify") from exc
