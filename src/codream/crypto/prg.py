"""AES-256-CTR as the pseudo-random generator that expands a 32-byte key into mask words.

Every mask key is derived freshly through HKDF for one (pair or seed, session, vector), so each
key encrypts exactly one keystream and the initial counter block can be all zeros. The keystream
is produced by OpenSSL in one call and reinterpreted by numpy: no Python loop touches the words.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..exceptions import ConfigError

__all__ = ["KEY_LENGTH", "MaskAccumulator", "keystream", "mask_words"]

KEY_LENGTH = 32
_ZERO_BLOCK = bytes(16)
# Encrypting a shared, read-only zero buffer into a preallocated array is several times faster
# than `encryptor.update(bytes(n))`, whose time goes to allocating and zeroing fresh memory.
_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK))
# Masks are added in pieces of this many bytes: small enough to stay in the core's cache between
# the AES pass that writes a piece and the add that reads it.
_ADD_CHUNK = 1 << 18


def _check_key(key: bytes) -> None:
    if len(key) != KEY_LENGTH:
        raise ConfigError(f"mask key must be {KEY_LENGTH} bytes, got {len(key)}")


def _keystream_array(key: bytes, length: int) -> np.ndarray:
    """The keystream as a uint8 array of `length` bytes (possibly read-only)."""
    encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_BLOCK)).encryptor()
    if length <= _CHUNK:
        return np.frombuffer(encryptor.update(_ZEROS[:length]), dtype=np.uint8)
    # Longer streams go chunk by chunk into one preallocated array; update_into needs room for
    # one block beyond its input.
    out = np.empty(length + 15, dtype=np.uint8)
    for offset in range(0, length, _CHUNK):
        n = min(_CHUNK, length - offset)
        encryptor.update_into(_ZEROS[:n], out[offset : offset + n + 15])
    return out[:length]


def keystream(key: bytes, length: int) -> bytes:
    """The first `length` bytes of the AES-256-CTR keystream under `key`, counter block 0.

    The counter block is a 128-bit big-endian integer starting at zero and incremented once per
    16-byte block (so block i of the keystream is AES_key(i.to_bytes(16, "big"))).

    Raises:
        ConfigError: the key is not 32 bytes or `length` is negative.
    """
    _check_key(key)
    if length < 0:
        raise ConfigError(f"keystream length must be >= 0, got {length}")
    return _keystream_array(key, length).tobytes()


def _check_words(count: int, bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 64:
        raise ConfigError(f"bits must be in 1..64, got {bits}")
    if count < 0:
        raise ConfigError(f"word count must be >= 0, got {count}")


def _raw_words(key: bytes, count: int, bits: int) -> np.ndarray:
    """Unreduced keystream words: little-endian uint32 for bits <= 32, else uint64."""
    width = 4 if bits <= 32 else 8
    return _keystream_array(key, width * count).view("<u4" if width == 4 else "<u8")


def mask_words(key: bytes, count: int, *, bits: int) -> np.ndarray:
    """Expand `key` into `count` uniformly random words of `bits` bits.

    For ``bits <= 32`` the keystream is read as little-endian uint32 words (4 bytes per word),
    otherwise as little-endian uint64 words (8 bytes per word); each word is then reduced to its
    low `bits` bits. Both widths keep every word uniform on [0, 2^bits).

    Args:
        key: 32-byte AES-256 key, used for this one expansion only.
        count: number of words.
        bits: word width of the ring Z_{2^bits}, 1..64.

    Returns:
        uint64 array of shape (count,), every entry in [0, 2^bits).

    Raises:
        ConfigError: bad key length, negative count or `bits` outside 1..64.
    """
    _check_words(count, bits)
    _check_key(key)
    words = _raw_words(key, count, bits).astype(np.uint64)
    if bits not in (32, 64):
        words &= np.uint64((1 << bits) - 1)
    return words


class MaskAccumulator:
    """x + sum of ± masks modulo 2^bits, without materialising any mask as uint64.

    The fast path of masking: keystream words are added straight into an accumulator of the
    narrowest native width whose wrap-around is a multiple of 2^bits (uint32 for bits <= 32,
    uint64 otherwise), so each mask costs one AES pass and one in-place add. Words are reduced
    to `bits` bits once, in :meth:`result`. The result equals
    ``(x + sum(sign * mask_words(key, count, bits=bits))) mod 2^bits``.

    Args:
        count: words per vector.
        bits: ring width, 1..64.

    Raises:
        ConfigError: negative count or `bits` outside 1..64.
    """

    __slots__ = ("_acc", "_scratch", "bits", "count")

    def __init__(self, count: int, *, bits: int) -> None:
        _check_words(count, bits)
        self.count = count
        self.bits = bits
        self._acc = np.zeros(count, dtype=np.dtype("<u4") if bits <= 32 else np.dtype("<u8"))
        self._scratch: np.ndarray | None = None

    def add_words(self, words: np.ndarray) -> None:
        """Add plain ring elements (e.g. the encoded input).

        Raises:
            ConfigError: `words` is not an unsigned integer array of length `count`.
        """
        words = np.asarray(words)
        if words.shape != (self.count,) or words.dtype.kind != "u":
            raise ConfigError(
                f"expected {self.count} unsigned words, got {words.dtype} of shape {words.shape}"
            )
        np.add(self._acc, words, out=self._acc, casting="unsafe")

    def add_mask(self, key: bytes, *, sign: int = 1) -> None:
        """Add (sign = +1) or subtract (sign = -1) the mask ``mask_words(key, count, bits=bits)``.

        Raises:
            ConfigError: bad key length or a sign other than ±1.
        """
        self.add_masks(((key, sign),))

    def add_masks(self, masks: Iterable[tuple[bytes, int]]) -> None:
        """`add_mask` for each (key, sign): one call per vector, so that the per-mask cost is the
        cipher's alone (at d = 1e4 a mask's keystream takes about as long as a Python call).

        Raises:
            ConfigError: bad key length or a sign other than ±1 (checked before any mask is added,
                so a refused call leaves the accumulator as it was).
        """
        masks = list(masks)
        for key, sign in masks:
            _check_key(key)
            if sign not in (1, -1):
                raise ConfigError(f"sign must be +1 or -1, got {sign}")
        # The keystream goes, a cache-sized piece at a time, into one scratch buffer and is added
        # from there: no allocation per mask, and the words are still in cache when added. CTR
        # runs on across the pieces, so the words are those of `mask_words`.
        acc, width = self._acc, self._acc.itemsize
        step = _ADD_CHUNK // width
        if self._scratch is None:
            self._scratch = np.empty(min(self.count, step) * width + 15, dtype=np.uint8)
        scratch = self._scratch
        if self.count <= step:  # one piece per mask: the common case, kept tight
            size = self.count * width
            zeros, into, words = _ZEROS[:size], scratch[: size + 15], scratch[:size].view(acc.dtype)
            for key, sign in masks:
                encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_BLOCK)).encryptor()
                encryptor.update_into(zeros, into)
                (np.add if sign > 0 else np.subtract)(acc, words, out=acc)
            return
        for key, sign in masks:
            encryptor = Cipher(algorithms.AES(bytes(key)), modes.CTR(_ZERO_BLOCK)).encryptor()
            op = np.add if sign > 0 else np.subtract
            for start in range(0, self.count, step):
                n = min(step, self.count - start)
                encryptor.update_into(_ZEROS[: n * width], scratch[: n * width + 15])
                part = acc[start : start + n]
                op(part, scratch[: n * width].view(acc.dtype), out=part)

    def result(self) -> np.ndarray:
        """The accumulated words, uint64 in [0, 2^bits)."""
        words = self._acc.astype(np.uint64)
        if self.bits not in (32, 64):
            words &= np.uint64((1 << self.bits) - 1)
        return words
