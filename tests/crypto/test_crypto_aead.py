"""AES-256-GCM sealing: round trip, fresh nonces, and one error type for every tampering."""

from __future__ import annotations

import os

import pytest

from codream.crypto.aead import NONCE_LENGTH, OVERHEAD, open_sealed, seal
from codream.exceptions import ConfigError, DecryptionError

KEY = bytes(range(32))
AD = b"session|1|2"


def test_a_sealed_message_opens_with_the_same_key_and_context() -> None:
    blob = seal(KEY, b"shares", associated_data=AD)
    assert len(blob) == len(b"shares") + OVERHEAD
    assert open_sealed(KEY, blob, associated_data=AD) == b"shares"


def test_each_seal_uses_a_fresh_nonce() -> None:
    assert (
        seal(KEY, b"m", associated_data=AD)[:NONCE_LENGTH]
        != seal(KEY, b"m", associated_data=AD)[:NONCE_LENGTH]
    )


def _flip(blob: bytes, position: int) -> bytes:
    changed = bytearray(blob)
    changed[position] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("position", [0, NONCE_LENGTH - 1, NONCE_LENGTH, NONCE_LENGTH + 3, -1])
def test_any_flipped_bit_is_detected(position: int) -> None:
    blob = seal(KEY, b"abcdef", associated_data=AD)
    with pytest.raises(DecryptionError):
        open_sealed(KEY, _flip(blob, position), associated_data=AD)


def test_other_context_other_key_and_truncation_all_raise_the_same_error() -> None:
    blob = seal(KEY, b"abcdef", associated_data=AD)
    for key, data, ad in [
        (KEY, blob, b"session|2|1"),
        (os.urandom(32), blob, AD),
        (KEY, blob[: OVERHEAD - 1], AD),
        (KEY, blob[:-1], AD),
        (KEY[:16], blob, AD),
        (KEY, b"", AD),
    ]:
        with pytest.raises(DecryptionError):
            open_sealed(key, data, associated_data=ad)


def test_sealing_with_a_short_key_is_refused() -> None:
    with pytest.raises(ConfigError):
        seal(KEY[:16], b"m", associated_data=AD)
