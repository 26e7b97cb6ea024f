"""The Flower engine's logic without Flower processes: server and node objects joined by a loopback.

These run in seconds. The process-level tests (real SuperLink and SuperNodes) are in
test_flower_deployment.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.exceptions import ConfigError, InvalidMessage  # noqa: E402
from codream.federation.flower.app import render_pyproject  # noqa: E402
from codream.federation.flower.channel import ClientChannel  # noqa: E402
from codream.federation.flower.engine import (  # noqa: E402
    CodreamNode,
    config_from_dict,
    config_to_dict,
)
from codream.federation.flower.harness import format_node_config  # noqa: E402
from codream.federation.flower.wire import Payload, decode, encode  # noqa: E402
from flower_loopback import Loopback, run_loopback, tiny_config  # noqa: E402


def test_engine_messages_survive_encoding_and_malformed_ones_are_refused():
    p = Payload(
        "release",
        {"round": 1, "begin": True},
        {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "msg": np.frombuffer(b"abc", dtype=np.uint8)},
    )
    q = decode(encode(p))
    assert q.kind == "release" and q.fields == {"round": 1, "begin": True}
    assert np.array_equal(q.array("x", "float32"), p.arrays["x"]) and q.blob("msg") == b"abc"
    data = encode(p)
    for bad in (data[:-1], data + b"\0", b"\x02" + data[1:], b""):
        with pytest.raises(InvalidMessage):
            decode(bad)
    with pytest.raises(InvalidMessage):
        q.array("x", "float64")


def test_a_federation_config_round_trips_through_its_json_form():
    config = tiny_config(alpha=0.5)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ConfigError):
        config_from_dict({"num_clientz": 3})


def test_the_app_folder_and_node_configs_render_valid_flower_settings():
    text = render_pyproject({"num-nodes": 4, "aggregation": "secure", "record-trace": False, "bits": 32})
    assert 'serverapp = "codream.federation.flower.serverapp:app"' in text
    assert 'aggregation = "secure"' in text and "record-trace = false" in text
    assert (
        format_node_config({"partition-id": 2, "data-dir": "/data/x"}) == 'partition-id=2 data-dir="/data/x"'
    )
    with pytest.raises(ConfigError):
        format_node_config({"bad key": 1})


def test_a_client_that_stops_answering_is_dropped_for_the_rest_of_the_run():
    class Silent:
        def node_ids(self):
            return [1, 2]

        def exchange(self, requests, *, timeout):
            return {n: encode(Payload("ok")) for n in requests if n == 1}

    channel = ClientChannel(Silent(), {0: 1, 1: 2}, step_timeout=0.1)
    assert set(channel.broadcast(Payload("ping"))) == {0}
    assert channel.alive == [0] and "no answer" in channel.dropped[1]
    assert set(channel.broadcast(Payload("ping"))) == {0}


def test_a_node_refuses_requests_before_set_up_and_with_a_foreign_partition_count():
    node = CodreamNode({"partition-id": 0, "num-partitions": 3})
    with pytest.raises(InvalidMessage):
        node.handle(Payload("release", {"vector": 0}))
    with pytest.raises(ConfigError):
        node.handle(
            Payload("setup", {"config": config_to_dict(tiny_config()), "aggregation": "secure", "bits": 32})
        )
    with pytest.raises(ConfigError):
        CodreamNode({"num-partitions": 3})


@pytest.mark.parametrize(("aggregation", "per_vector", "fixed"), [("plain", 1, 1), ("secure", 2, 3)])
def test_the_engine_reports_its_exchanges_per_round(tmp_path, aggregation, per_vector, fixed):
    """A deployed round costs about its exchanges times the transport's latency: count them exactly.

    Plain: one release per vector, then the lessons. Secure: advertise keys, share keys, then per
    vector the masked input and the unmask request, then the lessons.
    """
    config = tiny_config(rounds=1)
    results, _ = run_loopback(config, tmp_path, aggregation=aggregation)
    vectors = 1 + config.dream.global_steps + 1  # class weights, dream steps, soft labels
    (round0,) = results["rounds"]
    assert round0["exchanges"] == fixed + per_vector * vectors
    assert round0["seconds_per_exchange"] > 0


class DifferentDreams(Loopback):
    """A server that sends one node other dreams than the rest at one dream step."""

    def __init__(self, num_nodes: int, *, node: int, vector: int, **kwargs) -> None:
        super().__init__(num_nodes, **kwargs)
        self.target = (node, vector)

    def exchange(self, requests, *, timeout):
        node, vector = self.target
        body = requests.get(100 + node)
        if body is not None:
            request = decode(body)
            if request.kind == "release" and request.fields.get("vector") == vector and "x" in request.arrays:
                arrays = dict(request.arrays)
                arrays["x"] = arrays["x"] + np.float32(0.5)
                requests = {**requests, 100 + node: encode(Payload(request.kind, request.fields, arrays))}
        return super().exchange(requests, timeout=timeout)


def test_a_node_sent_other_dreams_is_left_out_of_the_sum_it_was_not_computed_for(tmp_path):
    """Each node binds its masked release to what it received; the server's sum covers only the nodes
    that computed from the dreams it means, and stays exact for them."""
    config = tiny_config(rounds=1)
    transport = DifferentDreams(config.num_clients, node=2, vector=2, aggregation="secure")
    results, _ = run_loopback(config, tmp_path, transport=transport)
    (round0,) = results["rounds"]
    assert 2 not in round0["survivors"] and len(round0["survivors"]) == 3


def test_secure_dp_with_cohorts_charges_each_node_for_exactly_its_rounds_and_keeps_losses_home(tmp_path):
    """Each node draws its own noise and keeps its own ledger from its node config; the server sizes
    the encoding from the public multiplier and releases no loss computed on private data."""
    from codream.federation.simulation import cohort_indices
    from codream.privacy.client_ledger import load_client_ledgers

    config = tiny_config(rounds=3, clients_per_round=3)
    own = {"noise-multiplier": 2.0, "delta": 1e-5, "ledger-dir": str(tmp_path / "client_ledgers")}
    transport = Loopback(config.num_clients, aggregation="secure+dp", node_config=own)
    results, _ = run_loopback(
        config, tmp_path, aggregation="secure+dp", transport=transport, **{"noise-multiplier": 2.0}
    )
    cohorts = [cohort_indices(4, 3, config.seed, r) for r in range(3)]
    assert [r["participants"] for r in results["rounds"]] == cohorts
    assert all(r["ce_loss"] is None and r["warmup_loss"] is None for r in results["rounds"])
    ledgers = {led.client_id: led for led in load_client_ledgers(tmp_path)}
    for cid in range(4):
        assert ledgers[cid].rounds == tuple(r for r, cohort in enumerate(cohorts) if cid in cohort)


class Recording(Loopback):
    """A loopback that keeps every reply each node put on the wire, decoded, by node."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: dict[int, list[Payload]] = {n: [] for n in self.nodes}

    def exchange(self, requests, *, timeout):
        out = super().exchange(requests, timeout=timeout)
        for node, body in out.items():
            self.replies[node].append(decode(body))
        return out


