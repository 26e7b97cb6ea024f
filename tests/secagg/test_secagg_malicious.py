"""Deviating servers, built from the real client state machines and message codecs.

Each test plays a server that departs from the protocol (several views of one vector, per-client
lists over withheld ciphertexts, different broadcasts to different clients) or an honest server
facing a corrupt client (a low-order key, a share with the wrong index, a bad share bundle). Each
ends with every honest client refusing, or the offender excluded and the others' sum exact, and
the attacker's best effort at rebuilding an honest input failing.

The attacker's arithmetic (`_attempt_unmask`) is the protocol's own: it rebuilds whatever secrets
the revealed shares allow and strips the masks it can, so a success would be a real exposure.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from secagg_harness import Attacker, session_inputs, signed_config

from codream.crypto.prg import mask_words
from codream.crypto.shamir import Share
from codream.exceptions import AbortReason, ConfigError
from codream.secagg.client import Aborted, Completed, ConsistencyCheckState, MaskedInputState, UnmaskState
from codream.secagg.config import GraphKind
from codream.secagg.keys import (
    context_digest,
    self_mask_key_for,
)
from codream.secagg.messages import (
    AbortMessage,
    ConsistencyProof,
    ConsistencySignature,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from codream.secagg.server import ServerCompleted
from fakes import Harness, plain_sum

LOW_ORDER_POINT = bytes(32)


# The sessions of this file: round 3 and one vector of 4 words unless a test says otherwise.
_config = functools.partial(signed_config, round_index=3)


def _proofs(groups, signatures, j=0):
    """One proof per group, carrying the signatures of that group's members (and any extra ones)."""
    out = {}
    for members, extra in groups:
        sigs = {c: signatures[c] for c in members if c in signatures}
        sigs.update(extra)
        proof = ConsistencyProof(j, tuple(sorted(sigs.items())))
        out.update(dict.fromkeys(members, proof))
    return out


def _honest_refused(h: Harness, honest) -> list[AbortReason]:
    reasons = []
    for c in honest:
        state = h.clients[c]
        assert isinstance(state, Aborted), f"client {c} went on to {state.name}"
        reasons.append(state.reason)
    return reasons


# ----------------------------------------------------------------------------- several views


def test_several_views_on_a_harary_graph_of_100_find_no_quorum_and_reveal_nothing():
    # The attack of the issue: the server shows the target alive to one half of the clients (to
    # collect its self-mask seed) and the target's neighbours dropped to the other half (to
    # collect their mask keys). Two corrupt clients sign both views. With the old rule (t = 14
    # signatures) both halves would have gone on. A quorum is (100 + 2) // 2 + 1 = 52; each half
    # has 49 honest signatures plus the 2 corrupt ones.
    n, k, t, c = 100, 20, 14, 2
    config, signers = _config(n, t, corrupt=c, graph=GraphKind.HARARY, degree=k)
    h = Harness(config, signers=signers)
    h.setup()
    attacker = Attacker(h)
    target = 0
    peers = sorted(attacker.graph[target])
    corrupt = peers[:2]  # the worst case: both corrupt clients hold shares of the target
    inputs = session_inputs(config)[0]
    masked = h.submit(inputs)
    attacker.record(masked)
    honest = [u for u in range(n) if u not in corrupt]
    view_a = UnmaskRequest(0, tuple(range(n)), ())
    honest_peers = [v for v in peers if v not in corrupt]
    view_b = UnmaskRequest(0, tuple(u for u in range(n) if u not in honest_peers), tuple(honest_peers))
    # Group A: the target and its neighbours (who must see themselves alive) and enough others
    # for 49 honest members; group B: the other 49 honest clients.
    group_a = [u for u in honest if u == target or u in peers]
    group_a += [u for u in honest if u not in group_a][: 49 - len(group_a)]
    group_b = [u for u in honest if u not in group_a]
    assert len(group_a) == len(group_b) == 49
    requests = {**dict.fromkeys(group_a, view_a), **dict.fromkeys(group_b, view_b)}
    signatures = {
        c: r.signature for c, r in h.deliver(requests).items() if isinstance(r, ConsistencySignature)
    }
    assert set(signatures) == set(honest)  # every honest client signed its own view
    sid, ctx = attacker.session_id, context_digest(b"")
    corrupt_a = {u: signers[u].sign(view_a.signed_bytes(sid, ctx)) for u in corrupt}
    corrupt_b = {u: signers[u].sign(view_b.signed_bytes(sid, ctx)) for u in corrupt}
    replies = h.deliver(_proofs([(group_a, corrupt_a), (group_b, corrupt_b)], signatures))
    assert not any(isinstance(r, UnmaskResponse) for r in replies.values())
    assert set(_honest_refused(h, honest)) == {AbortReason.TOO_FEW_PEERS}
    # Nothing was revealed, so nothing can be rebuilt.
    assert attacker.attempt_unmask(target, 0, peers) is None


