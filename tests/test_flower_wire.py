"""The engine's wire format: every malformed or mistyped input raises `InvalidMessage` and nothing else.

The decoder is fed the crafted inputs that once escaped it (a shape of Infinity, a list as an array
name, 70 dimensions, JSON nested a hundred thousand deep), random bytes, random JSON headers and
mutations of valid encodings. Memory is checked with tracemalloc: what a header claims (a terabyte
array, thousands of arrays) never turns into an allocation.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from codream.exceptions import InvalidMessage  # noqa: E402
from codream.federation.flower.wire import LIMITS, Limits, Payload, decode, encode  # noqa: E402


def frame(header: bytes | dict, body: bytes = b"", *, version: int = 1) -> bytes:
    """A message with this header (raw JSON bytes or a dict) and body, framed as `encode` frames."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return bytes([version]) + struct.pack("<I", len(h)) + h + body


def header(arrays=(), fields=None, kind="x") -> dict:
    return {"kind": kind, "fields": {} if fields is None else fields, "arrays": list(arrays)}


def decode_or_refuse(data) -> Payload | None:
    """decode, with `InvalidMessage` as the only allowed failure (anything else fails the test)."""
    try:
        return decode(data)
    except InvalidMessage:
        return None


# ------------------------------------------------------------------------------- crafted inputs
CRAFTED = {
    "shape Infinity": frame(b'{"kind":"x","fields":{},"arrays":[["a","uint8",[Infinity]]]}'),
    "shape NaN": frame(b'{"kind":"x","fields":{},"arrays":[["a","uint8",[NaN]]]}'),
    "shape 1e999": frame(b'{"kind":"x","fields":{},"arrays":[["a","uint8",[1e999]]]}'),
    "list as array name": frame(header([[["a"], "uint8", [1]]]), b"\0"),
    "dict as array name": frame(header([[{"a": 1}, "uint8", [1]]]), b"\0"),
    "70 dimensions": frame(header([["a", "uint8", [1] * 70]]), b"\0"),
    "9 dimensions": frame(header([["a", "uint8", [1] * 9]]), b"\0"),
    "deeply nested fields": frame(
        b'{"kind":"x","fields":{"a":' + b"[" * 100_000 + b"]" * 100_000 + b'},"arrays":[]}'
    ),
    "nested past the depth bound": frame(
        b'{"kind":"x","fields":{"a":' + b"[" * 40 + b"]" * 40 + b'},"arrays":[]}'
    ),
    "too many objects and arrays": frame(header(fields={"a": [[]] * (LIMITS.max_containers + 1)})),
    "fractional dimension": frame(header([["a", "uint8", [1.5]]]), b"\0"),
    "boolean dimension": frame(header([["a", "uint8", [True]]]), b"\0"),
    "string dimension": frame(header([["a", "uint8", ["1"]]]), b"\0"),
    "negative dimension": frame(header([["a", "uint8", [-1]]])),
    "shape not a list": frame(header([["a", "uint8", 1]]), b"\0"),
    "terabyte shape": frame(header([["a", "float64", [1 << 20, 1 << 20]]]), b"\0" * 64),
    "product overflows int64": frame(header([["a", "uint8", [1 << 62, 1 << 62, 0]]])),
    "dimension past the bound": frame(header([["a", "uint8", [1 << 62, 0]]])),
    "unknown dtype": frame(header([["a", "object", [1]]]), b"\0"),
    "dtype not a string": frame(header([["a", ["uint8"], [1]]]), b"\0"),
    "entry of two items": frame(header([["a", "uint8"]])),
    "entry not a list": frame(header(["a"])),
    "repeated array name": frame(header([["a", "uint8", [1]], ["a", "uint8", [1]]]), b"\0\0"),
    "long array name": frame(header([["a" * 1000, "uint8", [1]]]), b"\0"),
    "empty array name": frame(header([["", "uint8", [1]]]), b"\0"),
    "too many arrays": frame(header([[f"a{i}", "uint8", [0]] for i in range(LIMITS.max_arrays + 1)])),
    "kind not a string": frame({"kind": 3, "fields": {}, "arrays": []}),
    "long kind": frame(header(kind="k" * 1000)),
    "fields not an object": frame({"kind": "x", "fields": [1], "arrays": []}),
    "arrays not a list": frame({"kind": "x", "fields": {}, "arrays": {}}),
    "header not an object": frame(b"[1,2,3]"),
    "header missing arrays": frame({"kind": "x", "fields": {}}),
    "header with an unknown key": frame({**header(), "extra": 1}),
    "repeated key": frame(b'{"kind":"x","kind":"y","fields":{},"arrays":[]}'),
    "repeated field key": frame(b'{"kind":"x","fields":{"a":1,"a":2},"arrays":[]}'),
    "NaN field": frame(b'{"kind":"x","fields":{"a":NaN},"arrays":[]}'),
    "-Infinity field": frame(b'{"kind":"x","fields":{"a":-Infinity},"arrays":[]}'),
    "overflowing float field": frame(b'{"kind":"x","fields":{"a":1e400},"arrays":[]}'),
    "integer past int64": frame(b'{"kind":"x","fields":{"a":' + b"9" * 30 + b'},"arrays":[]}'),
    "integer of 5000 digits": frame(b'{"kind":"x","fields":{"a":' + b"9" * 5000 + b'},"arrays":[]}'),
    "long string field": frame(header(fields={"a": "s" * (LIMITS.max_string + 1)})),
    "long field key": frame(header(fields={"k" * 1000: 1})),
    "not UTF-8": frame(b'{"kind":"\xff\xfe","fields":{},"arrays":[]}'),
    "lone surrogate": frame(b'{"kind":"\\ud800","fields":{},"arrays":[]}'),
    "not JSON": frame(b"{kind: x}"),
    "truncated body": frame(header([["a", "float32", [4]]]), b"\0" * 15),
    "trailing bytes": frame(header([["a", "float32", [4]]]), b"\0" * 17),
    "header length past the end": bytes([1]) + struct.pack("<I", 100) + b"{}",
    "header length past the bound": bytes([1]) + struct.pack("<I", LIMITS.max_header + 1) + b"\0" * 8,
    "wrong version": frame(header(), version=2),
    "empty": b"",
    "one byte": b"\x01",
    "four bytes": b"\x01\0\0\0",
}


