"""Round 3, client side: reveal the shares that let the server remove the masks of vector j.

For each peer the server lists as alive (its y^j arrived) the client reveals its share of that
peer's self-mask seed b^j; for each peer listed as dropped, its share of that peer's mask key
s_sk^j. Never both for one peer and one vector: the two lists must be disjoint, and the state moves
on after one answer, so a second request for the same vector is an unexpected message. Either share
alone is useless; both together would unmask that peer's y^j.

In malicious-server mode the client first signs the lists it was given and its context
(`ConsistencySignature`) and reveals nothing until the server shows a quorum of more than
(roster + corrupt) / 2 alive clients that signed the very same lists and context
(`ConsistencyProof`). Two quorums share more than `corrupt` signers, so at least one honest client,
and an honest client signs one request per vector: at most one view of each vector can be shown a
quorum, whatever the server and the corrupt clients do.

Next states: MaskedInputState (next vector), Completed (after the last vector),
ConsistencyCheckState (malicious mode), UnmaskedState / UnmaskedLastState (malicious mode, after
the answer), Aborted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, ProtocolAbort
from ..messages import ConsistencyProof, ConsistencySignature, UnmaskRequest, UnmaskResponse
from .base import ClientContext, ClientSession, ClientState, Transition
from .completed import Completed

__all__ = ["ConsistencyCheckState", "UnmaskState", "check_unmask_request"]


def check_unmask_request(session: ClientSession, vector: int, request: UnmaskRequest) -> None:
    """Refuse an unmask request that would reveal too much or that contradicts what this client saw.

    Raises:
        ProtocolAbort: UNEXPECTED_VECTOR, REPEATED_PEER, OVERLAPPING_SETS, UNKNOWN_PEER,
            INCONSISTENT_VIEW or TOO_FEW_PEERS (see protocols/secagg.md, round 3).
    """
    config, me = session.ctx.config, session.ctx.client_id
    if request.vector != vector:
        raise ProtocolAbort(
            AbortReason.UNEXPECTED_VECTOR, f"unmask request for vector {request.vector}, not {vector}"
        )
    alive, dropped = set(request.alive), set(request.dropped)
    if len(alive) != len(request.alive) or len(dropped) != len(request.dropped):
        raise ProtocolAbort(AbortReason.REPEATED_PEER, "the alive or dropped list names a client twice")
    both = alive & dropped
    if both:
        raise ProtocolAbort(
            AbortReason.OVERLAPPING_SETS, f"clients listed both alive and dropped: {sorted(both)}"
        )
    unknown = (alive | dropped) - session.roster
    if unknown:
        raise ProtocolAbort(
            AbortReason.UNKNOWN_PEER, f"lists name clients that never advertised: {sorted(unknown)}"
        )
    if me not in alive:
        raise ProtocolAbort(AbortReason.INCONSISTENT_VIEW, "this client's own input is not listed as alive")
    mine = set(session.peers)
    listed_neighbours = (alive | dropped) & session.neighbours
    if listed_neighbours != mine:
        raise ProtocolAbort(
            AbortReason.INCONSISTENT_VIEW,
            "the lists disagree with the neighbours this client exchanged shares with: "
            f"missing {sorted(mine - listed_neighbours)}, extra {sorted(listed_neighbours - mine)}",
        )
    # Semi-honest lists hold only this client and its neighbours; `survivors` counts all alive.
    # Malicious-mode lists are whole (every signer checks the same ones), so it is their length.
    if request.survivors < len(alive) or (config.malicious and request.survivors != len(alive)):
        raise ProtocolAbort(
            AbortReason.INCONSISTENT_VIEW,
            f"{request.survivors} survivors claimed with {len(alive)} listed alive",
        )
    if request.survivors < config.min_survivors:
        raise ProtocolAbort(
            AbortReason.TOO_FEW_PEERS,
            f"only {request.survivors} clients alive; min_survivors {config.min_survivors}",
        )
    if config.malicious and len(alive) < config.quorum(len(session.roster)):
        raise ProtocolAbort(
            AbortReason.TOO_FEW_PEERS,
            f"only {len(alive)} clients alive; consistency quorum {config.quorum(len(session.roster))}",
        )


def _respond(session: ClientSession, vector: int, request: UnmaskRequest, context: bytes) -> Transition:
    """The response for a checked request, and the state after this vector (in malicious mode one
    that can still reveal pairwise keys with a peer the server excludes for vector j, round 3b)."""
    from .r2_masked_input import MaskedInputState
    from .r3_exclude import Answered, UnmaskedLastState, UnmaskedState

    me = session.ctx.client_id
    alive, dropped = set(request.alive), set(request.dropped)
    # `held` has no entry for a peer whose bundle was set aside: nothing of it is revealed.
    seed_shares = tuple((w, session.held[w][vector][0]) for w in sorted(session.held) if w in alive)
    key_shares = tuple((w, session.held[w][vector][1]) for w in sorted(session.held) if w in dropped)
    response = UnmaskResponse(me, vector, seed_shares, key_shares)
    last = vector + 1 == session.ctx.config.num_vectors
    if session.ctx.config.malicious:
        answered = Answered(vector, request, context)
        if last:
            return UnmaskedLastState(me, session, answered), response
        return UnmaskedState(session, vector + 1, answered), response
    if last:
        return Completed(me), response
    return MaskedInputState(session, vector + 1), response


@dataclass(frozen=True, slots=True, eq=False)
class UnmaskState(ClientState):
    """y^j sent; waiting for the server's alive and dropped lists of vector `vector`."""

    session: ClientSession
    vector: int
    context: bytes
    accepts: ClassVar[tuple[type, ...]] = (UnmaskRequest,)

    @property
    def client_id(self) -> int:
        return self.session.ctx.client_id

    def _context(self) -> ClientContext:
        return self.session.ctx

    def _handle(self, message: UnmaskRequest) -> Transition:
        s = self.session
        check_unmask_request(s, self.vector, message)
        if not s.ctx.config.malicious:
            return _respond(s, self.vector, message, self.context)
        assert s.ctx.signer is not None  # start_client guarantees a signer in malicious mode
        signature = s.ctx.signer.sign(message.signed_bytes(s.session_id, self.context))
        return (
            ConsistencyCheckState(s, self.vector, message, self.context),
            ConsistencySignature(s.ctx.client_id, self.vector, signature),
        )


