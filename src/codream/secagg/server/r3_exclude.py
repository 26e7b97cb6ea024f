"""Round 3b, server side (malicious mode): finish vector j without a client that dealt bad shares.

Round 3 may find an owner whose valid shares (each matched its commitment) do not rebuild its
secret: such an owner dealt shares off one polynomial, or of another secret, so it is corrupt. It is
excluded with the reason, and the vector finishes for the others:

* an alive owner D whose seed does not rebuild: its masked input y_D (kept since round 2) is
  subtracted, so neither its input nor its self mask is in the sum;
* a dropped owner D whose mask key does not rebuild: nothing of it is in the sum but its pairwise
  masks in its alive neighbours' inputs.

Either way the pairwise masks sign(u, D) PRG(k_uD^j) that D's alive neighbours u added remain, and
each such u is asked for its k_uD^j (`ExclusionRequest` -> `PairwiseKeys`). D knows that key: for a
corrupt D the coalition learns nothing new. For an honest D, a request is harmless when D is listed
dropped (its seed is never revealed for vector j, so its y_D stays self-masked), and impossible when
D is listed alive: the request must carry evidence (D's signed seed-share roots and >= t shares
matching them that do not rebuild its committed seed), which an honest D never gives.

Next states: ServerMaskedInput (next vector), ServerCompleted, ServerAborted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from ...exceptions import AbortReason
from ..keys import SEED_SHARE, mask_sign, seed_share_roots
from ..messages import AbortMessage, DealerEvidence, ExclusionRequest, Message, PairwiseKeys, UnmaskRequest
from .base import Rejection, ServerSession, ServerState, SessionSum, Transition, abort, reject
from .completed import ServerCompleted
from .r3_unmask import Rebuilt, ServerUnmask, strip_masks

__all__ = ["ServerExclusion", "dealer_evidence"]


def dealer_evidence(
    session: ServerSession, vector: int, owner: int, shares: tuple[tuple[int, object], ...]
) -> DealerEvidence:
    """What shows every neighbour of `owner` that its seed shares of `vector` do not rebuild its
    committed seed: its signed roots, its commitments to every holder's seed share, the shares."""
    committed = session.commitments[owner]
    holders = sorted(committed, key=lambda h: session.indices[owner][h])
    lists = [(h, committed[h]) for h in holders]
    return DealerEvidence(
        owner=owner,
        roots=seed_share_roots(session.session_id, owner, lists, session.config.num_vectors),
        signature=session.share_signatures.get(owner, b""),
        commitments=tuple((h, committed[h][2 * vector + SEED_SHARE]) for h in holders),
        shares=tuple(shares),  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True, eq=False)
