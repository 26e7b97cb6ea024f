"""Wire messages of the secure-aggregation protocol, one frozen dataclass per kind.

Every encoding starts with a version byte and a kind byte, then the fields in a fixed order:
integers are unsigned big-endian (``u8``/``u32``), variable-length byte strings carry a ``u32`` length
prefix, lists carry a ``u32`` count. Decoding checks the version, the kind, every length and every
range, and refuses trailing bytes; anything wrong raises `InvalidMessage`, never a bare
`struct.error`/`IndexError`. Constructors check field types too, so an ill-typed message cannot be
built in memory either. Byte layouts are spelled out in protocols/secagg.md.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import numpy as np

from ..crypto.shamir import Share
from ..exceptions import AbortReason, InvalidMessage
from .config import MAX_CLIENT_ID, SUPPORTED_BITS
from .encoding import word_bytes, words_from_bytes, words_to_bytes

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SERVER_ID",
    "SIGNATURE_BYTES",
    "VERSION",
    "AbortMessage",
    "AdvertiseKeys",
    "ConsistencyProof",
    "ConsistencySignature",
    "DealerEvidence",
    "ExclusionRequest",
    "KeysBroadcast",
    "MaskedInput",
    "Message",
    "MessageKind",
    "PairwiseKeys",
    "ShareKeys",
    "SharesDelivery",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode_message",
]

VERSION = 1
#: The sender id the server uses in its abort messages; never a client id.
SERVER_ID = 0xFFFFFFFF
PUBLIC_KEY_BYTES = 32
DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
#: Abort details are for people; bounded so that an abort cannot carry a payload.
MAX_DETAIL_CHARS = 1000


class MessageKind(enum.IntEnum):
    """The kind byte that follows the version byte (table in protocols/secagg.md)."""

    ADVERTISE_KEYS = 1
    KEYS_BROADCAST = 2
    SHARE_KEYS = 3
    SHARES_DELIVERY = 4
    MASKED_INPUT = 5
    UNMASK_REQUEST = 6
    CONSISTENCY_SIGNATURE = 7
    CONSISTENCY_PROOF = 8
    UNMASK_RESPONSE = 9
    ABORT = 10
    EXCLUSION_REQUEST = 11
    PAIRWISE_KEYS = 12


# --------------------------------------------------------------------------- byte helpers


class _Writer:
    __slots__ = ("_parts",)

    def __init__(self, kind: MessageKind) -> None:
        self._parts: list[bytes] = [bytes((VERSION, kind))]

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack(">B", value))

    def u32(self, value: int) -> None:
        self._parts.append(struct.pack(">I", value))

    def raw(self, data: bytes) -> None:
        self._parts.append(data)

    def blob(self, data: bytes) -> None:
        self.u32(len(data))
        self._parts.append(data)

    def ids(self, values: Sequence[int]) -> None:
        self.u32(len(values))
        self._parts.append(b"".join(struct.pack(">I", v) for v in values))

    def done(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, kind: MessageKind) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidMessage(f"expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0
        if len(self._data) < 2:
            raise InvalidMessage("message shorter than its header")
        if self._data[0] != VERSION:
            raise InvalidMessage(f"unsupported version {self._data[0]}, expected {VERSION}")
        if self._data[1] != kind:
            raise InvalidMessage(f"kind byte {self._data[1]} is not {kind.name} ({int(kind)})")
        self._pos = 2

    def raw(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise InvalidMessage(f"truncated: needed {n} bytes at offset {self._pos}")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.raw(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.raw(4))[0]

    def blob(self) -> bytes:
        return self.raw(self.u32())

    def count(self, item_size: int) -> int:
        """A list count, refused before allocation if the rest of the message cannot hold it."""
        n = self.u32()
        if n * item_size > len(self._data) - self._pos:
            raise InvalidMessage(f"count {n} exceeds the remaining {len(self._data) - self._pos} bytes")
        return n

    def ids(self) -> tuple[int, ...]:
        n = self.count(4)
        return struct.unpack(f">{n}I", self.raw(4 * n)) if n else ()

    def end(self) -> None:
        if self._pos != len(self._data):
            raise InvalidMessage(f"{len(self._data) - self._pos} trailing bytes")


def _check_id(value: object, what: str, *, allow_server: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidMessage(f"{what} must be an int, got {type(value).__name__}")
    top = SERVER_ID if allow_server else MAX_CLIENT_ID
    if not 0 <= value <= top:
        raise InvalidMessage(f"{what} {value} out of range [0, {top}]")


def _check_u32(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        raise InvalidMessage(f"{what} must be an unsigned 32-bit int, got {value!r}")


def _check_bytes(value: object, what: str, length: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise InvalidMessage(f"{what} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise InvalidMessage(f"{what} must be {length} bytes, got {len(value)}")


def _check_tuple(value: object, what: str) -> None:
    if not isinstance(value, tuple):
        raise InvalidMessage(f"{what} must be a tuple, got {type(value).__name__}")


def _check_pairs(value: object, what: str, check_second: Callable[[object, str], None]) -> None:
    _check_tuple(value, what)
    for item in value:  # type: ignore[union-attr]
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidMessage(f"{what} must hold (id, value) pairs")
        _check_id(item[0], f"{what} id")
        check_second(item[1], f"{what} value")


def _check_share(value: object, what: str) -> None:
    if not isinstance(value, Share):
        raise InvalidMessage(f"{what} must be a Share, got {type(value).__name__}")


def _check_signature(value: object) -> None:
    _check_bytes(value, "signature")
    if len(value) not in (0, SIGNATURE_BYTES):  # type: ignore[arg-type]
        raise InvalidMessage(f"signature must be empty or {SIGNATURE_BYTES} bytes")


def _decode_share(data: bytes) -> Share:
    try:
        return Share.from_bytes(data)
    except InvalidMessage:
        raise
    except Exception as exc:  # every malformed share is one kind of failure to the caller
        raise InvalidMessage(f"malformed share: {exc}") from None


M = TypeVar("M", bound="Message")


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages: `to_bytes` / `from_bytes` with version and kind bytes."""

    KIND: ClassVar[MessageKind]

    def to_bytes(self) -> bytes:
        w = _Writer(self.KIND)
        self._encode(w)
        return w.done()

    @classmethod
    def from_bytes(cls: type[M], data: bytes) -> M:
        """Decode and validate. Raises: InvalidMessage for any malformed input."""
        r = _Reader(data, cls.KIND)
        msg = cls._decode(r)
        r.end()
        return msg

    def _encode(self, w: _Writer) -> None:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def _decode(cls: type[M], r: _Reader) -> M:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


