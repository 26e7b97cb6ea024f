"""The engine's own messages between the ServerApp and a node: a typed header plus numeric arrays.

Flower carries each message as one `bytes` value. Inside it: a version byte, a u32 header length, a
UTF-8 JSON header (the step's kind, its scalar fields, and a table of arrays: name, dtype, shape), then
the arrays' raw little-endian bytes in table order. Secure-aggregation messages travel as `uint8`
arrays holding exactly their own `to_bytes()`. Decoding never evaluates anything (no pickle): only the
dtypes below are accepted, and every length is checked, so a malformed payload raises `InvalidMessage`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ...exceptions import InvalidMessage

__all__ = ["VERSION", "Payload", "decode", "encode"]

VERSION = 1
_DTYPES = {"float32": "<f4", "float64": "<f8", "int64": "<i8", "uint64": "<u8", "uint8": "u1"}
_MAX_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class Payload:
    """One engine message.

    Attributes:
        kind: the step, e.g. "setup", "dream", "unmask".
        fields: JSON scalars, lists and dicts.
        arrays: named numpy arrays (dtypes float32, float64, int64, uint64, uint8).
    """

    kind: str
    fields: Mapping[str, object] = field(default_factory=dict)
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    def blob(self, name: str) -> bytes:
        """A uint8 array as bytes (how protocol messages travel)."""
        return self.array(name, "uint8").tobytes()

    def array(self, name: str, dtype: str | None = None) -> np.ndarray:
        """The named array; raises InvalidMessage when missing or of another dtype."""
        try:
            a = self.arrays[name]
        except KeyError:
            raise InvalidMessage(f"{self.kind!r} message lacks array {name!r}") from None
        if dtype is not None and a.dtype != np.dtype(_DTYPES[dtype]):
            raise InvalidMessage(f"{self.kind!r} message: array {name!r} is {a.dtype}, expected {dtype}")
        return a

    def get(self, name: str, kind: type | tuple[type, ...] | None = None):
        """The named field; raises InvalidMessage when missing or of an unexpected type."""
        try:
            v = self.fields[name]
        except KeyError:
            raise InvalidMessage(f"{self.kind!r} message lacks field {name!r}") from None
        if kind is not None and not isinstance(v, kind):
            raise InvalidMessage(f"{self.kind!r} message: field {name!r} has type {type(v).__name__}")
        return v


def encode(payload: Payload) -> bytes:
    """Serialise a payload (see the module docstring for the layout)."""
    table = []
    chunks = []
    for name, arr in payload.arrays.items():
        a = np.asarray(arr)
        dtype_name = next(
            (
                k
                for k, v in _DTYPES.items()
                if np.dtype(v) == a.dtype.newbyteorder("<") or np.dtype(v) == a.dtype
            ),
            None,
        )
        if dtype_name is None:
            raise InvalidMessage(f"array {name!r}: dtype {a.dtype} cannot travel")
        data = np.ascontiguousarray(a, dtype=_DTYPES[dtype_name]).tobytes()
        table.append([name, dtype_name, list(a.shape)])
        chunks.append(data)
    header = json.dumps(
        {"kind": payload.kind, "fields": dict(payload.fields), "arrays": table},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    return bytes([VERSION]) + struct.pack("<I", len(header)) + header + b"".join(chunks)


def decode(data: bytes) -> Payload:
    """Parse bytes made by `encode`; raises InvalidMessage on anything else."""
    if len(data) < 5 or data[0] != VERSION:
        raise InvalidMessage("not an engine message of version 1")
    (n,) = struct.unpack_from("<I", data, 1)
    if n > _MAX_HEADER or 5 + n > len(data):
        raise InvalidMessage("engine message header length out of range")
    try:
        header = json.loads(data[5 : 5 + n].decode())
        kind, fields, table = header["kind"], header["fields"], header["arrays"]
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidMessage(f"malformed engine message header: {err}") from None
    if not isinstance(kind, str) or not isinstance(fields, dict) or not isinstance(table, list):
        raise InvalidMessage("malformed engine message header")
    offset = 5 + n
    arrays: dict[str, np.ndarray] = {}
    for entry in table:
        try:
            name, dtype_name, shape = entry
            dtype = np.dtype(_DTYPES[dtype_name])
            shape = tuple(int(s) for s in shape)
        except (ValueError, KeyError, TypeError):
            raise InvalidMessage(f"malformed array entry {entry!r}") from None
        if any(s < 0 for s in shape) or name in arrays:
            raise InvalidMessage(f"malformed array entry {entry!r}")
        size = math.prod(shape) * dtype.itemsize
        if offset + size > len(data):
            raise InvalidMessage(f"array {name!r} runs past the end of the message")
        arrays[name] = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        offset += size
    if offset != len(data):
        raise InvalidMessage("trailing bytes after the last array")
    return Payload(kind=kind, fields=fields, arrays=arrays)