def test_secure_dp_nodes_send_no_accuracy_or_loss_and_keep_them_in_their_state_dir(tmp_path):
    """Under client-level DP a node's test accuracy and KD loss come from a model trained on its
    private data without noise: no reply on the wire holds them, the node writes them to its own
    state-dir, and the server's round metrics hold only what the guarantee covers (the student's
    accuracy is post-processing of released sums)."""
    from codream.federation.config import DistillConfig
    from codream.federation.flower.engine import read_node_metrics

    distill = DistillConfig(kd_steps=3, batch_size=8, warmup_steps=10, buffer_size=32, student="mlp")
    config = tiny_config(rounds=2, distill=distill)
    state = tmp_path / "node_state"
    own = {"noise-multiplier": 2.0, "delta": 1e-5, "state-dir": str(state)}
    transport = Recording(config.num_clients, aggregation="secure+dp", node_config=own)
    results, _ = run_loopback(
        config, tmp_path, aggregation="secure+dp", transport=transport, **{"noise-multiplier": 2.0}
    )
    withheld = {"accuracy", "kd_loss", "ce_loss", "warmup_loss", "loss"}
    sent = [(p.kind, set(p.fields)) for replies in transport.replies.values() for p in replies]
    assert any(kind == "learned" for kind, _ in sent)
    assert all(not (fields & withheld) for _, fields in sent), sent
    for r in results["rounds"]:
        assert r["accuracies"] == [] and r["kd_loss"] is None and r["ce_loss"] is None
        assert 0.0 <= r["student_accuracy"] <= 1.0
        assert r["evaluated"] == [0, 1, 2, 3]
    for cid in range(4):
        node = transport.node(cid)
        kept = read_node_metrics(state, cid)
        assert sorted(kept) == [0, 1] and kept == {rec["round"]: rec for rec in node.private}
        assert all(0.0 <= rec["accuracy"] <= 1.0 and rec["kd_loss"] >= 0.0 for rec in kept.values())