# --------------------------------------------------------------------------- round 0


@dataclass(frozen=True, slots=True)
class AdvertiseKeys(Message):
    """Client -> server, round 0: the encryption key, and per planned vector j the mask public key
    s_pk^j and a commitment to the self-mask seed b^j (so a rebuilt b^j can be checked)."""

    KIND: ClassVar[MessageKind] = MessageKind.ADVERTISE_KEYS
    sender: int
    encryption_key: bytes
    mask_keys: tuple[bytes, ...]
    seed_commitments: tuple[bytes, ...]
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_bytes(self.encryption_key, "encryption_key", PUBLIC_KEY_BYTES)
        _check_tuple(self.mask_keys, "mask_keys")
        _check_tuple(self.seed_commitments, "seed_commitments")
        if len(self.mask_keys) != len(self.seed_commitments) or not self.mask_keys:
            raise InvalidMessage("one mask key and one seed commitment per vector, at least one vector")
        for k in self.mask_keys:
            _check_bytes(k, "mask key", PUBLIC_KEY_BYTES)
        for c in self.seed_commitments:
            _check_bytes(c, "seed commitment", DIGEST_BYTES)
        _check_signature(self.signature)

    @property
    def num_vectors(self) -> int:
        return len(self.mask_keys)

    def signed_bytes(self, config_digest: bytes) -> bytes:
        """What the Ed25519 signature covers: the config digest and every advertised field."""
        return b"codream/v1/advertise" + config_digest + self._body()

    def _body(self) -> bytes:
        parts = [struct.pack(">I", self.sender), self.encryption_key, struct.pack(">I", self.num_vectors)]
        parts.extend(self.mask_keys)
        parts.extend(self.seed_commitments)
        return b"".join(parts)

    def _encode(self, w: _Writer) -> None:
        w.raw(self._body())
        w.u8(len(self.signature))
        w.raw(self.signature)

    @classmethod
    def _decode(cls, r: _Reader) -> AdvertiseKeys:
        sender = r.u32()
        encryption_key = r.raw(PUBLIC_KEY_BYTES)
        n = r.count(PUBLIC_KEY_BYTES + DIGEST_BYTES)
        mask_keys = tuple(r.raw(PUBLIC_KEY_BYTES) for _ in range(n))
        commitments = tuple(r.raw(DIGEST_BYTES) for _ in range(n))
        signature = r.raw(r.u8())
        return cls(sender, encryption_key, mask_keys, commitments, signature)


