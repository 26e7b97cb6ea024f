"""AES-CTR mask expansion: matches raw AES block encryption, differs across keys, stays in range."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from codream.crypto.prg import MaskAccumulator, keystream, mask_words
from codream.exceptions import ConfigError


def _ecb_counter_stream(key: bytes, blocks: int) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(b"".join(i.to_bytes(16, "big") for i in range(blocks)))


def test_keystream_equals_aes_of_big_endian_counter_blocks() -> None:
    key = bytes(range(32))
    assert keystream(key, 16 * 5) == _ecb_counter_stream(key, 5)


@pytest.mark.parametrize("bits", [8, 16, 31, 32, 33, 48, 63, 64])
def test_words_are_the_keystream_read_little_endian_and_masked(bits: int) -> None:
    key = bytes(range(1, 33))
    count = 11
    width = 4 if bits <= 32 else 8
    raw = _ecb_counter_stream(key, (count * width + 15) // 16)
    expected = [
        int.from_bytes(raw[i * width : (i + 1) * width], "little") % (1 << bits) for i in range(count)
    ]
    words = mask_words(key, count, bits=bits)
    assert words.dtype == np.uint64
    assert words.tolist() == expected


def test_distinct_keys_give_distinct_streams() -> None:
    a = mask_words(b"\x00" * 32, 64, bits=32)
    b = mask_words(b"\x00" * 31 + b"\x01", 64, bits=32)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, mask_words(b"\x00" * 32, 64, bits=32))


def test_a_shorter_expansion_is_a_prefix_of_a_longer_one() -> None:
    key = b"\x05" * 32
    assert np.array_equal(mask_words(key, 7, bits=64), mask_words(key, 100, bits=64)[:7])


def test_words_are_writable_for_in_place_masking() -> None:
    words = mask_words(b"\x09" * 32, 4, bits=64)
    words += np.uint64(1)


@pytest.mark.parametrize(
    ("key", "count", "bits"), [(b"k" * 31, 1, 32), (b"k" * 32, -1, 32), (b"k" * 32, 1, 0), (b"k" * 32, 1, 65)]
)
def test_bad_arguments_are_refused(key: bytes, count: int, bits: int) -> None:
    with pytest.raises(ConfigError):
        mask_words(key, count, bits=bits)


@pytest.mark.parametrize("bits", [8, 20, 32, 40, 64])
def test_the_accumulator_equals_adding_and_subtracting_expanded_masks(bits: int) -> None:
    count = 1000
    modulus_mask = (1 << bits) - 1
    x = mask_words(b"\x07" * 32, count, bits=bits)
    keys = [bytes([i]) * 32 for i in range(1, 5)]
    signs = [1, -1, -1, 1]
    accumulator = MaskAccumulator(count, bits=bits)
    accumulator.add_words(x)
    expected = [int(v) for v in x]
    for key, sign in zip(keys, signs, strict=True):
        accumulator.add_mask(key, sign=sign)
        expected = [
            (e + sign * int(m)) & modulus_mask
            for e, m in zip(expected, mask_words(key, count, bits=bits), strict=True)
        ]
    result = accumulator.result()
    assert result.dtype == np.uint64
    assert result.tolist() == expected


def test_masks_larger_than_one_keystream_chunk_match_raw_aes() -> None:
    key = bytes(range(32))
    count = (1 << 20) // 4 + 5  # crosses the 1 MiB internal chunk
    stream = _ecb_counter_stream(key, (4 * count + 15) // 16)
    words = mask_words(key, count, bits=32)
    assert words[-1] == int.from_bytes(stream[4 * (count - 1) : 4 * count], "little")
    assert words[(1 << 18) - 1] == int.from_bytes(stream[(1 << 20) - 4 : 1 << 20], "little")


def test_the_accumulator_refuses_bad_input() -> None:
    accumulator = MaskAccumulator(3, bits=32)
    with pytest.raises(ConfigError):
        accumulator.add_words(np.zeros(4, dtype=np.uint64))
    with pytest.raises(ConfigError):
        accumulator.add_words(np.zeros(3, dtype=np.float64))
    with pytest.raises(ConfigError):
        accumulator.add_mask(b"k" * 32, sign=2)
    with pytest.raises(ConfigError):
        accumulator.add_mask(b"k" * 16)


@pytest.mark.parametrize("bits", [20, 32, 40, 64])
def test_a_mask_longer_than_one_piece_adds_exactly_the_words_of_mask_words(bits):
    # MaskAccumulator adds the keystream piece by piece (prg._ADD_CHUNK bytes); the pieces must
    # join into the one stream of mask_words, whatever the word width.
    from codream.crypto.prg import _ADD_CHUNK

    width = 4 if bits <= 32 else 8
    count = 2 * (_ADD_CHUNK // width) + 7
    key_a, key_b = bytes(range(32)), bytes(range(1, 33))
    x = np.arange(count, dtype=np.uint64) & np.uint64((1 << bits) - 1)
    acc = MaskAccumulator(count, bits=bits)
    acc.add_words(x)
    acc.add_mask(key_a)
    acc.add_mask(key_b, sign=-1)
    modulus = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    expected = (x + mask_words(key_a, count, bits=bits) - mask_words(key_b, count, bits=bits)) & modulus
    np.testing.assert_array_equal(acc.result(), expected)


@pytest.mark.parametrize("count", [0, 1, 1000, (1 << 16) + 3, (1 << 17) + 5])
@pytest.mark.parametrize("bits", [20, 32, 40, 64])
def test_adding_masks_in_one_call_equals_adding_them_one_by_one(count: int, bits: int) -> None:
    rng = np.random.default_rng(count + bits)
    x = mask_words(bytes(range(32)), count, bits=bits)
    masks = [(bytes(rng.integers(0, 256, 32, dtype=np.uint8)), int(rng.choice([1, -1]))) for _ in range(5)]
    one, each = MaskAccumulator(count, bits=bits), MaskAccumulator(count, bits=bits)
    one.add_words(x)
    each.add_words(x)
    one.add_masks(masks)
    for key, sign in masks:
        each.add_mask(key, sign=sign)
    np.testing.assert_array_equal(one.result(), each.result())
    expected = x.astype(object)
    for key, sign in masks:
        expected = expected + sign * mask_words(key, count, bits=bits).astype(object)
    np.testing.assert_array_equal(one.result(), (expected % (1 << bits)).astype(np.uint64))


@pytest.mark.parametrize("bad", [(bytes(31), 1), (bytes(32), 0), (bytes(32), 2)])
def test_a_refused_batch_of_masks_leaves_the_accumulator_as_it_was(bad: tuple[bytes, int]) -> None:
    acc = MaskAccumulator(100, bits=32)
    acc.add_masks([(bytes(range(32)), 1)])
    before = acc.result()
    with pytest.raises(ConfigError):
        acc.add_masks([(bytes(range(1, 33)), 1), bad])
    np.testing.assert_array_equal(acc.result(), before)
