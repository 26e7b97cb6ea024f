"""Shamir t-of-n secret sharing over the prime field p = 2^521 - 1.

Why this prime: secrets are up to 64 bytes (a 32-byte X25519 private key or self-mask seed, with
room to spare), so they embed in the field as integers without splitting, and a Mersenne prime
keeps reduction cheap for Python's integers. A share is the point (x, f(x)) of a random polynomial
f of degree t - 1 with f(0) = secret; any t points rebuild f(0) by Lagrange interpolation and any
t - 1 points are independent of it.

A rebuilt secret is checked to fit its declared length (a randomly wrong share almost surely yields
a field element far above 2^512), and shares beyond the threshold are checked to lie on the same
polynomial. Neither check stops a crafted offset among exactly t shares (it shifts f(0) by a
chosen amount), which is why the protocol also checks a rebuilt key against its advertised public
key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..exceptions import ConfigError, InvalidShare

__all__ = [
    "INDEX_BYTES",
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_BYTES",
    "VALUE_BYTES",
    "Share",
    "reconstruct_secret",
    "split_secret",
]

PRIME = 2**521 - 1
MAX_SECRET_BYTES = 64
INDEX_BYTES = 4
VALUE_BYTES = 66  # ceil(521 / 8)
SHARE_BYTES = INDEX_BYTES + VALUE_BYTES
_MAX_INDEX = 2 ** (8 * INDEX_BYTES) - 1
_VALUE_MASK = (1 << 521) - 1


@dataclass(frozen=True, slots=True)
class Share:
    """One point (index, value) of the sharing polynomial.

    Attributes:
        index: x-coordinate, 1..2^32 - 1 (never 0: f(0) is the secret).
        value: f(index) mod p.
    """

    index: int
    value: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= _MAX_INDEX:
            raise InvalidShare(f"share index must be in 1..{_MAX_INDEX}, got {self.index}")
        if not 0 <= self.value < PRIME:
            raise InvalidShare("share value is not an element of the field")

    def to_bytes(self) -> bytes:
        """70 bytes: the index as 4 bytes big-endian, then the value as 66 bytes big-endian."""
        return self.index.to_bytes(INDEX_BYTES, "big") + self.value.to_bytes(VALUE_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes` output.

        Raises:
            InvalidShare: wrong length, index 0, or value >= p.
        """
        if len(data) != SHARE_BYTES:
            raise InvalidShare(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        index = int.from_bytes(data[:INDEX_BYTES], "big")
        value = int.from_bytes(data[INDEX_BYTES:], "big")
        return cls(index=index, value=value)

    def __repr__(self) -> str:
        # A share is secret material: keep it out of logs and tracebacks.
        return f"Share(index={self.index}, value=<redacted>)"


def _random_field_element(randbytes: Callable[[int], bytes]) -> int:
    """Uniform element of [0, p) by rejection sampling of 521-bit integers."""
    while True:
        candidate = int.from_bytes(randbytes(VALUE_BYTES), "big") & _VALUE_MASK
        if candidate < PRIME:
            return candidate


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    # Horner without intermediate reduction: x is a small share index, so the integer grows by
    # only log2(x) bits per step, and one final reduction is cheaper than one per step.
    result = 0
    for c in reversed(coefficients):
        result = result * x + c
    return result % PRIME


def split_secret(
    secret: bytes,
    *,
    threshold: int,
    num_shares: int,
    randbytes: Callable[[int], bytes] = os.urandom,
) -> list[Share]:
    """Split `secret` into `num_shares` shares of which any `threshold` rebuild it.

    Args:
        secret: 1..64 bytes, read as a big-endian integer.
        threshold: t, 1..num_shares.
        num_shares: n; shares get indices 1..n.
        randbytes: source of the polynomial's random coefficients (``os.urandom``; a deterministic
            function only in known-answer vectors). Each coefficient consumes 66-byte draws.

    Returns:
        Shares with indices 1..num_shares, in order.

    Raises:
        ConfigError: the secret is empty or longer than 64 bytes, or t, n are out of range.
    """
    if not isinstance(secret, bytes | bytearray | memoryview):
        raise ConfigError(f"secret must be bytes, got {type(secret).__name__}")
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ConfigError(f"secret must be 1..{MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= num_shares <= _MAX_INDEX:
        raise ConfigError(f"num_shares must be in 1..{_MAX_INDEX}, got {num_shares}")
    if not 1 <= threshold <= num_shares:
        raise ConfigError(f"threshold must be in 1..num_shares={num_shares}, got {threshold}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_field_element(randbytes) for _ in range(threshold - 1)]
    return [Share(index=x, value=_evaluate(coefficients, x)) for x in range(1, num_shares + 1)]


class _Interpolator:
    """Evaluates the polynomial through `basis` anywhere, in barycentric form.

    With c_i = y_i / prod_{k != i}(x_i - x_k) computed once (t modular inversions), each point
    costs t exact small-integer divisions and t field multiplications:
    f(x) = sum_i c_i * prod_{k != i}(x - x_k).
    """

    __slots__ = ("_coefficients", "_xs")

    def __init__(self, basis: Sequence[Share]) -> None:
        self._xs = [s.index for s in basis]
        self._coefficients = []
        for i, share in enumerate(basis):
            denominator = 1
            for k, xk in enumerate(self._xs):
                if k != i:
                    denominator *= share.index - xk
            self._coefficients.append(share.value * pow(denominator % PRIME, -1, PRIME) % PRIME)

    def __call__(self, x: int) -> int:
        if x in self._xs:
            raise InvalidShare(f"index {x} is already part of the basis")
        product = 1
        for xk in self._xs:
            product *= x - xk
        total = 0
        for c, xi in zip(self._coefficients, self._xs, strict=True):
            total += c * (product // (x - xi))
        return total % PRIME


def reconstruct_secret(shares: Sequence[Share], *, threshold: int, length: int) -> bytes:
    """Rebuild a secret of `length` bytes from at least `threshold` shares.

    The first `threshold` shares (in the order given) determine the polynomial; every further
    share must lie on it. Passing exactly `threshold` shares is cheapest; passing more buys
    detection of tampered shares.

    Args:
        shares: distinct-index shares of one secret.
        threshold: t the secret was split with.
        length: byte length the secret was split with, 1..64.

    Returns:
        The secret, `length` bytes.

    Raises:
        ConfigError: `threshold` < 1 or `length` outside 1..64.
        InvalidShare: fewer than `threshold` shares, repeated indices, shares that do not lie on
            one polynomial of degree < t, or a result that does not fit in `length` bytes.
    """
    if threshold < 1:
        raise ConfigError(f"threshold must be >= 1, got {threshold}")
    if not 1 <= length <= MAX_SECRET_BYTES:
        raise ConfigError(f"secret length must be 1..{MAX_SECRET_BYTES}, got {length}")
    shares = list(shares)
    if len(shares) < threshold:
        raise InvalidShare(f"need {threshold} shares to rebuild the secret, got {len(shares)}")
    for s in shares:
        if not isinstance(s, Share):
            raise InvalidShare(f"expected Share objects, got {type(s).__name__}")
    indices = [s.index for s in shares]
    if len(set(indices)) != len(indices):
        raise InvalidShare("two shares carry the same index")
    interpolate = _Interpolator(shares[:threshold])
    for extra in shares[threshold:]:
        if interpolate(extra.index) != extra.value:
            raise InvalidShare(f"share {extra.index} does not lie on the polynomial of the others")
    secret = interpolate(0)
    if secret >= 1 << (8 * length):
        raise InvalidShare(f"rebuilt value does not fit in {length} bytes: a share is wrong")
    return secret.to_bytes(length, "big")
