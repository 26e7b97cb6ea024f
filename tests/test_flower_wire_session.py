"""A node parses the server's session parameters with its own bounds, before it builds anything.

A server that names 4000 clients used to make a node build the complete graph (seconds and a
gigabyte); now the node refuses any session past its ``max-clients`` with a length check.
"""

from __future__ import annotations

import tracemalloc

import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from codream.aggregation import ClientSeam  # noqa: E402
from codream.exceptions import AbortReason, ConfigError, InvalidMessage, ProtocolAbort  # noqa: E402
from codream.federation.flower.engine import CodreamNode  # noqa: E402
from codream.federation.flower.wire import (  # noqa: E402
    NodeLimits,
    Payload,
    decode,
    encode,
    session_fields,
    session_from_fields,
)
from codream.secagg.config import GraphKind, SessionConfig  # noqa: E402


def session(n: int, **overrides) -> dict:
    fields = {
        "round": 0,
        "client_ids": list(range(n)),
        "threshold": n // 2 + 1,
        "vector_lengths": [10, 20],
        "bits": 32,
        "graph": "complete",
        "degree": 0,
        "corrupt": 0,
        "min_survivors": n // 2 + 1,
    }
    fields.update(overrides)
    return fields


def test_session_parameters_round_trip_through_the_wire():
    config = SessionConfig(
        round_index=3,
        client_ids=(0, 2, 5, 7),
        threshold=3,
        vector_lengths=(4, 9),
        bits=40,
        graph=GraphKind.HARARY,
        degree=2,
        min_survivors=4,
    )
    fields = decode(encode(Payload("session", {"session": session_fields(config)}))).fields["session"]
    assert session_from_fields(fields) == config


def test_a_session_past_the_nodes_max_clients_is_refused_before_anything_is_built(monkeypatch):
    import codream.secagg.config as secagg_config

    built = []
    monkeypatch.setattr(secagg_config.SessionConfig, "neighbours", lambda self: built.append(1) or {})
    fields = decode(encode(Payload("session", {"s": session(4000)}))).fields["s"]
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolAbort) as err:
            session_from_fields(fields, NodeLimits(max_clients=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason is AbortReason.FORBIDDEN_REQUEST and "max-clients is 1000" in str(err.value)
    assert peak < 64 * 1024 and built == []
    assert session_from_fields(session(1000), NodeLimits(max_clients=1000)).num_clients == 1000
    with pytest.raises(ProtocolAbort):
        session_from_fields(session(1001))  # the default bound


@pytest.mark.parametrize(
    "overrides",
    [
        {"round": "1"},
        {"round": True},
        {"round": -1},
        {"client_ids": [0, True, 2]},
        {"client_ids": [0, 1.0, 2]},
        {"client_ids": "0,1,2"},
        {"client_ids": [0, 2, 1]},  # not increasing: the session config refuses it
        {"threshold": 1.5},
        {"threshold": 1},
        {"vector_lengths": [0]},
        {"vector_lengths": [1 << 40]},
        {"bits": "32"},
        {"graph": "star"},
        {"graph": ["complete"]},
        {"corrupt": "1"},
        {"corrupt": 9},
        {"min_survivors": 1},
        {"degree": None},
    ],
)
def test_mistyped_session_parameters_raise_invalid_message(overrides):
    with pytest.raises(InvalidMessage):
        session_from_fields(session(4, **overrides))


def test_missing_session_parameters_raise_invalid_message():
    for key in session(4):
        fields = session(4)
        del fields[key]
        with pytest.raises(InvalidMessage, match=key):
            session_from_fields(fields)
    with pytest.raises(InvalidMessage):
        session_from_fields([1, 2])


def test_a_node_takes_max_clients_from_its_own_config_and_refuses_a_larger_session(monkeypatch):
    import codream.secagg.client as secagg_client

    started = []
    monkeypatch.setattr(secagg_client, "start_client", lambda *a: started.append(a))
    node = CodreamNode({"partition-id": 0, "max-clients": 8})
    assert node.limits == NodeLimits(max_clients=8)
    node.role, node.config = object(), object()  # as after set-up
    node.seam = ClientSeam(0, node.policy)
    request = Payload(
        "session",
        {
            "round": 0,
            "mode": "secure",
            "specs": [["class_weights", 10, 1.0, "class_weights", 0]],
            "session": session(9),
        },
    )
    with pytest.raises(ProtocolAbort, match="max-clients is 8"):
        node.handle(request)
    assert started == []
    for bad in (1, "many", 2.0, True):
        with pytest.raises(ConfigError, match="max-clients"):
            CodreamNode({"partition-id": 0, "max-clients": bad})
    assert CodreamNode({"partition-id": 0}).limits.max_clients == 1000
