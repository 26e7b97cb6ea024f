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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom, hypergeom

from ..crypto.kdf import hkdf_sha256
from ..crypto.prg import keystream
from ..exceptions import ConfigError

__all__ = [
    "GRAPH_INFO",
    "SECURITY_BITS",
    "GraphParameters",
    "choose_parameters",
    "complete_graph",
    "correctness_failure",
    "exposure_failure",
    "harary_graph",
    "harary_neighbourhood",
    "is_connected",
    "random_split_failure",
    "ring_neighbourhood",
    "ring_neighbours",
    "security_failure",
    "seeded_permutation",
    "split_failure",
]

_log = logging.getLogger(__name__)

GRAPH_INFO = b"codream/v1/neighbour-graph"
#: The security target `SessionConfig` holds every session to: failure probability <= 2^-40.
SECURITY_BITS = 40.0

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
    _check_degree(len(order), k)
    graph = {u: ring_neighbours(order, position, k) for position, u in enumerate(order)}
    return {u: graph[u] for u in sorted(graph)}


def _check_degree(n: int, k: int) -> None:
    if not isinstance(k, int) or not 1 <= k <= n - 1:
        raise ConfigError(f"degree k must be in 1..{n - 1} for {n} clients, got {k!r}")
    if k % 2 and n % 2:
        raise ConfigError(f"no {k}-regular graph on {n} clients (k and n both odd); use an even k")