@pytest.mark.parametrize("data", CRAFTED.values(), ids=CRAFTED.keys())
def test_every_crafted_message_raises_invalid_message_and_nothing_else(data):
    with pytest.raises(InvalidMessage):
        decode(data)


@pytest.mark.parametrize("data", ["text", None, 7, [1, 2], {"kind": "x"}, 1.5])
def test_input_that_is_not_bytes_raises_invalid_message(data):
    with pytest.raises(InvalidMessage):
        decode(data)


def test_bytes_like_inputs_decode_like_bytes():
    data = encode(Payload("x", {"n": 1}, {"a": np.arange(3, dtype=np.int64)}))
    for view in (bytearray(data), memoryview(data)):
        q = decode(view)
        assert q.fields == {"n": 1} and q.array("a", "int64").tolist() == [0, 1, 2]


def test_a_message_over_the_size_bound_is_refused_before_its_header_is_read():
    data = encode(Payload("x", {}, {"a": np.zeros(100, dtype=np.uint8)}))
    assert decode(data, limits=Limits(max_bytes=len(data))).kind == "x"
    with pytest.raises(InvalidMessage, match="bytes"):
        decode(data, limits=Limits(max_bytes=len(data) - 1))


def test_the_largest_legal_message_shapes_decode():
    """The bounds leave room for what the engine sends: 8 dimensions, 64 arrays, nesting of 16."""
    arrays = {f"a{i}": np.zeros((1,) * LIMITS.max_dims, dtype=np.float32) for i in range(LIMITS.max_arrays)}
    nested: object = 1
    for _ in range(LIMITS.max_depth - 2):  # the header object and `fields` are two levels
        nested = [nested]
    q = decode(encode(Payload("k" * LIMITS.max_name, {"n": nested}, arrays)))
    assert len(q.arrays) == LIMITS.max_arrays and q.fields["n"] == nested


def test_encode_refuses_what_decode_would_refuse():
    for bad in (
        Payload("x", {"a": float("nan")}),
        Payload("x", {"a": 1 << 70}),
        Payload("x", {"a": object()}),
        Payload("x", {3: 1}),  # type: ignore[dict-item]
        Payload("x", {}, {"a": np.zeros((1,) * 9)}),
        Payload("x", {}, {"a": np.zeros(2, dtype=np.complex64)}),
        Payload("k" * 1000),
    ):
        with pytest.raises(InvalidMessage):
            encode(bad)


