"""What keeps a session linear in n x k: O(k) messages per client in semi-honest mode, server rounds
that record a message without copying what came before, and no key agreement on the masking path."""

from __future__ import annotations

import numpy as np
import pytest

from codream.crypto.agreement import X25519KeyPair
from codream.exceptions import AbortReason
from codream.secagg.client import Aborted, MaskedInputState
from codream.secagg.config import GraphKind, SessionConfig
from codream.secagg.keys import advertisement_digest, roster_digest, session_id
from codream.secagg.messages import KeysBroadcast, UnmaskRequest
from codream.secagg.runner import Dropout, DropoutSchedule, InProcessSession, Stage, provision_signers
from codream.secagg.server import ServerAdvertiseKeys, ServerShareKeys, start_server
from codream.secagg.server.ledger import Ledger
from fakes import Harness, plain_sum, random_words

N, K, T = 40, 6, 5


def _harary(*, malicious: bool = False) -> tuple[SessionConfig, dict | None]:
    keys, signers = provision_signers(range(N)) if malicious else ((), None)
    config = SessionConfig(
        round_index=3,
        client_ids=tuple(range(N)),
        threshold=T,
        vector_lengths=(5, 3),
        graph=GraphKind.HARARY,
        degree=K,
        malicious=malicious,
        verify_keys=keys,
    )
    return config, signers


def test_a_ledger_view_never_changes_and_a_second_extension_branches_off():
    empty: Ledger[int, str] = Ledger()
    one = empty.with_item(1, "a")
    two = one.with_item(2, "b")
    other = one.with_item(3, "c")  # `one` was extended already: this must not touch `two`
    assert (dict(empty), dict(one), dict(two), dict(other)) == (
        {},
        {1: "a"},
        {1: "a", 2: "b"},
        {1: "a", 3: "c"},
    )
    assert 2 not in one and 3 not in two and len(two) == 2 and list(two) == [1, 2]
    with pytest.raises(KeyError):
        two.with_item(1, "again")
    with pytest.raises(KeyError):
        one[2]


def test_a_server_state_handled_twice_keeps_both_histories_apart():
    config, _ = _harary()
    h = Harness(config)
    adverts = h.start()
    s0 = start_server(config).handle(adverts[0])
    left, right = s0.handle(adverts[1]), s0.handle(adverts[2])
    assert isinstance(left, ServerAdvertiseKeys) and isinstance(right, ServerAdvertiseKeys)
    assert sorted(left.adverts) == [0, 1] and sorted(right.adverts) == [0, 2] and sorted(s0.adverts) == [0]


def test_semi_honest_messages_carry_only_the_neighbourhood_and_the_sums_stay_exact():
    config, _ = _harary()
    h = Harness(config)
    h.send(h.start())
    broadcasts = h.close()
    server = h.server
    assert isinstance(server, ServerShareKeys)
    entries = tuple(sorted((c, advertisement_digest(a)) for c, a in server.adverts.items()))
    for u, bc in broadcasts.items():
        assert isinstance(bc, KeysBroadcast) and not bc.whole
        assert {cid for cid, _ in bc.roster} == server.graph[u] | {u}  # O(k), not the N entries
        assert (bc.roster_size, bc.roster_digest) == (N, roster_digest(entries))
    assert server.session_id == session_id(config.digest(), entries)
    h.send(h.deliver(broadcasts))
    h.deliver(h.close())
    rng = np.random.default_rng(5)
    inputs = {c: random_words(rng, 5, config.bits) for c in range(N)}
    gone = {3, 17, 29}
    requests = h.to_unmask(inputs, skip=gone)
    for u, request in requests.items():
        assert isinstance(request, UnmaskRequest) and request.survivors == N - len(gone)
        assert set(request.alive) | set(request.dropped) == server.graph[u] | {u}
        assert set(request.dropped) == server.graph[u] & gone
    h.send(h.deliver(requests))
    h.close()
    total = h.server.sums[0]
    assert total.survivors == tuple(c for c in range(N) if c not in gone)
    np.testing.assert_array_equal(total.words, plain_sum(inputs, total.survivors, config.bits, 5))


def test_malicious_mode_keeps_the_whole_roster_and_the_whole_lists():
    config, signers = _harary(malicious=True)
    session = InProcessSession(
        config, signers=signers, dropouts=DropoutSchedule({7: Dropout(Stage.MASKED_INPUT, 0)})
    )
    session.setup()
    rng = np.random.default_rng(6)
    for j, length in enumerate(config.vector_lengths):
        inputs = {c: random_words(rng, length, config.bits) for c in range(N)}
        total = session.aggregate(j, inputs)
        assert 7 not in total.survivors and len(total.survivors) == N - 1
        np.testing.assert_array_equal(total.words, plain_sum(inputs, total.survivors, config.bits, length))


def _first_broadcast(config, signers=None):
    h = Harness(config, signers=signers)
    h.send(h.start())
    return h, h.close()


def test_a_malicious_mode_client_refuses_a_partial_roster():
    config, signers = _harary(malicious=True)
    h, broadcasts = _first_broadcast(config, signers)
    bc = broadcasts[0]
    assert bc.whole and len(bc.roster) == N
    keep = {cid for cid, _ in bc.roster if cid == 0} | {a.sender for a in bc.advertisements}
    partial = KeysBroadcast(
        tuple(e for e in bc.roster if e[0] in keep), bc.advertisements, N, roster_digest(bc.roster)
    )
    after, _ = h.clients[0].handle(partial)
    assert isinstance(after, Aborted) and after.reason is AbortReason.INCONSISTENT_VIEW


def test_a_semi_honest_client_refuses_a_roster_size_below_the_entries_it_got():
    config, _ = _harary()
    h, broadcasts = _first_broadcast(config)
    bc = broadcasts[0]
    after, _ = h.clients[0].handle(KeysBroadcast(bc.roster, bc.advertisements, 2, bc.roster_digest))
    assert isinstance(after, Aborted) and after.reason is AbortReason.MALFORMED_MESSAGE


def test_a_partial_roster_naming_a_client_outside_the_neighbourhood_is_refused():
    config, _ = _harary()
    h, broadcasts = _first_broadcast(config)
    bc = broadcasts[0]
    named = {cid for cid, _ in bc.roster}
    stranger = next(c for c in range(N) if c not in named)
    digest = advertisement_digest(h.clients[stranger].advert)
    widened = KeysBroadcast(
        tuple(sorted((*bc.roster, (stranger, digest)))), bc.advertisements, N, bc.roster_digest
    )
    after, _ = h.clients[0].handle(widened)
    assert isinstance(after, Aborted) and after.reason is AbortReason.UNKNOWN_PEER


def test_masking_a_vector_does_no_key_agreement(monkeypatch):
    config, _ = _harary()
    h = Harness(config)
    h.setup()
    calls = []
    real = X25519KeyPair.exchange
    monkeypatch.setattr(X25519KeyPair, "exchange", lambda self, peer: calls.append(peer) or real(self, peer))
    rng = np.random.default_rng(7)
    for cid in range(N):
        state = h.clients[cid]
        assert isinstance(state, MaskedInputState)
        h.clients[cid], _ = state.submit(random_words(rng, 5, config.bits))
    assert calls == []
