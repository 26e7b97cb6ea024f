"""A crafted reply costs its sender its place in the run, never the run.

Server and nodes are joined by in-process transports (no Flower processes): a node that sends
undecodable bytes or a mistyped field is dropped with a logged reason while the round goes on with
the others.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.federation.config import DistillConfig, DreamConfig, FederationConfig  # noqa: E402
from codream.federation.flower.channel import ClientChannel  # noqa: E402
from codream.federation.flower.engine import CodreamNode, CodreamServer, config_to_dict  # noqa: E402
from codream.federation.flower.serverapp import connect_clients  # noqa: E402
from codream.federation.flower.wire import Payload, decode, encode  # noqa: E402
from codream.federation.flower.worker import error_payload  # noqa: E402


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


# ------------------------------------------------------------------------------ through the engine
def tiny_config(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=4,
        alpha=None,
        samples_per_client=60,
        limit_test=100,
        models=("mlp",),
        rounds=1,
        seed=5,
        method="conditional",
        dream=DreamConfig(batch_size=8, global_steps=2),
        distill=DistillConfig(kd_steps=3, batch_size=8, warmup_steps=10, buffer_size=32),
    )
    base.update(overrides)
    return FederationConfig(**base)


class Tampering:
    """Nodes in process, as the worker runs them; `tamper(client, request, reply)` rewrites a reply."""

    def __init__(self, num_nodes: int, tamper) -> None:
        self.nodes = {100 + i: CodreamNode({"partition-id": i}) for i in range(num_nodes)}
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
        Tampering(config.num_clients, tamper),
        num_nodes=config.num_clients,
        setup=server.setup_payload(),
        wait_timeout=1,
        setup_timeout=1,
        step_timeout=1,
    )
    return server.run(channel, ready), channel


def with_fields(reply: Payload, **fields) -> bytes:
    return encode(Payload(reply.kind, {**reply.fields, **fields}, reply.arrays))


def test_a_secure_round_goes_on_without_a_client_that_reports_clipped_many(tmp_path):
    def tamper(client, request, reply):
        if client == 3 and request.kind == "release" and request.fields.get("vector") == 1:
            return with_fields(reply, clipped="many")
        return encode(reply)

    results, channel = run(tiny_config(), tmp_path, tamper, aggregation="secure")
    assert results["rounds"][0]["survivors"] == [0, 1, 2]
    assert list(channel.dropped) == [3] and "'clipped' is str" in channel.dropped[3]
    assert sorted(results["rounds"][0]["accuracies"]) == ["0", "1", "2"]


def test_a_secure_round_goes_on_without_a_client_that_sends_undecodable_bytes(tmp_path):
    def tamper(client, request, reply):
        if client == 0 and request.kind == "release" and request.fields.get("vector") == 2:
            return CRAFTED["shape Infinity"]
        return encode(reply)

    results, channel = run(tiny_config(), tmp_path, tamper, aggregation="secure")
    assert results["rounds"][0]["survivors"] == [1, 2, 3] and list(channel.dropped) == [0]


def test_a_plain_round_drops_a_misshapen_vector_and_a_mistyped_accuracy(tmp_path):
    def tamper(client, request, reply):
        if client == 2 and request.kind == "release" and request.fields.get("vector") == 1:
            return encode(Payload(reply.kind, reply.fields, {"v": np.zeros(3)}))
        if client == 1 and request.kind == "release" and request.fields.get("vector") == 2:
            v = np.array(reply.arrays["v"])
            v[0] = np.nan
            return encode(Payload(reply.kind, reply.fields, {"v": v}))
        if client == 3 and request.kind == "acquire":
            return with_fields(reply, accuracy="high")
        return encode(reply)

    results, channel = run(tiny_config(), tmp_path, tamper, aggregation="plain")
    assert sorted(channel.dropped) == [1, 2, 3]
    assert "shape" in channel.dropped[2] and "NaN" in channel.dropped[1] and "accuracy" in channel.dropped[3]
    assert results["rounds"][0]["survivors"] == [0, 3] and list(results["rounds"][0]["accuracies"]) == ["0"]
