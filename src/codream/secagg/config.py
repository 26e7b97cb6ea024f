"""The public parameters of one secure-aggregation session, fixed before any key is advertised.

Every participant (the server and each client) holds the same `SessionConfig`. Its digest is folded
into the session id, so two parties with different configs never agree on a key.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from ..exceptions import ConfigError

__all__ = ["MAX_CLIENT_ID", "SUPPORTED_BITS", "GraphKind", "SessionConfig"]

#: Client ids travel as unsigned 32-bit integers; the top value is reserved for the server.
MAX_CLIENT_ID = 0xFFFFFFFE

#: Ring widths the fixed-point codec and the AES-CTR mask expansion both support.
SUPPORTED_BITS = frozenset(range(8, 65))


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
        threshold: Shamir threshold t; also the least number of clients alive at every step.
        vector_lengths: number of words of each planned vector, in the order they are summed.
        bits: words are summed modulo 2**bits.
        graph: complete (every client shares with every other) or Harary (each with `degree` others).
        degree: neighbours per client in a Harary graph (ignored for complete graphs).
        graph_seed: public randomness that fixes the Harary graph, so that all parties derive the same.
        malicious: malicious-server mode: signed key advertisements and the consistency check.
        verify_keys: Ed25519 public keys of the clients (same order as `client_ids`), malicious mode only.
    """

    round_index: int
    client_ids: tuple[int, ...]
    threshold: int
    vector_lengths: tuple[int, ...]
    bits: int = 32
    graph: GraphKind = GraphKind.COMPLETE
    degree: int = 0
    graph_seed: bytes = b""
    malicious: bool = False
    verify_keys: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        ids = tuple(self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        object.__setattr__(self, "vector_lengths", tuple(self.vector_lengths))
        object.__setattr__(self, "verify_keys", tuple(self.verify_keys))
        if not 0 <= self.round_index < 2**32:
            raise ConfigError(f"round_index must fit in 32 bits, got {self.round_index}")
        if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
            raise ConfigError(f"client ids must be ints, got {ids!r}")
        if list(ids) != sorted(set(ids)):
            raise ConfigError(f"client ids must be unique and increasing, got {ids!r}")
        if len(ids) < 2:
            raise ConfigError(f"a session needs at least 2 clients, got {len(ids)}")
        if ids[0] < 0 or ids[-1] > MAX_CLIENT_ID:
            raise ConfigError(f"client ids must lie in [0, {MAX_CLIENT_ID}]")
        if not self.vector_lengths:
            raise ConfigError("a session needs at least one planned vector")
        if len(self.vector_lengths) >= 2**32 or any(not 0 < n < 2**32 for n in self.vector_lengths):
            raise ConfigError(f"vector lengths must be positive 32-bit counts, got {self.vector_lengths!r}")
        if self.bits not in SUPPORTED_BITS:
            raise ConfigError(f"bits must be in 8..64, got {self.bits}")
        if not isinstance(self.graph, GraphKind):
            raise ConfigError(f"graph must be a GraphKind, got {self.graph!r}")
        # A threshold of 1 would hand every neighbour the secret itself.
        holders = len(ids)
        if self.graph is GraphKind.HARARY:
            if not 2 <= self.degree < len(ids):
                raise ConfigError(f"Harary degree must lie in [2, {len(ids) - 1}], got {self.degree}")
            if self.degree % 2 and len(ids) % 2:
                raise ConfigError(f"no {self.degree}-regular graph on {len(ids)} clients; use an even degree")
            if len(self.graph_seed) != 32:
                raise ConfigError("a Harary graph needs a 32-byte public graph_seed")
            holders = self.degree + 1
        if not 2 <= self.threshold <= holders:
            raise ConfigError(
                f"threshold must lie in [2, {holders}] (neighbours plus the client), got {self.threshold}"
            )
        if self.malicious:
            if len(self.verify_keys) != len(ids) or any(len(k) != 32 for k in self.verify_keys):
                raise ConfigError("malicious mode needs one 32-byte Ed25519 verify key per client")
        elif self.verify_keys:
            raise ConfigError("verify_keys are only used in malicious mode")

    @property
    def num_vectors(self) -> int:
        return len(self.vector_lengths)

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    def verify_key(self, client_id: int) -> bytes:
        """The Ed25519 public key of `client_id` (malicious mode)."""
        return self.verify_keys[self.client_ids.index(client_id)]

    def neighbours(self) -> dict[int, frozenset[int]]:
        """Each client's neighbours (never itself), from H3's graph builders."""
        from .graph import complete_graph, harary_graph

        if self.graph is GraphKind.COMPLETE:
            graph = complete_graph(self.client_ids)
        else:
            graph = harary_graph(self.client_ids, self.degree, seed=self.graph_seed)
        return {u: frozenset(graph[u]) - {u} for u in self.client_ids}

    def digest(self) -> bytes:
        """SHA-256 over a canonical encoding of every field, folded into the session id."""
        h = hashlib.sha256(b"codream/v1/session-config")
        h.update(struct.pack(">IIIB", self.round_index, self.threshold, self.bits, self.malicious))
        h.update(struct.pack(">I", len(self.client_ids)))
        h.update(b"".join(struct.pack(">I", i) for i in self.client_ids))
        h.update(struct.pack(">I", len(self.vector_lengths)))
        h.update(b"".join(struct.pack(">I", n) for n in self.vector_lengths))
        graph = self.graph.value.encode()
        h.update(struct.pack(">B", len(graph)) + graph + struct.pack(">I", self.degree))
        h.update(struct.pack(">B", len(self.graph_seed)) + self.graph_seed)
        h.update(b"".join(self.verify_keys))
        return h.digest()
