"""Whole sessions: the unmasked sum is exactly the plain sum of the survivors, whatever drops where.

Property tests draw the number of clients (3..40), the graph, the threshold, the vectors, the ring
width, the inputs and a dropout schedule touching every stage; the expected outcome (which clients
are summed for each vector, or where the session must abort) is computed independently of the
protocol code.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codream.exceptions import AbortReason, ConfigError, ProtocolAbort
from codream.secagg.client import Aborted, Completed
from codream.secagg.config import GraphKind, SessionConfig
from codream.secagg.keys import advertisement_digest, session_id
from codream.secagg.messages import AdvertiseKeys
from codream.secagg.runner import (
    Dropout,
    DropoutSchedule,
    InProcessSession,
    Stage,
    provision_signers,
    run_session,
)
from codream.secagg.server.r0_advertise_keys import prune
from conftest import make_config
from fakes import DeterministicRandom, Harness, plain_sum, random_words


def _expected_complete(config: SessionConfig, schedule: DropoutSchedule):
    """For a complete graph: the survivors of each vector, or the vector at which the session aborts
    (-1 for setup), following the protocol's rules with plain set arithmetic: n_min clients at
    every step, t responders, and in malicious mode a quorum of more than (roster + c) / 2 alive
    clients that sign."""
    t, n_min = config.threshold, config.min_survivors
    ids = set(config.client_ids)
    present = {c for c in ids if not schedule.drops_at(c, Stage.ADVERTISE_KEYS)}
    if len(present) < n_min:
        return None, -1
    quorum = config.quorum(len(present)) if config.malicious else 0
    shared = {c for c in present if not schedule.drops_at(c, Stage.SHARE_KEYS)}
    if len(shared) < n_min:
        return None, -1
    active, sums = shared, []
    for j in range(config.num_vectors):
        alive = {c for c in active if not schedule.drops_at(c, Stage.MASKED_INPUT, j)}
        if len(alive) < max(n_min, quorum):
            return sums, j
        signed = {
            c for c in alive if not (config.malicious and schedule.drops_at(c, Stage.CONSISTENCY_CHECK, j))
        }
        if len(signed) < quorum:
            return sums, j
        responders = {c for c in signed if not schedule.drops_at(c, Stage.UNMASK, j)}
        if len(responders) < t:
            return sums, j
        sums.append(tuple(sorted(alive)))
        active = responders
    return sums, None


def _expected_harary(config: SessionConfig, schedule: DropoutSchedule, adverts):
    """For any graph: the survivors of each vector, or where the session aborts, recomputed from
    the advertisements (which fix the session id, hence the graph) with plain set arithmetic: the
    server's pruning, n_min, the quorum (malicious mode), t responders, and t responding holders
    for every seed and key to rebuild."""
    t, n_min = config.threshold, config.min_survivors
    present = frozenset(adverts)
    if len(present) < n_min:
        return None, -1
    roster = tuple(sorted((c, advertisement_digest(a)) for c, a in adverts.items()))
    graph = config.neighbours(session_id(config.digest(), roster))
    usable = prune(present, graph, t)
    shared = prune(frozenset(c for c in usable if not schedule.drops_at(c, Stage.SHARE_KEYS)), graph, t)
    if len(usable) < n_min or len(shared) < n_min:
        return None, -1
    quorum = config.quorum(len(present)) if config.malicious else 0
    active, sums = shared, []
    for j in range(config.num_vectors):
        alive = {c for c in active if not schedule.drops_at(c, Stage.MASKED_INPUT, j)}
        if len(alive) < max(n_min, quorum):
            return sums, j
        signed = {
            c for c in alive if not (config.malicious and schedule.drops_at(c, Stage.CONSISTENCY_CHECK, j))
        }
        if len(signed) < quorum:
            return sums, j
        responders = {c for c in signed if not schedule.drops_at(c, Stage.UNMASK, j)}
        if len(responders) < t:
            return sums, j
        if any(len(({u} | graph[u]) & responders) < t for u in alive):
            return sums, j
        if any(graph[v] & alive and len(graph[v] & responders) < t for v in shared - alive):
            return sums, j
        sums.append(tuple(sorted(alive)))
        active = responders
    return sums, None


@st.composite
def sessions(draw, *, max_clients: int = 40, harary: bool | None = None, malicious: bool = False):
    n = draw(st.integers(3, max_clients))
    use_harary = draw(st.booleans()) if harary is None else harary
    use_harary = use_harary and n >= 5
    corrupt = 0
    if use_harary:
        # With no corrupt client the bound is exactly 0 from t = k/2 + 2 (graph.split_failure).
        degree = draw(st.integers(1, (n - 2) // 2)) * 2
        lowest, holders = degree // 2 + 2, degree + 1
    else:
        degree, holders = 0, n
        corrupt = draw(st.integers(0, min(2, n - 2)))
        # semi-honest: t > c; malicious: 2t > n + c (graph.exposure_failure on the complete graph)
        lowest = (n + corrupt) // 2 + 1 if malicious else max(2, corrupt + 1)
    t = draw(st.integers(lowest, holders))
    lowest_n_min = max(t, corrupt + 2)
    min_survivors = draw(st.integers(lowest_n_min, max(lowest_n_min, min(n, t + 2))))
    num_vectors = draw(st.integers(1, 3))
    lengths = tuple(draw(st.lists(st.integers(1, 12), min_size=num_vectors, max_size=num_vectors)))
    bits = draw(st.sampled_from([8, 13, 16, 32, 47, 64]))
    verify_keys, signers = provision_signers(range(n)) if malicious else ((), None)
    config = SessionConfig(
        round_index=draw(st.integers(0, 2**32 - 1)),
        client_ids=tuple(range(n)),
        threshold=t,
        vector_lengths=lengths,
        bits=bits,
        graph=GraphKind.HARARY if use_harary else GraphKind.COMPLETE,
        degree=degree,
        corrupt=corrupt,
        min_survivors=min_survivors,
        malicious=malicious,
        verify_keys=verify_keys,
    )
    stages = [s for s in Stage if malicious or s is not Stage.CONSISTENCY_CHECK]
    rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    drops = {}
    for cid in range(n):
        if draw(st.floats(0, 1)) < rate:
            stage = draw(st.sampled_from(stages))
            drops[cid] = Dropout(stage, draw(st.integers(0, num_vectors - 1)) if stage.per_vector else 0)
    seed = draw(st.integers(0, 2**32 - 1))
    return config, DropoutSchedule(drops), signers, seed


def _inputs(config: SessionConfig, seed: int):
    rng = np.random.default_rng(seed)
    return [{c: random_words(rng, n, config.bits) for c in config.client_ids} for n in config.vector_lengths]


def _run(config, schedule, signers, seed, adverts=None):
    """Run a whole session; `adverts`, if given, collects every advertisement sent."""
    inputs = _inputs(config, seed)
    session = InProcessSession(
        config, dropouts=schedule, signers=signers, randbytes=DeterministicRandom(seed)
    )
    if adverts is not None:
        send = session._send

        def spy(cid, message):
            if isinstance(message, AdvertiseKeys):
                adverts[cid] = message
            send(cid, message)

        session._send = spy
    sums = []
    try:
        session.setup()
        for j in range(config.num_vectors):
            sums.append(session.aggregate(j, inputs[j], context=b"round plan %d" % j))
    except ProtocolAbort as exc:
        return inputs, sums, exc
    return inputs, sums, None


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(harary=False))
def test_complete_graph_sums_are_exact_or_abort_exactly_when_fewer_than_t_remain(case):
    config, schedule, signers, seed = case
    inputs, sums, error = _run(config, schedule, signers, seed)
    _check_against(*_expected_complete(config, schedule), inputs, sums, error, config)


def _check_against(expected, abort_at, inputs, sums, error, config):
    if abort_at is None:
        assert error is None
    else:
        assert error is not None and error.reason is AbortReason.TOO_FEW_PEERS
        assert len(sums) == max(abort_at, 0)
    for j, s in enumerate(sums):
        assert s.survivors == expected[j] and len(s.survivors) >= config.min_survivors
        np.testing.assert_array_equal(
            s.words, plain_sum(inputs[j], s.survivors, config.bits, config.vector_lengths[j])
        )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(harary=True))
def test_harary_graph_sums_are_exact_or_abort_exactly_when_some_secret_lacks_t_holders(case):
    config, schedule, signers, seed = case
    adverts = {}
    inputs, sums, error = _run(config, schedule, signers, seed, adverts)
    _check_against(*_expected_harary(config, schedule, adverts), inputs, sums, error, config)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(max_clients=16, harary=True, malicious=True))
def test_malicious_mode_on_harary_graphs_is_exact_or_aborts_cleanly_whatever_drops_where(case):
    config, schedule, signers, seed = case
    adverts = {}
    inputs, sums, error = _run(config, schedule, signers, seed, adverts)
    _check_against(*_expected_harary(config, schedule, adverts), inputs, sums, error, config)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(max_clients=12, harary=False, malicious=True))
def test_malicious_mode_sums_are_exact_with_dropouts_at_every_stage(case):
    config, schedule, signers, seed = case
    inputs, sums, error = _run(config, schedule, signers, seed)
    _check_against(*_expected_complete(config, schedule), inputs, sums, error, config)


@pytest.mark.parametrize(
    "dropout",
    [
        Dropout(Stage.ADVERTISE_KEYS),
        Dropout(Stage.SHARE_KEYS),
        Dropout(Stage.MASKED_INPUT, 0),
        Dropout(Stage.UNMASK, 0),
        Dropout(Stage.MASKED_INPUT, 1),
        Dropout(Stage.UNMASK, 1),
    ],
    ids=lambda d: f"{d.stage.value}-{d.vector}",
)
def test_one_client_crashing_at_any_stage_leaves_every_sum_exact(dropout):
    config, _ = make_config(n=6, t=3, lengths=(5, 3))
    schedule = DropoutSchedule({2: dropout})
    inputs = _inputs(config, 3)
    result = run_session(config, inputs, dropouts=schedule)
    for j, s in enumerate(result.sums):
        gone = dropout.stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS) or (
            dropout.vector <= j if dropout.stage is Stage.MASKED_INPUT else dropout.vector < j
        )
        assert (2 in s.survivors) is not gone
        np.testing.assert_array_equal(
            s.words, plain_sum(inputs[j], s.survivors, config.bits, config.vector_lengths[j])
        )


def test_a_client_that_advertised_but_never_shared_keys_is_never_needed_for_unmasking():
    config, _ = make_config(n=5, t=3, lengths=(4,))
    h = Harness(config)
    h.setup(skip_share=[4])
    inputs = _inputs(config, 5)[0]
    requests = h.to_unmask({c: inputs[c] for c in range(4)})
    assert all(4 not in r.alive + r.dropped for r in requests.values())
    h.send(h.deliver(requests))
    h.close()
    (result,) = h.server.sums
    assert result.survivors == (0, 1, 2, 3)
    np.testing.assert_array_equal(result.words, plain_sum(inputs, range(4), 32, 4))


def test_vectors_are_aggregated_one_at_a_time_and_in_order():
    config, _ = make_config(n=4, t=3, lengths=(3, 3))
    session = InProcessSession(config)
    with pytest.raises(Exception, match="setup"):
        session.aggregate(0, {})
    session.setup()
    inputs = _inputs(config, 0)
    with pytest.raises(Exception, match="expected vector 0"):
        session.aggregate(1, inputs[1])
    first = session.aggregate(0, inputs[0])
    second = session.aggregate(1, inputs[1], dropouts={3: Stage.MASKED_INPUT})
    assert first.survivors == (0, 1, 2, 3) and second.survivors == (0, 1, 2)
    assert all(isinstance(s, Completed) for c, s in session.client_states.items() if c != 3)


def test_the_runner_counts_two_plus_two_j_messages_per_client_and_every_byte():
    config, _ = make_config(n=4, t=3, lengths=(10, 10, 10))
    result = run_session(config, _inputs(config, 0))
    assert set(result.stats.messages_sent.values()) == {2 + 2 * 3}
    assert all(b > 3 * 4 * 10 for b in result.stats.bytes_sent.values())
    assert all(b > 0 for b in result.stats.bytes_received.values())
    assert result.stats.server_bytes_received == sum(result.stats.bytes_sent.values())


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_fewer_than_t_survivors_at_any_stage_aborts_with_a_reason(stage):
    config, _ = make_config(n=5, t=4, lengths=(3, 3))
    schedule = DropoutSchedule({0: Dropout(stage), 1: Dropout(stage)})
    session = InProcessSession(config, dropouts=schedule)
    with pytest.raises(ProtocolAbort) as info:
        session.setup()
        session.aggregate(0, _inputs(config, 0)[0])
    assert info.value.reason is AbortReason.TOO_FEW_PEERS
    # Everyone still listening was told, and stopped for the same reason.
    aborted = [s for s in session.client_states.values() if isinstance(s, Aborted)]
    assert aborted and all(s.reason is AbortReason.TOO_FEW_PEERS for s in aborted)


def test_sums_are_exact_with_the_real_operating_system_randomness():
    config = SessionConfig(
        round_index=1,
        client_ids=tuple(range(10, 30)),
        threshold=5,
        vector_lengths=(64,),
        bits=64,
        graph=GraphKind.HARARY,
        degree=6,
    )
    rng = np.random.default_rng(9)
    inputs = [{c: random_words(rng, 64, 64) for c in config.client_ids}]
    schedule = DropoutSchedule({11: Dropout(Stage.SHARE_KEYS), 17: Dropout(Stage.UNMASK)})
    (s,) = run_session(config, inputs, dropouts=schedule).sums
    assert 11 not in s.survivors and 17 in s.survivors
    np.testing.assert_array_equal(s.words, plain_sum(inputs[0], s.survivors, 64, 64))


def test_malformed_input_words_are_refused_before_any_client_masks():
    config, _ = make_config(n=4, t=3, lengths=(3,))
    session = InProcessSession(config)
    session.setup()
    inputs = _inputs(config, 0)[0]
    bad = dict(inputs)
    bad[3] = np.array([1, 2, 2**32], dtype=np.uint64)
    with pytest.raises(ConfigError, match="outside"):
        session.aggregate(0, bad)
    bad[3] = np.array([1, 2, 3], dtype=np.int64)
    with pytest.raises(ConfigError, match="uint64"):
        session.aggregate(0, bad)
    result = session.aggregate(0, inputs)
    assert result.survivors == (0, 1, 2, 3)
    np.testing.assert_array_equal(result.words, plain_sum(inputs, range(4), 32, 3))


def test_a_random_dropout_schedule_is_reproducible_and_honours_its_rate():
    a = DropoutSchedule.random(range(200), rate=0.3, num_vectors=4, seed=[1, 2])
    b = DropoutSchedule.random(range(200), rate=0.3, num_vectors=4, seed=[1, 2])
    assert a.drops == b.drops
    assert 30 <= len(a.drops) <= 90
    assert {d.stage for d in a.drops.values()} == set(Stage) - {Stage.CONSISTENCY_CHECK}
    assert all(d.vector < 4 for d in a.drops.values())
    assert DropoutSchedule.random(range(50), rate=0.0, num_vectors=2, seed=0).drops == {}
    with pytest.raises(ConfigError):
        DropoutSchedule.random(range(5), rate=1.5, num_vectors=1, seed=0)


def test_a_client_on_a_harary_graph_derives_only_its_own_and_its_neighbours_neighbourhoods():
    config = SessionConfig(
        round_index=3,
        client_ids=tuple(range(60)),
        threshold=5,
        vector_lengths=(4,),
        graph=GraphKind.HARARY,
        degree=6,
        corrupt=0,
    )
    h = Harness(config)
    h.send(h.start())
    h.send(h.deliver(h.close()))
    sid = h.clients[0].session_id
    whole = config.neighbours(sid)
    for cid, state in h.clients.items():
        # the neighbours of cid and of each of its 6 neighbours: 7 entries, never all 60
        assert set(state.graph) == {cid} | whole[cid]
        assert all(state.graph[v] == whole[v] for v in state.graph)
    inputs = {c: random_words(np.random.default_rng(c), 4, config.bits) for c in config.client_ids}
    (total,) = run_session(config, [inputs]).sums
    np.testing.assert_array_equal(total.words, plain_sum(inputs, config.client_ids, config.bits, 4))