@dataclass(frozen=True, slots=True)
class KeysBroadcast(Message):
    """Server -> client, end of round 0: roster entries (id and SHA-256 of the advertisement) and the
    full advertisements of the recipient's neighbours.

    With `roster_digest` empty, `roster` is the whole roster of everyone who advertised, and the
    client computes its digest itself (malicious mode needs this: its quorum counts the roster).
    Otherwise (semi-honest mode) `roster` holds only the recipient's and its neighbours' entries,
    and `roster_size` and `roster_digest` (`keys.roster_digest`) describe the whole roster: the
    session id hashes the digest, so a client still gets its session id, and a server that sends
    O(k) instead of O(n) per client sends O(n k) in all.
    """

    KIND: ClassVar[MessageKind] = MessageKind.KEYS_BROADCAST
    roster: tuple[tuple[int, bytes], ...]
    advertisements: tuple[AdvertiseKeys, ...]
    roster_size: int = 0
    roster_digest: bytes = b""

    def __post_init__(self) -> None:
        _check_pairs(self.roster, "roster", lambda v, w: _check_bytes(v, w, DIGEST_BYTES))
        _check_tuple(self.advertisements, "advertisements")
        for a in self.advertisements:
            if not isinstance(a, AdvertiseKeys):
                raise InvalidMessage("advertisements must hold AdvertiseKeys messages")
        _check_u32(self.roster_size, "roster_size")
        _check_bytes(self.roster_digest, "roster_digest")
        if len(self.roster_digest) not in (0, DIGEST_BYTES):
            raise InvalidMessage(f"roster_digest must be empty or {DIGEST_BYTES} bytes")
        if not self.roster_digest and self.roster_size not in (0, len(self.roster)):
            raise InvalidMessage("a whole roster's size is its length")

    @property
    def whole(self) -> bool:
        """Whether `roster` is the whole roster (no digest given)."""
        return not self.roster_digest

    def _encode(self, w: _Writer) -> None:
        w.u32(len(self.roster))
        for cid, digest in self.roster:
            w.u32(cid)
            w.raw(digest)
        w.u32(len(self.advertisements))
        for a in self.advertisements:
            w.blob(a.to_bytes())
        w.u32(self.roster_size)
        w.u8(len(self.roster_digest))
        w.raw(self.roster_digest)

    @classmethod
    def _decode(cls, r: _Reader) -> KeysBroadcast:
        roster = tuple((r.u32(), r.raw(DIGEST_BYTES)) for _ in range(r.count(4 + DIGEST_BYTES)))
        adverts = tuple(AdvertiseKeys.from_bytes(r.blob()) for _ in range(r.count(4)))
        size = r.u32()
        return cls(roster, adverts, size, r.raw(r.u8()))


# --------------------------------------------------------------------------- round 1


def _check_digest_lists(value: object, what: str) -> None:
    """(id, tuple of 32-byte digests) pairs."""

    def digests(v: object, w: str) -> None:
        _check_tuple(v, w)
        for d in v:  # type: ignore[union-attr]
            _check_bytes(d, w, DIGEST_BYTES)

    _check_pairs(value, what, digests)