def test_a_proof_padded_with_signatures_over_another_view_is_refused_as_inconsistent():
    # Padding one view's proof with the other view's signatures reaches the count, not the view.
    n, t = 9, 5
    config, signers = _config(n, t)
    h = Harness(config, signers=signers)
    h.setup()
    h.submit(session_inputs(config)[0])
    view_a = UnmaskRequest(0, tuple(range(n)), ())
    view_b = UnmaskRequest(0, tuple(range(8)), (8,))
    group_a, group_b = list(range(5)), list(range(5, 8))
    replies = h.deliver({**dict.fromkeys(group_a, view_a), **dict.fromkeys(group_b, view_b)})
    signatures = {c: r.signature for c, r in replies.items()}
    replies = h.deliver(_proofs([(group_a, {c: signatures[c] for c in group_b})], signatures))
    assert not any(isinstance(r, UnmaskResponse) for r in replies.values())
    assert set(_honest_refused(h, group_a)) == {AbortReason.INCONSISTENT_VIEW}


def test_an_isolating_view_with_a_quorum_still_leaves_the_target_masked():
    # One view only, certified by a quorum: the target alive, all its honest neighbours "dropped".
    # Their mask keys are revealed, but the target's seed needs t seed shares, and only the target
    # itself and the corrupt neighbours give one (honest neighbours are listed dropped). This is
    # the event split_failure bounds; here the bound is 0 (t - 1 - k/2 = 3 > 2 corrupt clients).
    n, k, t, c = 40, 10, 9, 2
    config, signers = _config(n, t, corrupt=c, graph=GraphKind.HARARY, degree=k)
    h = Harness(config, signers=signers)
    h.setup()
    attacker = Attacker(h)
    target = 0
    peers = sorted(attacker.graph[target])
    corrupt = peers[:2]
    honest_peers = [v for v in peers if v not in corrupt]
    attacker.record(h.submit(session_inputs(config)[0]))
    view = UnmaskRequest(0, tuple(u for u in range(n) if u not in honest_peers), tuple(honest_peers))
    asked = [u for u in view.alive if u not in corrupt]
    signatures = {u: r.signature for u, r in h.deliver(dict.fromkeys(asked, view)).items()}
    assert len(signatures) == len(asked) >= config.quorum(n)
    attacker.record(h.deliver(_proofs([(asked, {})], signatures)))
    # The corrupt neighbours hand over everything they hold of the target.
    for u in corrupt:
        attacker.seed_shares[target][u] = h.clients[u].session.held[target][0][0]
        attacker.key_shares.setdefault(target, {})[u] = h.clients[u].session.held[target][0][1]
    assert len(attacker.seed_shares[target]) == 1 + len(corrupt) < t
    assert attacker.seed(target, 0) is None and attacker.mask_key(target, 0) is None
    assert attacker.attempt_unmask(target, 0, peers) is None


# ------------------------------------------------------------------- thresholds and small graphs


