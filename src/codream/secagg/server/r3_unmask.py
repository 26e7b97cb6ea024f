"""Round 3, server side: collect shares, rebuild the secrets the lists call for, remove the masks.

For vector j with alive set A and dropped set D:

    sum = sum_{u in A} y_u - sum_{u in A} PRG(b_u^j)
          - sum_{v in D} sum_{u in A masking with v} sign(u, v) PRG(k_uv^j)

Each rebuilt b_u^j must match the commitment u advertised, and each rebuilt s_sk_v^j must re-derive
the advertised s_pk_v^j; otherwise the server aborts (INVALID_SHARE / KEY_MISMATCH) rather than
return a wrong sum.

Next states: ServerMaskedInput (next vector), ServerAborted; in malicious mode
ServerConsistencyCheck comes first.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from ...crypto.agreement import X25519KeyPair
from ...crypto.prg import MaskAccumulator
from ...crypto.shamir import Share, reconstruct_secret
from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, InvalidShare, ProtocolAbort
from ..keys import (
    SECRET_BYTES,
    mask_sign,
    pairwise_key,
    seed_commitment,
    self_mask_key_for,
)
from ..messages import (
    AbortMessage,
    ConsistencyProof,
    ConsistencySignature,
    Message,
    UnmaskRequest,
    UnmaskResponse,
)
from .base import (
    Rejection,
    ServerSession,
    ServerState,
    SessionSum,
    Transition,
    abort,
    reject,
)
from .completed import ServerCompleted

__all__ = ["ServerConsistencyCheck", "ServerUnmask", "unmask"]


@dataclass(frozen=True, slots=True, eq=False)
class ServerConsistencyCheck(ServerState):
    """Malicious mode: collecting signatures of the unmask request from the alive clients."""

    session: ServerSession
    vector: int
    request: UnmaskRequest
    partial: np.ndarray
    signatures: dict[int, bytes] = field(default_factory=dict)
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (ConsistencySignature,)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if sender not in self.request.alive or isinstance(message, AbortMessage) or sender in self.signatures:
            if isinstance(message, AbortMessage):
                reason, detail = message.reason, f"client aborted: {message.detail}"
            else:
                reason, detail = AbortReason.UNKNOWN_PEER, "not alive, or signed twice"
            return replace(self, rejections=reject(self.rejections, sender, reason, detail))
        try:
            if message.vector != self.vector:
                raise ProtocolAbort(AbortReason.UNEXPECTED_VECTOR, f"signed vector {message.vector}")
            verify_signature(
                self.session.config.verify_key(sender),
                message.signature,
                self.request.signed_bytes(self.session.session_id),
            )
        except ProtocolAbort as exc:
            return replace(self, rejections=reject(self.rejections, sender, exc.reason, exc.detail))
        return replace(self, signatures={**self.signatures, sender: message.signature})

    def _close(self) -> Transition:
        t = self.session.config.threshold
        if len(self.signatures) < t:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {self.vector}: {len(self.signatures)} consistency signatures; threshold {t}",
                frozenset(self.request.alive),
                self.sums,
            )
        proof = ConsistencyProof(self.vector, tuple(sorted(self.signatures.items())))
        state = ServerUnmask(
            self.session,
            self.vector,
            self.request,
            self.partial,
            allowed=frozenset(self.signatures),
            sums=self.sums,
        )
        return state, dict.fromkeys(sorted(self.signatures), proof)


@dataclass(frozen=True, slots=True, eq=False)
class ServerUnmask(ServerState):
    """Collecting `UnmaskResponse` messages of vector `vector` from the `allowed` clients."""

    session: ServerSession
    vector: int
    request: UnmaskRequest
    partial: np.ndarray
    allowed: frozenset[int]
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (UnmaskResponse,)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if sender not in self.allowed or isinstance(message, AbortMessage) or sender in self.responses:
            if isinstance(message, AbortMessage):
                reason, detail = message.reason, f"client aborted: {message.detail}"
            else:
                reason, detail = AbortReason.UNKNOWN_PEER, "not asked, or answered twice"
            return replace(self, rejections=reject(self.rejections, sender, reason, detail))
        alive, dropped = set(self.request.alive), set(self.request.dropped)
        holds = self.session.peers[sender] | {sender}
        seed_owners = [w for w, _ in message.seed_shares]
        key_owners = [w for w, _ in message.key_shares]
        problem = None
        if message.vector != self.vector:
            problem = (AbortReason.UNEXPECTED_VECTOR, f"answered vector {message.vector}")
        elif len(set(seed_owners)) != len(seed_owners) or len(set(key_owners)) != len(key_owners):
            problem = (AbortReason.REPEATED_PEER, "two shares for one owner")
        elif not set(seed_owners) <= alive & holds or not set(key_owners) <= dropped & holds:
            problem = (AbortReason.FORBIDDEN_REQUEST, "shares of owners it was not asked about")
        if problem is not None:
            return replace(self, rejections=reject(self.rejections, sender, *problem))
        return replace(self, responses={**self.responses, sender: message})

    def _close(self) -> Transition:
        from .r2_masked_input import ServerMaskedInput

        config, t, j = self.session.config, self.session.config.threshold, self.vector
        responders = frozenset(self.responses)
        if len(responders) < t:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {j}: {len(responders)} unmask responses; threshold {t}",
                self.allowed,
                self.sums,
            )
        try:
            words = unmask(self.session, j, self.request, self.partial, self.responses.values())
        except ProtocolAbort as exc:
            return abort(exc.reason, f"vector {j}: {exc.detail}", responders, self.sums)
        sums = (*self.sums, SessionSum(j, words, tuple(self.request.alive)))
        if j + 1 == config.num_vectors:
            return ServerCompleted(sums), {}
        return ServerMaskedInput.next_vector(self.session, j + 1, responders, sums), {}


def unmask(
    session: ServerSession, vector: int, request: UnmaskRequest, partial: np.ndarray, responses
) -> np.ndarray:
    """Rebuild the secrets `request` calls for from `responses` and strip every mask off `partial`.

    Raises:
        ProtocolAbort: TOO_FEW_PEERS (fewer than t shares of a needed secret), INVALID_SHARE (shares
            inconsistent, or a rebuilt seed that misses its commitment), KEY_MISMATCH (a rebuilt mask
            key that does not re-derive the advertised public key).
    """
    config, sid = session.config, session.session_id
    t, bits = config.threshold, config.bits
    seed_shares: dict[int, list[Share]] = {u: [] for u in request.alive}
    key_shares: dict[int, list[Share]] = {v: [] for v in request.dropped}
    for response in sorted(responses, key=lambda r: r.sender):
        for owner, share in response.seed_shares:
            seed_shares[owner].append(share)
        for owner, share in response.key_shares:
            key_shares[owner].append(share)
    alive = frozenset(request.alive)
    total = MaskAccumulator(partial.shape[0], bits=bits)
    total.add_words(partial)
    for u in request.alive:
        seed = _rebuild(seed_shares[u], t, f"self-mask seed of client {u}")
        commitment = session.adverts[u].seed_commitments[vector]
        if not hmac.compare_digest(seed_commitment(u, vector, seed), commitment):
            raise ProtocolAbort(
                AbortReason.INVALID_SHARE, f"rebuilt seed of client {u} misses its commitment"
            )
        total.add_mask(self_mask_key_for(seed, session=sid, vector=vector), sign=-1)
    for v in request.dropped:
        maskers = session.peers.get(v, frozenset()) & alive
        if not maskers:
            continue
        secret = _rebuild(key_shares[v], t, f"mask key of client {v}")
        key = X25519KeyPair.from_private_bytes(secret)
        if not hmac.compare_digest(key.public_bytes(), session.adverts[v].mask_keys[vector]):
            raise ProtocolAbort(
                AbortReason.KEY_MISMATCH, f"rebuilt mask key of client {v} is not the advertised one"
            )
        for u in sorted(maskers):
            # u added sign(u, v) * PRG(k_uv); take it out.
            k_uv = pairwise_key(key, session.adverts[u].mask_keys[vector], session=sid, vector=vector)
            total.add_mask(k_uv, sign=-mask_sign(u, v))
    return total.result()


def _rebuild(shares: list[Share], threshold: int, what: str) -> bytes:
    if len(shares) < threshold:
        raise ProtocolAbort(
            AbortReason.TOO_FEW_PEERS, f"{len(shares)} shares of the {what}; threshold {threshold}"
        )
    try:
        return reconstruct_secret(shares, threshold=threshold, length=SECRET_BYTES)
    except InvalidShare as exc:
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"{what}: {exc}") from None