class ServerExclusion(ServerState):
    """Collecting each asked client's pairwise keys with the excluded owners of vector `vector`.

    Attributes:
        total: the sum with every other mask already removed (and the excluded alive inputs).
        asked: per asked client, the excluded owners it masks with.
        survivors: the alive clients whose input stays in the sum.
        next_active: who takes part in the next vector (the responders, less the excluded).
    """

    session: ServerSession
    vector: int
    request: UnmaskRequest
    total: np.ndarray
    contexts: Mapping[int, bytes]
    asked: Mapping[int, frozenset[int]]
    survivors: tuple[int, ...]
    next_active: frozenset[int]
    excluded: tuple[Rejection, ...]
    keys: dict[int, PairwiseKeys] = field(default_factory=dict)
    sums: tuple[SessionSum, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    accepts: ClassVar[tuple[type, ...]] = (PairwiseKeys,)

    @classmethod
    def start(cls, unmask: ServerUnmask, rebuilt: Rebuilt) -> Transition:
        """Exclude the owners `rebuilt` names, then ask their alive neighbours for pairwise keys."""
        session, j, request = unmask.session, unmask.vector, unmask.request
        bad_alive = frozenset(rebuilt.bad_seeds)
        bad = bad_alive | frozenset(rebuilt.bad_keys)
        rejections, excluded = unmask.rejections, list(unmask.excluded)
        for owner in sorted(rebuilt.bad_seeds):
            rejections = reject(
                rejections,
                owner,
                AbortReason.INVALID_SHARE,
                f"vector {j}: its seed shares do not rebuild its committed seed; its input is left out",
            )
            excluded.append(rejections[-1])
        for owner, why in sorted(rebuilt.bad_keys.items()):
            rejections = reject(
                rejections, owner, AbortReason.KEY_MISMATCH, f"vector {j}: {why}; its masks are removed"
            )
            excluded.append(rejections[-1])
        total = strip_masks(
            session,
            j,
            request,
            unmask.partial,
            rebuilt,
            unmask.contexts,
            left_out=[unmask.inputs[d] for d in sorted(bad_alive)],
        ).result()
        kept = frozenset(request.alive) - bad_alive
        asked = {
            u: session.peers.get(u, frozenset()) & bad
            for u in sorted(kept)
            if session.peers.get(u, frozenset()) & bad
        }
        responders = frozenset(unmask.responses)
        silent = sorted(set(asked) - responders)
        if silent:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {j}: alive clients {silent} mask with excluded clients {sorted(bad)} and did not "
                "answer, so their pairwise masks cannot be removed",
                responders - bad,
                unmask.sums,
                rejections,
            )
        evidence = {d: dealer_evidence(session, j, d, shares) for d, shares in rebuilt.bad_seeds.items()}
        state = cls(
            session,
            j,
            request,
            total,
            unmask.contexts,
            asked,
            tuple(sorted(kept)),
            responders - bad,
            tuple(excluded),
            sums=unmask.sums,
            rejections=rejections,
        )
        if not asked:
            return state._close()
        outgoing: dict[int, Message] = {
            u: ExclusionRequest(
                j,
                tuple(sorted(owners - bad_alive)),
                tuple(evidence[d] for d in sorted(owners & bad_alive)),
            )
            for u, owners in asked.items()
        }
        return state, outgoing

    def _handle(self, message: Message) -> ServerState:
        sender = message.sender  # type: ignore[attr-defined]
        if sender not in self.asked or isinstance(message, AbortMessage) or sender in self.keys:
            if isinstance(message, AbortMessage):
                reason, detail = message.reason, f"client aborted: {message.detail}"
            else:
                reason, detail = AbortReason.UNKNOWN_PEER, "not asked, or answered twice"
            return replace(self, rejections=reject(self.rejections, sender, reason, detail))
        owners = [w for w, _ in message.keys]
        if message.vector != self.vector:
            reason, detail = AbortReason.UNEXPECTED_VECTOR, f"pairwise keys of vector {message.vector}"
        elif len(set(owners)) != len(owners) or set(owners) != self.asked[sender]:
            reason, detail = AbortReason.FORBIDDEN_REQUEST, "pairwise keys not one per excluded peer asked"
        else:
            return replace(self, keys={**self.keys, sender: message})
        return replace(self, rejections=reject(self.rejections, sender, reason, detail))

    def _close(self) -> Transition:
        from .r2_masked_input import ServerMaskedInput

        j, config = self.vector, self.session.config
        missing = sorted(set(self.asked) - set(self.keys))
        if missing:
            return abort(
                AbortReason.TOO_FEW_PEERS,
                f"vector {j}: clients {missing} gave no pairwise keys with the excluded clients",
                self.next_active,
                self.sums,
                self.rejections,
            )
        from ...crypto.prg import MaskAccumulator

        total = MaskAccumulator(self.total.shape[0], bits=config.bits)
        total.add_words(self.total)
        for u in sorted(self.keys):
            for owner, key in self.keys[u].keys:
                total.add_mask(key, sign=-mask_sign(u, owner))
        sums = (*self.sums, SessionSum(j, total.result(), self.survivors, self.excluded))
        if j + 1 == config.num_vectors:
            return ServerCompleted(sums, self.rejections), {}
        return ServerMaskedInput.next_vector(self.session, j + 1, self.next_active, sums, self.rejections), {}
