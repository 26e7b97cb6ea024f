"""The Harary security bound, term by term, against exact hypergeometric sums; and the
threshold rule it implies, with the owner's own share counted.

graph.exposure_failure and graph.split_failure are union bounds over the n clients of tail
probabilities of a hypergeometric law. Here each tail is recomputed with exact rational
arithmetic (math.comb and fractions), so an off-by-one in either term, or a tail library that
loses precision at 2^-40, fails the test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from codream.exceptions import ConfigError
from codream.secagg.config import GraphKind, SessionConfig
from codream.secagg.graph import (
    SECURITY_BITS,
    choose_parameters,
    correctness_failure,
    exposure_failure,
    random_split_failure,
    security_failure,
    split_failure,
)
from codream.secagg.runner import provision_signers


def _tail(population: int, marked: int, draws: int, at_least: int) -> Fraction:
    """P[X >= at_least] for X ~ Hypergeometric(population, marked, draws), exactly."""
    top = min(draws, marked)
    total = sum(
        math.comb(marked, x) * math.comb(population - marked, draws - x)
        for x in range(max(at_least, 0), top + 1)
    )
    return Fraction(total, math.comb(population, draws))


def _close(value: float, exact: Fraction) -> bool:
    return value == pytest.approx(float(min(Fraction(1), exact)), rel=1e-9, abs=1e-300)


CASES = [  # (n, k, t, corrupt)
    (20, 6, 6, 1),
    (50, 10, 9, 3),
    (100, 20, 14, 2),
    (100, 38, 21, 0),
    (100, 74, 49, 10),
    (300, 124, 89, 30),
    (1000, 150, 109, 100),
    (1000, 150, 100, 100),
    (500, 60, 40, 50),
    (20, 19, 11, 2),
    (20, 19, 12, 2),
    (11, 10, 5, 0),
]


@pytest.mark.parametrize(("n", "k", "t", "c"), CASES)
def test_the_exposure_term_is_n_times_an_exact_hypergeometric_tail_with_the_own_share_counted(n, k, t, c):
    # Malicious: k + 1 holders (the owner's own share included), X of them corrupt; a server that
    # splits the honest ones between two views gets both secrets iff 2t <= (k + 1 - X) + 2X.
    assert _close(exposure_failure(n, k, t, c, malicious=True), n * _tail(n - 1, c, k, 2 * t - k - 1))
    # Semi-honest: one view; the secret the lists do not call for needs t corrupt holders.
    assert _close(exposure_failure(n, k, t, c, malicious=False), n * _tail(n - 1, c, k, t))


@pytest.mark.parametrize(("n", "k", "t", "c"), CASES)
def test_the_split_term_is_n_times_an_exact_tail_over_half_a_neighbourhood(n, k, t, c):
    expected = Fraction(0) if k >= n - 1 else n * _tail(n - 1, c, k // 2, t - 1 - k // 2)
    assert _close(split_failure(n, k, t, c), expected)
    total = exposure_failure(n, k, t, c, malicious=True) + split_failure(n, k, t, c)
    assert security_failure(n, k, t, c, malicious=True) == pytest.approx(min(1.0, total), rel=1e-12)


@pytest.mark.parametrize("k", [2, 4, 9, 10, 19])
def test_the_exposure_event_is_exactly_when_a_view_splitting_server_gets_both_secrets(k):
    # Brute force over every way to split the honest holders between "alive" and "dropped"
    # views: the server collects t seed shares and t key shares iff the bound's event holds.
    for t in range(2, k + 2):
        for corrupt_holders in range(0, k + 1):
            honest = k + 1 - corrupt_holders  # the owner's own share is an honest holder
            broken = any(
                a + corrupt_holders >= t and (honest - a) + corrupt_holders >= t for a in range(honest + 1)
            )
            assert broken == (corrupt_holders >= 2 * t - k - 1), (k, t, corrupt_holders)


def test_the_issues_small_n_case_gets_the_complete_graph_threshold():
    # n = 20, 10% corrupt: too few clients for a sparse graph. The fallback to the complete graph
    # gets 2t > n + c = 22, i.e. t = 12; t = 11 (the old bound's, which ignored the own share)
    # lets two corrupt clients and a server that splits the views take both secrets of a client.
    p = choose_parameters(20, dropout_rate=0.1, corrupt_fraction=0.1)
    assert (p.k, p.threshold, p.corrupt) == (19, 12, 2)
    assert security_failure(20, 19, 11, 2, malicious=True) == 1.0
    assert security_failure(20, 19, 12, 2, malicious=True) == 0.0


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt"),
    [(20, 0.1, 0.1), (60, 0.05, 0.1), (100, 0.1, 0.1), (100, 0.1, 0.0), (300, 0.1, 0.1), (1000, 0.1, 0.1)],
)
def test_chosen_parameters_meet_their_targets_and_every_session_config_accepts_them(n, dropout, corrupt):
    p = choose_parameters(n, dropout_rate=dropout, corrupt_fraction=corrupt)
    assert p.security_failure <= 2.0**-SECURITY_BITS
    assert p.security_failure == security_failure(n, p.k, p.threshold, p.corrupt, malicious=True)
    assert p.correctness_failure == correctness_failure(n, p.k, p.threshold, dropout)
    # t is the least that meets the target
    assert security_failure(n, p.k, p.threshold - 1, p.corrupt, malicious=True) > 2.0**-SECURITY_BITS
    graph = GraphKind.COMPLETE if p.k == n - 1 else GraphKind.HARARY
    verify_keys, _ = provision_signers(range(n))
    for malicious in (False, True):
        SessionConfig(
            round_index=0,
            client_ids=tuple(range(n)),
            threshold=p.threshold,
            vector_lengths=(1,),
            graph=graph,
            degree=0 if graph is GraphKind.COMPLETE else p.k,
            corrupt=p.corrupt,
            malicious=malicious,
            verify_keys=verify_keys if malicious else (),
        )


def test_session_config_refuses_what_the_bound_refuses():
    base = dict(round_index=0, vector_lengths=(1,))
    # Harary with 100 clients, k = 20, 2 corrupt: t = 13 leaves t - 1 - k/2 = 2 corrupt clients
    # enough to cut the ring; t = 14 does not (the bound is 0).
    ids = tuple(range(100))
    with pytest.raises(ConfigError, match="security failure bound"):
        SessionConfig(client_ids=ids, threshold=13, graph=GraphKind.HARARY, degree=20, corrupt=2, **base)
    SessionConfig(client_ids=ids, threshold=14, graph=GraphKind.HARARY, degree=20, corrupt=2, **base)
    # Degree n - 1 is the complete graph, so the complete graph's rule applies to it.
    ids = tuple(range(20))
    keys, _ = provision_signers(ids)
    for graph, degree in ((GraphKind.COMPLETE, 0), (GraphKind.HARARY, 19)):
        with pytest.raises(ConfigError, match=r"2t > n \+ c"):
            SessionConfig(
                client_ids=ids,
                threshold=11,
                graph=graph,
                degree=degree,
                corrupt=2,
                malicious=True,
                verify_keys=keys,
                **base,
            )


@pytest.mark.parametrize(
    ("n", "dropout", "corrupt", "k", "t"),
    [
        (20, 0.1, 0.1, 19, 12),
        (100, 0.1, 0.0, 38, 21),
        (100, 0.1, 0.1, 74, 49),
        (1000, 0.1, 0.1, 150, 109),
        (10000, 0.1, 0.1, 174, 127),
        (10000, 0.3, 0.1, 1086, 662),
        (10, 0.3, 0.0, 9, 6),
    ],
)
def test_the_examples_of_secagg_primitives_section_7(n, dropout, corrupt, k, t):
    p = choose_parameters(n, dropout_rate=dropout, corrupt_fraction=corrupt)
    assert (p.k, p.threshold) == (k, t)


# ----------------------------------------------------------------- the semi-honest rule (random dropouts)


@pytest.mark.parametrize(
    ("n", "k", "c", "dropout"), [(100, 20, 10, 0.1), (1000, 46, 100, 0.1), (200, 66, 20, 0.3)]
)
def test_the_random_split_term_is_n_times_an_exact_sum_over_the_corrupt_clients_of_a_half_ring(
    n, k, c, dropout
):
    half, p = k // 2, Fraction(dropout).limit_denominator(1000)
    exact = sum(
        Fraction(math.comb(c, z) * math.comb(n - 1 - c, half - z), math.comb(n - 1, half)) * p ** (half - z)
        for z in range(half + 1)
    )
    assert _close(random_split_failure(n, k, c, float(p)), n * exact)
    assert random_split_failure(n, n - 1, c, dropout) == 0.0


@pytest.mark.parametrize(("n", "dropout"), [(200, 0.0), (1000, 0.1), (1000, 0.3), (5000, 0.1)])
def test_the_semi_honest_rule_meets_the_target_with_the_least_threshold_and_configs_accept_it(n, dropout):
    p = choose_parameters(n, dropout_rate=dropout, corrupt_fraction=0.1, malicious=False)
    assert p.dropout == dropout and p.k < n - 1
    bound = security_failure(n, p.k, p.threshold, p.corrupt, malicious=False, dropout=dropout)
    assert p.security_failure == bound <= 2.0**-SECURITY_BITS
    assert security_failure(n, p.k, p.threshold - 1, p.corrupt, malicious=False, dropout=dropout) > 2.0**-40
    assert p.correctness_failure <= 2.0**-20
    # Far below the malicious rule, whose threshold must exceed half the holders.
    assert p.k < choose_parameters(n, dropout_rate=dropout, corrupt_fraction=0.1).k
    base = dict(
        round_index=0,
        client_ids=tuple(range(n)),
        threshold=p.threshold,
        vector_lengths=(1,),
        graph=GraphKind.HARARY,
        degree=p.k,
        corrupt=p.corrupt,
        min_survivors=p.corrupt + 2,
    )
    SessionConfig(**base, dropout_rate=dropout)
    with pytest.raises(ConfigError, match="security failure bound"):
        SessionConfig(**base)  # without the dropout model the bound that holds whoever drops refuses t
    keys, _ = provision_signers(range(n))
    with pytest.raises(ConfigError, match="dropout_rate"):
        SessionConfig(**base, dropout_rate=dropout, malicious=True, verify_keys=keys)


def test_the_semi_honest_degree_grows_like_log_n():
    for dropout in (0.1, 0.3):
        small, large = (
            choose_parameters(n, dropout_rate=dropout, corrupt_fraction=0.1, malicious=False)
            for n in (1000, 10_000)
        )
        assert small.k <= large.k < 1.3 * small.k


# protocols/secagg.md §3.3, the rules' numbers at 10 % corrupt clients: per n, (k, t) of the
# semi-honest rule at dropout 0, 0.1, 0.3, then of the malicious rule at the same dropouts.
SECTION_3_3 = {
    100: ((22, 11), (36, 11), (64, 11), (24, 24), (74, 49), (99, 56)),
    200: ((26, 17), (38, 20), (66, 21), (30, 30), (108, 76), (199, 111)),
    500: ((28, 21), (44, 24), (82, 32), (34, 34), (136, 98), (499, 276)),
    1000: ((30, 22), (46, 26), (92, 37), (34, 34), (150, 109), (784, 470)),
    2000: ((32, 23), (50, 28), (100, 40), (36, 36), (158, 115), (912, 552)),
    5000: ((32, 23), (54, 30), (104, 42), (36, 36), (168, 123), (1024, 623)),
    10000: ((32, 25), (54, 30), (106, 43), (38, 38), (174, 127), (1086, 662)),
}


@pytest.mark.parametrize("malicious", [False, True], ids=["semi-honest", "malicious"])
@pytest.mark.parametrize("n", sorted(SECTION_3_3))
def test_the_table_of_protocols_secagg_section_3_3(n, malicious):
    got = tuple(
        (p.k, p.threshold)
        for p in (
            choose_parameters(n, dropout_rate=d, corrupt_fraction=0.1, malicious=malicious)
            for d in (0.0, 0.1, 0.3)
        )
    )
    assert got == SECTION_3_3[n][3 * malicious : 3 * malicious + 3]


# protocols/secagg.md §3.3, the malicious rule at 5 % corrupt clients: (n, dropout) -> (k, t).
MALICIOUS_AT_5_PERCENT = {
    (1000, 0.05): (80, 60),
    (10_000, 0.05): (90, 68),
    (100_000, 0.05): (100, 75),
    (1000, 0.1): (114, 80),
    (10_000, 0.1): (132, 93),
    (100_000, 0.1): (144, 101),
}


@pytest.mark.parametrize(("n", "dropout"), sorted(MALICIOUS_AT_5_PERCENT))
def test_the_malicious_rule_against_bell_et_al(n, dropout):
    p = choose_parameters(n, dropout_rate=dropout, corrupt_fraction=0.05, malicious=True)
    assert (p.k, p.threshold) == MALICIOUS_AT_5_PERCENT[(n, dropout)]
    assert p.security_failure <= 2.0**-40 and p.correctness_failure <= 2.0**-20
    if (n, dropout) == (10_000, 0.05):  # Bell et al. (2020): about 3 % of 10,000 clients
        assert p.k < 0.03 * n
