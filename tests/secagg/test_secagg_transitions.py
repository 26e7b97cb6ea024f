"""Exhaustive transition tables: every (state, message kind) pair, client and server.

A state either accepts a kind (the call returns a transition, whatever the content) or raises
`UnexpectedMessage` and stays exactly as it was. Abort messages are accepted by every state that
is not terminal; terminal states accept nothing.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from codream.exceptions import AbortReason, UnexpectedMessage
from codream.secagg import client as c
from codream.secagg import server as s
from codream.secagg.messages import (
    SERVER_ID,
    AbortMessage,
    AdvertiseKeys,
    ConsistencyProof,
    ConsistencySignature,
    ExclusionRequest,
    KeysBroadcast,
    MaskedInput,
    PairwiseKeys,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from conftest import make_config
from fakes import Harness, random_words


@pytest.fixture(scope="module")
def recorded():
    """One malicious-mode session of 4 clients (t = 3, 2 vectors), recording client 0's and the
    server's state at every step and one real message of every kind."""
    config, signers = make_config(n=4, t=3, lengths=(3, 3), malicious=True)
    h = Harness(config, signers=signers)
    clients, servers, messages = {}, {}, {}
    servers["ServerAdvertiseKeys"] = h.server
    adverts = h.start()
    clients["AdvertiseKeysState"] = h.clients[0]
    messages[AdvertiseKeys] = adverts[0]
    h.send(adverts)
    broadcasts = h.close()
    servers["ServerShareKeys"] = h.server
    messages[KeysBroadcast] = broadcasts[0]
    shares = h.deliver(broadcasts)
    clients["ShareKeysState"] = h.clients[0]
    messages[ShareKeys] = shares[0]
    h.send(shares)
    deliveries = h.close()
    servers["ServerMaskedInput"] = h.server
    messages[SharesDelivery] = deliveries[0]
    h.deliver(deliveries)
    clients["MaskedInputState"] = h.clients[0]
    rng = np.random.default_rng(0)
    masked = h.submit({cid: random_words(rng, 3, 32) for cid in config.client_ids})
    clients["UnmaskState"] = h.clients[0]
    messages[MaskedInput] = masked[0]
    h.send(masked)
    requests = h.close()
    servers["ServerConsistencyCheck"] = h.server
    messages[UnmaskRequest] = requests[0]
    signatures = h.deliver(requests)
    clients["ConsistencyCheckState"] = h.clients[0]
    messages[ConsistencySignature] = signatures[0]
    h.send(signatures)
    proofs = h.close()
    servers["ServerUnmask"] = h.server
    messages[ConsistencyProof] = proofs[0]
    responses = h.deliver(proofs)
    clients["UnmaskedState"] = h.clients[0]
    messages[UnmaskResponse] = responses[0]
    h.send(responses)
    unmask = h.server
    h.close()
    # Round 3b only runs against a bad dealer; its state and messages are built from real parts.
    servers["ServerExclusion"] = s.ServerExclusion(
        unmask.session,
        0,
        unmask.request,
        unmask.partial,
        unmask.contexts,
        {1: frozenset({0})},
        (1, 2, 3),
        frozenset({1, 2, 3}),
        (),
    )
    messages[ExclusionRequest] = ExclusionRequest(0, ())
    messages[PairwiseKeys] = PairwiseKeys(1, 0, ((0, bytes(32)),))
    masked = h.submit({cid: random_words(rng, 3, 32) for cid in config.client_ids})
    h.send(masked)
    h.send(h.deliver(h.close()))
    h.send(h.deliver(h.close()))
    h.close()
    clients["UnmaskedLastState"] = h.clients[0]
    clients["Completed"] = c.Completed(0)
    servers["ServerCompleted"] = h.server
    clients["Aborted"] = c.Aborted(0, AbortReason.TIMEOUT)
    servers["ServerAborted"] = s.ServerAborted(AbortReason.TOO_FEW_PEERS, "test")
    messages[AbortMessage] = AbortMessage(SERVER_ID, AbortReason.TIMEOUT, "deadline")
    assert isinstance(clients["Completed"], c.Completed) and isinstance(
        servers["ServerCompleted"], s.ServerCompleted
    )
    return clients, servers, messages


