"""The one round script over both transports: the in-process engine and the Flower engine agree.

Each case runs the same federation twice, once in process (`Federation` over `InProcessClients`) and
once over the Flower engine's transport (`CodreamServer` and one `CodreamNode` per client, joined by
an in-process loopback), for every aggregation mode and graph, with no dropout and with a client
that dies before its third release of the first round (and is gone afterwards). Plain and secure
runs at a fixed seed give identical sums, dreams and accuracies; secure+dp runs give the same
per-client accounting, and their sums differ by exactly the noise the plan calls for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.aggregation import create_aggregator  # noqa: E402
from codream.exceptions import ConfigError  # noqa: E402
from codream.federation.config import DreamConfig  # noqa: E402
from codream.federation.flower.keys import provision_keys  # noqa: E402
from codream.federation.simulation import Federation  # noqa: E402
from flower_loopback import Loopback, in_process_twin, run_loopback, tiny_config  # noqa: E402

Z = 1.5  # secure+dp: the clients' noise multiplier per round
CRASH = (4, 0, 2)  # client 4 never sends release 2 of round 0 (the second dream step)


def twins(tmp_path, aggregation: str, graph: str, crash, *, malicious: bool = False, **overrides):
    """(Flower results, Flower trace, Flower transport, in-process federation, its tracer)."""
    # Ten clients: the fewest for which the Harary graph is not the complete one.
    config = tiny_config(num_clients=10 if graph == "harary" else 6, **overrides)
    dp = aggregation == "secure+dp"
    common = {"noise-multiplier": Z, "delta": 1e-5} if dp else {}
    run_options = {"graph": graph, **({"noise-multiplier": Z} if dp else {})}
    signing = {}
    if malicious:  # keys provisioned out of band, as a deployment's are
        verify, signing = provision_keys(tmp_path / "keys", range(config.num_clients))
        common = {**common, "malicious": "true", "verify-keys": str(verify)}
        run_options.update({"malicious": True, "verify-keys": str(verify)})
    transport = Loopback(
        config.num_clients,
        None if crash is None else (crash[0], "release", crash[1], crash[2]),
        aggregation=aggregation,
        node_config=lambda i: {**common, **({"signing-key": str(signing[i])} if malicious else {})},
    )
    results, _ = run_loopback(config, tmp_path, aggregation=aggregation, transport=transport, **run_options)
    trace = np.load(tmp_path / "trace.npz")

    fed, tracer = in_process_twin(
        config, aggregation, graph=graph, crash=crash, noise_multiplier=Z if dp else None, malicious=malicious
    )
    return results, trace, transport, fed, tracer


MODES = ("secure", "secure/malicious", "secure+dp")
CASES = [("plain", "complete")] + [(m, g) for m in MODES for g in ("complete", "harary")]


@pytest.mark.parametrize("crash", [None, CRASH], ids=["no-dropout", "a-dropout"])
@pytest.mark.parametrize(("aggregation", "graph"), CASES, ids=[f"{m}-{g}" for m, g in CASES])
def test_both_transports_run_the_same_round(tmp_path, aggregation, graph, crash):
    aggregation, _, variant = aggregation.partition("/")
    dp = aggregation == "secure+dp"
    results, trace, transport, fed, tracer = twins(
        tmp_path,
        aggregation,
        graph,
        crash,
        malicious=variant == "malicious",
        **({"method": "paper"} if dp else {}),
    )
    flower = results["rounds"]
    assert len(flower) == len(fed.history) == 2
    n = fed.config.num_clients
    if graph == "harary":  # a real Harary graph: each client masks with fewer than all others
        assert all(rep.secure.degree < n - 1 for rep in tracer.reports)
    for r, (f, m) in enumerate(zip(flower, fed.history, strict=True)):
        # The same cohort, the same survivors, the same clients learning.
        assert f["participants"] == list(m.participants)
        assert f["survivors"] == list(m.survivors)
        assert f["evaluated"] == list(m.evaluated)
        if crash is not None:
            assert crash[0] not in f["survivors"] and crash[0] not in m.evaluated
            assert crash[0] in m.participants if r == crash[1] else crash[0] not in m.participants
        for j in range(len(fed.server.specs())):
            total, contributors = tracer.sums[(r, j)]
            assert list(trace[f"r{r}_v{j}_contributors"]) == list(contributors)
            if not dp:  # the very same sum, bit for bit
                np.testing.assert_array_equal(trace[f"r{r}_v{j}_total"], total)
        if not dp:
            assert f["accuracies"] == list(m.accuracies)
            assert f["dream_loss_end"] == m.dream_loss_end
    if not dp:
        dreams = np.load(tmp_path / "dreams.npz")
        np.testing.assert_array_equal(dreams["x"], fed.server.x.numpy())
        np.testing.assert_array_equal(dreams["soft_labels"], fed.server.soft_labels.numpy())
        return

    # secure+dp: every client is charged the same rounds at the same epsilon by both engines ...
    in_process = fed.aggregator.inner.client_epsilons()
    deployed = {cid: float(transport.node(cid).seam.epsilon or 0.0) for cid in range(n)}
    assert deployed == pytest.approx(in_process, rel=1e-12)
    assert min(deployed.values()) > 0
    # ... and the first dream step (both engines start from the same dreams and models) differs by
    # two independent draws of the planned noise: std sqrt(2) * sigma over the survivors.
    stats = tracer.reports[0].dp
    name = fed.server.specs()[0].name
    total, contributors = tracer.sums[(0, 0)]
    sigma = stats.noise_std[name] * np.sqrt(len(contributors) / stats.n_min)
    diff = trace["r0_v0_total"] - total
    assert 0.85 < np.std(diff) / (np.sqrt(2) * sigma) < 1.15


@pytest.mark.parametrize("aggregation", ["plain", "secure"])
def test_the_dream_bank_cohorts_and_the_server_student_ride_on_both_transports(tmp_path, aggregation):
    """What only the server holds (the bank of released dreams, its student) is the round script's, so
    the deployed engine carries it too, with the very same numbers."""
    from codream.federation.config import DistillConfig

    config = tiny_config(
        num_clients=5,
        clients_per_round=3,
        rounds=3,
        dream=DreamConfig(batch_size=8, global_steps=2),
        distill=DistillConfig(
            kd_steps=3, batch_size=8, warmup_steps=5, buffer_size=48, bank_size=16, student="mlp"
        ),
    )
    results, _ = run_loopback(config, tmp_path, aggregation=aggregation)
    fed, _ = in_process_twin(config, aggregation)
    assert fed.server.bank is not None and fed.server.bank.dropped > 0  # the bank was full
    for f, m in zip(results["rounds"], fed.history, strict=True):
        assert f["participants"] == list(m.participants)
        assert f["accuracies"] == list(m.accuracies)
        assert f["student_accuracy"] is not None and f["student_accuracy"] == m.student_accuracy


def test_example_level_dp_runs_on_both_transports_with_the_same_accounting(tmp_path):
    """Each node trains with DP-SGD from its own node config (noise and coins from the OS) and is
    charged exactly as the same client in process; it releases no loss on private data."""
    from codream.federation.flower.engine import ExampleDP

    config = tiny_config(norm="group", method="paper")
    own = {"privacy-unit": "example", "dp-sgd-noise-multiplier": 1.2, "delta": 1e-5}
    transport = Loopback(config.num_clients, aggregation="secure", node_config=own)
    results, _ = run_loopback(config, tmp_path, transport=transport)
    factory = ExampleDP.from_node_config(own, config).trainer_factory()
    fed = Federation(config, aggregator=create_aggregator("secure"), trainer_factory=factory)
    fed.run()
    for f, m in zip(results["rounds"], fed.history, strict=True):
        assert f["evaluated"] == list(m.evaluated) and f["ce_loss"] is None and f["warmup_loss"] is None
    for cid in range(config.num_clients):
        deployed, in_process = transport.node(cid).role.trainer, fed.clients[cid].trainer
        assert deployed.epsilon() == pytest.approx(in_process.epsilon(), rel=1e-9) and deployed.epsilon() > 0


def test_example_level_conditional_nodes_take_their_class_weights_from_one_charged_histogram(tmp_path):
    """With `dp-label-noise-multiplier` a node's class weights come from its one charged label
    histogram, and it records its epsilon with what it withheld in its own state-dir."""
    from codream.federation.flower.engine import ExampleDP, read_node_metrics

    config = tiny_config(norm="group", dream=DreamConfig(batch_size=8, global_steps=2, w_bn=0.0))
    own = {
        "privacy-unit": "example",
        "dp-sgd-noise-multiplier": 1.2,
        "dp-label-noise-multiplier": 20.0,
        "delta": 1e-5,
        "state-dir": str(tmp_path / "nodes"),
    }
    transport = Loopback(config.num_clients, aggregation="secure", node_config=own)
    results, _ = run_loopback(config, tmp_path, transport=transport)
    assert len(results["rounds"]) == 2 and all(r["ce_loss"] is None for r in results["rounds"])
    for cid in range(config.num_clients):
        trainer = transport.node(cid).role.trainer
        assert trainer.label_noise_multiplier == 20.0 and trainer.label_histogram is not None
        kept = read_node_metrics(tmp_path / "nodes", cid)
        assert sorted(kept) == [0, 1] and set(kept[1]) == {"round", "client", "ce_loss", "epsilon"}
        assert kept[1]["epsilon"] == pytest.approx(trainer.epsilon(delta=1e-5), rel=1e-12)
    without = ExampleDP.from_node_config({k: v for k, v in own.items() if "label" not in k}, config)
    assert without.label_noise_multiplier is None


def test_a_node_refuses_dp_sgd_steps_past_its_own_target(tmp_path):
    config = tiny_config(norm="group", method="paper", rounds=1)
    own = {"privacy-unit": "example", "dp-sgd-noise-multiplier": 0.5, "target-epsilon": 0.01}
    transport = Loopback(config.num_clients, aggregation="secure", node_config=own)
    with pytest.raises(ConfigError, match="did not set up"):
        run_loopback(config, tmp_path, transport=transport)
    assert all(node.role.trainer.epsilon() == 0 for node in transport.nodes.values())


@pytest.mark.parametrize("aggregation", ["plain", "secure"])
def test_a_resumed_flower_run_equals_the_unbroken_one(tmp_path, aggregation):
    """The server keeps its state after every round and every node its own (its state-dir): a run
    stopped after two rounds and resumed for the third ends where the unbroken run ends."""
    config = tiny_config(rounds=3, clients_per_round=3)

    def nodes(state_dir):
        return Loopback(
            config.num_clients, aggregation=aggregation, node_config={"state-dir": str(state_dir)}
        )

    unbroken, _ = run_loopback(
        config, tmp_path / "a", aggregation=aggregation, transport=nodes(tmp_path / "sa")
    )
    first, _ = run_loopback(
        config, tmp_path / "b", aggregation=aggregation, transport=nodes(tmp_path / "sb"), rounds=2
    )
    rest, _ = run_loopback(
        config, tmp_path / "b", aggregation=aggregation, transport=nodes(tmp_path / "sb"), resume=True
    )
    assert [r["round"] for r in first["rounds"]] == [0, 1] and [r["round"] for r in rest["rounds"]] == [2]
    for key in ("participants", "survivors", "accuracies", "best_accuracies"):
        assert rest["rounds"][0][key] == unbroken["rounds"][2][key]
    a, b = np.load(tmp_path / "a" / "dreams.npz"), np.load(tmp_path / "b" / "dreams.npz")
    np.testing.assert_array_equal(a["x"], b["x"])
    with pytest.raises(ConfigError, match="undo"):
        run_loopback(
            config,
            tmp_path / "b",
            aggregation=aggregation,
            transport=nodes(tmp_path / "sb"),
            resume=True,
            rounds=2,
        )


def test_both_transports_hold_the_same_validation_split_and_select_the_same_best_round(tmp_path):
    """Every node carves the in-process engine's validation split from the same configuration, reports
    its accuracy on it, and the Flower results choose the best round on it, as the simulation does."""
    from codream.federation.round import best_round

    config = tiny_config(validation=0.2, rounds=3, clients_per_round=3)
    transport = Loopback(config.num_clients, aggregation="plain")
    results, _ = run_loopback(config, tmp_path, aggregation="plain", transport=transport)
    fed, _ = in_process_twin(config, "plain")
    for cid in range(config.num_clients):
        x_val, y_val = transport.node(cid).validation
        assert torch.equal(x_val, fed.dataset.x_val) and torch.equal(y_val, fed.dataset.y_val)
    for f, m in zip(results["rounds"], fed.history, strict=True):
        assert f["evaluated"] == list(m.evaluated) and len(m.val_accuracies) == len(m.evaluated)
        assert f["val_accuracies"] == list(m.val_accuracies)
        assert f["mean_val_accuracy"] == m.mean_val_accuracy
    chosen = best_round([m.to_dict() for m in fed.history])
    assert results["best_round"] == {
        "round": chosen["round"],
        "mean_val_accuracy": chosen["mean_val_accuracy"],
        "mean_accuracy": chosen["mean_accuracy"],
        "selected_on": "validation",
    }


def test_under_client_level_dp_a_node_keeps_its_validation_accuracy(tmp_path):
    """secure+dp: a node's model is trained on its private data without noise, so what it measures on
    the validation split is not released; the run selects no best round on it."""
    config = tiny_config(validation=0.2, method="paper", rounds=1)
    own = {"noise-multiplier": Z, "delta": 1e-5}
    transport = Loopback(config.num_clients, aggregation="secure+dp", node_config=own)
    results, _ = run_loopback(
        config, tmp_path, aggregation="secure+dp", transport=transport, **{"noise-multiplier": Z}
    )
    assert all(node.validation is not None for node in transport.nodes.values())
    (only,) = results["rounds"]
    assert only["val_accuracies"] is None and only["mean_val_accuracy"] is None
    assert results["best_round"] is None


PLUGIN = """
import numpy as np
import torch
from torch import nn

