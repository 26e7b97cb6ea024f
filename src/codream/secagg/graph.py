"""Neighbour graphs for secure aggregation: complete (SecAgg) or random Harary (SecAgg+).

In SecAgg every pair of clients shares a mask and every client Shamir-shares its secrets with all
others: O(n) work and traffic per client. SecAgg+ (Bell et al., CCS 2020) restricts both to the
neighbours in a random k-regular graph with k of order log n, which keeps the server from learning
anything beyond the sum as long as, with overwhelming probability,

- the honest survivors stay connected (so no partial sum of a group of clients is exposed);
- no client has so many corrupt neighbours that they and the server can rebuild both of its
  secrets (the self-mask seed from some neighbours and the mask key from the others);
- every client keeps at least t surviving neighbours, so its secrets can still be rebuilt.

:func:`choose_parameters` turns these three conditions into numbers (see its docstring).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, hypergeom

from ..crypto.kdf import hkdf_sha256
from ..crypto.prg import keystream
from ..exceptions import ConfigError

__all__ = [
    "GRAPH_INFO",
    "GraphParameters",
    "choose_parameters",
    "complete_graph",
    "harary_graph",
    "is_connected",
    "seeded_permutation",
]

_log = logging.getLogger(__name__)

GRAPH_INFO = b"codream/v1/neighbour-graph"

Graph = dict[int, frozenset[int]]


def _sorted_ids(ids: Iterable[int]) -> list[int]:
    ids = list(ids)
    for i in ids:
        if not isinstance(i, int | np.integer) or isinstance(i, bool):
            raise ConfigError(f"client ids must be integers, got {i!r}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"client ids repeat: {sorted(ids)}")
    if not ids:
        raise ConfigError("a graph needs at least one client")
    return sorted(int(i) for i in ids)


def complete_graph(ids: Iterable[int]) -> Graph:
    """Every client is the neighbour of every other (and never of itself).

    Raises:
        ConfigError: ids are empty, repeat or are not integers.
    """
    nodes = _sorted_ids(ids)
    everyone = frozenset(nodes)
    return {u: everyone - {u} for u in nodes}


class _StreamIntegers:
    """Uniform integers below a bound from an AES-CTR keystream, by rejection sampling."""

    __slots__ = ("_key", "_offset", "_buffer", "_blocks")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._blocks = 0
        self._buffer = b""
        self._offset = 0

    def _next_word(self) -> int:
        if self._offset + 8 > len(self._buffer):
            # Extend the keystream; re-derive from the start and skip what was used (cheap: the
            # permutation of n ids needs about n words).
            self._blocks = max(64, 2 * self._blocks)
            self._buffer = keystream(self._key, 16 * self._blocks)
        word = int.from_bytes(self._buffer[self._offset : self._offset + 8], "little")
        self._offset += 8
        return word

    def below(self, bound: int) -> int:
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            word = self._next_word()
            if word < limit:
                return word % bound


def seeded_permutation(ids: Iterable[int], *, seed: bytes) -> list[int]:
    """The sorted `ids` shuffled by Fisher-Yates with coins from AES-256-CTR.

    The AES key is HKDF-SHA256(seed, salt=b"", info=GRAPH_INFO); the keystream is read as
    little-endian uint64 words, and the swap partner of position i (from n-1 down to 1) is the
    first word below the largest multiple of (i+1) under 2^64, reduced mod (i+1).

    Raises:
        ConfigError: ids are empty, repeat or are not integers; the seed is empty.
    """
    if not isinstance(seed, bytes | bytearray) or not seed:
        raise ConfigError("the graph seed must be non-empty bytes")
    order = _sorted_ids(ids)
    coins = _StreamIntegers(hkdf_sha256(bytes(seed), salt=b"", info=GRAPH_INFO))
    for i in range(len(order) - 1, 0, -1):
        j = coins.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def harary_graph(ids: Iterable[int], k: int, *, seed: bytes) -> Graph:
    """A random k-regular Harary graph over `ids`.

    The ids are placed on a ring in the order of :func:`seeded_permutation`, and each is joined
    to the k/2 nearest on either side; for odd k (which needs an even number of clients) also to
    the one diametrically opposite. The result is k-connected, and every client and the server
    derive the same graph from the same seed.

    Args:
        ids: distinct client ids, at least 2.
        k: degree, 1..n-1; k = n-1 gives the complete graph.
        seed: bytes both sides agree on (e.g. the session id).

    Returns:
        Each id mapped to its neighbours.

    Raises:
        ConfigError: bad ids or seed, k out of range, or k and n both odd (no k-regular graph).
    """
    order = seeded_permutation(ids, seed=seed)
    n = len(order)
    if not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ConfigError(f"degree k must be in 1..{n - 1} for {n} clients, got {k!r}")
    if k % 2 and n % 2:
        raise ConfigError(f"no {k}-regular graph on {n} clients (k and n both odd); use an even k")
    offsets = list(range(1, k // 2 + 1))
    if k % 2:
        offsets.append(n // 2)
    neighbours: dict[int, set[int]] = {u: set() for u in order}
    for position, u in enumerate(order):
        for offset in offsets:
            v = order[(position + offset) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return {u: frozenset(neighbours[u]) for u in sorted(neighbours)}


@dataclass(frozen=True, slots=True)
class GraphParameters:
    """Degree and Shamir threshold for a session, with the failure probabilities they achieve.

    Attributes:
        k: neighbours per client (n - 1 means the complete graph).
        threshold: t, shares out of a client's k neighbours needed to rebuild its secrets.
        security_failure: union bound on the chance that some client has so many corrupt
            neighbours that its input could be exposed, or that the honest survivors split.
        correctness_failure: union bound on the chance that some client keeps fewer than t
            surviving neighbours.
    """

    k: int
    threshold: int
    security_failure: float = 0.0
    correctness_failure: float = 0.0


def _security_bound(n: int, k: int, t: int, dropout: float, corrupt: float) -> float:
    """Union bound on a security failure with degree k and threshold t (see `choose_parameters`)."""
    # Security 1: the server with c corrupt neighbours of an honest u can collect t shares of both
    # of u's secrets only if 2t <= k + c (honest neighbours each reveal at most one of the two).
    # u's neighbours are a uniform k-subset of the n - 1 others, ceil(γn) of them corrupt.
    corrupt_total = min(n - 1, math.ceil(corrupt * n))
    corrupt_tail = n * float(hypergeom.sf(2 * t - k - 1, n - 1, corrupt_total, k))
    # Security 2: on the ring, the clients that are honest and alive stay connected unless k/2
    # consecutive positions are all removed (corrupt or dropped); union bound over n windows.
    removed = min(1.0, dropout + corrupt)
    split = 0.0 if k >= n - 1 else n * removed ** (k // 2)
    return min(1.0, corrupt_tail + split)


def _correctness_bound(n: int, k: int, t: int, dropout: float) -> float:
    """Union bound on some client keeping fewer than t of its k neighbours."""
    return min(1.0, n * float(binom.cdf(t - 1, k, 1.0 - dropout)))


def _smallest_secure_threshold(n: int, k: int, dropout: float, corrupt: float, target: float) -> int | None:
    """The least t in (k/2, k] whose security bound meets `target` (the bound falls as t grows)."""
    lo, hi = k // 2 + 1, k
    if _security_bound(n, k, hi, dropout, corrupt) > target:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if _security_bound(n, k, mid, dropout, corrupt) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def choose_parameters(
    n: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    security_bits: float = 40.0,
    correctness_bits: float = 20.0,
    complete: bool = False,
) -> GraphParameters:
    """Smallest degree k, and the smallest threshold t for it, that meet both failure targets.

    The rule, for n clients of which each drops independently with probability δ
    (`dropout_rate`) and a fraction γ (`corrupt_fraction`) colludes with the server; a random
    ring placement makes the neighbours of a client a uniform sample, whose corrupt count is
    follows the hypergeometric law (k draws from n - 1 others, ceil(γn) of them corrupt):

    - security: n * P[Hyp(k) >= 2t - k] + n * (δ + γ)^(k/2) <= 2^-security_bits. The first
      term bounds the chance that some client's corrupt neighbours plus the honest ones that
      each reveal one secret reach t for both secrets; the second that k/2 consecutive ring
      positions are all corrupt or dropped, the only way the honest survivors of a Harary ring
      can split into groups whose partial sums would be exposed;
    - correctness: n * P[Bin(k, 1 - δ) < t] <= 2^-correctness_bits, i.e. every client keeps t
      surviving neighbours.

    k runs over even values 2, 4, ... and finally n - 1 (complete graph, where the split term
    vanishes); t is the smallest value above k/2 meeting the security target, which leaves the
    most room for dropouts. As in Bell et al. (2020), k grows like log n for fixed δ and γ.
    Security is a hard requirement. Correctness is not: when no degree meets it (few clients,
    high dropout), the complete graph with the smallest secure t is returned, with its
    `correctness_failure` (the chance a session aborts for lack of survivors), and a warning is
    logged.

    Args:
        n: number of clients, >= 2.
        dropout_rate: δ in [0, 1).
        corrupt_fraction: γ in [0, 1).
        security_bits: σ, the security target is 2^-σ.
        correctness_bits: η, the correctness target is 2^-η.
        complete: only consider the complete graph (k = n - 1), i.e. choose t for SecAgg.

    Returns:
        The parameters and the failure bounds they achieve.

    Raises:
        ConfigError: arguments out of range, or even the complete graph cannot meet the
            security target (too many corrupt clients).
    """
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"n must be an integer >= 2, got {n!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ConfigError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if not 0.0 <= corrupt_fraction < 1.0:
        raise ConfigError(f"corrupt_fraction must be in [0, 1), got {corrupt_fraction}")
    if security_bits <= 0 or correctness_bits <= 0:
        raise ConfigError("security_bits and correctness_bits must be positive")
    security_target = 2.0**-security_bits
    correctness_target = 2.0**-correctness_bits
    candidates = [n - 1] if complete else list(range(2, n - 1, 2)) + [n - 1]
    # The smallest secure t is also the best for correctness (whose bound grows with t), so each
    # degree needs only that one threshold checked.
    for k in candidates:
        t = _smallest_secure_threshold(n, k, dropout_rate, corrupt_fraction, security_target)
        if t is None:
            continue
        correctness = _correctness_bound(n, k, t, dropout_rate)
        if correctness <= correctness_target:
            return GraphParameters(
                k, t, _security_bound(n, k, t, dropout_rate, corrupt_fraction), correctness
            )
    # Too few clients for the correctness target: the complete graph with the smallest secure
    # threshold is the most dropout-tolerant secure choice; sessions then abort more often.
    k = n - 1
    t = _smallest_secure_threshold(n, k, dropout_rate, corrupt_fraction, security_target)
    if t is None:
        raise ConfigError(
            f"no threshold meets 2^-{security_bits} security for n={n}, corrupt_fraction={corrupt_fraction}, "
            f"even on the complete graph; need more clients or fewer corrupt clients"
        )
    params = GraphParameters(
        k,
        t,
        _security_bound(n, k, t, dropout_rate, corrupt_fraction),
        _correctness_bound(n, k, t, dropout_rate),
    )
    _log.warning(
        "n=%d, dropout_rate=%g: no degree meets 2^-%g correctness; complete graph, t=%d, abort bound %.3g",
        n,
        dropout_rate,
        correctness_bits,
        params.threshold,
        params.correctness_failure,
    )
    return params


def is_connected(graph: Graph, nodes: Iterable[int] | None = None) -> bool:
    """Whether the subgraph induced by `nodes` (default: all) is connected."""
    keep = set(graph) if nodes is None else set(nodes)
    if not keep:
        return True
    start = next(iter(keep))
    seen = {start}
    frontier = [start]
    while frontier:
        u = frontier.pop()
        for v in graph[u]:
            if v in keep and v not in seen:
                seen.add(v)
                frontier.append(v)
    return seen == keep