@dataclass(frozen=True, slots=True, eq=False)
class ConsistencyCheckState(ClientState):
    """Malicious mode: lists signed; waiting for proof that a quorum of alive clients saw the same
    lists and the same context."""

    session: ClientSession
    vector: int
    request: UnmaskRequest
    context: bytes
    accepts: ClassVar[tuple[type, ...]] = (ConsistencyProof,)

    @property
    def client_id(self) -> int:
        return self.session.ctx.client_id

    def _context(self) -> ClientContext:
        return self.session.ctx

    def _handle(self, message: ConsistencyProof) -> Transition:
        s, config = self.session, self.session.ctx.config
        if message.vector != self.vector:
            raise ProtocolAbort(
                AbortReason.UNEXPECTED_VECTOR,
                f"consistency proof for vector {message.vector}, not {self.vector}",
            )
        signers = [cid for cid, _ in message.signatures]
        if len(set(signers)) != len(signers):
            raise ProtocolAbort(AbortReason.REPEATED_PEER, "the consistency proof names a signer twice")
        outsiders = set(signers) - set(self.request.alive)
        if outsiders:
            raise ProtocolAbort(AbortReason.UNKNOWN_PEER, f"signers not listed alive: {sorted(outsiders)}")
        quorum = config.quorum(len(s.roster))
        if len(signers) < quorum:
            raise ProtocolAbort(
                AbortReason.TOO_FEW_PEERS,
                f"only {len(signers)} signatures; the quorum for a roster of {len(s.roster)} "
                f"with corrupt={config.corrupt} is {quorum}",
            )
        signed = self.request.signed_bytes(s.session_id, self.context)
        for cid, signature in message.signatures:
            try:
                verify_signature(config.verify_key(cid), signature, signed)
            except ProtocolAbort:
                raise ProtocolAbort(
                    AbortReason.INCONSISTENT_VIEW,
                    f"client {cid}'s signature does not cover the lists and context this client has",
                ) from None
        return _respond(s, self.vector, self.request, self.context)