from codream.data import register_dataset
from codream.models import register_model


class Tiny(nn.Module):
    def __init__(self, shape, num_classes):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), num_classes))

    def forward(self, x):
        return self.net(x)


rng = np.random.default_rng(3)
y = np.repeat(np.arange(3), 60)
x = rng.normal(size=(180, 3, 6, 6)).astype(np.float32) + y[:, None, None, None]
register_model("MODEL", Tiny)
register_dataset("DATA", (torch.from_numpy(x), torch.from_numpy(y)), class_names=["a", "b", "c"])
"""


def test_a_user_registered_model_and_rgb_data_set_train_through_both_engines(tmp_path):
    """A node loads the modules its own node config names (the server's run config, for the server):
    the same user model and data set then train identically through both transports."""
    import uuid

    from codream.build import build_run
    from codream.data import load_dataset
    from codream.exceptions import ConfigError
    from codream.models import build_model

    tag = uuid.uuid4().hex[:8]
    model, data = f"tiny_{tag}", f"blobs_{tag}"
    plugin = tmp_path / f"plugin_{tag}.py"
    plugin.write_text(PLUGIN.replace("MODEL", model).replace("DATA", data))
    with pytest.raises(ConfigError):  # registered by nobody yet
        build_model(model, (3, 6, 6), 3)
    config = tiny_config(dataset=data, models=(model,), samples_per_client=30, limit_test=None)
    transport = Loopback(config.num_clients, aggregation="plain", node_config={"imports": str(plugin)})
    results, _ = run_loopback(config, tmp_path, aggregation="plain", transport=transport, imports=str(plugin))
    assert load_dataset(data).x_train.shape[1:] == (3, 6, 6)  # RGB, registered by the node's import
    fed, _ = in_process_twin(config, "plain")
    assert [r["accuracies"] for r in results["rounds"]] == [list(m.accuracies) for m in fed.history]
    # The public API takes the same module through a run's `imports`.
    run = build_run(dataset=data, models=[model], clients=2, rounds=1, imports=[str(plugin)], device="cpu")
    assert run.run_round()["accuracy_mean"] >= 0.0


def test_a_node_refuses_an_imports_value_that_is_not_a_list_of_modules():
    from codream.exceptions import ConfigError
    from codream.federation.flower.engine import CodreamNode

    with pytest.raises(ConfigError, match="node config imports: cannot import 'no_such_module_x'"):
        CodreamNode({"partition-id": 0, "imports": "no_such_module_x"})
    with pytest.raises(ConfigError, match="comma-separated"):
        CodreamNode({"partition-id": 0, "imports": 3})


def test_a_server_cannot_make_a_node_import_code(tmp_path):
    import json

    """The threat is the server (or whoever submits runs): a module it names, in its run config or in
    the set-up it sends, is never imported by a node; only the node's own config names its imports."""
    from codream.federation.flower.engine import CodreamNode, CodreamServer, config_to_dict
    from codream.federation.flower.wire import Payload

    marker = tmp_path / "imported"
    plugin = tmp_path / "server_named.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = tiny_config(rounds=1)
    setup = CodreamServer(
        {
            "codream-config": json.dumps(config_to_dict(config)),
            "aggregation": "plain",
            "out-dir": str(tmp_path),
        }
    ).setup_payload()
    assert "imports" not in json.dumps(setup.fields)  # the set-up never carries them
    marker.unlink(missing_ok=True)
    node = CodreamNode({"partition-id": 0, "num-partitions": config.num_clients, "aggregation": "plain"})
    forged = Payload("setup", {**setup.fields, "imports": str(plugin)}, setup.arrays)
    node.handle(forged)  # a server that adds them anyway
    assert node.role is not None and not marker.exists()
