"""Ring elements of up to 32 bits travel as 4-byte words: half the memory, the same sums."""

from __future__ import annotations

import numpy as np
import pytest

from codream.aggregation import VectorSpec, create_aggregator
from codream.exceptions import ConfigError
from codream.secagg.config import SessionConfig
from codream.secagg.encoding import FixedPointCodec, word_dtype, words_from_bytes, words_to_bytes
from codream.secagg.runner import Dropout, DropoutSchedule, InProcessSession, Stage
from fakes import DeterministicRandom, plain_sum


@pytest.mark.parametrize(
    ("bits", "dtype"), [(8, np.uint32), (24, np.uint32), (32, np.uint32), (33, np.uint64)]
)
def test_the_codec_encodes_into_the_narrowest_word_that_wraps_with_the_ring(bits, dtype):
    codec = FixedPointCodec(clip_norm=1.0, num_summands=4, bits=bits)
    vector = np.linspace(-1.0, 1.0, 1001)
    encoded = codec.encode(vector, rng=np.random.default_rng(0))
    assert word_dtype(bits) == dtype and encoded.words.dtype == dtype
    assert encoded.words.nbytes == vector.size * np.dtype(dtype).itemsize
    assert codec.to_words(np.array([-1, 0, 1])).dtype == dtype


@pytest.mark.parametrize("bits", [12, 32])
def test_narrow_and_wide_words_decode_and_serialise_alike(bits):
    codec = FixedPointCodec(clip_norm=1.0, num_summands=3, bits=bits)
    rng = np.random.default_rng(1)
    parts = [codec.encode(rng.uniform(-1, 1, 500), rng=rng).words for _ in range(3)]
    narrow = parts[0] + parts[1] + parts[2]  # uint32 arithmetic wraps mod 2^32, a multiple of 2^bits
    narrow &= np.uint32((1 << bits) - 1)
    wide = sum(p.astype(np.uint64) for p in parts) & np.uint64((1 << bits) - 1)
    assert narrow.dtype == np.uint32 and wide.dtype == np.uint64
    np.testing.assert_array_equal(codec.decode_sum(narrow), codec.decode_sum(wide))
    assert words_to_bytes(narrow, bits) == words_to_bytes(wide, bits)
    np.testing.assert_array_equal(words_from_bytes(words_to_bytes(narrow, bits), bits, 500), wide)


def test_words_of_another_dtype_are_refused():
    codec = FixedPointCodec(clip_norm=1.0, num_summands=3, bits=16)
    for bad in (np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.uint16), np.zeros(3)):
        with pytest.raises(ConfigError):
            codec.decode_sum(bad)
        with pytest.raises(ConfigError):
            words_to_bytes(bad, 16)


def test_a_session_on_four_byte_words_sums_exactly_through_a_dropout():
    config = SessionConfig(
        round_index=0, client_ids=tuple(range(5)), threshold=3, vector_lengths=(64,), bits=20
    )
    rng = np.random.default_rng(2)
    inputs = {c: rng.integers(0, 1 << 20, 64, dtype=np.uint32) for c in range(5)}
    schedule = DropoutSchedule({4: Dropout(Stage.MASKED_INPUT, 0)})
    session = InProcessSession(config, dropouts=schedule, randbytes=DeterministicRandom(3))
    session.setup()
    result = session.aggregate(0, inputs)
    assert result.survivors == (0, 1, 2, 3)
    np.testing.assert_array_equal(result.words, plain_sum(inputs, result.survivors, 20, 64))


def test_the_secure_aggregator_holds_four_byte_words_and_decodes_the_sum():
    spec = VectorSpec(name="v", length=200, clip_norm=1.0)
    rng = np.random.default_rng(4)
    vectors = {c: rng.uniform(-0.05, 0.05, 200) for c in range(4)}
    aggregator = create_aggregator("secure", bits=32, rounding_seed=0)
    result = aggregator.open_round(round_index=0, participants=range(4), specs=[spec]).sum(spec, vectors)
    codec = FixedPointCodec(clip_norm=1.0, num_summands=4, bits=32)
    np.testing.assert_allclose(result.total, sum(vectors.values()), atol=codec.quantisation_bound(4))
