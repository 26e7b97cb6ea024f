"""A crafted reply costs its sender its place in the run, never the run; client ids are bound to nodes.

Server and nodes are joined by in-process transports (no Flower processes): a node that sends
undecodable bytes or a mistyped field is dropped with a logged reason while the round goes on with
the others, and `connect_clients` refuses a node that claims a client id it may not have.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.exceptions import CodreamError, ConfigError  # noqa: E402
from codream.federation.flower.channel import ClientChannel  # noqa: E402
from codream.federation.flower.engine import CodreamNode, CodreamServer, config_to_dict  # noqa: E402
from codream.federation.flower.serverapp import connect_clients, parse_client_nodes  # noqa: E402
from codream.federation.flower.wire import Payload, decode, encode  # noqa: E402
from codream.federation.flower.worker import error_payload  # noqa: E402
from flower_loopback import tiny_config  # noqa: E402


def framed(header: bytes, body: bytes = b"") -> bytes:
    return bytes([1]) + len(header).to_bytes(4, "little") + header + body


HEAD = b'{"kind":"ok","fields":{},"arrays":['
CRAFTED = {
    "shape Infinity": framed(HEAD + b'["a","uint8",[Infinity]]]}'),
    "list as array name": framed(HEAD + b'[["a"],"uint8",[1]]]}', b"\0"),
    "70 dimensions": framed(HEAD + b'["a","uint8",[' + b",".join([b"1"] * 70) + b"]]]}", b"\0"),
    "deep nesting": framed(
        b'{"kind":"ok","fields":{"a":' + b"[" * 50_000 + b"]" * 50_000 + b'},"arrays":[]}'
    ),
}


class Scripted:
    """A transport whose nodes answer with `reply(node, request)` (None: no answer), in `order`."""

    def __init__(self, reply, nodes, order=None) -> None:
        self.reply = reply
        self.nodes = list(nodes)
        self.order = order
        self.asked: dict[int, list[str]] = {n: [] for n in self.nodes}

    def node_ids(self):
        return list(self.nodes)

    def exchange(self, requests, *, timeout):
        out = {}
        for node in self.order or requests:
            if node not in requests:
                continue
            request = decode(requests[node])
            self.asked[node].append(request.kind)
            body = self.reply(node, request)
            if body is not None:
                out[node] = body
        return out


@pytest.mark.parametrize("crafted", CRAFTED.values(), ids=CRAFTED.keys())
def test_a_crafted_reply_drops_its_sender_with_a_logged_reason_and_the_others_go_on(crafted, caplog):
    ok = encode(Payload("ok"))
    transport = Scripted(lambda node, _: crafted if node == 2 else ok, [1, 2, 3])
    channel = ClientChannel(transport, {0: 1, 1: 2, 2: 3}, step_timeout=1)
    with caplog.at_level(logging.WARNING, logger="codream.federation.flower.channel"):
        assert sorted(channel.broadcast(Payload("ping"))) == [0, 2]
    assert channel.alive == [0, 2] and channel.dropped[1].startswith("undecodable answer to 'ping'")
    assert "client 1 dropped: undecodable" in caplog.text
    assert sorted(channel.broadcast(Payload("ping"))) == [0, 2]  # and it is not asked again
    assert transport.asked[2] == ["ping"]


def test_reading_a_mistyped_field_drops_the_client_instead_of_raising(caplog):
    channel = ClientChannel(Scripted(None, []), {0: 0, 1: 1, 2: 2, 3: 3}, step_timeout=1)
    answers = {
        0: Payload("secagg", {"clipped": 1}),
        1: Payload("secagg", {"clipped": "many"}),
        2: Payload("secagg", {"clipped": True}),
        3: Payload("secagg", {}),
    }
    with caplog.at_level(logging.WARNING, logger="codream.federation.flower.channel"):
        counts = channel.read(answers, lambda a: a.integer("clipped", default=0, maximum=1), what="counts")
    assert counts == {0: 1, 3: 0}
    assert sorted(channel.dropped) == [1, 2] and "'clipped' is str" in channel.dropped[1]
    assert "client 1 dropped: malformed counts" in caplog.text


@pytest.fixture
def flower_task(monkeypatch):
    """The task identity Flower sets in its own processes; its Message needs one."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 7), ("_task_id", 3)):
        monkeypatch.setattr(TaskIdentity, name, value)