def _write_digest_lists(w: _Writer, pairs: tuple[tuple[int, tuple[bytes, ...]], ...]) -> None:
    w.u32(len(pairs))
    for cid, digests in pairs:
        w.u32(cid)
        w.u32(len(digests))
        w.raw(b"".join(digests))


def _read_digest_lists(r: _Reader) -> tuple[tuple[int, tuple[bytes, ...]], ...]:
    out = []
    for _ in range(r.count(8)):
        cid = r.u32()
        out.append((cid, tuple(r.raw(DIGEST_BYTES) for _ in range(r.count(DIGEST_BYTES)))))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ShareKeys(Message):
    """Client -> server, round 1: one AES-GCM ciphertext per neighbour holding, for every vector,
    the neighbour's shares of the sender's b^j and s_sk^j; and for every holder (the neighbours
    and the sender itself) the 2J commitments to its shares (`keys.share_commitments`)."""

    KIND: ClassVar[MessageKind] = MessageKind.SHARE_KEYS
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]
    commitments: tuple[tuple[int, tuple[bytes, ...]], ...] = ()
    signature: bytes = b""

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_pairs(self.ciphertexts, "ciphertexts", _check_bytes)
        _check_digest_lists(self.commitments, "commitments")
        _check_signature(self.signature)

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(len(self.ciphertexts))
        for recipient, blob in self.ciphertexts:
            w.u32(recipient)
            w.blob(blob)
        _write_digest_lists(w, self.commitments)
        w.u8(len(self.signature))
        w.raw(self.signature)

    @classmethod
    def _decode(cls, r: _Reader) -> ShareKeys:
        sender = r.u32()
        ciphertexts = tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
        commitments = _read_digest_lists(r)
        return cls(sender, ciphertexts, commitments, r.raw(r.u8()))


@dataclass(frozen=True, slots=True)
class SharesDelivery(Message):
    """Server -> client, end of round 1: the ciphertexts addressed to the recipient, by sender, and
    each sender's commitments to the recipient's shares. The senders are exactly the neighbours the
    recipient must mask with."""

    KIND: ClassVar[MessageKind] = MessageKind.SHARES_DELIVERY
    ciphertexts: tuple[tuple[int, bytes], ...]
    commitments: tuple[tuple[int, tuple[bytes, ...]], ...] = ()

    def __post_init__(self) -> None:
        _check_pairs(self.ciphertexts, "ciphertexts", _check_bytes)
        _check_digest_lists(self.commitments, "commitments")

    def _encode(self, w: _Writer) -> None:
        w.u32(len(self.ciphertexts))
        for sender, blob in self.ciphertexts:
            w.u32(sender)
            w.blob(blob)
        _write_digest_lists(w, self.commitments)

    @classmethod
    def _decode(cls, r: _Reader) -> SharesDelivery:
        ciphertexts = tuple((r.u32(), r.blob()) for _ in range(r.count(8)))
        return cls(ciphertexts, _read_digest_lists(r))


# --------------------------------------------------------------------------- round 2


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput(Message):
    """Client -> server, round 2 of vector j: the masked words y^j, packed little-endian, and the
    digest of the context (the broadcast) the client computed them from (`keys.context_digest`),
    which keys its pairwise masks of this vector."""

    KIND: ClassVar[MessageKind] = MessageKind.MASKED_INPUT
    sender: int
    vector: int
    bits: int
    words: np.ndarray = field(repr=False)
    context: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_u32(self.vector, "vector")
        _check_bytes(self.context, "context", DIGEST_BYTES)
        if self.bits not in SUPPORTED_BITS:
            raise InvalidMessage(f"bits {self.bits} not supported")
        if not isinstance(self.words, np.ndarray) or self.words.dtype != np.uint64 or self.words.ndim != 1:
            raise InvalidMessage("words must be a one-dimensional uint64 array")
        if self.bits < 64 and self.words.size and int(self.words.max()) >> self.bits:
            raise InvalidMessage(f"a word does not fit in {self.bits} bits")

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(self.vector)
        w.raw(self.context)
        w.u8(self.bits)
        w.u32(self.words.size)
        w.raw(words_to_bytes(self.words, self.bits))

    @classmethod
    def _decode(cls, r: _Reader) -> MaskedInput:
        sender, vector, context, bits = r.u32(), r.u32(), r.raw(DIGEST_BYTES), r.u8()
        if bits not in SUPPORTED_BITS:
            raise InvalidMessage(f"bits {bits} not supported")
        count = r.count(word_bytes(bits))
        words = words_from_bytes(r.raw(count * word_bytes(bits)), bits, count)
        return cls(sender, vector, bits, words, context)