def test_a_threshold_too_low_for_malicious_mode_is_refused():
    # n = 11, t = 5: two views of 5 and 6 holders would each reach t. Malicious mode needs
    # 2t > n + c; semi-honest mode (one view by assumption) only t > c.
    with pytest.raises(ConfigError, match=r"2t > n \+ c = 11"):
        _config(11, 5)
    with pytest.raises(ConfigError, match=r"2t > n \+ c = 13"):
        _config(11, 6, corrupt=2)
    _config(11, 6)
    _config(11, 5, malicious=False)
    with pytest.raises(ConfigError, match="t > c"):
        _config(11, 2, corrupt=2, malicious=False)


def test_a_degenerate_small_harary_graph_is_the_complete_graph_and_gets_its_threshold():
    # 20 clients, 2 corrupt: degree 19 is the complete graph. Its Harary-style t = 11 is refused
    # (two corrupt clients plus 9 + 9 honest holders split between two views give 11 each); with
    # t = 12 the attack is run and finds no quorum of (20 + 2) // 2 + 1 = 12.
    with pytest.raises(ConfigError, match="security failure bound"):
        _config(20, 11, corrupt=2, graph=GraphKind.HARARY, degree=19)
    config, signers = _config(20, 12, corrupt=2, graph=GraphKind.HARARY, degree=19)
    assert config.is_complete and config.neighbours()[0] == frozenset(range(1, 20))
    h = Harness(config, signers=signers)
    h.setup()
    attacker = Attacker(h)
    target, corrupt = 0, [18, 19]
    attacker.record(h.submit(session_inputs(config)[0]))
    honest = [u for u in range(20) if u not in corrupt]
    group_a, group_b = honest[:9], honest[9:]
    view_a = UnmaskRequest(0, tuple(range(20)), ())
    view_b = UnmaskRequest(0, tuple(range(1, 20)), (0,))
    replies = h.deliver({**dict.fromkeys(group_a, view_a), **dict.fromkeys(group_b, view_b)})
    signatures = {c: r.signature for c, r in replies.items() if isinstance(r, ConsistencySignature)}
    sid, ctx = attacker.session_id, context_digest(b"")
    extra_a = {u: signers[u].sign(view_a.signed_bytes(sid, ctx)) for u in corrupt}
    extra_b = {u: signers[u].sign(view_b.signed_bytes(sid, ctx)) for u in corrupt}
    replies = h.deliver(_proofs([(group_a, extra_a), (group_b, extra_b)], signatures))
    assert not any(isinstance(r, UnmaskResponse) for r in replies.values())
    assert set(_honest_refused(h, honest)) == {AbortReason.TOO_FEW_PEERS}
    assert attacker.attempt_unmask(target, 0, range(1, 20)) is None


# ------------------------------------------------------------- withheld ciphertexts, per-client lists


def _withholding_attack(malicious: bool):
    """Client v = 0 gets only the ciphertexts of S = {1, 2, 3} (t - 1 of them), so it masks with S
    alone; R = {4, 5, 6} gets everything. Then per-client lists: v sees itself and S alive; each
    u in S sees v, R and itself alive and the rest of S dropped; R sees S dropped. Every honest
    client reveals one kind of share per owner, but together: v's seed from everyone, and each
    S member's mask key from R and the rest of S."""
    n, t = 7, 4
    config, signers = _config(n, t, malicious=malicious)
    h = Harness(config, signers=signers)
    h.send(h.start())
    h.send(h.deliver(h.close()))
    deliveries = h.close()
    v, S, R = 0, (1, 2, 3), (4, 5, 6)
    d = deliveries[v]
    keep = {s: blob for s, blob in d.ciphertexts if s in S}
    deliveries[v] = SharesDelivery(tuple(keep.items()), tuple((s, c) for s, c in d.commitments if s in keep))
    h.deliver(deliveries)
    assert set(h.clients[v].session.peers) == set(S)
    attacker = Attacker(h)
    inputs = session_inputs(config)[0]
    attacker.record(h.submit(inputs))
    requests = {v: UnmaskRequest(0, (v, *S), ())}
    for u in S:
        requests[u] = UnmaskRequest(0, tuple(sorted({v, u, *R})), tuple(w for w in S if w != u))
    for r in R:
        requests[r] = UnmaskRequest(0, (v, *R), S)
    replies = h.deliver(requests)
    if malicious:
        # Each distinct view collects only its own recipients' signatures: R's 3, the others 1.
        signatures = {c: m.signature for c, m in replies.items() if isinstance(m, ConsistencySignature)}
        groups = [([v], {}), *[([u], {}) for u in S], (list(R), {})]
        replies = h.deliver(_proofs(groups, signatures))
    attacker.record(replies)
    return h, attacker, inputs, v, S