CLIENT_ACCEPTS = {
    "AdvertiseKeysState": {KeysBroadcast, AbortMessage},
    "ShareKeysState": {SharesDelivery, AbortMessage},
    "MaskedInputState": {AbortMessage},
    "UnmaskState": {UnmaskRequest, AbortMessage},
    "ConsistencyCheckState": {ConsistencyProof, AbortMessage},
    "UnmaskedState": {ExclusionRequest, AbortMessage},
    "UnmaskedLastState": {ExclusionRequest, AbortMessage},
    "Completed": set(),
    "Aborted": set(),
}

SERVER_ACCEPTS = {
    "ServerAdvertiseKeys": {AdvertiseKeys, AbortMessage},
    "ServerShareKeys": {ShareKeys, AbortMessage},
    "ServerMaskedInput": {MaskedInput, AbortMessage},
    "ServerConsistencyCheck": {ConsistencySignature, AbortMessage},
    "ServerUnmask": {UnmaskResponse, AbortMessage},
    "ServerExclusion": {PairwiseKeys, AbortMessage},
    "ServerCompleted": set(),
    "ServerAborted": set(),
}

KINDS = [
    AdvertiseKeys,
    KeysBroadcast,
    ShareKeys,
    SharesDelivery,
    MaskedInput,
    UnmaskRequest,
    ConsistencySignature,
    ConsistencyProof,
    UnmaskResponse,
    ExclusionRequest,
    PairwiseKeys,
    AbortMessage,
]


def _client_abort(kind):
    return AbortMessage(1, AbortReason.TIMEOUT) if kind is AbortMessage else None


@pytest.mark.parametrize(
    ("state_name", "kind"),
    list(itertools.product(CLIENT_ACCEPTS, KINDS)),
    ids=[f"{a}-{b.__name__}" for a, b in itertools.product(CLIENT_ACCEPTS, KINDS)],
)
def test_client_state_accepts_exactly_its_table_row(recorded, state_name, kind):
    clients, _, messages = recorded
    state = clients[state_name]
    assert state.name == state_name
    if kind in CLIENT_ACCEPTS[state_name]:
        after, _ = state.handle(messages[kind])
        assert after is not state
    else:
        with pytest.raises(UnexpectedMessage, match="illegal transition"):
            state.handle(messages[kind])


@pytest.mark.parametrize(
    ("state_name", "kind"),
    list(itertools.product(SERVER_ACCEPTS, KINDS)),
    ids=[f"{a}-{b.__name__}" for a, b in itertools.product(SERVER_ACCEPTS, KINDS)],
)
def test_server_state_accepts_exactly_its_table_row(recorded, state_name, kind):
    _, servers, messages = recorded
    state = servers[state_name]
    assert state.name == state_name
    message = _client_abort(kind) or messages[kind]
    if kind in SERVER_ACCEPTS[state_name]:
        assert isinstance(state.handle(message), s.ServerState)
    else:
        with pytest.raises(UnexpectedMessage, match="illegal transition"):
            state.handle(message)


@pytest.mark.parametrize("state_name", list(CLIENT_ACCEPTS))
def test_only_the_masked_input_states_take_an_input(recorded, state_name):
    clients, _, _ = recorded
    state = clients[state_name]
    words = np.zeros(3, dtype=np.uint64)
    if state_name in ("MaskedInputState", "UnmaskedState"):  # the second: the next vector's input
        after, message = state.submit(words)
        assert isinstance(after, c.UnmaskState) and isinstance(message, MaskedInput)
    else:
        with pytest.raises(UnexpectedMessage):
            state.submit(words)


@pytest.mark.parametrize("state_name", ["ServerCompleted", "ServerAborted"])
def test_terminal_server_states_have_no_round_to_close(recorded, state_name):
    _, servers, _ = recorded
    with pytest.raises(UnexpectedMessage):
        servers[state_name].close()


def test_an_abort_from_the_server_stops_a_client_with_the_servers_reason(recorded):
    clients, _, messages = recorded
    for name in (
        "AdvertiseKeysState",
        "ShareKeysState",
        "MaskedInputState",
        "UnmaskState",
        "ConsistencyCheckState",
        "UnmaskedState",
        "UnmaskedLastState",
    ):
        after, reply = clients[name].handle(messages[AbortMessage])
        assert isinstance(after, c.Aborted) and after.reason is AbortReason.TIMEOUT and reply is None


def test_a_client_abort_counts_as_a_dropout_at_the_server(recorded):
    _, servers, _ = recorded
    after = servers["ServerAdvertiseKeys"].handle(AbortMessage(1, AbortReason.TIMEOUT))
    assert 1 in after.excluded
