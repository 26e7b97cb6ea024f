"""The `secure` seam: float sums through encoding, masking and unmasking stay within the codec's
documented quantisation bound, over exactly the reported survivors, with clipping counted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codream.aggregation import (
    COUNT_WORDS,
    LocalAggregator,
    VectorSpec,
    create_aggregator,
    required_threshold,
)
from codream.exceptions import AbortReason, ConfigError, ProtocolAbort
from codream.privacy.clipping import clip_l2


def SecureAggregator(**options) -> LocalAggregator:  # noqa: N802 - reads like the mode it builds
    return create_aggregator("secure", **options)


def _expected(vectors, contributors, clip):
    return sum(clip_l2(np.asarray(vectors[c], dtype=np.float64), clip)[0] for c in contributors)


def test_secure_is_registered_with_the_seam():
    agg = create_aggregator("secure", dropout=0.1, seed=3)
    assert isinstance(agg, LocalAggregator) and agg.name == "secure"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 16),
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=3),
    clip=st.floats(0.01, 100.0),
    spread=st.floats(0.0, 3.0),
    bits=st.sampled_from([24, 32, 48, 64]),
    dropout=st.sampled_from([0.0, 0.2, 0.4]),
    graph=st.sampled_from(["complete", "harary"]),
    seed=st.integers(0, 2**31),
)
def test_decoded_sums_are_within_the_quantisation_bound_of_the_float_sum(
    n, lengths, clip, spread, bits, dropout, graph, seed
):
    agg = SecureAggregator(bits=bits, dropout=dropout, seed=seed, graph=graph, rounding_seed=seed)
    specs = [VectorSpec(f"v{i}", length, clip) for i, length in enumerate(lengths)]
    rnd = agg.open_round(round_index=seed % 1000, participants=list(range(100, 100 + n)), specs=specs)
    rng = np.random.default_rng(seed)
    for j, spec in enumerate(specs):
        vectors = {c: rng.normal(size=spec.length) * clip * spread for c in rnd.participants}
        try:
            result = rnd.sum(spec, vectors)
        except ProtocolAbort as exc:
            assert exc.reason is AbortReason.TOO_FEW_PEERS
            return
        k = result.count
        assert k >= rnd.plan.n_min
        expected = _expected(vectors, result.contributors, clip)
        bound = rnd.quantisation_bound(j, k)
        assert np.max(np.abs(result.total - expected)) <= bound
        norms = [np.linalg.norm(vectors[c]) for c in result.contributors]
        assert result.clipped == sum(norm > clip for norm in norms)
        assert result.overflowed == 0
    report = rnd.close()
    assert report.vectors == len(specs) and report.participants == rnd.participants
    assert set(report.survivors) <= set(rnd.participants)


def test_counts_ride_inside_the_masked_vector_and_only_their_sum_reaches_the_server():
    """Nothing per client travels beside a masked release: the server's state machine sees words only,
    and the clip count it decodes is the sum of the count words the clients masked."""
    agg = SecureAggregator(rounding_seed=0)
    spec = VectorSpec("soft_labels", 8, 1.0)
    rnd = agg.open_round(round_index=0, participants=range(6), specs=[spec])
    assert rnd.plan.session.vector_lengths == (8 + COUNT_WORDS,)
    rng = np.random.default_rng(0)
    vectors = {c: rng.normal(size=8) * 0.1 for c in range(6)}
    vectors[2] = vectors[2] * 100
    vectors[4] = vectors[4] * 100
    result = rnd.sum(spec, vectors)
    assert result.clipped == 2
    assert [agg.clients[c].local_stats.clipped for c in range(6)] == [0, 0, 1, 0, 1, 0]


def test_fewer_survivors_than_min_survivors_aborts_the_round_for_good():
    agg = SecureAggregator(dropout=0.6, seed=1, min_survivors=5, threshold=4)
    specs = [VectorSpec("a", 4, 1.0), VectorSpec("b", 4, 1.0)]
    rnd = agg.open_round(round_index=0, participants=range(6), specs=specs)
    vectors = {c: np.ones(4) * 0.1 for c in range(6)}
    with pytest.raises(ProtocolAbort) as info:
        rnd.sum(specs[0], vectors)
        rnd.sum(specs[1], vectors)
    assert info.value.reason is AbortReason.TOO_FEW_PEERS
    with pytest.raises(ProtocolAbort):
        rnd.sum(rnd.next_spec, vectors)
    report = rnd.close()
    assert report.secure.aborted


def test_malicious_mode_through_the_seam_gives_the_same_sum():
    spec = VectorSpec("g", 16, 2.0)
    rng = np.random.default_rng(5)
    vectors = {c: rng.normal(size=16) for c in range(7)}
    honest = SecureAggregator(rounding_seed=1).open_round(round_index=0, participants=range(7), specs=[spec])
    malicious = SecureAggregator(malicious=True, rounding_seed=1).open_round(
        round_index=0, participants=range(7), specs=[spec]
    )
    a, b = honest.sum(spec, vectors), malicious.sum(spec, vectors)
    session = malicious.plan.session
    assert session.malicious and session.threshold == required_threshold(7, malicious=True)
    np.testing.assert_array_equal(a.total, b.total)


def test_the_round_report_counts_bytes_per_client_and_names_the_survivors():
    spec = VectorSpec("g", 100, 1.0)
    rnd = SecureAggregator().open_round(round_index=2, participants=[5, 9, 11, 20], specs=[spec])
    vectors = {c: np.full(100, 0.05) for c in rnd.participants}
    vectors.pop(20)  # a participant with nothing to send counts as dropped
    result = rnd.sum(spec, vectors)
    report = rnd.close()
    assert result.contributors == (5, 9, 11) and report.survivors == (5, 9, 11)
    assert all(report.bytes_sent_per_client[c] > 4 * 100 for c in (5, 9, 11))
    assert report.bytes_received_by_server == sum(report.bytes_sent_per_client.values())
    assert report.secure.server_seconds > 0 and report.secure.threshold == 3


@pytest.mark.parametrize(
    ("options", "participants"),
    [
        ({"graph": "star"}, 4),
        ({"dropout": 1.0}, 4),
        ({"threshold": 1}, 4),
        ({"bits": 4}, 4),
        ({}, 1),
        ({"threshold": 9}, 4),
        ({"min_survivors": 6}, 4),
    ],
    ids=[
        "unknown-graph",
        "dropout-one",
        "threshold-one",
        "too-few-bits",
        "one-participant",
        "threshold-above-n",
        "min-survivors-above-n",
    ],
)
def test_bad_options_are_refused_with_a_config_error(options, participants):
    with pytest.raises(ConfigError):
        SecureAggregator(**options).open_round(
            round_index=0, participants=range(participants), specs=[VectorSpec("a", 3, 1.0)]
        )


def test_a_fixed_rounding_seed_makes_a_round_reproducible():
    spec = VectorSpec("g", 32, 1.0)
    rng = np.random.default_rng(3)
    vectors = {c: rng.normal(size=32) * 0.2 for c in range(5)}
    totals = [
        SecureAggregator(rounding_seed=11)
        .open_round(round_index=0, participants=range(5), specs=[spec])
        .sum(spec, vectors)
        .total
        for _ in range(2)
    ]
    np.testing.assert_array_equal(totals[0], totals[1])


@pytest.mark.parametrize(
    ("n", "options", "corrupt", "n_min"),
    [
        (2, {}, 0, 2),  # two clients cannot tolerate a corrupt one
        (3, {}, 1, 3),  # t = 2 would let a sum hold one honest input next to the corrupt one
        (20, {}, 2, 11),
        (20, {"min_survivors": 15}, 2, 15),
        (20, {"corrupt_fraction": 0.0}, 0, 11),
    ],
)
def test_the_server_seam_puts_corrupt_clients_and_n_min_into_the_session(n, options, corrupt, n_min):
    from codream.aggregation.server import ServerSeam

    seam = ServerSeam("secure", **options)
    config = seam.session_config(round_index=0, participants=range(n), lengths=(3,))
    assert (config.corrupt, config.min_survivors) == (corrupt, n_min)


def test_a_harary_request_too_small_for_a_sparse_graph_gets_the_complete_graphs_threshold():
    from codream.aggregation.server import ServerSeam

    config = ServerSeam("secure", graph="harary", dropout=0.1, malicious=True).session_config(
        round_index=0, participants=range(20), lengths=(3,)
    )
    assert config.is_complete and config.corrupt == 2 and 2 * config.threshold > 20 + 2


def test_a_semi_honest_harary_session_takes_the_random_dropout_rule_and_says_so():
    from codream.aggregation.server import ServerSeam
    from codream.secagg.graph import choose_parameters

    config = ServerSeam("secure", graph="harary", dropout=0.1, corrupt_fraction=0.1).session_config(
        round_index=0, participants=range(1000), lengths=(3,)
    )
    rule = choose_parameters(1000, dropout_rate=0.1, corrupt_fraction=0.1, malicious=False)
    assert config.dropout_rate == 0.1 and (config.degree, config.threshold) == (rule.k, rule.threshold)
    assert config.degree < choose_parameters(1000, dropout_rate=0.1, corrupt_fraction=0.1).k
