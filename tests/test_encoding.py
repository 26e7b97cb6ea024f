"""Fixed-point codec: sums decode within the documented bound, wrap-around is exact, nothing is lost."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codream.crypto.prg import mask_words
from codream.exceptions import ConfigError, EncodingOverflow, InvalidMessage
from codream.secagg.encoding import FixedPointCodec, word_bytes, words_from_bytes, words_to_bytes


def _ring_sum(words: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros_like(words[0])
    for w in words:
        total += w  # uint64 arithmetic wraps mod 2^64, hence mod 2^bits after masking
    return total & np.uint64((1 << bits) - 1) if bits < 64 else total


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([16, 24, 32, 48, 64]),
    n=st.integers(min_value=1, max_value=30),
    clip=st.floats(min_value=1e-3, max_value=1e3),
    seed=st.integers(min_value=0, max_value=2**32),
    length=st.integers(min_value=1, max_value=50),
)
def test_decoded_sum_is_within_the_documented_bound(
    bits: int, n: int, clip: float, seed: int, length: int
) -> None:
    codec = FixedPointCodec(clip_norm=clip, num_summands=n, bits=bits)
    rng = np.random.default_rng(seed)
    vectors = [rng.uniform(-clip, clip, size=length) for _ in range(n)]
    # Extremes of the range are the hardest case for the headroom.
    vectors[0][0] = clip
    vectors[-1][-1] = -clip
    encoded = [codec.encode(v, rng=rng) for v in vectors]
    assert all(e.saturated == 0 for e in encoded)
    decoded = codec.decode_sum(_ring_sum([e.words for e in encoded], bits))
    error = np.max(np.abs(decoded - np.sum(vectors, axis=0)))
    assert error <= codec.quantisation_bound(n)


def test_all_summands_at_the_extremes_do_not_wrap() -> None:
    for bits in (8, 16, 32, 64):
        codec = FixedPointCodec(clip_norm=2.0, num_summands=10, bits=bits)
        rng = np.random.default_rng(0)
        for sign in (1.0, -1.0):
            words = [codec.encode(np.full(4, sign * 2.0), rng=rng).words for _ in range(10)]
            decoded = codec.decode_sum(_ring_sum(words, bits))
            assert np.all(np.abs(decoded - sign * 20.0) <= codec.quantisation_bound(10))


@pytest.mark.parametrize("bits", [8, 20, 32, 63, 64])
def test_masks_wrap_around_and_cancel_exactly(bits: int) -> None:
    codec = FixedPointCodec(clip_norm=1.0, num_summands=3, bits=bits)
    rng = np.random.default_rng(1)
    encoded = [codec.encode(rng.uniform(-1, 1, 100), rng=rng).words for _ in range(3)]
    mask = mask_words(b"\x01" * 32, 100, bits=bits)
    modulus_minus_mask = (
        (np.uint64(0) - mask) & np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(0) - mask
    )
    masked = [encoded[0] + mask, encoded[1] + modulus_minus_mask, encoded[2]]
    assert np.array_equal(_ring_sum(masked, bits), _ring_sum(encoded, bits))


def test_out_of_range_coordinates_are_clipped_and_counted() -> None:
    codec = FixedPointCodec(clip_norm=1.0, num_summands=2, bits=32)
    encoded = codec.encode(np.array([0.5, 3.0, -7.0, -1.0, 1.0]), rng=np.random.default_rng(0))
    assert encoded.saturated == 2
    decoded = codec.decode_sum(encoded.words)
    assert np.allclose(decoded, [0.5, 1.0, -1.0, -1.0, 1.0], atol=codec.quantisation_bound(1))


def test_refusing_saturation_raises_instead_of_clipping() -> None:
    codec = FixedPointCodec(clip_norm=1.0, num_summands=2)
    with pytest.raises(EncodingOverflow, match="1 coordinates"):
        codec.encode(np.array([0.0, 1.5]), rng=np.random.default_rng(0), saturate=False)


def test_stochastic_rounding_is_unbiased() -> None:
    # Coarse 8-bit codec: a value between two grid points; the mean of many roundings must land
    # on the value, not on the nearest grid point. Standard error is ~0.5 / sqrt(N) units.
    codec = FixedPointCodec(clip_norm=1.0, num_summands=1, bits=8)
    value = 0.3 / codec.scale + 5.0 / codec.scale  # 5.3 units
    samples = 200_000
    encoded = codec.encode(np.full(samples, value), rng=np.random.default_rng(1234))
    units = codec.from_words(encoded.words)
    assert set(np.unique(units).tolist()) == {5, 6}
    mean_units = units.mean()
    assert abs(mean_units - 5.3) < 5 * 0.5 / np.sqrt(samples)


def test_noise_headroom_reduces_the_scale_and_is_not_wrapped() -> None:
    plain = FixedPointCodec(clip_norm=1.0, num_summands=4, bits=16)
    noisy = FixedPointCodec(clip_norm=1.0, num_summands=4, bits=16, noise_bound=12.0)
    assert noisy.scale < plain.scale
    assert noisy.headroom_bits == 4 and plain.headroom_bits == 2
    noise = np.array([int(12.0 * noisy.scale), -int(12.0 * noisy.scale)])
    words = _ring_sum(
        [noisy.encode(np.array([1.0, -1.0]), rng=np.random.default_rng(0)).words] * 4
        + [noisy.to_words(noise)],
        16,
    )
    assert np.allclose(
        noisy.decode_sum(words), [16.0, -16.0], atol=noisy.quantisation_bound(4) + 1 / noisy.scale
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0, "num_summands": 2},
        {"clip_norm": float("inf"), "num_summands": 2},
        {"clip_norm": 1.0, "num_summands": 0},
        {"clip_norm": 1.0, "num_summands": 2, "bits": 7},
        {"clip_norm": 1.0, "num_summands": 2, "bits": 65},
        {"clip_norm": 1.0, "num_summands": 2, "noise_bound": -1.0},
        {"clip_norm": 1.0, "num_summands": 100, "bits": 8},
    ],
)
def test_invalid_codec_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        FixedPointCodec(**kwargs)


def test_non_finite_or_non_vector_input_is_refused() -> None:
    codec = FixedPointCodec(clip_norm=1.0, num_summands=2)
    with pytest.raises(ConfigError):
        codec.encode(np.array([0.0, np.nan]), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError):
        codec.encode(np.zeros((2, 2)), rng=np.random.default_rng(0))
    with pytest.raises(ConfigError):
        codec.decode_sum(np.array([1 << 32], dtype=np.uint64))
    with pytest.raises(ConfigError):
        codec.quantisation_bound(3)


@pytest.mark.parametrize("bits", [8, 12, 16, 24, 32, 40, 56, 64])
def test_word_bytes_round_trip(bits: int) -> None:
    words = mask_words(bytes(32), 37, bits=bits)
    data = words_to_bytes(words, bits)
    assert len(data) == 37 * word_bytes(bits)
    assert np.array_equal(words_from_bytes(data, bits, 37), words)


def test_words_are_little_endian_on_the_wire() -> None:
    words = np.array([0x010203, 0xA0B0C0], dtype=np.uint64)
    assert words_to_bytes(words, 24) == bytes([3, 2, 1, 0xC0, 0xB0, 0xA0])


def test_malformed_word_bytes_are_refused() -> None:
    with pytest.raises(InvalidMessage):
        words_from_bytes(b"\x00" * 7, 32, 2)
    with pytest.raises(InvalidMessage):
        words_from_bytes(b"\xff\x1f", 12, 1)
    with pytest.raises(ConfigError):
        words_to_bytes(np.array([256], dtype=np.uint64), 8)
    with pytest.raises(ConfigError):
        words_to_bytes(np.array([1], dtype=np.int64), 8)
