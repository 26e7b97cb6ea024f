"""The engine's own messages between the ServerApp and a node: a typed header plus numeric arrays.

Flower carries each message as one `bytes` value. Inside it: a version byte, a u32 header length, a
UTF-8 JSON header (the step's kind, its scalar fields, and a table of arrays: name, dtype, shape), then
the arrays' raw little-endian bytes in table order. Secure-aggregation messages travel as `uint8`
arrays holding exactly their own `to_bytes()`.

Whatever arrives is attacker-controlled (a node's reply, the server's request), so decoding never
evaluates anything (no pickle), accepts only the dtypes below, and bounds every size *before* it
allocates: the whole message, the header, the JSON nesting (scanned before parsing), each string,
integer and float, the number of arrays, their dimensions and element counts, and every array's bytes
against what is left of the message. Arrays are read-only views of the message, made only once the
whole table fits. Any malformed input, and any mistyped field read through the typed accessors,
raises `InvalidMessage` and nothing else, so a caller can drop the sender and go on.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ...exceptions import AbortReason, ConfigError, InvalidMessage, ProtocolAbort

__all__ = [
    "LIMITS",
    "VERSION",
    "Limits",
    "NodeLimits",
    "Payload",
    "decode",
    "encode",
    "session_fields",
    "session_from_fields",
]

VERSION = 1
_DTYPES = {"float32": "<f4", "float64": "<f8", "int64": "<i8", "uint64": "<u8", "uint8": "u1"}
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_INT_DIGITS = 20  # more digits than any int64 has (sign included): refused before int() runs
_HEADER_KEYS = frozenset({"kind", "fields", "arrays"})
_SCAN_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest message `decode` accepts; every bound is checked before anything is allocated.

    Attributes:
        max_bytes: the whole message (a masked vector of 2**27 64-bit words fits).
        max_header: the JSON header (a session of 10**4 clients or a plan of 10**4 vectors fits).
        max_depth: JSON nesting of the header, the header object itself being level 1.
        max_containers: JSON objects and arrays in the header (what costs most to parse and check).
        max_string: characters in any string (field values, keys, names).
        max_name: characters in a message kind, field key or array name.
        max_arrays: arrays per message.
        max_dims: dimensions per array.
        max_elements: elements per array, and so also the largest single dimension.
    """

    max_bytes: int = 1 << 30
    max_header: int = 1 << 18
    max_depth: int = 16
    max_containers: int = 1 << 14
    max_string: int = 1 << 16
    max_name: int = 64
    max_arrays: int = 64
    max_dims: int = 8
    max_elements: int = 1 << 31


LIMITS = Limits()

_MISSING = object()


@dataclass(frozen=True, slots=True)
class _Absent:
    """A field that is not there, carrying the caller's default (which is returned unchecked)."""

    default: object


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(v: object) -> str:
    return type(v).__name__