def test_withheld_ciphertexts_and_per_client_lists_unmask_a_client_in_semi_honest_mode():
    # The honest-but-curious contract, pinned: a server that deviates like this learns x_v with no
    # colluding client. protocols/secagg.md §3 says so.
    h, attacker, inputs, v, S = _withholding_attack(malicious=False)
    np.testing.assert_array_equal(attacker.attempt_unmask(v, 0, S), inputs[v])


def test_withheld_ciphertexts_and_per_client_lists_find_no_quorum_in_malicious_mode():
    h, attacker, inputs, v, S = _withholding_attack(malicious=True)
    assert not attacker.seed_shares and not attacker.key_shares
    assert set(_honest_refused(h, range(7))) == {AbortReason.TOO_FEW_PEERS}
    assert attacker.attempt_unmask(v, 0, S) is None


# --------------------------------------------------------------- a corrupt client, an honest server


def test_a_low_order_key_excludes_its_client_and_the_others_finish():
    config, signers = _config(6, 4, corrupt=1, lengths=(4, 3))
    h = Harness(config, signers=signers)
    adverts = h.start()
    bad = dataclasses.replace(
        adverts[5], mask_keys=(LOW_ORDER_POINT, *adverts[5].mask_keys[1:]), signature=b""
    )
    adverts[5] = dataclasses.replace(bad, signature=signers[5].sign(bad.signed_bytes(config.digest())))
    h.send(adverts)
    assert [(r.client_id, r.reason) for r in h.server.rejections] == [(5, AbortReason.INVALID_PUBLIC_KEY)]
    h.send(h.deliver(h.close()))
    h.deliver(h.close())
    inputs = session_inputs(config)
    for j in range(2):
        h.send(h.submit({c: inputs[j][c] for c in range(5)}))
        h.send(h.deliver(h.close()))
        h.send(h.deliver(h.close()))
        h.close()
    assert isinstance(h.server, ServerCompleted)
    for j, s in enumerate(h.server.sums):
        assert s.survivors == (0, 1, 2, 3, 4)
        np.testing.assert_array_equal(s.words, plain_sum(inputs[j], range(5), 32, config.vector_lengths[j]))


def test_a_wrong_index_share_excludes_its_sender_and_the_sum_stays_exact():
    config, signers = _config(6, 4, corrupt=1, lengths=(4, 3))
    h = Harness(config, signers=signers)
    h.setup()
    inputs = session_inputs(config)
    h.send(h.submit(inputs[0]))
    h.send(h.deliver(h.close()))
    responses = h.deliver(h.close())
    r = responses[5]
    owner, share = r.seed_shares[0]
    responses[5] = dataclasses.replace(
        r, seed_shares=((owner, Share(share.index % 6 + 1, share.value)), *r.seed_shares[1:])
    )
    h.send(responses)
    h.close()
    (first,) = h.server.sums
    assert [(x.client_id, x.reason) for x in first.excluded] == [(5, AbortReason.INVALID_SHARE)]
    assert first.survivors == tuple(range(6))  # 5's input arrived; its seed is rebuilt from the others
    np.testing.assert_array_equal(first.words, plain_sum(inputs[0], range(6), 32, 4))
    # From the next vector on, the excluded client is out; the others finish.
    h.send(h.submit({c: inputs[1][c] for c in range(5)}))
    h.send(h.deliver(h.close()))
    h.send(h.deliver(h.close()))
    h.close()
    assert isinstance(h.server, ServerCompleted)
    second = h.server.sums[1]
    assert second.survivors == (0, 1, 2, 3, 4)
    np.testing.assert_array_equal(second.words, plain_sum(inputs[1], range(5), 32, 3))


