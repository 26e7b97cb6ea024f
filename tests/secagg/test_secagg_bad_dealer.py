"""A corrupt client that deals Shamir shares off one polynomial (malicious mode, round 3b).

The dealer runs the real client state machine; only its `ShareKeys` is rewritten before it leaves:
some holders get a share that is not on the dealer's polynomial (or the whole sharing is of another
secret), each re-encrypted, re-committed and re-signed, so every holder's check passes and every
revealed share matches its commitment. The server must then exclude the dealer with a reason and
finish the vector for the others with an exact sum; no honest client may reveal anything that,
with what the server holds, unmasks an honest input: never both secrets of one owner, and a
pairwise key with an alive peer only against real evidence.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from secagg_harness import Attacker, session_inputs, signed_config
from test_secagg_session import _expected_complete, _expected_harary, sessions

from codream.crypto.aead import open_sealed, seal
from codream.crypto.shamir import PRIME, Share
from codream.exceptions import AbortReason, ProtocolAbort
from codream.secagg.client import Aborted, Completed, MaskedInputState, ShareKeysState, UnmaskedState
from codream.secagg.config import GraphKind
from codream.secagg.keys import (
    KEY_SHARE,
    SEED_SHARE,
    decode_share_bundle,
    encode_share_bundle,
    seed_share_roots,
    share_associated_data,
    share_commitments,
    share_commitments_signed_bytes,
    share_indices,
)
from codream.secagg.messages import (
    AdvertiseKeys,
    ExclusionRequest,
    PairwiseKeys,
    ShareKeys,
    UnmaskResponse,
)
from codream.secagg.runner import Dropout, DropoutSchedule, InProcessSession, Stage
from codream.secagg.server import ServerCompleted, ServerExclusion
from fakes import DeterministicRandom, Harness, plain_sum

# The sessions of this file: round 9, one corrupt client tolerated and two vectors, of 4 and 3 words.
_config = functools.partial(signed_config, round_index=9, corrupt=1, lengths=(4, 3))


def deal_badly(
    state: ShareKeysState, message: ShareKeys, signer, *, vector: int, kind: int, how: str
) -> ShareKeys:
    """`message` (the dealer's real ShareKeys) with the shares of (`vector`, `kind`) of every other
    holder replaced: "off" puts them off the polynomial, "shifted" adds 1 to each (a consistent
    sharing of another secret, if the dealer's own share is left out). Each bundle is re-sealed,
    re-committed and the roots re-signed, as a corrupt dealer would."""
    dealer, sid = message.sender, state.session_id
    indices = share_indices(dealer, state.graph[dealer])  # over the whole neighbourhood (keys.share_indices)
    commitments = dict(message.commitments)
    ciphertexts = []
    for holder, blob in message.ciphertexts:
        ad = share_associated_data(sid, dealer, holder)
        index = indices[holder]
        plain = open_sealed(state.share_keys[holder], blob, associated_data=ad)
        bundle = list(
            decode_share_bundle(
                plain, owner=dealer, recipient=holder, num_vectors=len(state.own_shares), index=index
            )
        )
        pair = list(bundle[vector])
        value = pair[kind].value
        pair[kind] = Share(index, (value + 1) % PRIME if how == "shifted" else (value * 3 + index) % PRIME)
        bundle[vector] = tuple(pair)
        ciphertexts.append(
            (
                holder,
                seal(
                    state.share_keys[holder], encode_share_bundle(dealer, holder, bundle), associated_data=ad
                ),
            )
        )
        commitments[holder] = share_commitments(sid, dealer, holder, bundle)
    lists = tuple((h, commitments[h]) for h, _ in message.commitments)
    roots = seed_share_roots(sid, dealer, lists, len(state.own_shares))
    return ShareKeys(
        dealer, tuple(ciphertexts), lists, signer.sign(share_commitments_signed_bytes(sid, dealer, roots))
    )


class Recorder:
    """What the server receives in round 3 and 3b: every share and every pairwise key, by sender."""

    def __init__(self) -> None:
        self.seed_owners: dict[int, set[int]] = {}
        self.key_owners: dict[int, set[int]] = {}
        self.pairwise: dict[int, set[int]] = {}

    def record(self, messages) -> None:
        for m in messages.values():
            if isinstance(m, UnmaskResponse):
                for owner, _ in m.seed_shares:
                    self.seed_owners.setdefault(owner, set()).add(m.sender)
                for owner, _ in m.key_shares:
                    self.key_owners.setdefault(owner, set()).add(m.sender)
            elif isinstance(m, PairwiseKeys):
                for owner, _ in m.keys:
                    self.pairwise.setdefault(owner, set()).add(m.sender)
                    self.pairwise.setdefault(m.sender, set()).add(owner)


def _bad_dealer_session(config, signers, dealer, *, vector, kind, how):
    h = Harness(config, signers=signers)
    h.send(h.start())
    shares = h.deliver(h.close())
    shares[dealer] = deal_badly(
        h.clients[dealer], shares[dealer], signers[dealer], vector=vector, kind=kind, how=how
    )
    h.send(shares)
    h.deliver(h.close())
    assert all(isinstance(s, MaskedInputState) and not s.session.set_aside for s in h.clients.values())
    return h


def _round(h: Harness, inputs, recorder: Recorder, skip=(), attacker: Attacker | None = None):
    """Rounds 2, 3 and (if the server asks) 3b of one vector; returns the exclusion requests."""
    masked = h.submit({c: x for c, x in inputs.items() if c not in skip})
    h.send(masked)
    h.send(h.deliver(h.close()))
    responses = h.deliver(h.close())
    recorder.record(responses)
    if attacker is not None:
        attacker.record(masked)
        attacker.record(responses)
    h.send(responses)
    outgoing = h.close()
    if outgoing:
        assert isinstance(h.server, ServerExclusion)
        keys = h.deliver(outgoing)
        assert all(len(m.to_bytes()) == 14 + 36 * len(m.keys) for m in keys.values())
        recorder.record(keys)
        h.send(keys)
        assert h.close() == {}
    return outgoing


@pytest.mark.parametrize("how", ["off", "shifted"])
@pytest.mark.parametrize(
    "graph", [(7, 5, 1, GraphKind.COMPLETE, 0), (40, 9, 2, GraphKind.HARARY, 10)], ids=["complete", "harary"]
)
def test_an_alive_dealer_of_bad_seed_shares_is_excluded_and_the_others_sum_is_exact(graph, how):
    n, t, c, kind, k = graph
    config, signers = _config(n, t, corrupt=c, graph=kind, degree=k)
    dealer = n - 1
    h = _bad_dealer_session(config, signers, dealer, vector=0, kind=SEED_SHARE, how=how)
    neighbours = config.neighbours(h.clients[0].session.session_id)[dealer]
    inputs, recorder, attacker = session_inputs(config), Recorder(), Attacker(h)
    outgoing = _round(h, inputs[0], recorder, attacker=attacker)
    # Only the dealer's neighbours are asked, each with the evidence and nothing to reveal blind.
    assert set(outgoing) == set(neighbours)
    for request in outgoing.values():
        assert request.dropped == () and [e.owner for e in request.evidence] == [dealer]
        (evidence,) = request.evidence
        # the size protocols/secagg.md §9 states
        holders, shares = len(evidence.commitments), len(evidence.shares)
        assert len(request.to_bytes()) == 14 + 81 + 32 * 2 + 36 * holders + 78 * shares
    (first,) = h.server.sums
    others = tuple(u for u in range(n) if u != dealer)
    assert first.survivors == others
    assert [(x.client_id, x.reason) for x in first.excluded] == [(dealer, AbortReason.INVALID_SHARE)]
    assert "left out" in first.excluded[0].detail
    np.testing.assert_array_equal(first.words, plain_sum(inputs[0], others, config.bits, 4))
    # The dealer is out from the next vector on (its input is refused); the others finish.
    _round(h, inputs[1], recorder)
    assert isinstance(h.server, ServerCompleted)
    second = h.server.sums[1]
    assert second.survivors == others
    np.testing.assert_array_equal(second.words, plain_sum(inputs[1], others, config.bits, 3))
    assert all(isinstance(h.clients[u], Completed) for u in others)
    # Never both secrets of an honest owner; pairwise keys only ever with the excluded dealer;
    # and what the server holds of vector 0 unmasks no honest input.
    for u in others:
        assert u not in recorder.key_owners  # honest clients never dropped: only seeds of theirs
        assert recorder.pairwise.get(u, set()) <= {dealer}
        assert attacker.seed(u, 0) is not None  # its seed is known, as the protocol allows...
        assert attacker.attempt_unmask(u, 0, sorted(attacker.graph[u])) is None  # ...its input is not


def test_a_dropped_dealer_of_bad_key_shares_is_excluded_and_its_masks_removed_without_evidence():
    config, signers = _config(7, 5)
    dealer = 6
    h = _bad_dealer_session(config, signers, dealer, vector=0, kind=KEY_SHARE, how="off")
    inputs, recorder = session_inputs(config), Recorder()
    outgoing = _round(h, inputs[0], recorder, skip={dealer})  # it sends no masked input: dropped
    assert set(outgoing) == set(range(6))
    assert all(r.dropped == (dealer,) and r.evidence == () for r in outgoing.values())
    assert all(len(r.to_bytes()) == 14 + 4 for r in outgoing.values())
    (first,) = h.server.sums
    assert first.survivors == tuple(range(6))
    assert [(x.client_id, x.reason) for x in first.excluded] == [(dealer, AbortReason.KEY_MISMATCH)]
    np.testing.assert_array_equal(first.words, plain_sum(inputs[0], range(6), 32, 4))
    assert dealer not in recorder.seed_owners  # a dropped owner's seed is never revealed


def test_a_bad_dealer_whose_first_shares_still_rebuild_its_seed_keeps_its_input():
    # Only a holder after the first t responders got a bad share: the first t rebuild the
    # committed seed, so nothing is wrong with this vector's sum and nobody is excluded.
    config, signers = _config(7, 5)
    h = Harness(config, signers=signers)
    h.send(h.start())
    shares = h.deliver(h.close())
    state, message = h.clients[6], shares[6]
    bad = deal_badly(state, message, signers[6], vector=0, kind=SEED_SHARE, how="off")
    # holders 0..4 keep their real bundles, 5 gets a bad one
    real, fake = dict(message.ciphertexts), dict(bad.ciphertexts)
    ciphertexts = tuple((r, fake[r] if r >= 5 else real[r]) for r, _ in message.ciphertexts)
    real_c, fake_c = dict(message.commitments), dict(bad.commitments)
    commitments = tuple((hh, fake_c[hh] if hh >= 5 else real_c[hh]) for hh, _ in message.commitments)
    roots = seed_share_roots(state.session_id, 6, commitments, 2)
    sig = signers[6].sign(share_commitments_signed_bytes(state.session_id, 6, roots))
    shares[6] = ShareKeys(6, ciphertexts, commitments, sig)
    h.send(shares)
    h.deliver(h.close())
    inputs = session_inputs(config)
    assert _round(h, inputs[0], Recorder()) == {}
    (first,) = h.server.sums
    assert first.survivors == tuple(range(7)) and first.excluded == ()
    np.testing.assert_array_equal(first.words, plain_sum(inputs[0], range(7), 32, 4))


def _honest_session_at_3b():
    """An honest session of 7 (t = 5) whose clients all answered vector 0, with what they revealed."""
    config, signers = _config(7, 5)
    h = Harness(config, signers=signers)
    h.setup()
    h.send(h.submit(session_inputs(config)[0]))
    h.send(h.deliver(h.close()))
    responses = h.deliver(h.close())
    assert all(isinstance(h.clients[u], UnmaskedState) for u in range(7))
    return h, config, responses


def _evidence_against(h, target, responses, vector=0):
    """The best evidence a server can build against an honest alive client: its real signed roots
    and commitments, and every seed share revealed of it."""
    from codream.secagg.server.r3_exclude import dealer_evidence

    session = h.server.session
    shares = tuple((r.sender, s) for r in responses.values() for o, s in r.seed_shares if o == target)
    return dealer_evidence(session, vector, target, shares)


def test_evidence_against_an_honest_client_is_refused_and_reveals_no_pairwise_key():
    h, config, responses = _honest_session_at_3b()
    target = 6
    evidence = _evidence_against(h, target, responses)
    replies = h.deliver({0: ExclusionRequest(0, (), (evidence,))})
    assert replies[0] is not None and not isinstance(replies[0], PairwiseKeys)
    state = h.clients[0]
    assert isinstance(state, Aborted) and state.reason is AbortReason.FORBIDDEN_REQUEST
    assert "rebuild its committed seed" in state.detail


@pytest.mark.parametrize(
    "forge",
    ["fake_share", "few_shares", "no_signature", "other_root", "as_dropped"],
)
def test_forged_evidence_or_a_blind_request_for_an_alive_peer_is_refused(forge):
    h, config, responses = _honest_session_at_3b()
    target = 6
    evidence = _evidence_against(h, target, responses)
    if forge == "fake_share":  # a share off the polynomial, with a commitment the owner never made
        holder, share = evidence.shares[0]
        shares = ((holder, Share(share.index, (share.value + 1) % PRIME)), *evidence.shares[1:])
        evidence = dataclasses.replace(evidence, shares=shares)
    elif forge == "few_shares":  # t - 1 shares prove nothing
        evidence = dataclasses.replace(evidence, shares=evidence.shares[: config.threshold - 1])
    elif forge == "no_signature":
        evidence = dataclasses.replace(evidence, signature=b"")
    elif (
        forge == "other_root"
    ):  # commitments the server made up, with roots to match but unsigned by the owner
        fake = tuple((hh, bytes(32)) for hh, _ in evidence.commitments)
        evidence = dataclasses.replace(evidence, commitments=fake)
    request = (
        ExclusionRequest(0, (target,), ()) if forge == "as_dropped" else ExclusionRequest(0, (), (evidence,))
    )
    replies = h.deliver({0: request})
    assert not isinstance(replies[0], PairwiseKeys)
    state = h.clients[0]
    assert isinstance(state, Aborted)
    assert state.reason in (AbortReason.FORBIDDEN_REQUEST, AbortReason.INVALID_SIGNATURE)


def test_a_neighbour_silent_in_round_3b_aborts_the_vector_cleanly():
    config, signers = _config(7, 5)
    h = _bad_dealer_session(config, signers, 6, vector=0, kind=SEED_SHARE, how="off")
    h.send(h.submit(session_inputs(config)[0]))
    h.send(h.deliver(h.close()))
    h.send(h.deliver(h.close()))
    outgoing = h.close()
    keys = h.deliver(outgoing)
    h.send(keys, skip={2})
    outgoing = h.close()
    assert h.server.name == "ServerAborted" and h.server.reason is AbortReason.TOO_FEW_PEERS
    assert "2" in h.server.detail


# ------------------------------------------------------------------------------ property test


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(max_clients=12, malicious=True), st.data())
def test_with_a_bad_dealer_and_random_dropouts_sums_are_exact_over_the_others_or_abort_cleanly(case, data):
    # Any graph, any dropout schedule of the others, one client dealing shares off the polynomial
    # for one secret of one vector: its seed (it stays alive) or its mask key (it drops right
    # before that vector, so the key is needed). Every sum is exactly the plain sum of its
    # survivors, a vector with the bad seed is finished without the dealer, and an abort is
    # too_few_peers, never a wrong sum.
    config, schedule, signers, seed = case
    n, J = config.num_clients, config.num_vectors
    dealer = data.draw(st.integers(0, n - 1))
    vector = data.draw(st.integers(0, J - 1))
    kind = data.draw(st.sampled_from([SEED_SHARE, KEY_SHARE]))
    drops = {c: d for c, d in schedule.drops.items() if c != dealer}
    if kind == KEY_SHARE:
        drops[dealer] = Dropout(Stage.MASKED_INPUT, vector)
    inputs = session_inputs(config, seed)
    session = InProcessSession(
        config, dropouts=DropoutSchedule(drops), signers=signers, randbytes=DeterministicRandom(seed)
    )
    send = session._send

    adverts = {}

    def corrupt(cid, message):
        if isinstance(message, AdvertiseKeys):
            adverts[cid] = message
        if cid == dealer and isinstance(message, ShareKeys):
            message = deal_badly(
                session._clients[cid], message, signers[cid], vector=vector, kind=kind, how="off"
            )
        send(cid, message)

    session._send = corrupt
    sums = []
    try:
        session.setup()
        for j in range(J):
            sums.append(session.aggregate(j, inputs[j]))
    except ProtocolAbort as exc:
        assert exc.reason is AbortReason.TOO_FEW_PEERS, exc
    for j, s in enumerate(sums):
        words = plain_sum(inputs[j], s.survivors, config.bits, config.vector_lengths[j])
        np.testing.assert_array_equal(s.words, words)
        assert dealer not in s.survivors or j < vector
    if len(sums) > vector and kind == SEED_SHARE:
        assert [x.reason for x in sums[vector].excluded if x.client_id == dealer] == [
            AbortReason.INVALID_SHARE
        ]
    if len(drops) == (kind == KEY_SHARE):
        # With no other dropout the session goes exactly as if the dealer had dropped: before the
        # next vector (a bad seed, its input also left out of this one) or before this one (a bad
        # key), by the protocol's dropout rules recomputed with set arithmetic.
        if kind == SEED_SHARE and vector + 1 < J:
            drops[dealer] = Dropout(Stage.MASKED_INPUT, vector + 1)
        equivalent = DropoutSchedule(drops)
        if config.graph is GraphKind.HARARY:
            expected, abort_at = _expected_harary(config, equivalent, adverts)
        else:
            expected, abort_at = _expected_complete(config, equivalent)
        expected = [
            tuple(c for c in e if not (kind == SEED_SHARE and j == vector and c == dealer))
            for j, e in enumerate(expected or [])
        ]
        assert [s.survivors for s in sums] == expected
        assert len(sums) == (J if abort_at is None else max(abort_at, 0))
