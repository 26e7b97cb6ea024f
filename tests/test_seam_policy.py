"""The client half refuses any plan below its own policy and releases nothing for it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from codream.aggregation import ClientPolicy, ClientSeam, DPPolicy, Mode, ServerSeam, VectorSpec
from codream.exceptions import ConfigError, PolicyRefusal

SPECS = (VectorSpec("v", 16, 1.0), VectorSpec("w", 4, 1.0))


def _plan(mode="secure", participants=range(6), specs=SPECS, **server):
    return ServerSeam(mode, **server).plan(round_index=0, participants=participants, specs=specs)


def _refuses(seam: ClientSeam, plan, match: str) -> None:
    with pytest.raises(PolicyRefusal, match=match):
        seam.admit(plan)
    # Nothing was admitted, so nothing can be released.
    with pytest.raises(ConfigError, match="no round admitted"):
        seam.prepare(np.zeros(16))


def test_a_secure_client_refuses_a_plain_round():
    _refuses(ClientSeam(0, ClientPolicy(mode=Mode.SECURE)), _plan("plain"), "below its policy")


def test_a_dp_client_refuses_a_round_without_dp_and_a_client_without_dp_parameters_refuses_dp():
    dp = ClientPolicy(mode=Mode.SECURE_DP, dp=DPPolicy(noise_multiplier=1.0))
    _refuses(ClientSeam(0, dp), _plan("secure"), "below its policy")
    _refuses(
        ClientSeam(0, ClientPolicy(mode=Mode.SECURE)), _plan("secure+dp", noise_multiplier=1.0), "own DP"
    )


def test_a_client_refuses_a_threshold_below_the_majority_rule():
    plan = _plan(threshold=2)
    _refuses(ClientSeam(0, ClientPolicy(mode=Mode.SECURE)), plan, "threshold 2 is below")


def test_a_client_refuses_fewer_participants_than_its_minimum():
    seam = ClientSeam(0, ClientPolicy(mode=Mode.SECURE, min_clients=5))
    _refuses(seam, _plan(participants=range(3)), "fewer than its minimum 5")


def test_a_client_refuses_a_round_it_is_not_in_and_a_session_whose_roster_differs():
    _refuses(ClientSeam(9, ClientPolicy(mode=Mode.SECURE)), _plan(), "not among the participants")
    plan = _plan()
    forged = dataclasses.replace(
        plan, session=dataclasses.replace(plan.session, client_ids=(0, 1, 2, 3, 4, 7))
    )
    _refuses(ClientSeam(0, ClientPolicy(mode=Mode.SECURE)), forged, "session's clients differ")


def test_a_client_refuses_an_oversized_plan_before_building_anything():
    policy = ClientPolicy(mode=Mode.SECURE, max_vector_length=8)
    _refuses(ClientSeam(0, policy), _plan(), "more than its maximum 8")
    policy = ClientPolicy(mode=Mode.SECURE, max_clients=4)
    _refuses(ClientSeam(0, policy), _plan(), "more than its maximum 4")


def test_a_client_refuses_fewer_survivors_than_it_demands_and_a_graph_it_does_not_allow():
    _refuses(ClientSeam(0, ClientPolicy(mode=Mode.SECURE, min_survivors=6)), _plan(), "min_survivors 4")
    _refuses(ClientSeam(0, ClientPolicy(mode=Mode.SECURE, graphs={"harary"})), _plan(), "graph 'complete'")


def test_a_dp_client_refuses_headroom_its_own_noise_would_overflow():
    plan = _plan("secure+dp", noise_multiplier=0.1)  # the server sized the encoding for tiny noise
    seam = ClientSeam(0, ClientPolicy(mode=Mode.SECURE_DP, dp=DPPolicy(noise_multiplier=2.0)))
    _refuses(seam, plan, "noise headroom")
    assert seam.ledger.participations == 0  # nothing charged: nothing can have been released


def test_a_plan_at_the_policy_is_admitted_and_releases_words():
    seam = ClientSeam(0, ClientPolicy(mode=Mode.SECURE))
    seam.admit(_plan())
    words = seam.prepare(np.full(16, 0.01))
    assert words.dtype == np.uint32 and words.shape == (16 + 2,)  # a 32-bit ring travels in 4-byte words
