"""Shamir sharing: any t shares rebuild the secret, fewer refuse, tampering is caught."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codream.crypto.shamir import PRIME, SHARE_BYTES, Share, reconstruct_secret, split_secret
from codream.exceptions import ConfigError, InvalidShare


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=64),
    n=st.integers(min_value=1, max_value=9),
    data=st.data(),
)
def test_any_threshold_subset_rebuilds_the_secret(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n))
    shares = split_secret(secret, threshold=t, num_shares=n)
    subset = data.draw(st.permutations(shares)).copy()[: data.draw(st.integers(min_value=t, max_value=n))]
    assert reconstruct_secret(subset, threshold=t, length=len(secret)) == secret


def test_every_subset_of_exactly_t_shares_rebuilds_the_secret() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, threshold=3, num_shares=6)
    for subset in itertools.combinations(shares, 3):
        assert reconstruct_secret(subset, threshold=3, length=32) == secret


def test_fewer_than_threshold_shares_are_refused() -> None:
    shares = split_secret(b"k" * 32, threshold=4, num_shares=6)
    with pytest.raises(InvalidShare, match="need 4 shares"):
        reconstruct_secret(shares[:3], threshold=4, length=32)


def test_t_minus_one_shares_are_consistent_with_any_secret() -> None:
    # With t-1 shares fixed, every candidate secret has exactly one polynomial through them, so
    # the shares say nothing about the secret: rebuild with a forged t-th share at index 0's
    # neighbour and check that any chosen secret is reachable.
    shares = split_secret(b"\x01" * 32, threshold=2, num_shares=3)
    known = shares[0]
    for candidate in (b"\x00" * 32, b"\xff" * 32, os.urandom(32)):
        s = int.from_bytes(candidate, "big")
        # Line through (0, s) and (1, y1): f(2) = 2*y1 - s.
        forged = Share(index=2, value=(2 * known.value - s) % PRIME)
        assert reconstruct_secret([known, forged], threshold=2, length=32) == candidate


def test_repeated_indices_are_refused() -> None:
    shares = split_secret(b"s" * 16, threshold=2, num_shares=3)
    with pytest.raises(InvalidShare, match="same index"):
        reconstruct_secret([shares[0], shares[0]], threshold=2, length=16)


def test_a_tampered_share_beyond_the_threshold_is_detected() -> None:
    shares = split_secret(b"s" * 32, threshold=3, num_shares=5)
    shares[4] = Share(index=5, value=(shares[4].value + 1) % PRIME)
    with pytest.raises(InvalidShare, match="does not lie"):
        reconstruct_secret(shares, threshold=3, length=32)


def test_a_randomly_altered_share_within_the_threshold_gives_a_value_that_does_not_fit() -> None:
    # A random error moves f(0) to a random field element, above 2^256 except with chance 2^-265.
    # (A crafted small offset is not caught here: the protocol also re-derives public keys.)
    shares = split_secret(b"s" * 32, threshold=3, num_shares=3)
    shares[1] = Share(index=2, value=(shares[1].value + int.from_bytes(os.urandom(64), "big")) % PRIME)
    with pytest.raises(InvalidShare, match="does not fit"):
        reconstruct_secret(shares, threshold=3, length=32)


def test_share_bytes_round_trip_and_reject_bad_input() -> None:
    share = split_secret(b"x" * 32, threshold=2, num_shares=2)[1]
    data = share.to_bytes()
    assert len(data) == SHARE_BYTES
    assert Share.from_bytes(data) == share
    with pytest.raises(InvalidShare):
        Share.from_bytes(data[:-1])
    with pytest.raises(InvalidShare):
        Share.from_bytes(bytes(4) + data[4:])
    with pytest.raises(InvalidShare):
        Share.from_bytes(data[:4] + PRIME.to_bytes(66, "big"))


def test_share_repr_hides_the_value() -> None:
    share = Share(index=1, value=123456789)
    assert "123456789" not in repr(share)


@pytest.mark.parametrize(
    ("secret", "threshold", "num_shares"),
    [(b"", 1, 1), (b"x" * 65, 1, 1), (b"x", 0, 3), (b"x", 4, 3), (b"x", 1, 0)],
)
def test_bad_split_arguments_are_refused(secret: bytes, threshold: int, num_shares: int) -> None:
    with pytest.raises(ConfigError):
        split_secret(secret, threshold=threshold, num_shares=num_shares)


def test_coefficients_come_from_the_injected_randomness() -> None:
    draws = iter([bytes([0xFF]) * 66, bytes(65) + b"\x07"])  # first draw is >= p after masking
    shares = split_secret(b"\x02", threshold=2, num_shares=2, randbytes=lambda n: next(draws))
    # 0xff.. masked to 521 bits equals p and is rejected; the coefficient is 7: f(x) = 2 + 7x.
    assert [s.value for s in shares] == [9, 16]
