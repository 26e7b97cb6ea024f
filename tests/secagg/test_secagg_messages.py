"""Wire format: every message round-trips, and every malformed encoding raises InvalidMessage.

Also the session config's validation, since both are the boundary where bad input must stop.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codream.crypto.shamir import Share
from codream.exceptions import AbortReason, ConfigError, InvalidMessage
from codream.secagg.config import GraphKind, SessionConfig
from codream.secagg.messages import (
    SERVER_ID,
    VERSION,
    AbortMessage,
    AdvertiseKeys,
    ConsistencyProof,
    ConsistencySignature,
    DealerEvidence,
    ExclusionRequest,
    KeysBroadcast,
    MaskedInput,
    Message,
    MessageKind,
    PairwiseKeys,
    ShareKeys,
    SharesDelivery,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from conftest import make_config
from fakes import Harness


def _advert(sender=3, j=2, signed=True):
    return AdvertiseKeys(
        sender,
        os.urandom(32),
        tuple(os.urandom(32) for _ in range(j)),
        tuple(os.urandom(32) for _ in range(j)),
        os.urandom(64) if signed else b"",
    )


EXAMPLES: dict[str, Message] = {
    "advertise": _advert(),
    "advertise-unsigned": _advert(signed=False),
    "keys-broadcast": KeysBroadcast(((1, os.urandom(32)), (3, os.urandom(32))), (_advert(1), _advert(3))),
    "share-keys": ShareKeys(
        4, ((1, os.urandom(100)), (2, b"")), ((1, (os.urandom(32), os.urandom(32))), (4, ()))
    ),
    "share-keys-no-commitments": ShareKeys(4, ((1, os.urandom(100)),)),
    "share-keys-signed": ShareKeys(4, ((1, os.urandom(100)),), ((4, (os.urandom(32),) * 2),), os.urandom(64)),
    "shares-delivery": SharesDelivery(((1, os.urandom(90)),), ((1, (os.urandom(32),) * 4),)),
    "masked-input-13": MaskedInput(2, 1, 13, np.array([0, 1, 8191], dtype=np.uint64), os.urandom(32)),
    "masked-input-64": MaskedInput(2, 0, 64, np.array([2**64 - 1, 0], dtype=np.uint64), bytes(32)),
    "unmask-request": UnmaskRequest(5, (0, 2, 3), (1,)),
    "consistency-signature": ConsistencySignature(2, 0, os.urandom(64)),
    "consistency-proof": ConsistencyProof(0, ((1, os.urandom(64)), (2, os.urandom(64)))),
    "unmask-response": UnmaskResponse(2, 0, ((0, Share(1, 5)), (2, Share(3, 2**520))), ((1, Share(2, 7)),)),
    "exclusion-request": ExclusionRequest(
        1,
        (3,),
        (
            DealerEvidence(
                2,
                (os.urandom(32), os.urandom(32)),
                os.urandom(64),
                ((0, os.urandom(32)), (2, os.urandom(32))),
                ((0, Share(1, 9)), (2, Share(2, 2**519))),
            ),
        ),
    ),
    "exclusion-request-dropped-only": ExclusionRequest(0, (1, 4)),
    "pairwise-keys": PairwiseKeys(2, 1, ((3, os.urandom(32)), (5, os.urandom(32)))),
    "abort-client": AbortMessage(7, AbortReason.OVERLAPPING_SETS, "lists overlap"),
    "abort-server": AbortMessage(SERVER_ID, AbortReason.TOO_FEW_PEERS),
}


def _same(a: Message, b: Message) -> bool:
    if isinstance(a, MaskedInput):
        return (a.sender, a.vector, a.bits, a.context) == (b.sender, b.vector, b.bits, b.context) and (
            np.array_equal(a.words, b.words)
        )
    return a == b


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_message_round_trips_through_its_bytes(name):
    message = EXAMPLES[name]
    data = message.to_bytes()
    assert data[0] == VERSION and data[1] == message.KIND
    assert _same(type(message).from_bytes(data), message)
    assert _same(decode_message(data), message)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_truncation_and_any_trailing_byte_is_refused(name):
    data = EXAMPLES[name].to_bytes()
    for cut in range(len(data)):
        with pytest.raises(InvalidMessage):
            decode_message(data[:cut])
    with pytest.raises(InvalidMessage, match="trailing"):
        decode_message(data + b"\x00")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_a_wrong_version_or_kind_byte_is_refused(name):
    message = EXAMPLES[name]
    data = message.to_bytes()
    with pytest.raises(InvalidMessage, match="version"):
        decode_message(bytes([VERSION + 1]) + data[1:])
    other = MessageKind.ABORT if message.KIND != MessageKind.ABORT else MessageKind.MASKED_INPUT
    with pytest.raises(InvalidMessage, match="kind"):
        type(message).from_bytes(data[:1] + bytes([other]) + data[2:])
    with pytest.raises(InvalidMessage, match="unknown message kind"):
        decode_message(data[:1] + b"\x63" + data[2:])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_to_invalid_message_or_to_a_message_with_exactly_those_bytes(data):
    try:
        message = decode_message(data)
    except InvalidMessage:
        return
    assert message.to_bytes() == data


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(EXAMPLES)), st.data())
def test_a_flipped_byte_gives_invalid_message_or_a_message_with_exactly_those_bytes(name, data):
    raw = bytearray(EXAMPLES[name].to_bytes())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        message = decode_message(bytes(raw))
    except InvalidMessage:
        return
    assert message.to_bytes() == bytes(raw)


@pytest.mark.parametrize(
    "build",
    [
        lambda: AdvertiseKeys(1, os.urandom(31), (os.urandom(32),), (os.urandom(32),)),
        lambda: AdvertiseKeys(1, os.urandom(32), (), ()),
        lambda: AdvertiseKeys(1, os.urandom(32), (os.urandom(32),), ()),
        lambda: AdvertiseKeys(1, os.urandom(32), (os.urandom(32),), (os.urandom(32),), os.urandom(10)),
        lambda: AdvertiseKeys(-1, os.urandom(32), (os.urandom(32),), (os.urandom(32),)),
        lambda: AdvertiseKeys(SERVER_ID, os.urandom(32), (os.urandom(32),), (os.urandom(32),)),
        lambda: AdvertiseKeys(True, os.urandom(32), (os.urandom(32),), (os.urandom(32),)),
        lambda: KeysBroadcast([(1, os.urandom(32))], ()),
        lambda: KeysBroadcast(((1, os.urandom(31)),), ()),
        lambda: KeysBroadcast((), ("advert",)),
        lambda: ShareKeys(1, ((2, "text"),)),
        lambda: ShareKeys(1, (), ((2, (os.urandom(31),)),)),
        lambda: SharesDelivery((), ((2, [os.urandom(32)]),)),
        lambda: MaskedInput(1, 0, 8, np.array([256], dtype=np.uint64), bytes(32)),
        lambda: MaskedInput(1, 0, 32, np.array([1], dtype=np.int64), bytes(32)),
        lambda: MaskedInput(1, 0, 7, np.array([1], dtype=np.uint64), bytes(32)),
        lambda: MaskedInput(1, 0, 8, np.array([1], dtype=np.uint64), bytes(31)),
        lambda: UnmaskRequest(2**32, (), ()),
        lambda: UnmaskRequest(0, [1], ()),
        lambda: ConsistencySignature(1, 0, os.urandom(63)),
        lambda: UnmaskResponse(1, 0, ((2, b"share"),), ()),
        lambda: AbortMessage(1, "too_few_peers"),
        lambda: AbortMessage(1, AbortReason.TIMEOUT, "x" * 1001),
    ],
)
def test_an_ill_typed_message_cannot_even_be_built(build):
    with pytest.raises(InvalidMessage):
        build()


def test_a_masked_word_above_the_ring_is_refused_on_the_wire():
    data = bytearray(MaskedInput(1, 0, 12, np.array([4095], dtype=np.uint64), bytes(32)).to_bytes())
    data[-1] = 0xFF  # little-endian high byte of the last 2-byte word: 0xFFFF >= 2^12
    with pytest.raises(InvalidMessage):
        decode_message(bytes(data))


def test_an_abort_reason_unknown_to_this_version_is_refused():
    data = AbortMessage(1, AbortReason.TIMEOUT).to_bytes().replace(b"timeout", b"timeouX")
    with pytest.raises(InvalidMessage):
        decode_message(data)


BASE = dict(round_index=0, client_ids=(1, 2, 3, 4), threshold=3, vector_lengths=(5,))


@pytest.mark.parametrize(
    "changes",
    [
        {"client_ids": (2, 1, 3)},
        {"client_ids": (1, 1, 2)},
        {"client_ids": (1,), "threshold": 2},
        {"client_ids": (-1, 2, 3)},
        {"threshold": 1},
        {"threshold": 5},
        {"vector_lengths": ()},
        {"vector_lengths": (0,)},
        {"bits": 7},
        {"bits": 65},
        {"round_index": -1},
        {"graph": GraphKind.HARARY, "degree": 4},
        {"graph": GraphKind.HARARY, "degree": 2, "threshold": 4},
        {"client_ids": tuple(range(1, 11)), "graph": GraphKind.HARARY, "degree": 3, "threshold": 3},
        {"malicious": True},
        {"verify_keys": (bytes(32),) * 4},
        {"corrupt": 4},
        {"corrupt": -1},
        {"corrupt": 3},
        {"corrupt": 2},
        {"min_survivors": 2},
        {"min_survivors": 5},
    ],
    ids=str,
)
def test_an_invalid_session_config_is_refused_with_a_config_error(changes):
    with pytest.raises(ConfigError):
        SessionConfig(**{**BASE, **changes})


def test_the_config_digest_changes_with_every_field():
    base = SessionConfig(**BASE)
    variants = [
        {"round_index": 1},
        {"client_ids": (1, 2, 3, 5)},
        {"threshold": 2},
        {"vector_lengths": (6,)},
        {"bits": 33},
        {"graph": GraphKind.HARARY, "degree": 2},
        {"corrupt": 1},
        {"min_survivors": 4},
    ]
    digests = {SessionConfig(**{**BASE, **v}).digest() for v in variants}
    assert len(digests) == len(variants) and base.digest() not in digests


@pytest.mark.parametrize("malicious", [False, True], ids=["honest", "malicious"])
def test_message_sizes_are_the_ones_the_spec_states(malicious):
    n, J, length, bits = 5, 2, 7, 20
    config, signers = make_config(n=n, t=3, lengths=(length,) * J, malicious=malicious, bits=bits)
    h = Harness(config, signers=signers)
    sig = 64 if malicious else 0
    adverts = h.start()
    assert len(adverts[0].to_bytes()) == 43 + 64 * J + sig
    h.send(adverts)
    broadcasts = h.close()
    # Semi-honest: the roster digest too (here every client is a neighbour, so every entry goes).
    digest = 0 if malicious else 32
    assert len(broadcasts[0].to_bytes()) == 15 + digest + 36 * n + (n - 1) * (47 + 64 * J + sig)
    shares = h.deliver(broadcasts)
    assert len(shares[0].to_bytes()) == 15 + (n - 1) * (48 + 140 * J) + n * (8 + 64 * J) + sig
    h.send(shares)
    deliveries = h.close()
    assert len(deliveries[0].to_bytes()) == 10 + (n - 1) * (56 + 204 * J)
    h.deliver(deliveries)
    masked = h.submit({c: np.zeros(length, dtype=np.uint64) for c in range(n)})
    assert len(masked[0].to_bytes()) == 47 + length * 3
    h.send(masked)
    requests = h.close()
    assert len(requests[0].to_bytes()) == 18 + 4 * n
    replies = h.deliver(requests)
    if malicious:
        assert len(replies[0].to_bytes()) == 74
        h.send(replies)
        proofs = h.close()
        assert len(proofs[0].to_bytes()) == 10 + 68 * n
        replies = h.deliver(proofs)
    assert len(replies[0].to_bytes()) == 18 + 78 * n
