"""Randomness and an exact, vectorised Skellam sampler for the DP noise shares.

`NoiseStream` is the noise's only source of randomness: AES-256-CTR under a key from `os.urandom(32)`
(or, for reproducible tests only, a key hashed from a seed), read as little-endian uint64 words.

`sample_skellam_table` draws Sk(mu, mu) = Poisson(mu) - Poisson(mu) directly, one proposal per
coordinate instead of two Poisson draws, by rejection from a piecewise hat. The law is symmetric and
log-concave, so |X| is drawn and given a random sign. |X| takes m with probability q(m) = p(m) (m = 0)
or 2 p(m) (m >= 1), where p(m) = exp(-2 mu) I_m(2 mu); q falls with m. The integers up to T = 7
standard deviations are cut into buckets of w (a power of two) whose hat is the bucket's largest q;
beyond them a geometric tail q(R) r^j, r = p(R+1) / p(R), lies above the law by log-concavity. An
alias table picks a segment with probability proportional to its hat mass, a uniform offset (or a
geometric draw) picks m in it, and m is accepted with probability q(m) / hat(m). Most proposals are
settled by a squeeze, U < L_i / H_i with L_i the bucket's smallest q, without evaluating p; the rest
evaluate log p(m) exactly enough: with scipy's `ive` for 2 mu below 2e4, and above by the uniform
(Debye) expansion of I_m(2 mu), written as m^2 / (r + a) - m asinh(m / a) - log(2 pi r) / 2 +
log(1 + u_1 / m + ... + u_4 / m^4) with a = 2 mu and r = sqrt(m^2 + a^2), whose truncation error is
of order a^-5 and which never subtracts two numbers of size a. Accepted draws have the Skellam law up
to double rounding in the table, the log-pmf (about 1e-13) and the 51-bit coins; a proposal costs two
keystream words, and well under 1 % are rejected.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy.special import ive

from ..exceptions import ConfigError

__all__ = ["MAX_TABLE_VARIANCE", "NoiseStream", "sample_skellam_table"]

_ZERO_BLOCK = bytes(16)
_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK))
_DOUBLE = 2.0**-53
_COLUMN_BITS = 12  # 2^12 alias columns: a first word's top 12 bits pick one, its low 52 bits the coin
_COLUMNS = 1 << _COLUMN_BITS
_LOW = np.uint64((1 << (64 - _COLUMN_BITS)) - 1)
_OFFSET_BITS = 12  # a second word: offset in the bucket (low 12 bits), sign (bit 12), coin (top 51)
_COIN_BITS = 64 - _OFFSET_BITS - 1
_COIN = 2.0**-_COIN_BITS
_SPAN = 7.0  # buckets cover 7 standard deviations; the tail holds about 3e-12 of the mass
_BLOCK = 1 << 15  # proposals per pass: small enough that every temporary stays in cache
_DEBYE_FROM = 2e4  # 2 mu from which log p comes from the Debye expansion instead of scipy's ive
#: Largest variance one table serves (its buckets are at most 2^12 wide); larger variances are drawn as
#: sums of Skellams (Sk(a, a) + Sk(b, b) = Sk(a + b, a + b)).
MAX_TABLE_VARIANCE = 2.0**40


class NoiseStream:
    """Uniform words for the noise samplers: AES-256-CTR under an OS key (or a test seed's hash).

    Args:
        seed: None (production) for a key from `os.urandom(32)`; an integer >= 0 only in tests, for
            a reproducible stream.

    Raises:
        ConfigError: a negative or non-integer seed.
    """

    __slots__ = ("_encryptor",)

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            key = os.urandom(32)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        else:
            key = hashlib.sha256(b"codream/v1/test-noise-seed" + seed.to_bytes(32, "big")).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_BLOCK)).encryptor()

    def words(self, count: int) -> np.ndarray:
        """The next `count` keystream words as a writable uint64 array."""
        out = np.empty(8 * count + 16, dtype=np.uint8)
        for offset in range(0, 8 * count, _CHUNK):
            n = min(_CHUNK, 8 * count - offset)
            self._encryptor.update_into(_ZEROS[:n], out[offset : offset + n + 15])
        return out[: 8 * count].view(np.uint64)

    def uniforms(self, count: int) -> np.ndarray:
        """`count` doubles uniform on [0, 1), multiples of 2^-53."""
        return (self.words(count) >> np.uint64(11)).astype(np.float64) * _DOUBLE

    def open_uniforms(self, count: int) -> np.ndarray:
        """`count` doubles uniform on (0, 1], multiples of 2^-53 (safe to take the log of)."""
        return ((self.words(count) >> np.uint64(11)) + np.uint64(1)).astype(np.float64) * _DOUBLE


# ------------------------------------------------------------------------------ log p(m)


def _log_pmf(m: np.ndarray, mu: float) -> np.ndarray:
    """log P(Sk(mu, mu) = m) = log(exp(-2 mu) I_m(2 mu)) for integers m >= 0 (as float64)."""
    m = np.asarray(m, dtype=np.float64)
    a = 2.0 * mu
    if a < _DEBYE_FROM:
        with np.errstate(divide="ignore"):
            return np.log(ive(m, a))
    r = np.sqrt(m * m + a * a)
    tau = 1.0 / r
    t2 = (m * tau) ** 2
    series = (
        1.0
        + (3.0 - 5.0 * t2) * tau / 24.0
        + (81.0 - t2 * (462.0 - 385.0 * t2)) * tau**2 / 1152.0
        + (30375.0 - t2 * (369603.0 - t2 * (765765.0 - 425425.0 * t2))) * tau**3 / 414720.0
        + (4465125.0 - t2 * (94121676.0 - t2 * (349922430.0 - t2 * (446185740.0 - 185910725.0 * t2))))
        * tau**4
        / 39813120.0
    )
    return m * m / (r + a) - m * np.arcsinh(m / a) - 0.5 * np.log(2.0 * math.pi * r) + np.log(series)


# ------------------------------------------------------------------------------ the table


class _SkellamTable:
    """The hat of |Sk(mu, mu)|: buckets, the tail and the alias table that picks among them."""

    def __init__(self, mu: float, span: float) -> None:
        sigma = math.sqrt(2.0 * mu)
        width = 1
        while math.ceil(span * sigma / width) + 2 > _COLUMNS:  # buckets plus the tail
            width *= 2
        if width > 1 << _OFFSET_BITS:
            raise ConfigError(f"Skellam variance {2 * mu:g} is too large for one table; draw it as a sum")
        buckets = math.ceil(span * sigma / width) + 1
        starts = np.arange(buckets, dtype=np.float64) * width
        log2 = math.log(2.0)

        def log_q(m: np.ndarray) -> np.ndarray:
            return _log_pmf(m, mu) + np.where(m > 0, log2, 0.0)

        # q falls with m except from 0 to 1 (q(0) = p(0), q(1) = 2 p(1)): bucket 0 takes both ends.
        log_hat = log_q(starts)
        log_low = log_q(starts + width - 1)
        if width > 1:
            log_hat[0] = max(log_hat[0], float(log_q(np.array([1.0]))[0]))
            log_low[0] = min(float(log_q(np.array([0.0]))[0]), log_low[0])
        top = float(buckets * width)  # the tail: m = top + j, hat q(top) r^j
        log_q_top, log_q_next = (float(v) for v in log_q(np.array([top, top + 1.0])))
        log_r = log_q_next - log_q_top
        if not (math.isfinite(log_q_top) and math.isfinite(log_r) and log_r < 0):
            log_q_top, log_r = -math.inf, -1.0  # the law has no mass left this far out
        peak = float(log_hat.max())
        mass = np.append(width * np.exp(log_hat - peak), math.exp(log_q_top - peak) / -math.expm1(log_r))
        self.mu = mu
        self.width = width
        self.bodies = buckets
        # Per segment (the buckets, then the tail, whose m and hat are set per draw):
        self.starts = np.append(starts, 0.0).astype(np.int64)
        self.log_hat = np.append(log_hat, 0.0)
        # The squeeze as an integer threshold on 51-bit coins, rounded down: it never accepts more.
        self.squeeze = np.append(np.floor(np.exp(log_low - log_hat) / _COIN), 0.0).astype(np.uint64)
        self.top, self.log_r, self.log_q_top = top, log_r, log_q_top
        self.threshold, self.alias = _alias_table(mass / mass.sum())
        self.log_q = log_q


def _alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table over 2^12 columns (zero-padded): integer 52-bit thresholds and aliases."""
    scale = float(1 << (64 - _COLUMN_BITS))
    weights = np.zeros(_COLUMNS)
    weights[: probs.size] = probs * _COLUMNS
    alias = np.arange(_COLUMNS, dtype=np.int64)
    small = [i for i in range(_COLUMNS) if weights[i] < 1.0]
    large = [i for i in range(_COLUMNS) if weights[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        alias[s] = g
        weights[g] -= 1.0 - weights[s]
        (small if weights[g] < 1.0 else large).append(g)
    for i in large + small:  # what is left is 1 up to rounding
        weights[i] = 1.0
    threshold = np.minimum(np.floor(weights * scale), scale).astype(np.uint64)
    return threshold, alias


@functools.lru_cache(maxsize=64)
def _table(mu: float, span: float) -> _SkellamTable:
    return _SkellamTable(mu, span)


def _proposals(table: _SkellamTable, stream: NoiseStream, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` signed proposals (int64) and whether each is accepted.

    Two keystream words per proposal: the first picks the alias column (top 12 bits) and its coin (low
    52); the second holds the offset in the bucket (low 12 bits, of which log2(width) are used), the
    sign (bit 12) and the 51-bit acceptance coin (top 51). The tail has a zero squeeze, so it always
    takes the exact test, with two fresh words for its geometric step and its coin.
    """
    words = stream.words(2 * count)
    pick, second = words[:count], words[count:]
    column = (pick >> np.uint64(64 - _COLUMN_BITS)).view(np.int64)
    keep = (pick & _LOW) < table.threshold.take(column)
    segment = table.alias.take(column)
    np.copyto(segment, column, where=keep)
    m = table.starts.take(segment)
    m += (second & np.uint64(table.width - 1)).view(np.int64)
    coin = second >> np.uint64(64 - _COIN_BITS)
    accept = coin < table.squeeze.take(segment)
    slow = np.flatnonzero(~accept)
    if slow.size:
        u = (coin[slow].astype(np.float64) + 0.5) * _COIN  # (0, 1): the same coin, as a double
        seg = segment[slow]
        log_hat = table.log_hat.take(seg)
        ms = m[slow].astype(np.float64)
        tail = np.flatnonzero(seg == table.bodies)
        if tail.size:
            # A geometric number of steps past the last bucket: P(steps >= j) = r^j.
            v, u_tail = stream.open_uniforms(2 * tail.size).reshape(2, -1)
            steps = np.floor(np.log(v) / table.log_r)
            ms[tail] = table.top + steps
            log_hat[tail] = table.log_q_top + steps * table.log_r
            u[tail] = u_tail
        ok = np.log(u) < table.log_q(ms) - log_hat
        m[slow] = ms.astype(np.int64)
        accept[slow[ok]] = True
    negative = (second >> np.uint64(_OFFSET_BITS)) & np.uint64(1)
    np.negative(m, out=m, where=negative.astype(bool))
    return m, accept


def sample_skellam_table(
    stream: NoiseStream, *, variance: float, size: int, span: float = _SPAN
) -> np.ndarray:
    """`size` iid Sk(mu, mu) draws with variance 2 mu = `variance` (int64), as the module docstring says.

    Args:
        stream: the randomness.
        variance: 2 mu, > 0 and finite; above `MAX_TABLE_VARIANCE` the draw is an exact sum of draws.
        size: number of draws, >= 0.
        span: how many standard deviations the buckets cover (the tail takes the rest); only tests
            change it, to exercise the tail.

    Raises:
        ConfigError: a variance that is not finite and positive, or a negative size.
    """
    if not (math.isfinite(variance) and variance > 0):
        raise ConfigError(f"Skellam variance must be finite and > 0, got {variance}")
    if size < 0:
        raise ConfigError(f"size must be >= 0, got {size}")
    chunks = max(1, math.ceil(variance / MAX_TABLE_VARIANCE))
    table = _table(variance / 2.0 / chunks, float(span))
    out = np.zeros(size, dtype=np.int64)
    for _ in range(chunks):
        for first in range(0, size, _BLOCK):
            block = out[first : first + _BLOCK]
            draws, accept = _proposals(table, stream, block.size)
            todo = np.flatnonzero(~accept)
            while todo.size:
                redraw, ok = _proposals(table, stream, todo.size)
                draws[todo[ok]] = redraw[ok]
                todo = todo[~ok]
            block += draws
    return out