@dataclass(frozen=True, slots=True)
class Payload:
    """One engine message.

    Attributes:
        kind: the step, e.g. "setup", "dream", "unmask".
        fields: JSON scalars, lists and dicts.
        arrays: named numpy arrays (dtypes float32, float64, int64, uint64, uint8).

    Read a received payload through the typed accessors (`integer`, `number`, `flag`, `text`, `get`,
    `array`, `blob`): each raises `InvalidMessage` for a missing or mistyped value unless a default
    is given, so that reading a reply can fail only in the one way a caller handles.
    """

    kind: str
    fields: Mapping[str, object] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    def _field(self, name: str, default: object) -> object:
        """The field's value, `default` when absent and a default is given; never a type check."""
        try:
            return self.fields[name]
        except (KeyError, TypeError):
            if default is _MISSING:
                raise InvalidMessage(f"{self.kind!r} message lacks field {name!r}") from None
            return _Absent(default)

    def _mistyped(self, name: str, v: object, expected: str) -> InvalidMessage:
        return InvalidMessage(
            f"{self.kind!r} message: field {name!r} is {_type_name(v)}, expected {expected}"
        )

    def _outside(self, name: str, v: object, minimum: object, maximum: object) -> InvalidMessage:
        return InvalidMessage(
            f"{self.kind!r} message: field {name!r} = {v} is outside [{minimum}, {maximum}]"
        )

    def get(self, name: str, kind: type | tuple[type, ...] | None = None, default: object = _MISSING):
        """The named field; raises InvalidMessage when missing or not of `kind` (a bool is no int)."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default
        if kind is not None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
                raise self._mistyped(name, v, " or ".join(k.__name__ for k in kinds))
        return v

    def integer(
        self, name: str, *, default: object = _MISSING, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """An integer field (not a bool, not a float) within [minimum, maximum]."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default  # type: ignore[return-value]
        if not _is_int(v):
            raise self._mistyped(name, v, "an integer")
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):  # type: ignore[operator]
            raise self._outside(name, v, minimum, maximum)
        return v  # type: ignore[return-value]

    def number(
        self,
        name: str,
        *,
        default: object = _MISSING,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A finite number (an integer is accepted, a bool is not) within [minimum, maximum], as float."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default  # type: ignore[return-value]
        if not (_is_int(v) or isinstance(v, float)):
            raise self._mistyped(name, v, "a number")
        if _is_int(v) and not _INT_MIN <= v <= _INT_MAX:  # type: ignore[operator]
            raise InvalidMessage(f"{self.kind!r} message: field {name!r} is past 64 bits")
        x = float(v)  # type: ignore[arg-type]
        if not math.isfinite(x):
            raise InvalidMessage(f"{self.kind!r} message: field {name!r} is not finite")
        if (minimum is not None and x < minimum) or (maximum is not None and x > maximum):
            raise self._outside(name, x, minimum, maximum)
        return x

    def flag(self, name: str, *, default: object = _MISSING) -> bool:
        """A boolean field."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default  # type: ignore[return-value]
        if not isinstance(v, bool):
            raise self._mistyped(name, v, "a boolean")
        return v

    def text(self, name: str, *, default: object = _MISSING) -> str:
        """A string field."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default  # type: ignore[return-value]
        if not isinstance(v, str):
            raise self._mistyped(name, v, "a string")
        return v

    def integers(
        self,
        name: str,
        *,
        max_len: int,
        default: object = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> tuple[int, ...]:
        """At most `max_len` integers (length checked first), each within [minimum, maximum]."""
        v = self._field(name, default)
        if isinstance(v, _Absent):
            return v.default  # type: ignore[return-value]
        if not isinstance(v, list | tuple):
            raise self._mistyped(name, v, "a list of integers")
        if len(v) > max_len:
            raise InvalidMessage(
                f"{self.kind!r} message: field {name!r} has {len(v)} entries, more than {max_len}"
            )
        lo = _INT_MIN if minimum is None else minimum
        hi = _INT_MAX if maximum is None else maximum
        if not all(_is_int(x) and lo <= x <= hi for x in v):
            raise InvalidMessage(f"{self.kind!r} message: field {name!r} must hold integers in [{lo}, {hi}]")
        return tuple(v)

    def array(
        self,
        name: str,
        dtype: str | None = None,
        *,
        shape: tuple[int, ...] | None = None,
        finite: bool = False,
    ) -> np.ndarray:
        """The named array; raises InvalidMessage when it is missing or of another dtype or shape.

        With `finite`, a float array holding a NaN or an infinity is refused too.
        """
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"no wire dtype {dtype!r}; choose one of {sorted(_DTYPES)}")
        try:
            a = self.arrays[name]
        except (KeyError, TypeError):
            raise InvalidMessage(f"{self.kind!r} message lacks array {name!r}") from None
        if not isinstance(a, np.ndarray):
            raise InvalidMessage(f"{self.kind!r} message: {name!r} is not an array")
        if dtype is not None and a.dtype != np.dtype(_DTYPES[dtype]):
            raise InvalidMessage(f"{self.kind!r} message: array {name!r} is {a.dtype}, expected {dtype}")
        if shape is not None and a.shape != tuple(shape):
            raise InvalidMessage(
                f"{self.kind!r} message: array {name!r} has shape {a.shape}, expected {tuple(shape)}"
            )
        if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
            raise InvalidMessage(f"{self.kind!r} message: array {name!r} holds a NaN or an infinity")
        return a

    def blob(self, name: str) -> bytes:
        """A one-dimensional uint8 array as bytes (how protocol messages travel)."""
        a = self.array(name, "uint8")
        if a.ndim != 1:
            raise InvalidMessage(f"{self.kind!r} message: blob {name!r} has shape {a.shape}")
        return a.tobytes()


# ---------------------------------------------------------------------------------- JSON bounds
def _json_shape(text: bytes, limits: Limits) -> tuple[int, int]:
    """(deepest nesting, number of objects and arrays) of JSON `text`, without parsing it.

    Brackets inside strings do not count.
    A quote delimits a string unless an odd run of backslashes precedes it. In valid JSON this is
    exact; on invalid input it is exact up to the first error, which is as far as a parser gets.
    Vectorised over chunks of the text (state carried across), so the scan costs a few megabytes
    whatever the header's size, and it stops at the first chunk past either bound.
    """
    depth = deepest = containers = 0
    in_string = 0  # parity of the string delimiters so far
    run = 0  # backslashes that end the text scanned so far
    for start in range(0, len(text), _SCAN_CHUNK):
        b = np.frombuffer(text, dtype=np.uint8, count=min(_SCAN_CHUNK, len(text) - start), offset=start)
        idx = np.arange(b.size, dtype=np.int32)
        backslash = b == 0x5C
        # The last position that is not a backslash, at or before each one (before the chunk: -1 - run).
        last_plain = np.maximum.accumulate(np.where(backslash, np.int32(-1 - run), idx))
        run_before = np.empty(b.size, dtype=np.int32)  # backslashes right before each position
        run_before[0] = run
        run_before[1:] = idx[:-1] - last_plain[:-1]
        run = int(idx[-1] - last_plain[-1])
        delimiter = (b == 0x22) & (run_before % 2 == 0)
        seen = np.cumsum(delimiter, dtype=np.int32)  # delimiters up to and including each position
        outside = (seen - delimiter + in_string) % 2 == 0
        in_string = int(seen[-1] + in_string) % 2
        opens = ((b == 0x5B) | (b == 0x7B)) & outside
        steps = opens.astype(np.int8) - (((b == 0x5D) | (b == 0x7D)) & outside)
        levels = depth + np.cumsum(steps, dtype=np.int32)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        containers += int(np.count_nonzero(opens))
        if deepest > limits.max_depth or containers > limits.max_containers:
            break
    return deepest, containers


def _reject_constant(name: str):
    raise InvalidMessage(f"engine message header holds {name}")


def _parse_int(text: str) -> int:
    if len(text) > _INT_DIGITS:
        raise InvalidMessage("engine message header holds an integer past 64 bits")
    return int(text)


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise InvalidMessage("engine message header repeats a key")
    return d


def _check_value(value: object, limits: Limits, depth: int, where: str) -> None:
    """Refuse anything but bounded JSON values: finite floats, 64-bit ints, short valid strings.

    Iterative (no recursion on hostile input), with exact-type fast paths: a header at the size
    bound holds some 10**5 values, and each is looked at once.
    """
    max_depth, max_string = limits.max_depth, limits.max_string
    stack = [(value, depth)]
    while stack:
        container, d = stack.pop()
        if d > max_depth:
            raise InvalidMessage(f"{where}: nested deeper than {max_depth}")
        if isinstance(container, dict):
            for k in container:
                if type(k) is not str:
                    raise InvalidMessage(f"{where}: key {k!r} is not a string")
                if len(k) > max_string or not k.isascii():
                    _check_string(k, max_string, where)
            items = container.values()
        else:
            items = container  # type: ignore[assignment]
        for v in items:
            t = type(v)
            if t is str:
                if len(v) > max_string or not v.isascii():
                    _check_string(v, max_string, where)
            elif t is int:
                if not _INT_MIN <= v <= _INT_MAX:
                    raise InvalidMessage(f"{where}: integer past 64 bits")
            elif t is float:
                if v - v != 0.0:  # inf and nan (inf - inf is nan)
                    raise InvalidMessage(f"{where}: float not finite")
            elif t is list or t is dict or t is tuple:
                stack.append((v, d + 1))
            elif v is None or t is bool:
                continue
            else:
                _check_other(v, stack, d, limits, where)


def _check_other(v: object, stack: list, d: int, limits: Limits, where: str) -> None:
    """Subclasses of the JSON types (np.float64, IntEnum) as json.dumps writes them; nothing else."""
    if isinstance(v, bool):
        return
    if isinstance(v, int):
        if not _INT_MIN <= v <= _INT_MAX:
            raise InvalidMessage(f"{where}: integer past 64 bits")
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidMessage(f"{where}: float not finite")
    elif isinstance(v, str):
        _check_string(v, limits.max_string, where)
    elif isinstance(v, list | tuple | dict):
        stack.append((v, d + 1))
    else:
        raise InvalidMessage(f"{where}: {_type_name(v)} cannot travel")


def _check_string(s: str, max_len: int, where: str) -> None:
    if len(s) > max_len:
        raise InvalidMessage(f"{where}: a string longer than {max_len}")
    if not s.isascii():
        try:
            s.encode()
        except UnicodeEncodeError:
            raise InvalidMessage(f"{where}: a string that is not valid Unicode") from None


def _check_name(name: object, limits: Limits, what: str) -> str:
    if not isinstance(name, str) or not 0 < len(name) <= limits.max_name:
        raise InvalidMessage(f"{what} must be a string of 1 to {limits.max_name} characters")
    _check_string(name, limits.max_name, what)
    return name


def _check_header(kind: object, fields: object, limits: Limits) -> None:
    _check_name(kind, limits, "message kind")
    if not isinstance(fields, dict):
        raise InvalidMessage(f"message fields must be an object, got {_type_name(fields)}")
    for key in fields:
        _check_name(key, limits, "field key")
    # The header object is level 1, `fields` level 2, its values level 3.
    _check_value(fields, limits, 2, f"{kind!r} message fields")


def _array_entry(entry: object, limits: Limits) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """One table entry, checked: (name, dtype, shape, byte size); sizes bounded before any product."""
    if not isinstance(entry, list) or len(entry) != 3:
        raise InvalidMessage("an array entry must be [name, dtype, shape]")
    name, dtype_name, shape = entry
    _check_name(name, limits, "array name")
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise InvalidMessage(f"array {name!r}: dtype must be one of {sorted(_DTYPES)}")
    if not isinstance(shape, list) or len(shape) > limits.max_dims:
        raise InvalidMessage(f"array {name!r}: shape must be a list of at most {limits.max_dims} sizes")
    if not all(_is_int(s) and 0 <= s <= limits.max_elements for s in shape):
        raise InvalidMessage(f"array {name!r}: every size must be an integer in [0, {limits.max_elements}]")
    count = math.prod(shape)  # at most max_dims factors each <= max_elements: a small exact int
    if count > limits.max_elements:
        raise InvalidMessage(f"array {name!r}: more than {limits.max_elements} elements")
    dtype = np.dtype(_DTYPES[dtype_name])
    return name, dtype, tuple(shape), count * dtype.itemsize


# ------------------------------------------------------------------------------- encode / decode
def _dtype_name(a: np.ndarray) -> str | None:
    for k, v in _DTYPES.items():
        if np.dtype(v) == a.dtype or np.dtype(v) == a.dtype.newbyteorder("<"):
            return k
    return None


def encode(payload: Payload, *, limits: Limits = LIMITS) -> bytes:
    """Serialise a payload (see the module docstring for the layout).

    Raises:
        InvalidMessage: the payload holds something `decode` would refuse (so it is never sent).
    """
    fields = dict(payload.fields)
    _check_header(payload.kind, fields, limits)
    if len(payload.arrays) > limits.max_arrays:
        raise InvalidMessage(f"more than {limits.max_arrays} arrays")
    table = []
    chunks = []
    for name, arr in payload.arrays.items():
        _check_name(name, limits, "array name")
        a = np.asarray(arr)
        dtype_name = _dtype_name(a)
        if dtype_name is None:
            raise InvalidMessage(f"array {name!r}: dtype {a.dtype} cannot travel")
        entry = [name, dtype_name, [int(s) for s in a.shape]]
        _array_entry(entry, limits)
        table.append(entry)
        chunks.append(np.ascontiguousarray(a, dtype=_DTYPES[dtype_name]).tobytes())
    header = json.dumps(
        {"kind": payload.kind, "fields": fields, "arrays": table}, separators=(",", ":"), allow_nan=False
    ).encode()
    if len(header) > limits.max_header:
        raise InvalidMessage(f"engine message header of {len(header)} bytes exceeds {limits.max_header}")
    data = bytes([VERSION]) + struct.pack("<I", len(header)) + header + b"".join(chunks)
    if len(data) > limits.max_bytes:
        raise InvalidMessage(f"engine message of {len(data)} bytes exceeds {limits.max_bytes}")
    return data


def decode(data: object, *, limits: Limits = LIMITS) -> Payload:
    """Parse bytes made by `encode`; raises InvalidMessage (only) on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidMessage(f"an engine message is bytes, got {_type_name(data)}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > limits.max_bytes:
        raise InvalidMessage(f"engine message of {size} bytes exceeds {limits.max_bytes}")
    data = bytes(data)  # a copy only for bytearray and memoryview; the arrays are views of it
    if len(data) > limits.max_bytes:
        raise InvalidMessage(f"engine message of {len(data)} bytes exceeds {limits.max_bytes}")
    if len(data) < 5 or data[0] != VERSION:
        raise InvalidMessage(f"not an engine message of version {VERSION}")
    (n,) = struct.unpack_from("<I", data, 1)
    if n > limits.max_header or 5 + n > len(data):
        raise InvalidMessage("engine message header length out of range")
    text = data[5 : 5 + n]
    depth, containers = _json_shape(text, limits)
    if depth > limits.max_depth:
        raise InvalidMessage(f"engine message header nested deeper than {limits.max_depth}")
    if containers > limits.max_containers:
        raise InvalidMessage(
            f"engine message header holds more than {limits.max_containers} objects and arrays"
        )
    try:
        header = json.loads(
            text.decode(),
            object_pairs_hook=_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidMessage(f"malformed engine message header: {err}") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        raise InvalidMessage(f"an engine message header is an object of exactly {sorted(_HEADER_KEYS)}")
    kind, fields, table = header["kind"], header["fields"], header["arrays"]
    _check_header(kind, fields, limits)
    if not isinstance(table, list) or len(table) > limits.max_arrays:
        raise InvalidMessage(f"the array table must be a list of at most {limits.max_arrays} entries")
    entries = [_array_entry(e, limits) for e in table]
    if len({e[0] for e in entries}) != len(entries):
        raise InvalidMessage("an array name repeats")
    if 5 + n + sum(e[3] for e in entries) != len(data):
        raise InvalidMessage("the arrays' sizes do not add up to the message length")
    offset = 5 + n
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape, size in entries:
        count = size // dtype.itemsize
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += size
    return Payload(kind=kind, fields=fields, arrays=arrays)


# ------------------------------------------------------------------------- session parameters
_DEFAULT_MAX_CLIENTS = 1000


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """The largest session a node agrees to join, from its own node config, never from the server.

    Attributes:
        max_clients: most clients in one secure-aggregation session (node config ``max-clients``).
            Joining a complete-graph session costs a node O(n**2) time and memory: `start_client`
            took 3.3 s and 1 GiB for 4000 clients, 0.23 s and 63 MiB for 1000 (the default),
            0.02 s and 6 MiB for 256, on a shared 2-core machine.
    """

    max_clients: int = _DEFAULT_MAX_CLIENTS

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeLimits:
        """Read ``max-clients`` (an integer >= 2) if the node config sets it.

        Raises:
            ConfigError: a value that is not an integer of at least 2.
        """
        value = node_config.get("max-clients", _DEFAULT_MAX_CLIENTS)
        if not _is_int(value) or value < 2:  # type: ignore[operator]
            raise ConfigError(f"node config max-clients must be an integer >= 2, got {value!r}")
        return cls(max_clients=int(value))  # type: ignore[arg-type]


def session_fields(config) -> dict:
    """The wire form of a `SessionConfig` (what `session_from_fields` reads back)."""
    fields = {
        "round": config.round_index,
        "client_ids": list(config.client_ids),
        "threshold": config.threshold,
        "vector_lengths": list(config.vector_lengths),
        "bits": config.bits,
        "graph": config.graph.value,
        "degree": config.degree,
        "corrupt": config.corrupt,
        "min_survivors": config.min_survivors,
        "malicious": bool(config.malicious),
        "verify_keys": [k.hex() for k in config.verify_keys or ()],
    }
    if config.dropout_rate is not None:  # the semi-honest rule's assumption, part of the digest
        fields["dropout_rate"] = config.dropout_rate
    return fields


def session_from_fields(fields: object, limits: NodeLimits = NodeLimits()):
    """Parse the server's session parameters, refusing a session larger than the node allows.

    Every size is checked on the parsed JSON list before any tuple, graph or key is built, so a
    server that names 4000 clients costs the node a length check, not a 4000-node graph.

    Raises:
        InvalidMessage: a missing or mistyped parameter, or one the session config refuses.
        ProtocolAbort: (FORBIDDEN_REQUEST) more clients than the node's ``max-clients``.
    """
    from ...secagg.config import MAX_CLIENT_ID, GraphKind, SessionConfig

    if not isinstance(fields, Mapping):
        raise InvalidMessage(f"session parameters must be an object, got {_type_name(fields)}")
    ids = fields.get("client_ids")
    if isinstance(ids, list | tuple) and len(ids) > limits.max_clients:
        raise ProtocolAbort(
            AbortReason.FORBIDDEN_REQUEST,
            f"a session of {len(ids)} clients; this node's max-clients is {limits.max_clients}",
        )
    p = Payload("session", fields)
    client_ids = p.integers("client_ids", max_len=limits.max_clients, minimum=0, maximum=MAX_CLIENT_ID)
    # One planned vector per dream step and two more.
    vector_lengths = p.integers("vector_lengths", max_len=1 << 16, minimum=1, maximum=(1 << 32) - 1)
    malicious = fields.get("malicious", False)
    if not isinstance(malicious, bool):
        raise InvalidMessage(f"'malicious' must be true or false, got {_type_name(malicious)}")
    raw_keys = fields.get("verify_keys", [])
    if not isinstance(raw_keys, list) or len(raw_keys) > len(client_ids):
        raise InvalidMessage("'verify_keys' must be a list of at most one key per client")
    verify_keys = []
    for key in raw_keys:
        if not isinstance(key, str) or len(key) != 64:
            raise InvalidMessage("a verify key must be 64 hex digits")
        try:
            verify_keys.append(bytes.fromhex(key))
        except ValueError:
            raise InvalidMessage("a verify key must be 64 hex digits") from None
    try:
        dropout_rate = fields.get("dropout_rate")
        return SessionConfig(
            malicious=malicious,
            verify_keys=tuple(verify_keys),
            dropout_rate=None if dropout_rate is None else p.number("dropout_rate", minimum=0.0, maximum=1.0),
            round_index=p.integer("round", minimum=0, maximum=(1 << 32) - 1),
            client_ids=client_ids,
            threshold=p.integer("threshold", minimum=0, maximum=len(client_ids)),
            vector_lengths=vector_lengths,
            bits=p.integer("bits", minimum=0, maximum=64),
            graph=GraphKind(p.text("graph")),
            degree=p.integer("degree", minimum=0, maximum=len(client_ids)),
            corrupt=p.integer("corrupt", minimum=0, maximum=len(client_ids)),
            min_survivors=p.integer("min_survivors", minimum=0, maximum=len(client_ids)),
        )
    except (ConfigError, ValueError) as err:
        raise InvalidMessage(f"malformed session parameters: {err}") from None
