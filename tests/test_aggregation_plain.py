"""The seam's `plain` implementation: exact sums, counted clipping, and the plan it enforces."""

from __future__ import annotations

import numpy as np
import pytest

from codream.aggregation import VectorSpec, create_aggregator
from codream.exceptions import ConfigError

SPECS = [VectorSpec("a", 3, 10.0), VectorSpec("b", 2, 1.0)]


def open_round(participants=(0, 1, 2)):
    return create_aggregator("plain").open_round(round_index=0, participants=list(participants), specs=SPECS)


def test_plain_mean_equals_the_mean_computed_by_hand():
    rnd = open_round()
    vectors = {0: np.array([1.0, 2.0, 3.0]), 1: np.array([-1.0, 0.5, 0.0]), 2: np.array([3.0, 0.0, -3.0])}
    res = rnd.sum(SPECS[0], vectors)
    assert res.contributors == (0, 1, 2) and res.count == 3 and res.clipped == 0
    np.testing.assert_allclose(res.mean, [1.0, 2.5 / 3, 0.0])
    np.testing.assert_allclose(res.total, [3.0, 2.5, 0.0])


def test_clipping_to_the_spec_bound_is_applied_and_counted():
    rnd = open_round()
    rnd.sum(SPECS[0], {0: np.zeros(3), 1: np.zeros(3), 2: np.zeros(3)})
    res = rnd.sum(SPECS[1], {0: np.array([3.0, 4.0]), 1: np.array([0.6, 0.0]), 2: np.array([0.0, -2.0])})
    assert res.clipped == 2
    np.testing.assert_allclose(res.total, [0.6 + 0.6, 0.8 - 1.0])
    report = rnd.close()
    assert report.clipped == 2 and report.vectors == 2
    assert report.bytes_sent_per_client == {0: 40, 1: 40, 2: 40}


def test_the_plan_order_is_enforced():
    rnd = open_round()
    with pytest.raises(ConfigError, match="expected vector 'a'"):
        rnd.sum(SPECS[1], {0: np.zeros(2)})
    assert rnd.next_spec == SPECS[0]


def test_malformed_contributions_are_rejected_and_leave_the_round_unchanged():
    rnd = open_round()
    with pytest.raises(ConfigError, match="shape"):
        rnd.sum(SPECS[0], {0: np.zeros(4)})
    with pytest.raises(ConfigError, match="NaN"):
        rnd.sum(SPECS[0], {0: np.array([0.0, np.nan, 0.0])})
    with pytest.raises(ConfigError, match="outside"):
        rnd.sum(SPECS[0], {7: np.zeros(3)})
    assert rnd.next_spec == SPECS[0]
    res = rnd.sum(SPECS[0], {1: np.ones(3)})
    np.testing.assert_allclose(res.total, np.ones(3))


def test_summing_past_the_plan_is_refused():
    rnd = open_round()
    rnd.sum(SPECS[0], {0: np.zeros(3)})
    rnd.sum(SPECS[1], {0: np.zeros(2)})
    with pytest.raises(ConfigError, match="already summed"):
        rnd.sum(SPECS[1], {0: np.zeros(2)})


def test_rounds_need_participants_and_a_plan_and_the_registry_knows_plain():
    agg = create_aggregator("plain")
    with pytest.raises(ConfigError, match="participant"):
        agg.open_round(round_index=0, participants=[], specs=SPECS)
    with pytest.raises(ConfigError, match="planned"):
        agg.open_round(round_index=0, participants=[1], specs=[])
    with pytest.raises(ConfigError, match="repeat"):
        agg.open_round(round_index=0, participants=[1, 1], specs=SPECS)
    with pytest.raises(ConfigError, match="unknown aggregation"):
        create_aggregator("carrier-pigeon")


def test_an_empty_sum_has_no_mean():
    rnd = open_round()
    res = rnd.sum(SPECS[0], {})
    assert res.count == 0
    with pytest.raises(ValueError, match="no contributors"):
        _ = res.mean