# -------------------------------------------------------------------------------- typed accessors
def test_typed_accessors_raise_invalid_message_for_a_mistyped_field():
    p = decode(
        encode(
            Payload(
                "secagg",
                {"clipped": "many", "saturated": True, "n": 3, "loss": 0.5, "name": "a", "ok": True},
                {"v": np.zeros(3)},
            )
        )
    )
    for read in (
        lambda: p.integer("clipped"),
        lambda: p.integer("saturated"),  # a boolean is not a count
        lambda: p.integer("loss"),
        lambda: p.integer("n", maximum=2),
        lambda: p.integer("n", minimum=4),
        lambda: p.integer("missing"),
        lambda: p.number("clipped"),
        lambda: p.number("ok"),
        lambda: p.number("loss", maximum=0.1),
        lambda: p.flag("n"),
        lambda: p.text("n"),
        lambda: p.get("saturated", int),
        lambda: p.get("missing"),
        lambda: p.array("v", "float32"),
        lambda: p.array("v", "float64", shape=(4,)),
        lambda: p.array("w"),
        lambda: p.blob("v"),
    ):
        with pytest.raises(InvalidMessage):
            read()
    assert p.integer("n", minimum=0, maximum=3) == 3
    assert p.integer("missing", default=0) == 0
    assert p.number("n") == 3.0 and isinstance(p.number("n"), float) and p.number("loss") == 0.5
    assert p.number("missing", default=None) is None
    assert p.flag("ok") is True and p.text("name") == "a"
    assert p.array("v", "float64", shape=(3,)).shape == (3,)


def test_accessors_check_fields_of_a_payload_built_in_process_too():
    p = Payload("x", {"n": float("inf"), "m": np.int64(2)})
    with pytest.raises(InvalidMessage):
        p.number("n")
    with pytest.raises(InvalidMessage):
        p.integer("m")  # only what could have come off the wire


# ------------------------------------------------------------------------------------- fuzzing
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
dims = st.integers(min_value=-2, max_value=1 << 64) | st.floats() | st.booleans() | st.text(max_size=3)
entries = st.lists(
    st.one_of(
        st.tuples(
            st.text(max_size=5), st.sampled_from(["uint8", "float32", "int64", "bogus"]), st.lists(dims)
        ),
        json_values,
    ),
    max_size=5,
)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_invalid_message(data):
    decode_or_refuse(data)
    decode_or_refuse(b"\x01" + data)


@FUZZ
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=(1 << 32) - 1), st.binary(max_size=64))
def test_random_framed_headers_raise_only_invalid_message(h, n, body):
    decode_or_refuse(bytes([1]) + struct.pack("<I", n) + h + body)
    decode_or_refuse(bytes([1]) + struct.pack("<I", len(h)) + h + body)


@FUZZ
@given(json_values, json_values, entries, st.binary(max_size=64))
def test_random_json_headers_raise_only_invalid_message(kind, fields, table, body):
    for h in (
        {"kind": kind, "fields": fields, "arrays": table},
        {"kind": "x", "fields": fields, "arrays": table},
        {"kind": "x", "fields": {"f": fields}, "arrays": table},
        kind,
    ):
        text = json.dumps(h, allow_nan=True).encode()
        q = decode_or_refuse(frame(text, body))
        if q is not None:  # what decodes is well formed: it encodes again to the same payload
            assert same_payload(decode(encode(q)), q)


payloads = st.builds(
    Payload,
    kind=st.text(min_size=1, max_size=10),
    fields=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=10,
        ),
        max_size=4,
    ),
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=6),
        st.builds(
            lambda dtype, shape, seed: np.random.default_rng(seed).integers(0, 255, size=shape).astype(dtype),
            st.sampled_from(["uint8", "float32", "float64", "int64", "uint64"]),
            st.lists(st.integers(min_value=0, max_value=3), max_size=3).map(tuple),
            st.integers(min_value=0, max_value=1000),
        ),
        max_size=3,
    ),
)


def same_payload(p: Payload, q: Payload) -> bool:
    return (
        p.kind == q.kind
        and p.fields == q.fields
        and p.arrays.keys() == q.arrays.keys()
        and all(
            np.array_equal(p.arrays[k], q.arrays[k]) and p.arrays[k].dtype == q.arrays[k].dtype
            for k in p.arrays
        )
    )


@FUZZ
@given(payloads)
def test_valid_payloads_round_trip(p):
    assert same_payload(decode(encode(p)), p)


