"""Fixed-point encoding of float vectors into the ring Z_{2^bits}, where masks cancel exactly.

Masking only works on integers modulo 2^bits, so every float coordinate is mapped to an integer:

1. clip to [-clip_norm, clip_norm] (an L2-clipped vector never needs it; anything clipped here is
   counted in ``EncodedVector.saturated``, or refused with ``saturate=False``);
2. multiply by ``scale``;
3. round stochastically: floor(x) + 1 with probability frac(x), so E[q] = x and rounding adds no
   bias to the sum;
4. store the signed integer in two's complement modulo 2^bits, as `word_dtype(bits)` words: 4 bytes
   (uint32) up to 32 bits, whose wrap-around 2^32 is a multiple of 2^bits, else 8 (uint64). The
   functions that read words take either width.

The sum of up to ``num_summands`` encoded vectors, plus DP noise of at most ``noise_bound`` (float
units), never leaves (-2^(bits-1), 2^(bits-1)): ``scale`` is chosen so that it fits, and this
is what makes the wrapped sum decode exactly. The ``headroom_bits`` property says how many of the
bits this headroom costs; the rest are precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..exceptions import ConfigError, EncodingOverflow, InvalidMessage

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "EncodedVector",
    "FixedPointCodec",
    "word_bytes",
    "word_dtype",
    "words_from_bytes",
    "words_to_bytes",
]

MIN_BITS = 8
MAX_BITS = 64
# Largest |value * scale| of one summand. Below 2^53 float64 holds every integer exactly; 2^50
# keeps the relative error of the product (2^-53) under 1/8 of an encoded unit.
_MAX_SUMMAND_UNITS = 2.0**50
_FLOAT_EPS = 2.0**-52


@dataclass(frozen=True, slots=True)
class EncodedVector:
    """One client's vector as ring elements.

    Attributes:
        words: `word_dtype(bits)` array (uint32 up to 32 bits, else uint64), each entry in [0, 2^bits).
        saturated: how many coordinates were clipped to [-clip_norm, clip_norm] before encoding.
    """

    words: np.ndarray
    saturated: int


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def word_dtype(bits: int) -> np.dtype:
    """The narrowest native word for Z_{2^bits}: uint32 up to 32 bits (half the memory of uint64),
    else uint64. Either wraps modulo a multiple of 2^bits, so sums reduced to `bits` bits agree.

    Raises:
        ConfigError: `bits` is outside 8..64.
    """
    _check_bits(bits)
    return np.dtype(np.uint32) if bits <= 32 else np.dtype(np.uint64)


def _check_words(words: np.ndarray, what: str) -> np.ndarray:
    """`words` as an array if it holds uint32 or uint64 ring elements, else a ConfigError."""
    words = np.asarray(words)
    if words.dtype not in (np.uint32, np.uint64):
        raise ConfigError(f"{what} must be uint32 or uint64, got dtype {words.dtype}")
    return words


@dataclass(frozen=True, slots=True)
class FixedPointCodec:
    """Maps float vectors to Z_{2^bits} and sums of them back.

    Attributes:
        clip_norm: per-coordinate range [-clip_norm, clip_norm] of one summand; the spec's L2
            bound, which no coordinate of an L2-clipped vector can exceed.
        num_summands: most vectors that will be summed (the round's participants).
        bits: ring width, 8..64.
        noise_bound: headroom in float units for DP noise added to the sum (0 without noise).

    Raises:
        ConfigError: a value is out of range, or `bits` is too small to hold `num_summands`.
    """

    clip_norm: float
    num_summands: int
    bits: int = 32
    noise_bound: float = 0.0

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be finite and > 0, got {self.clip_norm}")
        if not isinstance(self.num_summands, int) or self.num_summands < 1:
            raise ConfigError(f"num_summands must be an integer >= 1, got {self.num_summands!r}")
        if not (math.isfinite(self.noise_bound) and self.noise_bound >= 0):
            raise ConfigError(f"noise_bound must be finite and >= 0, got {self.noise_bound}")
        if self._room() < 1:
            raise ConfigError(
                f"{self.bits} bits cannot hold a sum of {self.num_summands} summands; "
                f"use at least {math.ceil(math.log2(2 * self.num_summands + 2)) + 1} bits"
            )

    def _room(self) -> int:
        # Each stochastically rounded summand may exceed clip_norm * scale by up to one unit,
        # and float slop adds a fraction more: reserve 2 units per summand.
        return 2 ** (self.bits - 1) - 1 - 2 * self.num_summands

    @property
    def scale(self) -> float:
        """Encoded units per float unit: the largest that keeps every admissible sum in range."""
        fit = self._room() / (self.num_summands * self.clip_norm + self.noise_bound)
        return min(fit, _MAX_SUMMAND_UNITS / self.clip_norm)

    @property
    def headroom_bits(self) -> int:
        """Bits spent so that `num_summands` summands plus the noise never wrap: the sum's range is
        this many bits wider than one summand's."""
        return math.ceil(math.log2(self.num_summands + self.noise_bound / self.clip_norm))

    @property
    def modulus(self) -> int:
        """2^bits, the ring size."""
        return 1 << self.bits

    def encode(self, vector: np.ndarray, *, rng: np.random.Generator, saturate: bool = True) -> EncodedVector:
        """Encode one summand.

        Args:
            vector: 1-D finite floats.
            rng: source of the stochastic-rounding coins (seeded by the caller; not secret).
            saturate: clip out-of-range coordinates and count them (True), or refuse (False).

        Returns:
            The words and the number of saturated coordinates.

        Raises:
            ConfigError: `vector` is not 1-D or holds NaN or infinity.
            EncodingOverflow: a coordinate is out of range and `saturate` is False.
        """
        values = np.asarray(vector, dtype=np.float64)
        if values.ndim != 1:
            raise ConfigError(f"encode takes a 1-D vector, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ConfigError("encode: the vector holds NaN or infinity")
        out_of_range = int(np.count_nonzero(np.abs(values) > self.clip_norm))
        if out_of_range and not saturate:
            raise EncodingOverflow(
                f"{out_of_range} coordinates exceed the encodable range [-{self.clip_norm}, {self.clip_norm}]"
            )
        scaled = np.clip(values, -self.clip_norm, self.clip_norm) * self.scale
        floor = np.floor(scaled)
        rounded = floor + (rng.random(values.shape[0]) < (scaled - floor))
        return EncodedVector(words=self.to_words(rounded.astype(np.int64)), saturated=out_of_range)

    def to_words(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers (e.g. encoded DP noise) as ring elements: two's complement mod 2^bits,
        as `word_dtype(bits)` words.

        Raises:
            ConfigError: `integers` is not an integer array.
        """
        values = np.asarray(integers)
        if not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"to_words takes integers, got dtype {values.dtype}")
        words = values.astype(np.int64, copy=False).view(np.uint64) & _mask(self.bits)
        return words.astype(word_dtype(self.bits), copy=False)

    def from_words(self, words: np.ndarray) -> np.ndarray:
        """Ring elements read as signed integers in [-2^(bits-1), 2^(bits-1)), int64.

        Raises:
            ConfigError: `words` is not uint32 or uint64, or an entry is >= 2^bits.
        """
        words = _check_words(words, "words")
        if self.bits < 64 and words.size and int(words.max()) >= self.modulus:
            raise ConfigError(f"a word is outside [0, 2^{self.bits})")
        if self.bits == 64:
            return words.view(np.int64).copy()
        sign = words >> np.uint64(self.bits - 1)
        return words.astype(np.int64) - (sign.astype(np.int64) << np.int64(self.bits))

    def decode_sum(self, words: np.ndarray) -> np.ndarray:
        """Decode the (wrapped) sum of encoded vectors back to floats.

        Args:
            words: uint32 or uint64 ring elements, the sum mod 2^bits of at most `num_summands`
                encodings (plus noise within `noise_bound`).

        Returns:
            float64 array: the signed sum divided by `scale`.

        Raises:
            ConfigError: `words` is not uint32 or uint64, or holds an entry >= 2^bits.
        """
        return self.from_words(words).astype(np.float64) / self.scale

    def quantisation_bound(self, num_summands: int) -> float:
        """Largest absolute error per coordinate of ``decode_sum(sum of encodings)`` against the
        exact sum of `num_summands` in-range vectors (DP noise not counted).

        Each summand is off by less than one unit from stochastic rounding, plus the float error
        of scaling (|x| * scale * 2^-53 units); converting a sum above 2^53 to float64 costs up to
        2^(bits-54) units; dividing by the scale costs a relative 2^-52 of the result.

        Raises:
            ConfigError: `num_summands` is negative or above the codec's `num_summands`.
        """
        if not 0 <= num_summands <= self.num_summands:
            raise ConfigError(f"num_summands must be in 0..{self.num_summands}, got {num_summands}")
        scale = self.scale
        per_summand = 1.0 + self.clip_norm * scale * _FLOAT_EPS
        conversion = 2.0 ** (self.bits - 54) if self.bits > 54 else 0.0
        division = (num_summands * self.clip_norm + self.noise_bound) * _FLOAT_EPS
        return (num_summands * per_summand + conversion) / scale + division


def word_bytes(bits: int) -> int:
    """Bytes per word on the wire: `bits` rounded up to whole bytes."""
    _check_bits(bits)
    return (bits + 7) // 8


_NATIVE = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


def words_to_bytes(words: np.ndarray, bits: int) -> bytes:
    """Serialise ring elements: each word as `word_bytes(bits)` little-endian bytes, in order.

    Raises:
        ConfigError: `words` is not a 1-D uint32 or uint64 array, or an entry is >= 2^bits.
    """
    width = word_bytes(bits)
    words = np.asarray(words)
    if words.dtype not in (np.uint32, np.uint64) or words.ndim != 1:
        raise ConfigError(
            f"words must be a 1-D uint32 or uint64 array, got {words.dtype} of shape {words.shape}"
        )
    if bits < 64 and words.size and int(words.max()) >> bits:
        raise ConfigError(f"a word is outside [0, 2^{bits})")
    if width in _NATIVE:
        return words.astype(_NATIVE[width], copy=False).tobytes()
    return words.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)[:, :width].tobytes()


def words_from_bytes(data: bytes, bits: int, count: int) -> np.ndarray:
    """Parse `count` words written by :func:`words_to_bytes`.

    Returns:
        A writable uint64 array of shape (count,).

    Raises:
        InvalidMessage: `data` is not exactly `count` words long, or a word is >= 2^bits.
        ConfigError: `bits` or `count` is out of range.
    """
    width = word_bytes(bits)
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    if len(data) != count * width:
        raise InvalidMessage(
            f"expected {count} words of {width} bytes ({count * width} bytes), got {len(data)}"
        )
    if width in _NATIVE:
        words = np.frombuffer(data, dtype=_NATIVE[width]).astype(np.uint64)
    else:
        padded = np.zeros((count, 8), dtype=np.uint8)
        padded[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(count, width)
        words = padded.view("<u8").reshape(count).astype(np.uint64)
    if bits < 64 and words.size and int(words.max()) >> bits:
        raise InvalidMessage(f"a word is outside [0, 2^{bits})")
    return words
