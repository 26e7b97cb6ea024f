"""Round 3, server side: collect shares, rebuild the secrets the lists call for, remove the masks.

For vector j with alive set A and dropped set D:

    sum = sum_{u in A} y_u - sum_{u in A} PRG(b_u^j)
          - sum_{v in D} sum_{u in A masking with v} sign(u, v) PRG(k_uv^j)

Every revealed share is checked against the index its holder must have and against the owner's
round-1 commitment; a response with any share that fails is refused and its sender excluded, and
the secrets are rebuilt from the valid shares of the others (t of them suffice, since the holders
checked the same commitments in round 1). Each rebuilt b_u^j must match the commitment u
advertised, and each rebuilt s_sk_v^j must re-derive the advertised s_pk_v^j; if not, the owner
dealt shares that do not rebuild its secret. In semi-honest mode (clients follow the protocol) the
server then aborts (INVALID_SHARE / KEY_MISMATCH) rather than return a wrong sum; in malicious
mode it excludes that owner and finishes the vector for the others (round 3b, `r3_exclude`).

Next states: ServerMaskedInput (next vector), ServerCompleted, ServerAborted; in malicious mode
ServerConsistencyCheck comes first and ServerExclusion may come after.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, NamedTuple

import numpy as np

from ...crypto.agreement import X25519KeyPair
from ...crypto.prg import MaskAccumulator
from ...crypto.shamir import Share, reconstruct_secret
from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, InvalidShare, ProtocolAbort
from ..keys import (
    KEY_SHARE,
    SECRET_BYTES,
    SEED_SHARE,
    mask_salt,
    mask_sign,
    pairwise_key,
    seed_commitment,
    self_mask_key_for,
    share_commitment,
    word_mask,
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
from .ledger import Ledger

__all__ = [
    "Rebuilt",
    "ServerConsistencyCheck",
    "ServerUnmask",
    "check_response",
    "rebuild_secrets",
    "strip_masks",
    "unmask",
]


@dataclass(frozen=True, slots=True, eq=False)
class ServerConsistencyCheck(ServerState):
    """Malicious mode: collecting signatures of the unmask request (and of each signer's context)
    from the alive clients; a quorum of them goes back to every signer."""

    session: ServerSession
    vector: int
    request: UnmaskRequest
    partial: np.ndarray
    contexts: Mapping[int, bytes]
    inputs: Mapping[int, np.ndarray] = field(default_factory=dict)
    signatures: Ledger[int, bytes] = field(default_factory=Ledger)
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    alive: frozenset[int] | None = None
    dropped: frozenset[int] | None = None
    accepts: ClassVar[tuple[type, ...]] = (ConsistencySignature,)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        alive = frozenset(self.request.alive) if self.alive is None else self.alive
        if sender not in alive or isinstance(message, AbortMessage) or sender in self.signatures:
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
                self.request.signed_bytes(self.session.session_id, self.contexts[sender]),
            )
        except ProtocolAbort as exc:
            return replace(self, rejections=reject(self.rejections, sender, exc.reason, exc.detail))
        return replace(self, signatures=self.signatures.with_item(sender, message.signature))

    def _close(self) -> Transition:
        quorum = self.session.quorum
        # Only signatures over one context can make a quorum that every signer accepts.
        by_context: dict[bytes, dict[int, bytes]] = {}
        for cid, sig in self.signatures.items():
            by_context.setdefault(self.contexts[cid], {})[cid] = sig
        best = max(by_context.values(), key=len, default={})
        if len(best) < quorum:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {self.vector}: {len(best)} consistency signatures over one context; quorum {quorum}",
                frozenset(self.request.alive),
                self.sums,
                self.rejections,
            )
        proof = ConsistencyProof(self.vector, tuple(sorted(best.items())))
        state = ServerUnmask(
            self.session,
            self.vector,
            self.request,
            self.partial,
            self.contexts,
            allowed=frozenset(best),
            inputs=self.inputs,
            sums=self.sums,
            rejections=self.rejections,
            alive=self.alive,
            dropped=self.dropped,
        )
        outgoing: dict[int, Message] = dict.fromkeys(sorted(best), proof)
        return state, outgoing


@dataclass(frozen=True, slots=True, eq=False)
class ServerUnmask(ServerState):
    """Collecting `UnmaskResponse` messages of vector `vector` from the `allowed` clients."""

    session: ServerSession
    vector: int
    request: UnmaskRequest
    partial: np.ndarray
    contexts: Mapping[int, bytes]
    allowed: frozenset[int]
    inputs: Mapping[int, np.ndarray] = field(default_factory=dict)
    responses: Ledger[int, UnmaskResponse] = field(default_factory=Ledger)
    excluded: tuple[Rejection, ...] = ()
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    alive: frozenset[int] | None = None
    dropped: frozenset[int] | None = None
    accepts: ClassVar[tuple[type, ...]] = (UnmaskResponse,)

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if sender not in self.allowed or isinstance(message, AbortMessage) or sender in self.responses:
            if isinstance(message, AbortMessage):
                reason, detail = message.reason, f"client aborted: {message.detail}"
            else:
                reason, detail = AbortReason.UNKNOWN_PEER, "not asked, or answered twice"
            return replace(self, rejections=reject(self.rejections, sender, reason, detail))
        problem = check_response(
            self.session, self.vector, self.request, message, alive=self.alive, dropped=self.dropped
        )
        if problem is not None:
            rejections = reject(self.rejections, sender, *problem)
            return replace(self, rejections=rejections, excluded=(*self.excluded, rejections[-1]))
        return replace(self, responses=self.responses.with_item(sender, message))

    def _close(self) -> Transition:
        from .r2_masked_input import ServerMaskedInput

        config, t, j = self.session.config, self.session.config.threshold, self.vector
        responders = frozenset(self.responses)
        if len(responders) < t:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {j}: {len(responders)} valid unmask responses; threshold {t}",
                self.allowed,
                self.sums,
                self.rejections,
            )
        try:
            rebuilt = rebuild_secrets(self.session, j, self.request, self.responses.values())
            if rebuilt.bad_seeds or rebuilt.bad_keys:
                from .r3_exclude import ServerExclusion

                return ServerExclusion.start(self, rebuilt)
            words = strip_masks(self.session, j, self.request, self.partial, rebuilt, self.contexts).result()
        except ProtocolAbort as exc:
            return abort(exc.reason, f"vector {j}: {exc.detail}", responders, self.sums, self.rejections)
        sums = (*self.sums, SessionSum(j, words, tuple(self.request.alive), self.excluded))
        if j + 1 == config.num_vectors:
            return ServerCompleted(sums, self.rejections), {}
        return ServerMaskedInput.next_vector(self.session, j + 1, responders, sums, self.rejections), {}


def check_response(
    session: ServerSession,
    vector: int,
    request: UnmaskRequest,
    response: UnmaskResponse,
    *,
    alive: frozenset[int] | None = None,
    dropped: frozenset[int] | None = None,
) -> tuple[AbortReason, str] | None:
    """Why `response` must be refused, or None: it must be for `vector`, name each owner once,
    reveal only what `request` calls for of owners its sender holds, and every share must carry
    the sender's index among the owner's holders and match the owner's round-1 commitment.
    `alive` and `dropped` are the request's lists as sets, when the caller has them already (one
    set per vector, not one per response)."""
    sender = response.sender
    if response.vector != vector:
        return AbortReason.UNEXPECTED_VECTOR, f"answered vector {response.vector}"
    seed_owners = [w for w, _ in response.seed_shares]
    key_owners = [w for w, _ in response.key_shares]
    if len(set(seed_owners)) != len(seed_owners) or len(set(key_owners)) != len(key_owners):
        return AbortReason.REPEATED_PEER, "two shares for one owner"
    holds = session.peers[sender] | {sender}
    alive = frozenset(request.alive) if alive is None else alive
    dropped = frozenset(request.dropped) if dropped is None else dropped
    if not set(seed_owners) <= alive & holds or not set(key_owners) <= dropped & holds:
        return AbortReason.FORBIDDEN_REQUEST, "shares of owners it was not asked about"
    for kind, pairs in ((SEED_SHARE, response.seed_shares), (KEY_SHARE, response.key_shares)):
        for owner, share in pairs:
            if share.index != session.indices[owner][sender]:
                return AbortReason.INVALID_SHARE, f"share of client {owner} carries index {share.index}"
            committed = session.commitments[owner][sender][2 * vector + kind]
            expected = share_commitment(
                session.session_id, owner=owner, holder=sender, vector=vector, kind=kind, share=share
            )
            if not hmac.compare_digest(expected, committed):
                return AbortReason.INVALID_SHARE, f"share of client {owner} misses its commitment"
    return None


class Rebuilt(NamedTuple):
    """The secrets of vector j rebuilt from valid shares, and the owners whose shares did not
    rebuild theirs (malicious mode only; semi-honest mode aborts instead).

    Attributes:
        seeds: b_u^j of every alive owner, bar `bad_seeds`.
        keys: s_sk_v^j of every dropped owner that some alive client masks with, bar `bad_keys`.
        bad_seeds: alive owners whose >= t valid seed shares miss their seed commitment, with
            those shares by holder (the evidence against them).
        bad_keys: dropped owners whose >= t valid key shares miss their advertised key, and why.
    """

    seeds: dict[int, bytes]
    keys: dict[int, X25519KeyPair]
    bad_seeds: dict[int, tuple[tuple[int, Share], ...]]
    bad_keys: dict[int, str]


def rebuild_secrets(
    session: ServerSession, vector: int, request: UnmaskRequest, responses: Iterable[UnmaskResponse]
) -> Rebuilt:
    """Rebuild the secrets `request` calls for from `responses` (already checked by
    `check_response`).

    Raises:
        ProtocolAbort: TOO_FEW_PEERS (fewer than t valid shares of a needed secret); in semi-honest
            mode also INVALID_SHARE (a rebuilt seed that misses its commitment) and KEY_MISMATCH (a
            rebuilt mask key that does not re-derive the advertised public key).
    """
    config = session.config
    t = config.threshold
    seed_shares: dict[int, list[tuple[int, Share]]] = {u: [] for u in request.alive}
    key_shares: dict[int, list[tuple[int, Share]]] = {v: [] for v in request.dropped}
    for response in sorted(responses, key=lambda r: r.sender):
        for owner, share in response.seed_shares:
            seed_shares[owner].append((response.sender, share))
        for owner, share in response.key_shares:
            key_shares[owner].append((response.sender, share))
    out = Rebuilt({}, {}, {}, {})
    for u in request.alive:
        seed = _rebuild(seed_shares[u], t, f"self-mask seed of client {u}")
        commitment = session.adverts[u].seed_commitments[vector]
        if seed is not None and hmac.compare_digest(seed_commitment(u, vector, seed), commitment):
            out.seeds[u] = seed
        elif config.malicious:
            out.bad_seeds[u] = tuple(seed_shares[u])
        else:
            raise ProtocolAbort(
                AbortReason.INVALID_SHARE, f"client {u} dealt seed shares that miss its commitment"
            )
    kept = frozenset(request.alive) - frozenset(out.bad_seeds)
    for v in request.dropped:
        if not session.peers.get(v, frozenset()) & kept:
            continue
        secret = _rebuild(key_shares[v], t, f"mask key of client {v}")
        key = None if secret is None else X25519KeyPair.from_private_bytes(secret)
        if key is not None and hmac.compare_digest(key.public_bytes(), session.adverts[v].mask_keys[vector]):
            out.keys[v] = key
        elif config.malicious:
            out.bad_keys[v] = "dealt key shares that do not rebuild its advertised mask key"
        else:
            raise ProtocolAbort(
                AbortReason.KEY_MISMATCH, f"client {v} dealt key shares that miss its advertised key"
            )
    return out


def strip_masks(
    session: ServerSession,
    vector: int,
    request: UnmaskRequest,
    partial: np.ndarray,
    rebuilt: Rebuilt,
    contexts: Mapping[int, bytes],
    *,
    left_out: Iterable[np.ndarray] = (),
) -> MaskAccumulator:
    """`partial` minus the masked inputs `left_out`, the self masks of the rebuilt seeds and the
    pairwise masks of the rebuilt keys with the alive clients kept (those not in `bad_seeds`)."""
    sid, bits = session.session_id, session.config.bits
    total = MaskAccumulator(partial.shape[0], bits=bits)
    total.add_words(partial)
    for y in left_out:
        total.add_words((np.uint64(0) - y) & word_mask(bits))
    for seed in rebuilt.seeds.values():
        total.add_mask(self_mask_key_for(seed, session=sid, vector=vector), sign=-1)
    kept = frozenset(request.alive) - frozenset(rebuilt.bad_seeds)
    for v, key in rebuilt.keys.items():
        for u in sorted(session.peers.get(v, frozenset()) & kept):
            # u added sign(u, v) * PRG(k_uv), keyed with u's context; take it out.
            salt = mask_salt(sid, contexts[u])
            k_uv = pairwise_key(key, session.adverts[u].mask_keys[vector], session=salt, vector=vector)
            total.add_mask(k_uv, sign=-mask_sign(u, v))
    return total


def unmask(
    session: ServerSession,
    vector: int,
    request: UnmaskRequest,
    partial: np.ndarray,
    responses: Iterable[UnmaskResponse],
    contexts: Mapping[int, bytes],
) -> np.ndarray:
    """Rebuild the secrets `request` calls for from `responses` (already checked by
    `check_response`) and strip every mask off `partial`.

    Raises:
        ProtocolAbort: as `rebuild_secrets`, and INVALID_SHARE when an owner's shares do not
            rebuild its secret (which malicious mode resolves in round 3b instead).
    """
    rebuilt = rebuild_secrets(session, vector, request, responses)
    bad = sorted(rebuilt.bad_seeds) + sorted(rebuilt.bad_keys)
    if bad:
        raise ProtocolAbort(AbortReason.INVALID_SHARE, f"clients {bad} dealt shares that miss their checks")
    return strip_masks(session, vector, request, partial, rebuilt, contexts).result()


def _rebuild(shares: list[tuple[int, Share]], threshold: int, what: str) -> bytes | None:
    """The secret from the first `threshold` valid shares, or None if they do not lie on one
    polynomial that gives a 32-byte secret (each share matched its commitment, so any t of them
    rebuild the owner's secret if the owner dealt honestly; the caller checks the result).

    Raises:
        ProtocolAbort: TOO_FEW_PEERS, fewer than `threshold` valid shares.
    """
    if len(shares) < threshold:
        raise ProtocolAbort(
            AbortReason.TOO_FEW_PEERS, f"{len(shares)} valid shares of the {what}; threshold {threshold}"
        )
    try:
        return reconstruct_secret(
            [s for _, s in shares[:threshold]], threshold=threshold, length=SECRET_BYTES
        )
    except InvalidShare:
        return None