def test_a_flower_error_reply_drops_the_client_with_flowers_reason(flower_task):
    from types import SimpleNamespace

    from codream.federation.flower.channel import FlowerChannel

    def reply(mid, *, error=None, body=None):
        records = {} if body is None else {"codream": {"payload": body}}
        return SimpleNamespace(
            metadata=SimpleNamespace(reply_to_message_id=mid),
            has_error=lambda: error is not None,
            error=SimpleNamespace(reason=error),
            content=SimpleNamespace(config_records=records),
        )

    class Grid:
        def push_messages(self, messages):
            return [f"m{m.metadata.dst_node_id}" for m in messages]

        def pull_messages(self, ids):
            return [
                reply("m1", error="The FAB could not be verified."),
                reply("m2", body=encode(Payload("ok"))),
                reply("m3", body="not bytes"),
                reply("m4"),
            ]

    channel = ClientChannel(
        FlowerChannel(Grid(), poll_interval=0), {0: 1, 1: 2, 2: 3, 3: 4}, step_timeout=0.2
    )
    assert list(channel.broadcast(Payload("setup"))) == [1]
    assert channel.dropped[0] == "error on 'setup': FlowerError: The FAB could not be verified."
    assert channel.dropped[2] == channel.dropped[3] == "no answer to 'setup'"


def test_the_client_app_answers_every_message_even_one_without_a_codream_payload(flower_task):
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from codream.federation.flower.clientapp import PAYLOAD, RECORD, relay

    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    for content in (
        RecordDict({}),
        RecordDict({RECORD: ConfigRecord({})}),
        RecordDict({RECORD: ConfigRecord({PAYLOAD: "text"})}),
        RecordDict({RECORD: ConfigRecord({PAYLOAD: CRAFTED["shape Infinity"]})}),
    ):
        answer = relay(Message(content, dst_node_id=7, message_type="query.codream"), context)
        assert decode(answer.content.config_records[RECORD][PAYLOAD]).kind == "error"


# ------------------------------------------------------------------------------ through the engine
class Tampering:
    """Nodes in process, as the worker runs them; `tamper(client, request, reply)` rewrites a reply."""

    def __init__(self, num_nodes: int, tamper, aggregation: str) -> None:
        self.nodes = {
            100 + i: CodreamNode({"partition-id": i, "aggregation": aggregation}) for i in range(num_nodes)
        }
        self.tamper = tamper

    def node_ids(self):
        return sorted(self.nodes)

    def exchange(self, requests, *, timeout):
        out = {}
        for node, body in requests.items():
            request = decode(body)
            try:
                reply = self.nodes[node].handle(request)
            except Exception as err:  # noqa: BLE001 - as the worker does
                reply = error_payload(err)
            out[node] = self.tamper(node - 100, request, reply)
        return out


def run(config, tmp_path, tamper, *, aggregation):
    server = CodreamServer(
        {
            "codream-config": json.dumps(config_to_dict(config)),
            "aggregation": aggregation,
            "out-dir": str(tmp_path),
        }
    )
    channel, ready = connect_clients(
        Tampering(config.num_clients, tamper, aggregation),
        num_nodes=config.num_clients,
        setup=server.setup_payload(),
        wait_timeout=1,
        setup_timeout=1,
        step_timeout=1,
    )
    return server.run(channel, ready), channel


def with_fields(reply: Payload, **fields) -> bytes:
    return encode(Payload(reply.kind, {**reply.fields, **fields}, reply.arrays))


def test_clear_fields_beside_a_masked_release_are_never_read(tmp_path):
    """Clip counts travel inside the masked vector; a clear-text field beside it is ignored, not used."""

    def tamper(client, request, reply):
        if client == 3 and request.kind == "release" and request.fields.get("vector") == 1:
            return with_fields(reply, clipped="many", saturated=10**9)
        return encode(reply)

    results, channel = run(tiny_config(rounds=1), tmp_path, tamper, aggregation="secure")
    assert results["rounds"][0]["survivors"] == [0, 1, 2, 3] and not channel.dropped
    assert results["rounds"][0]["aggregation"]["clipped"] <= 4 * len(results["rounds"][0]["survivors"])


def test_a_secure_round_goes_on_without_a_client_that_sends_undecodable_bytes(tmp_path):
    def tamper(client, request, reply):
        if client == 0 and request.kind == "release" and request.fields.get("vector") == 2:
            return CRAFTED["shape Infinity"]
        return encode(reply)

    results, channel = run(tiny_config(rounds=1), tmp_path, tamper, aggregation="secure")
    assert results["rounds"][0]["survivors"] == [1, 2, 3] and list(channel.dropped) == [0]


