"""X25519: both ends agree, keys round-trip, malformed and low-order peer keys abort."""

from __future__ import annotations

import pytest

from codream.crypto.agreement import LOW_ORDER_U, X25519KeyPair, check_public_key
from codream.exceptions import AbortReason, ConfigError, ProtocolAbort

# Points of small order on Curve25519 and their non-canonical encodings (the top bit is ignored
# and coordinates >= 2^255 - 19 wrap around). Every one of them forces an all-zero shared secret.
LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]


def test_both_ends_derive_the_same_secret() -> None:
    alice, bob = X25519KeyPair.generate(), X25519KeyPair.generate()
    assert alice.exchange(bob.public_bytes()) == bob.exchange(alice.public_bytes())
    assert alice.exchange(bob.public_bytes()) != alice.exchange(X25519KeyPair.generate().public_bytes())


def test_a_key_pair_rebuilt_from_its_private_bytes_is_the_same() -> None:
    pair = X25519KeyPair.generate()
    again = X25519KeyPair.from_private_bytes(pair.private_bytes())
    assert again.public_bytes() == pair.public_bytes()
    assert len(pair.private_bytes()) == 32


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_peer_keys_abort_with_invalid_public_key(point: str) -> None:
    with pytest.raises(ProtocolAbort) as info:
        X25519KeyPair.generate().exchange(bytes.fromhex(point))
    assert info.value.reason is AbortReason.INVALID_PUBLIC_KEY


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_length_peer_keys_abort_with_invalid_public_key(length: int) -> None:
    with pytest.raises(ProtocolAbort) as info:
        X25519KeyPair.generate().exchange(b"\x09" * length)
    assert info.value.reason is AbortReason.INVALID_PUBLIC_KEY


def test_wrong_length_private_keys_are_refused() -> None:
    with pytest.raises(ConfigError):
        X25519KeyPair.from_private_bytes(b"\x01" * 31)


def test_repr_shows_no_private_key() -> None:
    pair = X25519KeyPair.generate()
    assert pair.private_bytes().hex() not in repr(pair)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_check_public_key_refuses_every_low_order_point_and_spelling(point: str) -> None:
    with pytest.raises(ProtocolAbort) as info:
        check_public_key(bytes.fromhex(point))
    assert info.value.reason is AbortReason.INVALID_PUBLIC_KEY


def test_check_public_key_accepts_real_keys_but_not_their_second_spelling() -> None:
    for _ in range(50):
        public = X25519KeyPair.generate().public_bytes()
        check_public_key(public)
        # X25519 ignores the top bit, so this is the same point under other bytes: a byte-level
        # duplicate check would miss the reuse, so the non-canonical spelling is refused.
        twin = public[:31] + bytes([public[31] | 0x80])
        peer = X25519KeyPair.generate()
        assert peer.exchange(twin) == peer.exchange(public)
        with pytest.raises(ProtocolAbort):
            check_public_key(twin)


def test_the_low_order_list_is_exactly_the_points_x25519_maps_to_zero() -> None:
    # Each listed u-coordinate gives the all-zero secret; u = 2 (an ordinary point) does not.
    pair = X25519KeyPair.generate()
    for u in LOW_ORDER_U:
        with pytest.raises(ProtocolAbort):
            pair.exchange(u.to_bytes(32, "little"))
    assert pair.exchange((2).to_bytes(32, "little")) != bytes(32)
    assert len(LOW_ORDER_U) == 5
