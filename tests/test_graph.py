"""Neighbour graphs: regular, symmetric, loop-free, connected, reproducible; parameters behave."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codream.exceptions import ConfigError
from codream.secagg.graph import (
    choose_parameters,
    complete_graph,
    harary_graph,
    harary_neighbourhood,
    is_connected,
    seeded_permutation,
)


def _check_simple_regular(graph: dict[int, frozenset[int]], k: int) -> None:
    for u, neighbours in graph.items():
        assert u not in neighbours
        assert len(neighbours) == k
        for v in neighbours:
            assert u in graph[v]


def test_complete_graph_joins_every_pair_once() -> None:
    graph = complete_graph([5, 1, 9, 3])
    _check_simple_regular(graph, 3)
    assert graph[1] == {3, 5, 9}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=3, max_value=60), data=st.data(), seed=st.binary(min_size=1, max_size=32))
def test_harary_graphs_are_regular_symmetric_loop_free_and_connected(
    n: int, data: st.DataObject, seed: bytes
) -> None:
    k = data.draw(st.integers(min_value=2, max_value=n - 1).filter(lambda k: k % 2 == 0 or n % 2 == 0))
    ids = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    graph = harary_graph(ids, k, seed=seed)
    assert set(graph) == set(ids)
    _check_simple_regular(graph, k)
    assert is_connected(graph)


def test_harary_graph_is_k_connected_so_any_k_minus_1_removals_keep_it_connected() -> None:
    ids = list(range(12))
    graph = harary_graph(ids, 4, seed=b"s")
    for removed in itertools.combinations(ids, 3):
        assert is_connected(graph, set(ids) - set(removed))


def test_harary_graph_with_degree_n_minus_1_is_complete() -> None:
    assert harary_graph(range(8), 7, seed=b"x") == complete_graph(range(8))
    assert harary_graph(range(7), 6, seed=b"x") == complete_graph(range(7))


def test_the_same_seed_gives_the_same_graph_whatever_the_id_order() -> None:
    ids = list(range(30))
    assert harary_graph(ids, 6, seed=b"session") == harary_graph(reversed(ids), 6, seed=b"session")
    assert harary_graph(ids, 6, seed=b"session") != harary_graph(ids, 6, seed=b"other")


def test_seeded_permutation_is_a_permutation_and_spreads_positions() -> None:
    # Over many seeds, the id at position 0 should be roughly uniform (chi-square, 9 dof).
    counts = [0] * 10
    for s in range(2000):
        order = seeded_permutation(range(10), seed=s.to_bytes(4, "big"))
        assert sorted(order) == list(range(10))
        counts[order[0]] += 1
    chi2 = sum((c - 200) ** 2 / 200 for c in counts)
    assert chi2 < 27.88  # 0.999 quantile of chi-square with 9 degrees of freedom


@pytest.mark.parametrize(
    ("ids", "k", "seed"),
    [
        ([1, 2, 3], 3, b"s"),
        ([1, 2, 3], 0, b"s"),
        ([1, 2, 3], 1, b"s"),
        ([1, 1, 2], 1, b"s"),
        ([], 1, b"s"),
        ([1, 2, 3, 4], 2, b""),
    ],
)
def test_impossible_graphs_are_refused(ids: list[int], k: int, seed: bytes) -> None:
    with pytest.raises(ConfigError):
        harary_graph(ids, k, seed=seed)


@pytest.mark.parametrize("n", [10, 50, 100, 200, 1000])
@pytest.mark.parametrize("corrupt", [0.0, 0.1, 0.3])
def test_parameters_grow_with_the_dropout_rate(n: int, corrupt: float) -> None:
    chosen = [
        choose_parameters(n, dropout_rate=d, corrupt_fraction=corrupt) for d in (0.0, 0.05, 0.1, 0.2, 0.3)
    ]
    for before, after in itertools.pairwise(chosen):
        assert after.k >= before.k
        if after.k == before.k:
            assert after.threshold >= before.threshold
    for p in chosen:
        # The own share counts: a Harary threshold needs t - 1 - k/2 > the corrupt clients of a
        # half-neighbourhood, the complete graph 2t > n + c (graph.split_failure, exposure_failure).
        if p.k < n - 1:
            assert p.k // 2 + 1 < p.threshold <= p.k
        else:
            assert 2 * p.threshold > n + p.corrupt and p.threshold <= n


def test_parameters_meet_the_targets_when_there_are_enough_clients() -> None:
    p = choose_parameters(1000, dropout_rate=0.1, corrupt_fraction=0.1)
    assert p.k < 999
    assert p.security_failure <= 2.0**-40
    assert p.correctness_failure <= 2.0**-20
    # k stays of order log n: ten times more clients, only a modest increase in degree.
    q = choose_parameters(10_000, dropout_rate=0.1, corrupt_fraction=0.1)
    assert p.k <= q.k < 2 * p.k


def test_a_threshold_always_exceeds_half_the_holders_plus_its_corrupt_members() -> None:
    # Complete graph of 10 with 3 corrupt: the 10 holders (9 neighbours and the owner) minus 3
    # corrupt ones, split in two, plus the 3 corrupt ones, must fall short of t: 2t > 10 + 3.
    p = choose_parameters(10, dropout_rate=0.0, corrupt_fraction=0.3)
    assert p.k == 9 and p.corrupt == 3 and p.threshold == 7


def test_too_few_clients_for_the_correctness_target_fall_back_to_the_complete_graph() -> None:
    p = choose_parameters(10, dropout_rate=0.3, corrupt_fraction=0.0)
    # t = 5 of 10 holders would let a server that splits the holders into two views of 5 rebuild
    # both secrets of a client (its own share included); 6 is the least that stops it.
    assert p.k == 9 and p.threshold == 6
    assert p.correctness_failure > 2.0**-20


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 1, "dropout_rate": 0.0, "corrupt_fraction": 0.0},
        {"n": 10, "dropout_rate": 1.0, "corrupt_fraction": 0.0},
        {"n": 10, "dropout_rate": 0.0, "corrupt_fraction": -0.1},
        {"n": 4, "dropout_rate": 0.0, "corrupt_fraction": 0.9},
    ],
)
def test_unusable_parameter_requests_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        choose_parameters(**kwargs)


def test_asking_for_the_complete_graph_only_chooses_its_threshold() -> None:
    p = choose_parameters(200, dropout_rate=0.1, corrupt_fraction=0.1, complete=True)
    assert p.k == 199 and p.threshold == 111  # 2t > 200 + 20
    assert p.correctness_failure <= 2.0**-20


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=3, max_value=60), data=st.data(), seed=st.binary(min_size=1, max_size=32))
def test_a_clients_neighbourhood_is_the_whole_graph_restricted_to_it_and_its_neighbours(
    n: int, data: st.DataObject, seed: bytes
) -> None:
    k = data.draw(st.integers(min_value=1, max_value=n - 1).filter(lambda k: k % 2 == 0 or n % 2 == 0))
    ids = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    around = data.draw(st.sampled_from(ids))
    graph = harary_graph(ids, k, seed=seed)
    hood = harary_neighbourhood(ids, k, seed=seed, around=around)
    assert set(hood) == {around} | graph[around]
    assert all(hood[v] == graph[v] for v in hood)


def test_a_neighbourhood_of_a_stranger_or_an_impossible_degree_is_refused() -> None:
    with pytest.raises(ConfigError, match="not on the ring"):
        harary_neighbourhood(range(10), 4, seed=b"s", around=10)
    with pytest.raises(ConfigError, match="both odd"):
        harary_neighbourhood(range(9), 3, seed=b"s", around=0)