# --------------------------------------------------------------------------- round 3


@dataclass(frozen=True, slots=True)
class UnmaskRequest(Message):
    """Server -> client, round 3 of vector j: who is alive (their y^j arrived) and who dropped
    (shared keys but sent no y^j). The two lists must be disjoint.

    `survivors` counts every client alive for vector j. In malicious mode the lists are whole
    (every alive and every dropped client: the consistency signature covers them, and
    `survivors` is the length of `alive`). In semi-honest mode a client gets only the entries of
    itself and its neighbours, O(k) instead of O(n), and checks n_min against `survivors`.
    """

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_REQUEST
    vector: int
    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    survivors: int = -1

    def __post_init__(self) -> None:
        _check_u32(self.vector, "vector")
        for name in ("alive", "dropped"):
            ids = getattr(self, name)
            _check_tuple(ids, name)
            for cid in ids:
                _check_id(cid, f"{name} id")
        if self.survivors == -1:
            object.__setattr__(self, "survivors", len(self.alive))
        _check_u32(self.survivors, "survivors")

    def signed_bytes(self, session_id: bytes, context: bytes) -> bytes:
        """What a client signs in the consistency check: the session, the vector, both lists, the
        survivor count and the digest of the context it computed vector j from."""
        _check_bytes(context, "context", DIGEST_BYTES)
        w = _Writer(self.KIND)
        w.raw(b"codream/v1/consistency" + session_id)
        self._encode(w)
        w.raw(context)
        return w.done()

    def _encode(self, w: _Writer) -> None:
        w.u32(self.vector)
        w.ids(self.alive)
        w.ids(self.dropped)
        w.u32(self.survivors)

    @classmethod
    def _decode(cls, r: _Reader) -> UnmaskRequest:
        return cls(r.u32(), r.ids(), r.ids(), r.u32())


@dataclass(frozen=True, slots=True)
class ConsistencySignature(Message):
    """Client -> server, malicious mode: the sender's signature over the unmask request it got."""

    KIND: ClassVar[MessageKind] = MessageKind.CONSISTENCY_SIGNATURE
    sender: int
    vector: int
    signature: bytes

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_u32(self.vector, "vector")
        _check_bytes(self.signature, "signature", SIGNATURE_BYTES)

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(self.vector)
        w.raw(self.signature)

    @classmethod
    def _decode(cls, r: _Reader) -> ConsistencySignature:
        return cls(r.u32(), r.u32(), r.raw(SIGNATURE_BYTES))


@dataclass(frozen=True, slots=True)
class ConsistencyProof(Message):
    """Server -> client, malicious mode: every signature collected for vector j."""

    KIND: ClassVar[MessageKind] = MessageKind.CONSISTENCY_PROOF
    vector: int
    signatures: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_u32(self.vector, "vector")
        _check_pairs(self.signatures, "signatures", lambda v, w: _check_bytes(v, w, SIGNATURE_BYTES))

    def _encode(self, w: _Writer) -> None:
        w.u32(self.vector)
        w.u32(len(self.signatures))
        for cid, sig in self.signatures:
            w.u32(cid)
            w.raw(sig)

    @classmethod
    def _decode(cls, r: _Reader) -> ConsistencyProof:
        vector = r.u32()
        return cls(
            vector, tuple((r.u32(), r.raw(SIGNATURE_BYTES)) for _ in range(r.count(4 + SIGNATURE_BYTES)))
        )