def ring_neighbours(order: Sequence[int], position: int, k: int) -> frozenset[int]:
    """The neighbours, in the Harary graph of degree k on the ring `order`, of the id at `position`:
    the k/2 nearest on either side, and for odd k the one diametrically opposite (O(k))."""
    n = len(order)
    offsets = list(range(1, k // 2 + 1))
    if k % 2:
        offsets.append(n // 2)
    ahead = (order[(position + offset) % n] for offset in offsets)
    behind = (order[(position - offset) % n] for offset in offsets)
    return frozenset(ahead) | frozenset(behind)


def harary_neighbourhood(
    ids: Iterable[int], k: int, *, seed: bytes, around: int
) -> dict[int, frozenset[int]]:
    """The neighbours of `around` and of each of its neighbours in `harary_graph(ids, k, seed=seed)`:
    everything one client's own part of the protocol reads (the holders of its shares and of each
    neighbour's), for O(n) to place the ring and O(k^2) beyond, where the whole graph is O(n k).

    Raises:
        ConfigError: as `harary_graph`, or `around` is not one of `ids`.
    """
    order = seeded_permutation(ids, seed=seed)
    return ring_neighbourhood(order, {u: i for i, u in enumerate(order)}, k, around)


def ring_neighbourhood(
    order: Sequence[int], positions: Mapping[int, int], k: int, around: int
) -> dict[int, frozenset[int]]:
    """`harary_neighbourhood` on a ring already placed (`positions` inverts `order`)."""
    _check_degree(len(order), k)
    if around not in positions:
        raise ConfigError(f"client {around} is not on the ring")
    mine = ring_neighbours(order, positions[around], k)
    hood = {v: ring_neighbours(order, positions[v], k) for v in mine}
    hood[around] = mine
    return hood


@dataclass(frozen=True, slots=True)
class GraphParameters:
    """Degree and Shamir threshold for a session, with the failure probabilities they achieve.

    Attributes:
        k: neighbours per client (n - 1 means the complete graph).
        threshold: t, shares out of a client's k + 1 holders (its neighbours and itself) needed
            to rebuild one of its secrets.
        corrupt: c = ceil(corrupt_fraction * n), the corrupt clients the bound assumes; pass it
            to `SessionConfig.corrupt`.
        security_failure: `security_failure(n, k, t, c, malicious, dropout)`.
        correctness_failure: `correctness_failure(n, k, t, dropout_rate)`.
        dropout: the dropout rate the security bound assumes (semi-honest rule), to pass to
            `SessionConfig.dropout_rate`; None for the malicious rule, which assumes none.
    """

    k: int
    threshold: int
    corrupt: int = 0
    security_failure: float = 0.0
    correctness_failure: float = 0.0
    dropout: float | None = None


def exposure_failure(n: int, k: int, t: int, corrupt: int, *, malicious: bool) -> float:
    """Union bound on some honest client's corrupt holders being enough to expose it.

    Client u's secrets are shared among its k neighbours and itself (t of k + 1 rebuild one).
    X, the number of corrupt clients among its neighbours, is hypergeometric: k draws from the
    n - 1 others, `corrupt` of them corrupt (on the complete graph X = corrupt exactly).

    - Semi-honest (the server follows the protocol, so every holder sees the same lists): honest
      holders reveal only the secret the lists call for; the other is exposed iff X >= t.
    - Malicious: the bound also holds against a server that shows different lists to different
      holders (the threshold does not rely on the consistency check alone). Each of the
      k + 1 - X honest holders, u's own share included, reveals at most one of u's two secrets and
      the X corrupt ones reveal both, so both reach t only if 2t <= (k + 1 - X) + 2X, i.e.
      X >= 2t - k - 1.

    Returns:
        min(1, n * P[X >= m]) with m = t (semi-honest) or 2t - k - 1 (malicious).
    """
    m = 2 * t - k - 1 if malicious else t
    tail = float(hypergeom.sf(m - 1, n - 1, min(corrupt, n - 1), k))
    return min(1.0, n * tail)


def split_failure(n: int, k: int, t: int, corrupt: int) -> float:
    """Union bound on the honest clients whose inputs are summed splitting into separate groups.

    On the Harary ring (even k, offsets 1..k/2) the honest clients listed alive stay connected
    unless some run of at least k/2 consecutive positions holds none of them. Take the honest
    alive client p just before such a run: its seed can be rebuilt (else its input is hidden
    anyway) only from t holders that reveal seed shares, and those are p itself, at most k/2
    neighbours on its other side, and the corrupt clients among the k/2 positions of the run
    (honest clients there are listed dropped and reveal nothing of p). So the run's first k/2
    positions hold at least t - 1 - k/2 corrupt clients, Y ~ Hyp(n - 1, corrupt, k/2). This holds
    for any dropout pattern, including one the server chooses, as long as every holder acts on
    one set of lists (semi-honest mode, or malicious mode's consistency check). Zero on the
    complete graph, where every pair of survivors shares a mask.

    Returns:
        min(1, n * P[Y >= t - 1 - k/2]), or 0 for k >= n - 1.
    """
    if k >= n - 1:
        return 0.0
    half = k // 2
    tail = float(hypergeom.sf(t - 2 - half, n - 1, min(corrupt, n - 1), half))
    return min(1.0, n * tail)


def random_split_failure(n: int, k: int, corrupt: int, dropout: float) -> float:
    """Semi-honest mode, dropouts at random: union bound on the honest clients alive for a vector
    splitting into separate groups.

    Each client is absent from a vector independently with probability `dropout`, whatever the
    graph (a semi-honest server follows the protocol, so it lists as dropped exactly the clients
    that did not answer; the graph is drawn from the session id, after the corrupt clients are
    fixed). On the Harary ring (even k, offsets 1..k/2) two honest alive clients at most k/2
    positions apart share a mask, so the honest alive clients stay connected unless some run of
    k/2 consecutive positions holds none of them, each being corrupt (its masks are the server's)
    or dropped. The k/2 positions after a client hold Z ~ Hyp(n - 1, corrupt, k/2) corrupt
    clients, and the other k/2 - Z all dropped with probability dropout^(k/2 - Z). The bound does
    not depend on t: a threshold only has to keep the corrupt holders below t (`exposure_failure`)
    and the survivors above it (`correctness_failure`). Zero on the complete graph.

    Returns:
        min(1, n * sum_z P[Z = z] * dropout^(k/2 - z)), or 0 for k >= n - 1.
    """
    if k >= n - 1:
        return 0.0
    half = k // 2
    z = np.arange(half + 1)
    pmf = hypergeom.pmf(z, n - 1, min(corrupt, n - 1), half)
    return min(1.0, n * float(np.sum(pmf * float(dropout) ** (half - z))))


def security_failure(
    n: int, k: int, t: int, corrupt: int, *, malicious: bool, dropout: float | None = None
) -> float:
    """Union bound on the server (with `corrupt` clients) learning more than the honest survivors'
    sum. Decreases as t grows.

    - Malicious mode, or no dropout model (`dropout` None): `exposure_failure` + `split_failure`,
      which hold when the server picks who "dropped".
    - Semi-honest mode with clients dropping at random at rate `dropout`:
      `exposure_failure(malicious=False)` + `random_split_failure`.
    """
    if malicious or dropout is None:
        split = split_failure(n, k, t, corrupt)
    else:
        split = random_split_failure(n, k, corrupt, dropout)
    return min(1.0, exposure_failure(n, k, t, corrupt, malicious=malicious) + split)


def correctness_failure(n: int, k: int, t: int, dropout: float) -> float:
    """Chance that some secret cannot be rebuilt, when each client drops independently with
    probability `dropout`: on the complete graph, fewer than t of the n survive; on a Harary graph,
    a union bound on some client keeping fewer than t surviving neighbours (a dropped client's
    secret must be rebuilt from them alone)."""
    if k >= n - 1:
        return float(binom.cdf(t - 1, n, 1.0 - dropout))
    return min(1.0, n * float(binom.cdf(t - 1, k, 1.0 - dropout)))


def _smallest_secure_threshold(
    n: int, k: int, corrupt: int, target: float, upto: int | None = None, dropout: float | None = None
) -> int | None:
    """The least t in [2, min(upto, k + 1)] whose security bound (malicious, or semi-honest at
    `dropout`) meets `target`; the bound falls as t grows, so one look at the top of the range
    rules a degree out."""
    malicious = dropout is None
    lo, hi = 2, k + 1 if upto is None else min(upto, k + 1)
    if hi < lo or security_failure(n, k, hi, corrupt, malicious=malicious, dropout=dropout) > target:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if security_failure(n, k, mid, corrupt, malicious=malicious, dropout=dropout) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _largest_correct_threshold(n: int, k: int, dropout: float, target: float) -> int:
    """The largest t whose `correctness_failure` meets `target` (it grows with t), or 1."""
    lo, hi = 1, k + 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if correctness_failure(n, k, mid, dropout) <= target:
            lo = mid
        else:
            hi = mid - 1
    return lo


def choose_parameters(
    n: int,
    *,
    dropout_rate: float,
    corrupt_fraction: float,
    security_bits: float = 40.0,
    correctness_bits: float = 20.0,
    complete: bool = False,
    malicious: bool = True,
) -> GraphParameters:
    """Smallest degree k, and the smallest threshold t for it, that meet both failure targets.

    n clients, each dropping independently with probability δ (`dropout_rate`); the adversary
    controls the server and c = ceil(γn) clients (`corrupt_fraction` γ). The random ring placement
    makes a client's neighbours a uniform sample of the others.

    - security, malicious rule (`malicious`, the default): `security_failure(n, k, t, c,
      malicious=True)` <= 2^-security_bits (see `exposure_failure` and `split_failure`: the
      owner's own share is counted, and neither term depends on δ, so they hold when the server
      picks who "dropped"). It holds even against a server that splits the holders' views, so
      its choice serves both modes; but it needs t > k/2 + 1, which the survivors of a dropped
      client's k neighbours must still reach, so k grows like 1/(1/2 - δ)^2 with the dropout;
    - security, semi-honest rule (`malicious=False`): `security_failure(n, k, t, c,
      malicious=False, dropout=δ)` <= 2^-security_bits, for a server that follows the protocol
      while clients drop at random at rate δ (`random_split_failure`): t need only exceed the
      corrupt holders, so k stays O(log n) with a constant that grows gently with δ (the table in
      protocols/secagg.md §3.3). Its choice is valid only for a semi-honest `SessionConfig` with
      `dropout_rate = δ` (`GraphParameters.dropout`);
    - correctness: `correctness_failure(n, k, t, δ)` <= 2^-correctness_bits.

    k runs over even values 2, 4, ... and finally n - 1 (complete graph); t is the smallest value
    meeting the security target, which leaves the most room for dropouts. As in Bell et al.
    (2020), k grows like log n for fixed δ and γ. Security is a hard requirement. Correctness is
    not: when no degree meets it (few clients, high dropout), the complete graph with its smallest
    secure t is returned, with its `correctness_failure` (the chance a session aborts for lack of
    survivors), and a warning is logged. Either way the threshold is valid for the graph returned:
    a fallback to the complete graph gets the complete graph's threshold.

    The graph is drawn from the session id, which the adversary can influence by choosing which
    advertisements make the roster (or, for a corrupt client, its keys); an adversary that tries
    2^g rosters raises the failure probability to at most 2^g times the bound, so security_bits
    should cover that budget too.

    Args:
        n: number of clients, >= 2.
        dropout_rate: δ in [0, 1).
        corrupt_fraction: γ in [0, 1).
        security_bits: σ, the security target is 2^-σ.
        correctness_bits: η, the correctness target is 2^-η.
        complete: only consider the complete graph (k = n - 1), i.e. choose t for SecAgg.
        malicious: the malicious rule (True) or the semi-honest rule with random dropouts (False).

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
    corrupt = math.ceil(corrupt_fraction * n)
    if corrupt >= n:
        raise ConfigError(f"corrupt_fraction={corrupt_fraction} leaves no honest client among {n}")
    security_target = 2.0**-security_bits
    correctness_target = 2.0**-correctness_bits
    candidates = [n - 1] if complete else list(range(2, n - 1, 2)) + [n - 1]
    assumed = None if malicious else float(dropout_rate)

    def secure(k: int, t: int) -> float:
        return security_failure(n, k, t, corrupt, malicious=malicious, dropout=assumed)

    # The smallest secure t is also the best for correctness (whose bound grows with t), so each
    # degree needs only that one threshold.
    for k in candidates:
        # Correctness caps t, security floors it: a degree works iff the floor is under the cap.
        cap = _largest_correct_threshold(n, k, dropout_rate, correctness_target)
        t = _smallest_secure_threshold(n, k, corrupt, security_target, upto=cap, dropout=assumed)
        if t is None:
            continue
        correctness = correctness_failure(n, k, t, dropout_rate)
        if correctness <= correctness_target:
            return GraphParameters(k, t, corrupt, secure(k, t), correctness, assumed)
    # Too few clients for the correctness target: the complete graph with the smallest secure
    # threshold is the most dropout-tolerant secure choice; sessions then abort more often.
    k = n - 1
    t = _smallest_secure_threshold(n, k, corrupt, security_target, dropout=assumed)
    if t is None:
        raise ConfigError(
            f"no threshold meets 2^-{security_bits} security for n={n}, corrupt_fraction={corrupt_fraction}, "
            f"even on the complete graph; need more clients or fewer corrupt clients"
        )
    params = GraphParameters(k, t, corrupt, secure(k, t), correctness_failure(n, k, t, dropout_rate), assumed)
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