def test_nodes_without_dp_still_send_their_accuracy(tmp_path):
    config = tiny_config(rounds=1)
    transport = Recording(config.num_clients, aggregation="secure")
    results, _ = run_loopback(config, tmp_path, transport=transport)
    learned = [p for replies in transport.replies.values() for p in replies if p.kind == "learned"]
    assert len(learned) == 4 and all({"accuracy", "kd_loss", "ce_loss"} <= set(p.fields) for p in learned)
    assert len(results["rounds"][0]["accuracies"]) == 4
    assert all(not node.private for node in transport.nodes.values())


def test_the_flower_server_plans_harary_sessions_for_the_run_configs_corrupt_fraction(tmp_path):
    """`corrupt-fraction` reaches the server's seam: its sessions are the in-process seam's for the
    same fraction, and another fraction plans other sessions."""
    from codream.aggregation import ServerSeam
    from codream.federation.flower.engine import CodreamServer

    config = tiny_config(num_clients=40)
    sessions = {}
    for gamma in (0.1, 0.3):
        run_config = {
            "codream-config": json.dumps(config_to_dict(config)),
            "aggregation": "secure",
            "graph": "harary",
            "corrupt-fraction": gamma,
            "out-dir": str(tmp_path),
        }
        seam = CodreamServer(run_config).seam
        twin = ServerSeam("secure", graph="harary", corrupt_fraction=gamma)
        ask = dict(round_index=0, participants=range(40), lengths=(10,))
        sessions[gamma] = seam.session_config(**ask)
        assert sessions[gamma] == twin.session_config(**ask)
    assert (sessions[0.1].degree, sessions[0.1].threshold) != (sessions[0.3].degree, sessions[0.3].threshold)


def test_malicious_nodes_refuse_a_session_whose_verify_keys_are_not_the_ones_they_hold(tmp_path):
    """The server does not choose whom a node trusts: it lists its own key in place of client 2's
    (a Sybil), and every node refuses before advertising anything."""
    import json as _json

    from codream.exceptions import ProtocolAbort
    from codream.federation.flower.keys import provision_keys

    config = tiny_config(rounds=1)
    verify, signing = provision_keys(tmp_path / "keys", range(4))
    own = {"malicious": "true", "verify-keys": str(verify)}
    transport = Loopback(4, node_config=lambda i: {**own, "signing-key": str(signing[i])})
    forged = _json.loads(verify.read_text())
    forged["2"] = "11" * 32
    forged_path = tmp_path / "forged.json"
    forged_path.write_text(_json.dumps(forged))
    with pytest.raises(ProtocolAbort):
        run_loopback(
            config, tmp_path, transport=transport, malicious=True, **{"verify-keys": str(forged_path)}
        )
    for node in transport.nodes.values():
        assert node._session is None  # nothing advertised, nothing released


def test_a_node_that_demands_malicious_mode_needs_its_key_files():
    with pytest.raises(ConfigError, match="signing-key and verify-keys"):
        CodreamNode({"partition-id": 0, "malicious": "true"})


def test_a_local_deployment_gives_the_imports_to_the_server_and_each_nodes_own_config(tmp_path, monkeypatch):
    """`run_flower(imports=...)`: the run config names them for the ServerApp, and each SuperNode gets
    them in its own node config (the only place a node takes modules from)."""
    import tomllib

    from codream.federation.flower import local

    seen = {}

    class Stop(Exception):
        pass

    class FakeDeployment:
        def __init__(self, n, *, node_configs, **kwargs):
            seen["node_configs"] = node_configs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def launch(self, app_dir):
            seen["app"] = tomllib.loads((app_dir / "pyproject.toml").read_text())
            raise Stop

    monkeypatch.setattr(local, "FlowerDeployment", FakeDeployment)
    plugin = tmp_path / "p.py"
    with pytest.raises(Stop):
        local.run_flower(
            tiny_config(), aggregation="plain", out_dir=tmp_path / "out", imports=["pkg_x", str(plugin)]
        )
    want = f"pkg_x,{plugin.resolve()}"
    assert [nc["imports"] for nc in seen["node_configs"]] == [want] * 4
    assert seen["app"]["tool"]["flwr"]["app"]["config"]["imports"] == want
