"""Round 3b, client side (malicious mode): reveal pairwise keys with a peer the server excludes.

After answering the unmask request of vector j, a client can still be asked (`ExclusionRequest`)
for the pairwise mask key k_uD^j it used with a peer D whose secret of vector j did not rebuild
from valid shares. It reveals the key only when that cannot expose D:

* D listed **dropped** in the request this client answered (which a quorum signed, so it is the
  only view of vector j): honest holders never reveal D's seed for vector j, so D's masked input,
  if the server has it, keeps its self mask; k_uD^j reveals no more than D's mask key, which the
  protocol releases for a dropped client anyway;
* D listed **alive**: only with evidence that D dealt bad seed shares, which an honest D never
  gives: D's Ed25519 signature over its seed-share roots (round 1), the commitments to every
  holder's seed share of vector j that hash to the root, and at least t revealed shares, each with
  its holder's index and matching its commitment, that do not rebuild D's advertised seed
  commitment. Then D is corrupt and knows k_uD^j already.

A request that fails these checks aborts the client (FORBIDDEN_REQUEST, INVALID_SIGNATURE): the
server asked for more than the protocol allows. One request per vector; after it, or after the
input of vector j + 1, nothing more of vector j is revealed.

Next states: MaskedInputState (next vector), Completed (after the last vector), Aborted.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import ClassVar

from ...crypto.shamir import reconstruct_secret
from ...crypto.signing import verify_signature
from ...exceptions import AbortReason, InvalidShare, ProtocolAbort
from ..keys import (
    SECRET_BYTES,
    SEED_SHARE,
    mask_salt,
    pairwise_key,
    seed_commitment,
    seed_share_root,
    share_commitment,
    share_commitments_signed_bytes,
    share_holders,
    share_indices,
)
from ..messages import DealerEvidence, ExclusionRequest, PairwiseKeys, UnmaskRequest
from .base import ClientContext, ClientSession, Transition
from .completed import Completed
from .r2_masked_input import MaskedInputState

__all__ = ["Answered", "UnmaskedLastState", "UnmaskedState", "check_evidence", "reveal_pairwise_keys"]


@dataclass(frozen=True, slots=True)
class Answered:
    """The unmask request of vector `vector` this client answered, and its context digest."""

    vector: int
    request: UnmaskRequest
    context: bytes


def check_evidence(session: ClientSession, vector: int, evidence: DealerEvidence) -> None:
    """Accept `evidence` only if it proves that its owner dealt seed shares of `vector` that do not
    rebuild its committed seed.

    Raises:
        ProtocolAbort: FORBIDDEN_REQUEST (anything short of a proof), INVALID_SIGNATURE.
    """
    config, sid, owner = session.ctx.config, session.session_id, evidence.owner
    t = config.threshold

    def refuse(why: str) -> ProtocolAbort:
        return ProtocolAbort(AbortReason.FORBIDDEN_REQUEST, f"evidence against client {owner}: {why}")

    holders = share_holders(owner, session.graph[owner], session.roster)
    if tuple(h for h, _ in evidence.commitments) != holders:
        raise refuse("commitments not one per holder")
    if len(evidence.roots) != config.num_vectors:
        raise refuse(f"{len(evidence.roots)} roots, not {config.num_vectors}")
    if seed_share_root(sid, owner, vector, evidence.commitments) != evidence.roots[vector]:
        raise refuse("the commitments do not hash to the signed root")
    verify_signature(
        config.verify_key(owner),
        evidence.signature,
        share_commitments_signed_bytes(sid, owner, evidence.roots),
    )
    committed = dict(evidence.commitments)
    index = {h: i for h, i in share_indices(owner, session.graph[owner]).items() if h in holders}
    seen = [h for h, _ in evidence.shares]
    if len(set(seen)) != len(seen):
        raise refuse("two shares from one holder")
    for holder, share in evidence.shares:
        if holder not in index or share.index != index[holder]:
            raise refuse(f"the share of holder {holder} carries index {share.index}")
        expected = share_commitment(
            sid, owner=owner, holder=holder, vector=vector, kind=SEED_SHARE, share=share
        )
        if not hmac.compare_digest(expected, committed[holder]):
            raise refuse(f"the share of holder {holder} misses its commitment")
    if len(evidence.shares) < t:
        raise refuse(f"{len(evidence.shares)} shares prove nothing; threshold {t}")
    try:
        seed = reconstruct_secret([s for _, s in evidence.shares], threshold=t, length=SECRET_BYTES)
    except InvalidShare:
        return  # the committed shares lie on no polynomial of degree < t with a 32-byte secret
    if hmac.compare_digest(seed_commitment(owner, vector, seed), session.seed_commitments[owner][vector]):
        raise refuse("the shares rebuild its committed seed")


def reveal_pairwise_keys(
    session: ClientSession, answered: Answered, message: ExclusionRequest
) -> PairwiseKeys:
    """The pairwise keys `message` asks for, after every check of the module docstring.

    Raises:
        ProtocolAbort: UNEXPECTED_VECTOR, REPEATED_PEER, FORBIDDEN_REQUEST, INVALID_SIGNATURE.
    """
    j, me = answered.vector, session.ctx.client_id
    if message.vector != j:
        raise ProtocolAbort(
            AbortReason.UNEXPECTED_VECTOR, f"exclusion request for vector {message.vector}, not {j}"
        )
    proven = [e.owner for e in message.evidence]
    owners = [*message.dropped, *proven]
    if len(set(owners)) != len(owners):
        raise ProtocolAbort(AbortReason.REPEATED_PEER, "the exclusion request names a peer twice")
    for owner in owners:
        if owner == me or owner not in session.peers:
            raise ProtocolAbort(AbortReason.FORBIDDEN_REQUEST, f"client {owner} is not a peer it masks with")
    dropped, alive = set(answered.request.dropped), set(answered.request.alive)
    unlisted = sorted(set(message.dropped) - dropped)
    if unlisted:
        raise ProtocolAbort(
            AbortReason.FORBIDDEN_REQUEST,
            f"pairwise keys asked without evidence for clients not listed dropped: {unlisted}",
        )
    for evidence in message.evidence:
        if evidence.owner not in alive:
            raise ProtocolAbort(
                AbortReason.FORBIDDEN_REQUEST, f"client {evidence.owner} was not listed alive"
            )
        check_evidence(session, j, evidence)
    salt = mask_salt(session.session_id, answered.context)
    own = session.secrets.masks[j]
    keys = tuple((v, pairwise_key(own, session.peers[v][j], session=salt, vector=j)) for v in sorted(owners))
    return PairwiseKeys(me, j, keys)


@dataclass(frozen=True, slots=True, eq=False)
class UnmaskedState(MaskedInputState):
    """Vector `vector` - 1 answered: takes the input of vector `vector`, or before it one
    `ExclusionRequest` for the answered vector."""

    answered: Answered
    accepts: ClassVar[tuple[type, ...]] = (ExclusionRequest,)

    def _handle(self, message: ExclusionRequest) -> Transition:
        keys = reveal_pairwise_keys(self.session, self.answered, message)
        return MaskedInputState(self.session, self.vector), keys


@dataclass(frozen=True, slots=True, eq=False)
class UnmaskedLastState(Completed):
    """Every vector answered (so it counts as completed), but one `ExclusionRequest` for the last
    vector may still come."""

    session: ClientSession
    answered: Answered
    terminal: ClassVar[bool] = False
    accepts: ClassVar[tuple[type, ...]] = (ExclusionRequest,)

    def _context(self) -> ClientContext:
        return self.session.ctx

    def _handle(self, message: ExclusionRequest) -> Transition:
        keys = reveal_pairwise_keys(self.session, self.answered, message)
        return Completed(self.id), keys
