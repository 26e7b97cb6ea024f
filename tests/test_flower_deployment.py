"""codream on real Flower processes: a SuperLink and SuperNodes on loopback, a run launched with
`flwr run`, one SuperNode killed mid-round.

One secure run (2 rounds, 4 SuperNodes, digits, a tiny configuration) is shared by the tests of this
module; every wait in it is bounded, and every process is stopped afterwards, also on failure.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.federation.config import DreamConfig  # noqa: E402
from codream.federation.flower.harness import FlowerDeployment, _processes_with_token  # noqa: E402
from codream.federation.flower.local import KillAt, run_flower  # noqa: E402
from flower_loopback import in_process_twin, tiny_config  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.slow]

# The loopback tests' tiny configuration, as the "paper" method with one dream step per round.
CONFIG = tiny_config(seed=11, method="paper", dream=DreamConfig(batch_size=8, global_steps=1))
KILLED = 3


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flower-run")
    # Vector 1 of round 0 is the soft labels: node 3 dies after its dream step was summed.
    results = run_flower(
        CONFIG,
        aggregation="secure",
        out_dir=out,
        kill_node_at=KillAt(node=KILLED, round=0, vector=1),
        step_timeout=30.0,  # well above a healthy step, even on 2 busy cores
        setup_timeout=120.0,
        timeout=420.0,
        record_trace=True,
    )
    return results, out


def test_a_supernode_killed_mid_round_is_dropped_and_both_secure_rounds_finish_with_the_survivors(killed_run):
    results, out = killed_run
    assert results["status"] == "completed"
    assert results["deployment"]["killed"]["node"] == KILLED
    assert list(results["dropped"]) == [str(KILLED)]
    r0, r1 = results["rounds"]
    assert r0["participants"] == [0, 1, 2, 3] and r0["survivors"] == [0, 1, 2]
    assert r1["participants"] == [0, 1, 2] and r1["survivors"] == [0, 1, 2]
    trace = np.load(out / "trace.npz")
    assert list(trace["r0_v0_contributors"]) == [0, 1, 2, 3]
    assert list(trace["r0_v1_contributors"]) == [0, 1, 2]
    # Every process of the deployment is gone.
    assert _processes_with_token(results["deployment"]["token"]) == []


def test_the_deployed_run_equals_the_in_process_run_of_the_same_round_script(killed_run):
    """Real processes change nothing: the in-process engine with node 3 crashing at the same release
    computes the very same sums, accuracies and dreams."""
    results, out = killed_run
    fed, tracer = in_process_twin(CONFIG, "secure", crash=(KILLED, 0, 1))
    trace = np.load(out / "trace.npz")
    for (r, j), (total, contributors) in tracer.sums.items():
        assert list(trace[f"r{r}_v{j}_contributors"]) == list(contributors)
        np.testing.assert_array_equal(trace[f"r{r}_v{j}_total"], total)
    for metrics, twin in zip(results["rounds"], fed.history, strict=True):
        assert metrics["evaluated"] == list(twin.evaluated)
        assert metrics["accuracies"] == pytest.approx(list(twin.accuracies), abs=1e-6)
    dreams = np.load(out / "dreams.npz")
    np.testing.assert_allclose(dreams["x"], fed.server.x.numpy(), atol=1e-6)
    np.testing.assert_allclose(dreams["soft_labels"], fed.server.soft_labels.numpy(), atol=1e-6)


def test_a_deployment_stops_every_process_when_its_body_fails(tmp_path):
    deployment = FlowerDeployment(2, workdir=tmp_path, start_timeout=90.0)
    with pytest.raises(RuntimeError, match="boom"), deployment:
        assert len(deployment.node_ids) == 2 and all(deployment.node_alive(i) for i in range(2))
        raise RuntimeError("boom")
    assert deployment.leftover_processes() == []
    assert not deployment.node_alive(0) and not deployment.node_alive(1)


def test_secure_dp_with_cohorts_survives_a_killed_node_and_charges_each_client_its_own_rounds(tmp_path):
    """A real deployment under secure+dp with cohorts of 4 out of 5: node 4 dies in round 0 after its
    first release; the run finishes with the survivors, and each node's own ledger holds exactly the
    rounds it released in, unamplified. (Four participants with one assumed corrupt keep n_min = 3, so
    one death is survivable.)"""
    from dataclasses import replace

    from codream.federation.simulation import cohort_indices
    from codream.privacy.calibration import epsilon_for
    from codream.privacy.client_ledger import load_client_ledgers

    config = replace(CONFIG, num_clients=5, clients_per_round=4)
    cohorts = [cohort_indices(5, 4, config.seed, r) for r in range(2)]
    assert cohorts == [[0, 1, 2, 4], [0, 1, 2, 3]]
    results = run_flower(
        config,
        aggregation="secure+dp",
        dp={"noise_multiplier": 2.0, "delta": 1e-5},
        out_dir=tmp_path,
        kill_node_at=KillAt(node=4, round=0, vector=1),
        step_timeout=30.0,
        setup_timeout=120.0,
        timeout=420.0,
    )
    assert results["status"] == "completed"
    r0, r1 = results["rounds"]
    assert r0["participants"] == [0, 1, 2, 4] and r0["survivors"] == [0, 1, 2]
    assert r1["participants"] == [0, 1, 2, 3] and r1["survivors"] == [0, 1, 2, 3]
    assert all(r["ce_loss"] is None for r in results["rounds"])
    ledgers = {led.client_id: led for led in load_client_ledgers(tmp_path)}
    assert {cid: led.rounds for cid, led in ledgers.items()} == {
        0: (0, 1),
        1: (0, 1),
        2: (0, 1),
        3: (1,),
        4: (0,),  # charged before its first masked release left it, then killed
    }
    for led in ledgers.values():
        expected = epsilon_for(
            noise_multiplier=2.0, sample_rate=1.0, steps=led.participations, delta=1e-5, mechanism="integer"
        )
        assert led.spent == pytest.approx(expected, rel=1e-9)
    assert _processes_with_token(results["deployment"]["token"]) == []
