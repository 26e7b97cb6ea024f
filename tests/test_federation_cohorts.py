"""Cohort sampling: a seeded subset of the population takes part in each round (cross-device)."""

from __future__ import annotations

import pytest
import torch

from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from fakes import RecordingAggregator


def population_config(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=6,
        clients_per_round=2,
        models=("cnn", "mlp") * 3,
        alpha=1.0,
        samples_per_client=100,
        limit_test=200,
        rounds=3,
        seed=5,
        dream=DreamConfig(batch_size=16, global_steps=3),
        distill=DistillConfig(kd_steps=4, warmup_steps=10, buffer_size=32),
    )
    base.update(overrides)
    return FederationConfig(**base)


def test_each_round_releases_come_only_from_that_rounds_sampled_cohort(digits):
    agg = RecordingAggregator()
    fed = Federation(population_config(), aggregator=agg, dataset=digits)
    metrics = fed.run(3)
    assert [len(p) for p in agg.participants] == [2, 2, 2]
    for m, participants in zip(metrics, agg.participants, strict=True):
        assert m.participants == participants
        assert len(m.accuracies) == 2
    cohorts = set(agg.participants)
    for round_index, _, contributors, _ in agg.sums:
        assert contributors == agg.participants[round_index]
    # Over three rounds a seeded sampler of 2 out of 6 should not pick the same pair every time.
    assert len(cohorts) > 1


def test_the_same_seed_samples_the_same_cohorts_and_another_seed_other_ones(digits):
    a = Federation(population_config(), dataset=digits)
    b = Federation(population_config(), dataset=digits)
    c = Federation(population_config(seed=6), dataset=digits)
    rounds = range(8)
    ids = lambda fed: [tuple(x.client_id for x in fed.cohort(r)) for r in rounds]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_a_client_warms_up_only_when_first_sampled(digits):
    fed = Federation(population_config(), dataset=digits)
    fed.run_round()
    first = set(fed.cohort(0))
    assert fed.transport.warmed == {c.client_id for c in first}


def test_without_clients_per_round_everyone_takes_part_every_round(digits):
    fed = Federation(
        population_config(clients_per_round=None, num_clients=2, models=("cnn", "mlp")), dataset=digits
    )
    m = fed.run_round()
    assert m.participants == (0, 1) and len(m.accuracies) == 2
    assert fed.config.sample_rate == 1.0


def test_checkpoints_keep_the_warmed_clients_so_a_resumed_run_equals_an_unbroken_one(digits):
    unbroken = Federation(population_config(), dataset=digits)
    expected = [m.accuracies for m in unbroken.run(3)]
    first = Federation(population_config(), dataset=digits)
    first.run(1)
    state = first.state_dict()
    resumed = Federation(population_config(), dataset=digits)
    resumed.load_state_dict(state)
    got = [m.accuracies for m in resumed.run(2)]
    assert got == expected[1:]


def test_a_cohort_larger_than_the_population_is_refused():
    with pytest.raises(ConfigError, match="clients_per_round"):
        FederationConfig(num_clients=4, clients_per_round=5, models=("cnn",))
    with pytest.raises(ConfigError, match="clients_per_round"):
        FederationConfig(num_clients=4, clients_per_round=0, models=("cnn",))
    assert FederationConfig(
        num_clients=10, clients_per_round=2, models=("cnn",)
    ).sample_rate == pytest.approx(0.2)


def test_sampling_leaves_torch_global_rng_alone(digits):
    fed = Federation(population_config(), dataset=digits)
    before = torch.get_rng_state()
    fed.cohort(3)
    assert torch.equal(before, torch.get_rng_state())
