"""The set-up of the deviating-server and corrupt-client tests: signed sessions, inputs, the attacker.

Shared by test_secagg_malicious.py and test_secagg_bad_dealer.py, which play different deviations
against the same kind of session and judge them by what the same attacker can rebuild; conftest's
`make_config` builds its sessions here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from codream.crypto.agreement import X25519KeyPair
from codream.crypto.prg import mask_words
from codream.crypto.shamir import Share, reconstruct_secret
from codream.exceptions import InvalidShare
from codream.secagg.config import GraphKind, SessionConfig
from codream.secagg.keys import mask_salt, mask_sign, pairwise_key, seed_commitment, self_mask_key_for
from codream.secagg.messages import MaskedInput, Message, UnmaskResponse
from codream.secagg.runner import provision_signers
from fakes import Harness, random_words


def signed_config(
    n: int,
    t: int,
    *,
    round_index: int,
    corrupt: int = 0,
    malicious: bool = True,
    lengths: tuple[int, ...] = (4,),
    graph: GraphKind = GraphKind.COMPLETE,
    degree: int = 0,
    bits: int = 32,
) -> tuple[SessionConfig, Mapping | None]:
    """A session of clients 0..n-1 and, in malicious mode, the clients' signers."""
    verify_keys, signers = provision_signers(range(n)) if malicious else ((), None)
    config = SessionConfig(
        round_index=round_index,
        client_ids=tuple(range(n)),
        threshold=t,
        vector_lengths=lengths,
        bits=bits,
        graph=graph,
        degree=degree,
        corrupt=corrupt,
        malicious=malicious,
        verify_keys=verify_keys,
    )
    return config, signers


def session_inputs(config: SessionConfig, seed: int = 0) -> list[dict[int, np.ndarray]]:
    """Random words for every client and vector of `config`, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return [{c: random_words(rng, m, config.bits) for c in config.client_ids} for m in config.vector_lengths]


class Attacker:
    """What a deviating server holds: every masked input, every revealed share, every advertised key."""

    def __init__(self, h: Harness) -> None:
        """Call once every client holds its round-1 session (public data only is taken from it)."""
        state = h.clients[h.config.client_ids[0]]
        self.config = h.config
        self.session_id = state.session.session_id
        self.graph = h.config.neighbours(self.session_id)
        # The advertised mask public keys and seed commitments (public; read from the clients'
        # states for brevity, they are the same bytes the server relayed).
        sessions = {c: s.session for c, s in h.clients.items() if hasattr(s, "session")}
        self.public = {c: tuple(m.public_bytes() for m in s.secrets.masks) for c, s in sessions.items()}
        self.commitments = {
            c: tuple(seed_commitment(c, j, b) for j, b in enumerate(s.secrets.seeds))
            for c, s in sessions.items()
        }
        self.masked: dict[int, MaskedInput] = {}
        self.seed_shares: dict[int, dict[int, Share]] = {}
        self.key_shares: dict[int, dict[int, Share]] = {}

    def record(self, messages: Mapping[int, Message | None]) -> None:
        for m in messages.values():
            if isinstance(m, MaskedInput):
                self.masked[m.sender] = m
            elif isinstance(m, UnmaskResponse):
                for owner, share in m.seed_shares:
                    self.seed_shares.setdefault(owner, {})[m.sender] = share
                for owner, share in m.key_shares:
                    self.key_shares.setdefault(owner, {})[m.sender] = share

    def _secret(self, shares: dict[int, Share]) -> bytes | None:
        if len(shares) < self.config.threshold:
            return None
        try:
            return reconstruct_secret(list(shares.values()), threshold=self.config.threshold, length=32)
        except InvalidShare:
            return None

    def seed(self, owner: int, j: int) -> bytes | None:
        seed = self._secret(self.seed_shares.get(owner, {}))
        return (
            seed
            if seed is not None and seed_commitment(owner, j, seed) == self.commitments[owner][j]
            else None
        )

    def mask_key(self, owner: int, j: int) -> X25519KeyPair | None:
        secret = self._secret(self.key_shares.get(owner, {}))
        if secret is None:
            return None
        key = X25519KeyPair.from_private_bytes(secret)
        return key if key.public_bytes() == self.public[owner][j] else None

    def attempt_unmask(self, target: int, j: int, peers: Iterable[int]) -> np.ndarray | None:
        """x_target from y_target alone, if the revealed shares give its seed and, for each peer, the
        mask key of one end of the pair; None when they do not."""
        y = self.masked[target]
        seed = self.seed(target, j)
        own_key = self.mask_key(target, j)
        if seed is None:
            return None
        bits, length = self.config.bits, self.config.vector_lengths[j]
        out = [int(w) for w in y.words]
        for i, w in enumerate(
            mask_words(self_mask_key_for(seed, session=self.session_id, vector=j), length, bits=bits)
        ):
            out[i] -= int(w)
        salt = mask_salt(self.session_id, y.context)
        for v in peers:
            key = own_key or self.mask_key(v, j)
            if key is None:
                return None
            other = self.public[v][j] if own_key else self.public[target][j]
            k = pairwise_key(key, other, session=salt, vector=j)
            for i, w in enumerate(mask_words(k, length, bits=bits)):
                out[i] -= mask_sign(target, v) * int(w)
        return np.array([o % (1 << bits) for o in out], dtype=np.uint64)