@FUZZ
@given(payloads, st.data())
def test_mutated_encodings_raise_only_invalid_message(p, data):
    raw = bytearray(encode(p))
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "header_length"]))
    i = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    if op == "flip":
        raw[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    elif op == "truncate":
        del raw[i:]
    elif op == "insert":
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif op == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=8))
        raw[i : i + len(chunk)] = chunk
    else:
        raw[1:5] = struct.pack("<I", data.draw(st.integers(min_value=0, max_value=(1 << 32) - 1)))
    q = decode_or_refuse(bytes(raw))
    if q is not None:
        assert same_payload(decode(encode(q)), q)


@FUZZ
@given(payloads, st.text(max_size=6), st.sampled_from(["uint8", "float32", "float64", "int64", "uint64"]))
def test_accessors_on_any_payload_raise_only_invalid_message(p, name, dtype):
    q = decode(encode(p))
    for read in (
        lambda: q.integer(name),
        lambda: q.number(name),
        lambda: q.flag(name),
        lambda: q.text(name),
        lambda: q.get(name, (list, dict)),
        lambda: q.array(name, dtype),
        lambda: q.array(name, dtype, shape=(2,)),
        lambda: q.blob(name),
    ):
        with contextlib.suppress(InvalidMessage):
            read()


# -------------------------------------------------------------------------------- bounded memory
def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_what_a_header_claims_is_never_allocated():
    """Shapes claiming terabytes, and 64 arrays of 2**30 elements each, cost what the header costs."""
    claims = [
        frame(header([["a", "float64", [1 << 20, 1 << 20]]]), b"\0" * 1024),
        frame(header([[f"a{i}", "uint64", [1 << 30]] for i in range(LIMITS.max_arrays)]), b"\0" * 1024),
        frame(header([["a", "uint8", [1 << 31] * 8]])),
    ]
    for data in claims:
        peak = peak_bytes(lambda data=data: decode_or_refuse(data))
        assert peak < 1 << 20, peak


def test_no_array_is_built_until_the_whole_table_fits_the_message(monkeypatch):
    """A bad last entry is refused before any view of the body is made."""
    calls = []
    real = np.frombuffer
    monkeypatch.setattr(np, "frombuffer", lambda *a, **k: calls.append(k.get("dtype")) or real(*a, **k))
    data = frame(header([["a", "uint8", [4]], ["b", "uint8", [1 << 40]]]), b"\0" * 4)
    with pytest.raises(InvalidMessage):
        decode(data)
    assert calls and set(calls) == {np.uint8}  # only the header scan's byte views
    data = frame(header([["a", "float32", [1]], ["b", "float32", [1]]]), b"\0" * 8)
    calls.clear()
    decode(data)
    assert sum(d == np.dtype("<f4") for d in calls) == 2  # and the views once the table fits


def test_deep_nesting_is_refused_by_a_scan_not_by_the_recursion_limit():
    """The depth bound holds even when the interpreter could recurse that deep."""
    import sys

    data = frame(b'{"kind":"x","fields":{"a":' + b"[" * 500 + b"]" * 500 + b'},"arrays":[]}')
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(InvalidMessage, match="nest"):
            decode(data)
    finally:
        sys.setrecursionlimit(old)


def test_adversarial_headers_at_the_size_bound_cost_a_bounded_multiple_of_the_header():
    """Brackets, escapes, numbers, containers and keys filling the header: a few megabytes at most."""
    n = LIMITS.max_header - 64
    keys = b",".join(b'"%d":0' % k for k in range(n // 10))
    headers = [
        b"[" * n,
        b'{"kind":"x","fields":{"a":"' + b'\\"' * ((n - 40) // 2) + b'"},"arrays":[]}',
        b'{"kind":"x","fields":{"a":[' + b"0," * ((n - 40) // 2) + b'0]},"arrays":[]}',
        b'{"kind":"x","fields":{},"arrays":[' + b'["a","uint8",[0]],' * ((n - 60) // 18) + b"[]]}",
        b'{"kind":"x","fields":{"a":[' + b"{}," * ((n - 40) // 3) + b'{}]},"arrays":[]}',
        b'{"kind":"x","fields":{"a":{' + keys + b'}},"arrays":[]}',
    ]
    for h in headers:
        assert len(h) <= LIMITS.max_header
        data = frame(h)
        peak = peak_bytes(lambda data=data: decode_or_refuse(data))
        assert peak < 32 * LIMITS.max_header, (h[:40], peak)