def test_a_plain_round_drops_a_misshapen_vector_and_a_mistyped_accuracy(tmp_path):
    def tamper(client, request, reply):
        if client == 2 and request.kind == "release" and request.fields.get("vector") == 1:
            return encode(Payload(reply.kind, reply.fields, {"v": np.zeros(3)}))
        if client == 1 and request.kind == "release" and request.fields.get("vector") == 2:
            v = np.array(reply.arrays["v"])
            v[0] = np.nan
            return encode(Payload(reply.kind, reply.fields, {"v": v}))
        if client == 3 and request.kind == "learn":
            return with_fields(reply, accuracy="high")
        return encode(reply)

    results, channel = run(tiny_config(rounds=1), tmp_path, tamper, aggregation="plain")
    assert sorted(channel.dropped) == [1, 2, 3]
    assert "shape" in channel.dropped[2] and "NaN" in channel.dropped[1] and "accuracy" in channel.dropped[3]
    assert results["rounds"][0]["survivors"] == [0, 3] and results["rounds"][0]["evaluated"] == [0]


# ------------------------------------------------------------------------------ client id binding
def claims(ids: dict[int, object]):
    """Nodes answering set-up with client_id = ids[node]."""
    return lambda node, request: encode(Payload("ready", {"client_id": ids[node]}))


def connect(transport, num_nodes, **kwargs):
    return connect_clients(
        transport,
        num_nodes=num_nodes,
        setup=Payload("setup"),
        wait_timeout=0.3,
        setup_timeout=1,
        step_timeout=1,
        **kwargs,
    )


@pytest.mark.parametrize("order", [[100, 101, 102], [101, 100, 102]])
def test_the_first_node_to_claim_a_client_id_keeps_it_and_a_duplicate_is_refused(order, caplog):
    transport = Scripted(claims({100: 0, 101: 0, 102: 1}), [100, 101, 102], order=order)
    with caplog.at_level(logging.WARNING, logger="codream.federation.flower.serverapp"):
        channel, ready = connect(transport, 3)
    first, second = order[0], order[1]
    assert channel.nodes == {0: first, 1: 102} and sorted(ready) == [0, 1]
    assert channel.refused_nodes == {second: f"claims client id 0, already bound to node {first}"}
    assert channel.refused_workers == [second]
    assert f"SuperNode {second} refused" in caplog.text


def test_a_node_claiming_a_mistyped_client_id_is_refused():
    ids = {100: True, 101: "1", 102: -1, 103: 1 << 40, 104: 1.0, 105: 2}
    channel, ready = connect(Scripted(claims(ids), list(ids)), len(ids))
    assert channel.nodes == {2: 105} and sorted(channel.refused_nodes) == [100, 101, 102, 103, 104]
    assert all("malformed set-up answer" in why for why in channel.refused_nodes.values())


def test_with_client_nodes_only_listed_nodes_are_set_up_and_each_must_claim_its_own_id():
    transport = Scripted(claims({100: 0, 101: 1, 102: 1, 103: 2}), [100, 101, 102, 103])
    channel, ready = connect(transport, 3, client_nodes={0: 101, 1: 102, 2: 103})
    assert channel.nodes == {1: 102, 2: 103} and sorted(ready) == [1, 2]
    assert transport.asked[100] == []  # not listed: never sent the run's configuration
    assert channel.refused_nodes == {
        100: "not in the run's client-nodes",
        101: "claims client id 1, which client-nodes binds to node 102",
    }
    assert channel.refused_workers == [101]


def test_with_client_nodes_the_run_waits_for_the_listed_nodes_only():
    transport = Scripted(claims({100: 0, 101: 1}), [100, 101])
    with pytest.raises(CodreamError, match="only 1 of 2 listed SuperNodes"):
        connect(transport, 2, client_nodes={0: 101, 1: 102})


def test_client_nodes_parse_from_the_run_config():
    assert parse_client_nodes("") == {} and parse_client_nodes("  ") == {}
    assert parse_client_nodes("0=101 1=102") == {0: 101, 1: 102}
    assert parse_client_nodes("0=101,1=102, 2=7") == {0: 101, 1: 102, 2: 7}
    for bad in ("0=1 0=2", "0=1 1=1", "a=b", "0:1", "0=-1", "0=1 x"):
        with pytest.raises(ConfigError):
            parse_client_nodes(bad)


def test_the_app_writer_carries_client_nodes_into_the_run_config(tmp_path):
    import tomllib

    from codream.federation.flower.__main__ import main

    run = tmp_path / "run.toml"
    run.write_text('aggregation = "secure"\nbaselines = ["none"]\n')
    assert (
        main(["app", str(tmp_path / "a"), "--config", str(run), "--client-nodes", "0=11,1=22 2=33 3=44"]) == 0
    )
    config = tomllib.loads((tmp_path / "a" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert parse_client_nodes(config["client-nodes"]) == {0: 11, 1: 22, 2: 33, 3: 44}
    assert main(["app", str(tmp_path / "b"), "--config", str(run)]) == 0  # the key is there to override
    config = tomllib.loads((tmp_path / "b" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config["client-nodes"] == ""
    assert main(["app", str(tmp_path / "c"), "--config", str(run), "--client-nodes", "0=11 0=22"]) == 2