def test_a_bad_share_bundle_from_a_tolerated_corrupt_client_is_set_aside_not_fatal():
    # corrupt = 1: one bad bundle may come from a corrupt sender, so the holder holds nothing of
    # it and goes on; two bad bundles can only be the server's doing, and it aborts.
    config, signers = _config(6, 4, corrupt=1)
    for flips, survives in ((1, True), (2, False)):
        h = Harness(config, signers=signers)
        h.send(h.start())
        h.send(h.deliver(h.close()))
        deliveries = h.close()
        d = deliveries[0]
        bad = {4, 5} if flips == 2 else {5}
        ciphertexts = tuple(
            (s, blob[:-1] + bytes([blob[-1] ^ 1]) if s in bad else blob) for s, blob in d.ciphertexts
        )
        deliveries[0] = SharesDelivery(ciphertexts, d.commitments)
        h.deliver(deliveries)
        state = h.clients[0]
        if not survives:
            assert isinstance(state, Aborted) and state.reason is AbortReason.DECRYPTION_FAILED
            continue
        assert isinstance(state, MaskedInputState)
        assert (
            set(state.session.set_aside) == {5} and 5 in state.session.peers and 5 not in state.session.held
        )
        inputs = session_inputs(config)[0]
        h.send(h.submit(inputs))
        h.send(h.deliver(h.close()))
        h.send(h.deliver(h.close()))
        h.close()
        (total,) = h.server.sums
        np.testing.assert_array_equal(total.words, plain_sum(inputs, range(6), 32, 4))


# ------------------------------------------------------------------------ different broadcasts


def test_different_dreams_to_two_halves_leave_every_client_refusing():
    # n = 7, corrupt = 1: a quorum is 5. The server sends one broadcast to clients 0-3 and another
    # to 4-6; each client binds its own into its masks and signature, so no view gets a quorum.
    config, signers = _config(7, 5, corrupt=1)
    h = Harness(config, signers=signers)
    h.setup()
    inputs = session_inputs(config)[0]
    contexts = {c: b"dreams A" if c < 4 else b"dreams B" for c in range(7)}
    masked = {}
    for c in range(7):
        h.clients[c], masked[c] = h.clients[c].submit(inputs[c], contexts[c])
    h.send(masked)
    replies = h.deliver(h.close())
    assert all(isinstance(h.clients[c], ConsistencyCheckState) for c in range(7))
    signatures = {c: r.signature for c, r in replies.items()}
    replies = h.deliver(_proofs([(list(range(4)), {}), (list(range(4, 7)), {})], signatures))
    assert not any(isinstance(r, UnmaskResponse) for r in replies.values())
    assert set(_honest_refused(h, range(7))) == {AbortReason.TOO_FEW_PEERS}


def _victim_session(victim_context: bytes):
    """n = 7, corrupt = 1 (quorum 5): client 6 gets `victim_context`, the others b"dreams A". The
    server shows everyone the same lists and sends the others' proof to all. Returns the harness,
    the attacker and the inputs."""
    config, signers = _config(7, 5, corrupt=1)
    h = Harness(config, signers=signers)
    h.setup()
    attacker = Attacker(h)
    inputs = session_inputs(config)[0]
    masked = {}
    for c in range(7):
        h.clients[c], masked[c] = h.clients[c].submit(inputs[c], victim_context if c == 6 else b"dreams A")
    attacker.record(masked)
    h.send(masked)
    signatures = {c: r.signature for c, r in h.deliver(h.close()).items()}
    attacker.record(
        h.deliver(_proofs([(list(range(7)), {})], {c: s for c, s in signatures.items() if c != 6}))
    )
    return h, attacker, inputs


