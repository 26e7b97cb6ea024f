"""The public parameters of one secure-aggregation session, fixed before any key is advertised.

Every participant (the server and each client) holds the same `SessionConfig`. Its digest is folded
into the session id, so two parties with different configs never agree on a key.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..exceptions import ConfigError

__all__ = ["MAX_CLIENT_ID", "SUPPORTED_BITS", "GraphKind", "SessionConfig", "graph_seed"]

#: Client ids travel as unsigned 32-bit integers; the top value is reserved for the server.
MAX_CLIENT_ID = 0xFFFFFFFE

#: Ring widths the fixed-point codec and the AES-CTR mask expansion both support.
SUPPORTED_BITS = frozenset(range(8, 65))

_GRAPH_SEED_LABEL = b"codream/v1/graph-seed"


class GraphKind(enum.Enum):
    """Who shares secrets with whom: everyone (SecAgg) or a random k-regular Harary graph (SecAgg+)."""

    COMPLETE = "complete"
    HARARY = "harary"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Everything public about one session.

    Attributes:
        round_index: the federation round this session serves; part of the session id.
        client_ids: the clients invited to the session, strictly increasing.
        threshold: Shamir threshold t: shares, out of a client's holders (its neighbours and
            itself), that rebuild one of its secrets.
        vector_lengths: number of words of each planned vector, in the order they are summed.
        bits: words are summed modulo 2**bits.
        graph: complete (every client shares with every other) or Harary (each with `degree` others).
        degree: neighbours per client in a Harary graph (ignored for complete graphs); even, or
            n - 1 (which is the complete graph). The graph itself is drawn from the session id
            (`neighbours`), so it is fixed only once every key is advertised.
        corrupt: c, how many clients may collude with the server. The threshold and the graph are
            checked against it, and malicious mode's consistency check needs a quorum of more than
            (roster + c) / 2 signatures.
        min_survivors: n_min, the fewest clients whose inputs a sum may hold; every client refuses
            to unmask a vector with fewer alive. Default (and at least): the threshold.
        malicious: malicious-server mode: signed key advertisements and the consistency check.
        verify_keys: Ed25519 public keys of the clients (same order as `client_ids`), malicious mode only.
        dropout_rate: semi-honest mode only: the rate δ at which clients drop at random, which the
            security check may then assume (`graph.random_split_failure`; `choose_parameters(...,
            malicious=False)` picks k and t for it). None (the default, and malicious mode): no
            dropout model, the bound that holds whoever drops.

    Raises:
        ConfigError: any field out of range, or a combination that cannot be made sound (see
            protocols/secagg.md §2): a threshold the corrupt clients could reach, a Harary graph
            whose security bound misses 2^-40, too few clients for the quorum.
    """

    round_index: int
    client_ids: tuple[int, ...]
    threshold: int
    vector_lengths: tuple[int, ...]
    bits: int = 32
    graph: GraphKind = GraphKind.COMPLETE
    degree: int = 0
    corrupt: int = 0
    min_survivors: int | None = None
    malicious: bool = False
    verify_keys: tuple[bytes, ...] = ()
    dropout_rate: float | None = None
    #: Each invited id's position in `client_ids`: O(1) membership and key look-ups per message.
    _positions: Mapping[int, int] = field(init=False, repr=False, compare=False)
    _digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "vector_lengths", tuple(self.vector_lengths))
        object.__setattr__(self, "verify_keys", tuple(self.verify_keys))
        for name in ("round_index", "threshold", "bits", "degree", "corrupt"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an int, got {value!r}")
        if not 0 <= self.round_index < 2**32:
            raise ConfigError(f"round_index must fit in 32 bits, got {self.round_index}")
        if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
            raise ConfigError(f"client ids must be ints, got {ids!r}")
        if list(ids) != sorted(set(ids)):
            raise ConfigError(f"client ids must be unique and increasing, got {ids!r}")
        n = len(ids)
        if n < 2:
            raise ConfigError(f"a session needs at least 2 clients, got {n}")
        if ids[0] < 0 or ids[-1] > MAX_CLIENT_ID:
            raise ConfigError(f"client ids must lie in [0, {MAX_CLIENT_ID}]")
        object.__setattr__(self, "_positions", {cid: i for i, cid in enumerate(ids)})
        if not self.vector_lengths:
            raise ConfigError("a session needs at least one planned vector")
        if len(self.vector_lengths) >= 2**32 or any(not 0 < m < 2**32 for m in self.vector_lengths):
            raise ConfigError(f"vector lengths must be positive 32-bit counts, got {self.vector_lengths!r}")
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(f"bits must be in 8..64, got {self.bits}")
        if not isinstance(self.graph, GraphKind):
            raise ConfigError(f"graph must be a GraphKind, got {self.graph!r}")
        if not 0 <= self.corrupt < n:
            raise ConfigError(f"corrupt must lie in [0, {n - 1}] for {n} clients, got {self.corrupt}")
        if self.graph is GraphKind.HARARY:
            if not 2 <= self.degree <= n - 1:
                raise ConfigError(f"Harary degree must lie in [2, {n - 1}], got {self.degree}")
            if self.degree % 2 and self.degree != n - 1:
                # The ring argument behind the split bound (graph.split_failure) needs even k.
                raise ConfigError(f"Harary degree must be even (or n - 1 = complete), got {self.degree}")
        # A threshold of 1 would hand every holder the secret itself.
        if not 2 <= self.threshold <= self.holders:
            raise ConfigError(
                f"threshold must lie in [2, {self.holders}] (neighbours and the client), got {self.threshold}"
            )
        if self.dropout_rate is not None:
            if isinstance(self.dropout_rate, bool) or not isinstance(self.dropout_rate, int | float):
                raise ConfigError(f"dropout_rate must be a float, got {self.dropout_rate!r}")
            object.__setattr__(self, "dropout_rate", float(self.dropout_rate))
            if not 0.0 <= self.dropout_rate < 1.0:
                raise ConfigError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}")
            if self.malicious:
                raise ConfigError(
                    "malicious mode assumes the server picks who drops; dropout_rate is semi-honest"
                )
        self._check_security()
        n_min = self.threshold if self.min_survivors is None else self.min_survivors
        if not isinstance(n_min, int) or isinstance(n_min, bool) or not self.threshold <= n_min <= n:
            raise ConfigError(
                f"min_survivors must lie in [threshold={self.threshold}, {n}], got {self.min_survivors!r}"
            )
        if n_min < self.corrupt + 2:
            # The server may learn the sum over the honest clients alive: at least n_min - c of
            # them. With one, that sum is one client's input.
            raise ConfigError(
                f"min_survivors={n_min} with corrupt={self.corrupt} leaves a sum over a single honest "
                f"client; need at least {self.corrupt + 2} survivors (more clients, or a larger threshold)"
            )
        object.__setattr__(self, "min_survivors", n_min)
        if self.malicious:
            if len(self.verify_keys) != n or any(
                not isinstance(k, bytes) or len(k) != 32 for k in self.verify_keys
            ):
                raise ConfigError("malicious mode needs one 32-byte Ed25519 verify key per client")
            if len(set(self.verify_keys)) != n:
                raise ConfigError("malicious mode needs a distinct verify key per client")
        elif self.verify_keys:
            raise ConfigError("verify_keys are only used in malicious mode")

    def _check_security(self) -> None:
        """Refuse a threshold and graph that `corrupt` clients and the server could beat."""
        from .graph import SECURITY_BITS, security_failure

        n, t, c = self.num_clients, self.threshold, self.corrupt
        failure = security_failure(
            n, self.effective_degree, t, c, malicious=self.malicious, dropout=self.dropout_rate
        )
        if failure <= 2.0**-SECURITY_BITS:
            return
        mode = "malicious" if self.malicious else "semi-honest"
        if self.is_complete and self.malicious:
            need = f"2t > n + c = {n + c} (t > {(n + c) // 2})"
        elif self.is_complete:
            need = f"t > c = {c}"
        else:
            need = "a larger threshold or degree (graph.choose_parameters picks one)"
        if self.dropout_rate is not None:
            mode += f" at dropout rate {self.dropout_rate:g}"
        raise ConfigError(
            f"{mode} mode with n={n}, c={c}, {self.graph.value} graph k={self.effective_degree}, t={t}: "
            f"security failure bound {failure:.3g} exceeds 2^-{SECURITY_BITS:g}; need {need}"
        )

    @property
    def num_vectors(self) -> int:
        return len(self.vector_lengths)

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    @property
    def is_complete(self) -> bool:
        """True for the complete graph, including a Harary graph of degree n - 1."""
        return self.graph is GraphKind.COMPLETE or self.degree >= self.num_clients - 1

    @property
    def effective_degree(self) -> int:
        """Neighbours per client: n - 1 on the complete graph, else `degree`."""
        return self.num_clients - 1 if self.is_complete else self.degree

    @property
    def holders(self) -> int:
        """How many clients hold shares of one client's secrets (its neighbours and itself)."""
        return self.effective_degree + 1

    def quorum(self, roster_size: int) -> int:
        """Consistency signatures a client needs before unmasking (malicious mode): more than
        (roster + c) / 2, so that two quorums share more than c signers, hence an honest one."""
        return (roster_size + self.corrupt) // 2 + 1

    def invites(self, client_id: int) -> bool:
        """Whether `client_id` is one of `client_ids` (O(1))."""
        return client_id in self._positions

    def verify_key(self, client_id: int) -> bytes:
        """The Ed25519 public key of `client_id` (malicious mode)."""
        return self.verify_keys[self._positions[client_id]]

    def neighbours(self, session_id: bytes | None = None) -> dict[int, frozenset[int]]:
        """Each client's neighbours (never itself).

        A Harary graph is drawn from `graph_seed(session_id)`: the session id hashes every
        advertised key, so the graph is fixed only after round 0 and the server cannot choose it
        (protocols/secagg.md §5.0). The complete graph needs no session id.

        Raises:
            ConfigError: a Harary graph without a 32-byte session id.
        """
        if self.is_complete:
            return dict(_graph(self.client_ids, 0, b""))
        if not isinstance(session_id, bytes) or len(session_id) != 32:
            raise ConfigError("a Harary graph is drawn from the 32-byte session id")
        return dict(_graph(self.client_ids, self.degree, graph_seed(session_id)))

    def neighbourhood(self, client_id: int, session_id: bytes | None = None) -> dict[int, frozenset[int]]:
        """The neighbours of `client_id` and of each of its neighbours: all that one client's own
        part of the protocol reads. On a Harary graph this costs O(n) to place the ring and O(k^2)
        beyond, not the O(n k) of `neighbours` (which the server needs); on the complete graph it is
        the whole graph.

        Raises:
            ConfigError: a Harary graph without a 32-byte session id, or `client_id` not invited.
        """
        if self.is_complete:
            return self.neighbours()
        if not isinstance(session_id, bytes) or len(session_id) != 32:
            raise ConfigError("a Harary graph is drawn from the 32-byte session id")
        from .graph import ring_neighbourhood

        order, positions = _ring(self.client_ids, graph_seed(session_id))
        return ring_neighbourhood(order, positions, self.degree, client_id)

    def digest(self) -> bytes:
        """SHA-256 over a canonical encoding of every field, folded into the session id (computed
        once: it hashes every id)."""
        try:
            return self._digest
        except AttributeError:
            object.__setattr__(self, "_digest", self._compute_digest())
            return self._digest

    def _compute_digest(self) -> bytes:
        h = hashlib.sha256(b"codream/v1/session-config")
        h.update(struct.pack(">IIIB", self.round_index, self.threshold, self.bits, self.malicious))
        h.update(struct.pack(">I", len(self.client_ids)))
        h.update(b"".join(struct.pack(">I", i) for i in self.client_ids))
        h.update(struct.pack(">I", len(self.vector_lengths)))
        h.update(b"".join(struct.pack(">I", n) for n in self.vector_lengths))
        graph = self.graph.value.encode()
        h.update(struct.pack(">B", len(graph)) + graph + struct.pack(">I", self.degree))
        h.update(struct.pack(">II", self.corrupt, self.min_survivors))
        h.update(b"".join(self.verify_keys))
        if self.dropout_rate is not None:
            h.update(b"dropout" + struct.pack(">d", self.dropout_rate))
        return h.digest()


@functools.lru_cache(maxsize=16)
def _graph(ids: tuple[int, ...], degree: int, seed: bytes) -> dict[int, frozenset[int]]:
    """The graph every party of a session derives (cached: in one process, each simulated client
    would otherwise rebuild the same graph). Degree 0: complete. Callers copy the dict."""
    from .graph import complete_graph, harary_graph

    graph = complete_graph(ids) if degree == 0 else harary_graph(ids, degree, seed=seed)
    return {u: frozenset(graph[u]) - {u} for u in ids}


@functools.lru_cache(maxsize=16)
def _ring(ids: tuple[int, ...], seed: bytes) -> tuple[tuple[int, ...], dict[int, int]]:
    """The Harary ring (its order and each id's position), placed once per session and process:
    simulated clients in one process share it. Callers do not mutate it."""
    from .graph import seeded_permutation

    order = tuple(seeded_permutation(ids, seed=seed))
    return order, {u: i for i, u in enumerate(order)}


def graph_seed(session_id: bytes) -> bytes:
    """The Harary graph's seed: SHA-256("codream/v1/graph-seed" || session id)."""
    return hashlib.sha256(_GRAPH_SEED_LABEL + session_id).digest()
