"""X25519 key agreement (RFC 7748) that refuses keys an attacker could use to force the secret.

A peer public key of a low-order point makes the shared secret all zeros whatever our private key
is; a server relaying such a key could then predict the pairwise masks. Any wrong-length key and
any all-zero result abort the protocol with ``AbortReason.INVALID_PUBLIC_KEY``.

`check_public_key` refuses such keys up front (when they are advertised, before anyone relies on
them), and also refuses non-canonical encodings: X25519 ignores the top bit and reduces the
u-coordinate modulo p, so one point has several byte strings, and a byte-level duplicate check
would miss a reused key written twice.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ..exceptions import AbortReason, ConfigError, ProtocolAbort

__all__ = ["KEY_LENGTH", "LOW_ORDER_U", "X25519KeyPair", "check_public_key"]

KEY_LENGTH = 32
_ZERO = bytes(KEY_LENGTH)
_P = 2**255 - 19

#: The canonical u-coordinates of the points of small order on Curve25519 and its twist (cofactors
#: 8 and 4): 0 (order 2), 1 and p - 1 (order 4), and the two of order 8. X25519 maps each of them
#: (and every non-canonical spelling of them) to the all-zero secret, whatever the private key.
LOW_ORDER_U = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P - 1,
    }
)


def check_public_key(public: bytes) -> None:
    """Refuse an X25519 public key that is malformed, non-canonical or of small order.

    Raises:
        ProtocolAbort: reason INVALID_PUBLIC_KEY when `public` is not 32 bytes, encodes a
            u-coordinate >= p or with the top bit set, or is one of `LOW_ORDER_U`.
    """
    if not isinstance(public, bytes | bytearray | memoryview) or len(public) != KEY_LENGTH:
        raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "an X25519 public key is 32 bytes")
    u = int.from_bytes(bytes(public), "little")
    if u >= _P:
        raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "non-canonical X25519 public key")
    if u in LOW_ORDER_U:
        raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "X25519 public key of small order")


def _raw(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    if isinstance(key, X25519PrivateKey):
        return key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class X25519KeyPair:
    """An X25519 private key and its public key.

    Construct with :meth:`generate` (fresh randomness from the OS) or :meth:`from_private_bytes`
    (a key rebuilt from Shamir shares, or a known-answer vector).
    """

    __slots__ = ("_private", "_public_bytes")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._private = private_key
        self._public_bytes = _raw(private_key.public_key())

    @classmethod
    def generate(cls) -> X25519KeyPair:
        """A fresh key pair from the operating system's CSPRNG."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> X25519KeyPair:
        """The key pair of a 32-byte private scalar (clamped as RFC 7748 prescribes).

        Raises:
            ConfigError: `data` is not 32 bytes.
        """
        if len(data) != KEY_LENGTH:
            raise ConfigError(f"an X25519 private key is {KEY_LENGTH} bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(bytes(data)))

    def public_bytes(self) -> bytes:
        """The 32-byte public key (u-coordinate, little-endian)."""
        return self._public_bytes

    def private_bytes(self) -> bytes:
        """The 32-byte private key, as it will be Shamir-shared."""
        return _raw(self._private)

    def exchange(self, peer_public: bytes) -> bytes:
        """The 32-byte shared secret with `peer_public`.

        Raises:
            ProtocolAbort: reason INVALID_PUBLIC_KEY when the peer key is not 32 bytes or is a
                low-order point (all-zero shared secret).
        """
        if not isinstance(peer_public, bytes | bytearray | memoryview) or len(peer_public) != KEY_LENGTH:
            raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "an X25519 public key is 32 bytes")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        except ValueError as exc:  # OpenSSL refuses the all-zero result of low-order points.
            raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "peer key is a low-order point") from exc
        if hmac.compare_digest(shared, _ZERO):
            raise ProtocolAbort(AbortReason.INVALID_PUBLIC_KEY, "peer key is a low-order point")
        return shared

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self._public_bytes.hex()})"