@dataclass(frozen=True, slots=True)
class UnmaskResponse(Message):
    """Client -> server, round 3 of vector j: b^j shares of alive peers, s_sk^j shares of dropped ones."""

    KIND: ClassVar[MessageKind] = MessageKind.UNMASK_RESPONSE
    sender: int
    vector: int
    seed_shares: tuple[tuple[int, Share], ...]
    key_shares: tuple[tuple[int, Share], ...]

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_u32(self.vector, "vector")
        _check_pairs(self.seed_shares, "seed_shares", _check_share)
        _check_pairs(self.key_shares, "key_shares", _check_share)

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(self.vector)
        for pairs in (self.seed_shares, self.key_shares):
            w.u32(len(pairs))
            for owner, share in pairs:
                w.u32(owner)
                w.blob(share.to_bytes())

    @classmethod
    def _decode(cls, r: _Reader) -> UnmaskResponse:
        sender, vector = r.u32(), r.u32()
        seed = tuple((r.u32(), _decode_share(r.blob())) for _ in range(r.count(8)))
        key = tuple((r.u32(), _decode_share(r.blob())) for _ in range(r.count(8)))
        return cls(sender, vector, seed, key)


# --------------------------------------------------------------------------- round 3b (malicious mode)


@dataclass(frozen=True, slots=True)
class DealerEvidence:
    """What shows that an alive client dealt seed shares that do not rebuild its committed b^j:
    its signed seed-share roots (round 1), the commitments to every holder's seed share of vector j,
    and the revealed seed shares, by holder. Not a message; part of `ExclusionRequest`."""

    owner: int
    roots: tuple[bytes, ...]
    signature: bytes
    commitments: tuple[tuple[int, bytes], ...]
    shares: tuple[tuple[int, Share], ...]

    def __post_init__(self) -> None:
        _check_id(self.owner, "owner")
        _check_tuple(self.roots, "roots")
        for root in self.roots:
            _check_bytes(root, "root", DIGEST_BYTES)
        _check_signature(self.signature)
        _check_pairs(self.commitments, "commitments", lambda v, w: _check_bytes(v, w, DIGEST_BYTES))
        _check_pairs(self.shares, "shares", _check_share)

    def encode(self, w: _Writer) -> None:
        w.u32(self.owner)
        w.u32(len(self.roots))
        w.raw(b"".join(self.roots))
        w.u8(len(self.signature))
        w.raw(self.signature)
        w.u32(len(self.commitments))
        for holder, commitment in self.commitments:
            w.u32(holder)
            w.raw(commitment)
        w.u32(len(self.shares))
        for holder, share in self.shares:
            w.u32(holder)
            w.blob(share.to_bytes())

    @classmethod
    def decode(cls, r: _Reader) -> DealerEvidence:
        owner = r.u32()
        roots = tuple(r.raw(DIGEST_BYTES) for _ in range(r.count(DIGEST_BYTES)))
        signature = r.raw(r.u8())
        commitments = tuple((r.u32(), r.raw(DIGEST_BYTES)) for _ in range(r.count(4 + DIGEST_BYTES)))
        shares = tuple((r.u32(), _decode_share(r.blob())) for _ in range(r.count(8)))
        return cls(owner, roots, signature, commitments, shares)


@dataclass(frozen=True, slots=True)
class ExclusionRequest(Message):
    """Server -> client, malicious mode, after round 3 of vector j: the peers of the recipient whose
    secret of vector j did not rebuild from valid shares. For each, the recipient is asked for its
    pairwise mask key with that peer: `dropped` peers (their mask key did not rebuild) need no
    evidence, since their seed is never revealed for vector j; `evidence` covers alive peers (their
    seed did not rebuild), whose masked input the server leaves out of the sum."""

    KIND: ClassVar[MessageKind] = MessageKind.EXCLUSION_REQUEST
    vector: int
    dropped: tuple[int, ...]
    evidence: tuple[DealerEvidence, ...] = ()

    def __post_init__(self) -> None:
        _check_u32(self.vector, "vector")
        _check_tuple(self.dropped, "dropped")
        for cid in self.dropped:
            _check_id(cid, "dropped id")
        _check_tuple(self.evidence, "evidence")
        for e in self.evidence:
            if not isinstance(e, DealerEvidence):
                raise InvalidMessage("evidence must hold DealerEvidence items")

    def _encode(self, w: _Writer) -> None:
        w.u32(self.vector)
        w.ids(self.dropped)
        w.u32(len(self.evidence))
        for e in self.evidence:
            e.encode(w)

    @classmethod
    def _decode(cls, r: _Reader) -> ExclusionRequest:
        vector, dropped = r.u32(), r.ids()
        return cls(vector, dropped, tuple(DealerEvidence.decode(r) for _ in range(r.count(4))))