def _self_unmasked_sum(attacker: Attacker) -> np.ndarray:
    """Every masked input added up, every self mask removed (every seed is revealed: all alive)."""
    total = [0] * 4
    for c in range(7):
        for i, w in enumerate(attacker.masked[c].words):
            total[i] += int(w)
        seed = attacker.seed(c, 0)
        assert seed is not None
        for i, w in enumerate(
            mask_words(self_mask_key_for(seed, session=attacker.session_id, vector=0), 4, bits=32)
        ):
            total[i] -= int(w)
    return np.array([x % 2**32 for x in total], dtype=np.uint64)


def test_a_client_sent_other_dreams_refuses_and_its_input_stays_masked_in_the_sum():
    # The server sends client 6 a broadcast of its choosing and the others another, hoping their
    # contributions are predictable and the sum exposes client 6. The six others form a quorum and
    # reveal; client 6 sees signatures over another context and refuses. Its pairwise masks were
    # keyed with its own context, so they do not cancel the others': even with the six others'
    # true inputs taken out (which the server does not know), client 6's input is still masked.
    h, attacker, inputs = _victim_session(b"dreams B")
    assert isinstance(h.clients[6], Aborted) and h.clients[6].reason is AbortReason.INCONSISTENT_VIEW
    assert all(isinstance(h.clients[c], Completed) for c in range(6))
    rest = (_self_unmasked_sum(attacker) - plain_sum(inputs, range(6), 32, 4)) & np.uint64(2**32 - 1)
    assert not np.any(rest == inputs[6])
    # Control: when client 6 got the same broadcast, the same arithmetic gives the exact sum.
    h, attacker, inputs = _victim_session(b"dreams A")
    assert all(isinstance(h.clients[c], Completed) for c in range(7))
    np.testing.assert_array_equal(_self_unmasked_sum(attacker), plain_sum(inputs, range(7), 32, 4))


def test_an_honest_server_told_the_broadcast_refuses_an_input_computed_from_another():
    config, signers = _config(7, 5, corrupt=1)
    h = Harness(config, signers=signers)
    h.setup()
    h.server = h.server.expect_context(b"dreams A")
    inputs = session_inputs(config)[0]
    masked = {}
    for c in range(7):
        h.clients[c], masked[c] = h.clients[c].submit(inputs[c], b"dreams B" if c == 6 else b"dreams A")
    h.send(masked)
    assert [(r.client_id, r.reason) for r in h.server.rejections] == [(6, AbortReason.INCONSISTENT_VIEW)]
    requests = h.close()
    assert requests[0].dropped == (6,)
    h.send(h.deliver(requests))
    h.send(h.deliver(h.close()))
    h.close()
    (total,) = h.server.sums
    assert total.survivors == tuple(range(6))
    np.testing.assert_array_equal(total.words, plain_sum(inputs, range(6), 32, 4))


def test_clients_refuse_an_unmask_request_below_min_survivors_even_when_t_would_do():
    config, signers = _config(7, 4)
    config = dataclasses.replace(config, min_survivors=6)
    h = Harness(config, signers=signers)
    h.setup()
    h.submit(session_inputs(config)[0])
    request = UnmaskRequest(0, (0, 1, 2, 3, 4), (5, 6))
    replies = h.deliver(dict.fromkeys(range(5), request))
    assert all(
        isinstance(r, AbortMessage) and r.reason is AbortReason.TOO_FEW_PEERS for r in replies.values()
    )
    assert all(isinstance(h.clients[c], Aborted) for c in range(5))
    assert all(isinstance(h.clients[c], UnmaskState) for c in (5, 6))