@dataclass(frozen=True, slots=True)
class PairwiseKeys(Message):
    """Client -> server, malicious mode, answering `ExclusionRequest`: per excluded peer, the AES key
    k_uv^j of the pairwise mask this client added for it in vector j (the peer knows it too)."""

    KIND: ClassVar[MessageKind] = MessageKind.PAIRWISE_KEYS
    sender: int
    vector: int
    keys: tuple[tuple[int, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender")
        _check_u32(self.vector, "vector")
        _check_pairs(self.keys, "keys", lambda v, w: _check_bytes(v, w, PUBLIC_KEY_BYTES))

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.u32(self.vector)
        w.u32(len(self.keys))
        for owner, key in self.keys:
            w.u32(owner)
            w.raw(key)

    @classmethod
    def _decode(cls, r: _Reader) -> PairwiseKeys:
        sender, vector = r.u32(), r.u32()
        return cls(sender, vector, tuple((r.u32(), r.raw(PUBLIC_KEY_BYTES)) for _ in range(r.count(36))))


# --------------------------------------------------------------------------- abort


@dataclass(frozen=True, slots=True)
class AbortMessage(Message):
    """Either direction: the sender stops, with a machine-readable reason."""

    KIND: ClassVar[MessageKind] = MessageKind.ABORT
    sender: int
    reason: AbortReason
    detail: str = ""

    def __post_init__(self) -> None:
        _check_id(self.sender, "sender", allow_server=True)
        if not isinstance(self.reason, AbortReason):
            raise InvalidMessage(f"reason must be an AbortReason, got {self.reason!r}")
        if not isinstance(self.detail, str) or len(self.detail) > MAX_DETAIL_CHARS:
            raise InvalidMessage(f"detail must be a str of at most {MAX_DETAIL_CHARS} characters")

    def _encode(self, w: _Writer) -> None:
        w.u32(self.sender)
        w.blob(self.reason.value.encode())
        w.blob(self.detail.encode())

    @classmethod
    def _decode(cls, r: _Reader) -> AbortMessage:
        sender = r.u32()
        try:
            reason = AbortReason(r.blob().decode("ascii"))
            detail = r.blob().decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise InvalidMessage("unknown abort reason or undecodable detail") from None
        return cls(sender, reason, detail)


_BY_KIND: dict[int, type[Message]] = {
    cls.KIND: cls
    for cls in (
        AdvertiseKeys,
        KeysBroadcast,
        ShareKeys,
        SharesDelivery,
        MaskedInput,
        UnmaskRequest,
        ConsistencySignature,
        ConsistencyProof,
        UnmaskResponse,
        AbortMessage,
        ExclusionRequest,
        PairwiseKeys,
    )
}

#: Messages each side sends; the other side's states accept only these.
CLIENT_TO_SERVER = (
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    ConsistencySignature,
    UnmaskResponse,
    PairwiseKeys,
    AbortMessage,
)
SERVER_TO_CLIENT = (
    KeysBroadcast,
    SharesDelivery,
    UnmaskRequest,
    ConsistencyProof,
    ExclusionRequest,
    AbortMessage,
)


def decode_message(data: bytes) -> Message:
    """Decode any message by its kind byte. Raises: InvalidMessage."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 2:
        raise InvalidMessage("message shorter than its header")
    cls = _BY_KIND.get(data[1])
    if cls is None:
        raise InvalidMessage(f"unknown message kind {data[1]}")
    return cls.from_bytes(bytes(data))
