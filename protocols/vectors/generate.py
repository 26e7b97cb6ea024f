"""Regenerate the known-answer vectors of protocols/secagg-primitives.md from fixed inputs.

Usage (from the repository root):

    .venv/bin/python protocols/vectors/generate.py          # rewrite the JSON files
    .venv/bin/python protocols/vectors/generate.py --check  # exit 1 if a file would change

Every input is a constant of this script, so the output is byte-for-byte reproducible. Published
vectors (RFC 5869, RFC 7748, the GCM specification) are copied in as constants and checked against
the implementation before anything is written; home-made vectors come from codream's code and are
verified independently by tests/test_vectors.py (raw AES block encryption for the PRG, an HMAC
construction for HKDF, field arithmetic for Shamir).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from codream.crypto import aead, kdf, prg, shamir
from codream.crypto.agreement import X25519KeyPair, check_public_key
from codream.exceptions import CodreamError, DecryptionError, InvalidShare, ProtocolAbort
from codream.secagg.encoding import FixedPointCodec, words_to_bytes

HERE = Path(__file__).resolve().parent
GENERATOR = "protocols/vectors/generate.py"
SESSION_ID = bytes(range(0x20, 0x40))


def _h(data: bytes) -> str:
    return data.hex()


def _deterministic_randbytes(key: bytes) -> Callable[[int], bytes]:
    """A byte source for Shamir coefficients: the AES-256-CTR keystream of `key`, consumed in order."""
    stream = prg.keystream(key, 66 * 64)
    position = 0

    def randbytes(n: int) -> bytes:
        nonlocal position
        out = stream[position : position + n]
        position += n
        if len(out) != n:
            raise RuntimeError("vector randomness exhausted")
        return out

    return randbytes


# --------------------------------------------------------------------------------------------- PRG


def prg_vectors() -> dict:
    cases = []
    for comment, key, count, bits in [
        ("zero key, 32-bit words", bytes(32), 10, 32),
        ("counting key, 32-bit words", bytes(range(32)), 10, 32),
        ("counting key, 16-bit words (uint32 read, masked)", bytes(range(32)), 10, 16),
        ("counting key, 8-bit words", bytes(range(32)), 6, 8),
        ("counting key, 64-bit words", bytes(range(32)), 6, 64),
        ("counting key, 48-bit words (uint64 read, masked)", bytes(range(32)), 6, 48),
        ("0xff key, 24-bit words crossing two AES blocks", b"\xff" * 32, 9, 24),
        ("no words", bytes(range(32)), 0, 32),
    ]:
        words = prg.mask_words(key, count, bits=bits)
        width = 4 if bits <= 32 else 8
        cases.append(
            {
                "comment": comment,
                "key": _h(key),
                "count": count,
                "bits": bits,
                "keystream": _h(prg.keystream(key, width * count)),
                "words": [int(w) for w in words],
            }
        )
    # End to end: the pairwise mask of vector j from a Diffie-Hellman output.
    for comment, info, secret, j, count, bits in [
        ("pairwise mask of vector 0", kdf.PAIRWISE_MASK_INFO, b"\x11" * 32, 0, 8, 32),
        ("pairwise mask of vector 7", kdf.PAIRWISE_MASK_INFO, b"\x11" * 32, 7, 8, 32),
        ("self mask of vector 3, 64-bit ring", kdf.SELF_MASK_INFO, b"\x22" * 32, 3, 4, 64),
    ]:
        key = kdf.hkdf_sha256(secret, salt=SESSION_ID, info=info + j.to_bytes(4, "big"))
        cases.append(
            {
                "comment": comment,
                "ikm": _h(secret),
                "salt": _h(SESSION_ID),
                "info": _h(info + j.to_bytes(4, "big")),
                "key": _h(key),
                "count": count,
                "bits": bits,
                "keystream": _h(prg.keystream(key, (4 if bits <= 32 else 8) * count)),
                "words": [int(w) for w in prg.mask_words(key, count, bits=bits)],
            }
        )
    return {
        "source": "home-made: AES-256-CTR, all-zero initial counter block, keystream read as "
        "little-endian words",
        "generator": GENERATOR,
        "cases": cases,
    }


# -------------------------------------------------------------------------------------------- HKDF

RFC5869 = [
    (
        "RFC 5869 A.1 basic SHA-256",
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "RFC 5869 A.2 SHA-256 with longer inputs",
        bytes(range(0x00, 0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da"
        "3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        "RFC 5869 A.3 SHA-256 with empty salt and info",
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


def hkdf_vectors() -> dict:
    cases = []
    for comment, ikm, salt, info, length, okm in RFC5869:
        got = kdf.hkdf_sha256(
            bytes.fromhex(ikm), salt=bytes.fromhex(salt), info=bytes.fromhex(info), length=length
        )
        assert got.hex() == okm, comment
        cases.append(
            {"comment": comment, "ikm": ikm, "salt": salt, "info": info, "length": length, "okm": okm}
        )
    secret = bytes(range(0x40, 0x60))
    for comment, label, fn in [
        (
            "codream pairwise-mask key, vector 0",
            kdf.PAIRWISE_MASK_INFO + (0).to_bytes(4, "big"),
            "pairwise_mask_key",
        ),
        (
            "codream pairwise-mask key, vector 1",
            kdf.PAIRWISE_MASK_INFO + (1).to_bytes(4, "big"),
            "pairwise_mask_key",
        ),
        ("codream self-mask key, vector 0", kdf.SELF_MASK_INFO + (0).to_bytes(4, "big"), "self_mask_key"),
        (
            "codream self-mask key, vector 65536",
            kdf.SELF_MASK_INFO + (65536).to_bytes(4, "big"),
            "self_mask_key",
        ),
        ("codream share-encryption key", kdf.SHARE_ENCRYPTION_INFO, "share_encryption_key"),
    ]:
        okm = kdf.hkdf_sha256(secret, salt=SESSION_ID, info=label)
        vector_index = int.from_bytes(label[-4:], "big") if fn != "share_encryption_key" else None
        if fn == "pairwise_mask_key":
            assert kdf.pairwise_mask_key(secret, session_id=SESSION_ID, vector_index=vector_index) == okm
        elif fn == "self_mask_key":
            assert kdf.self_mask_key(secret, session_id=SESSION_ID, vector_index=vector_index) == okm
        else:
            assert kdf.share_encryption_key(secret, session_id=SESSION_ID) == okm
        case = {
            "comment": comment,
            "ikm": _h(secret),
            "salt": _h(SESSION_ID),
            "info": _h(label),
            "length": 32,
            "okm": _h(okm),
            "function": fn,
        }
        if vector_index is not None:
            case["vector_index"] = vector_index
        cases.append(case)
    return {
        "source": "RFC 5869 appendix A (test cases 1-3) and home-made codream labels",
        "generator": GENERATOR,
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------ Shamir


def shamir_vectors() -> dict:
    cases = []
    for comment, secret, threshold, n, seed in [
        ("2-of-3 sharing of a 32-byte key", bytes(range(32)), 2, 3, b"\x01" * 32),
        ("3-of-5 sharing of a 32-byte key", bytes(range(100, 132)), 3, 5, b"\x02" * 32),
        ("1-of-2 sharing: every share is the secret", b"\xab" * 16, 1, 2, b"\x03" * 32),
        ("4-of-4 sharing of a 64-byte secret", b"\xff" * 64, 4, 4, b"\x04" * 32),
    ]:
        draws: list[bytes] = []
        source = _deterministic_randbytes(seed)

        def recording(k: int, source: Callable[[int], bytes] = source, draws: list[bytes] = draws) -> bytes:
            out = source(k)
            draws.append(out)
            return out

        shares = shamir.split_secret(secret, threshold=threshold, num_shares=n, randbytes=recording)
        subset = shares[-threshold:]
        assert shamir.reconstruct_secret(subset, threshold=threshold, length=len(secret)) == secret
        cases.append(
            {
                "comment": comment,
                "valid": True,
                "secret": _h(secret),
                "threshold": threshold,
                "num_shares": n,
                "randomness": [_h(d) for d in draws],
                "shares": [_h(s.to_bytes()) for s in shares],
                "reconstruct_from": [s.index for s in subset],
            }
        )
    base = shamir.split_secret(
        bytes(range(32)), threshold=3, num_shares=5, randbytes=_deterministic_randbytes(b"\x05" * 32)
    )
    tampered = shamir.Share(index=5, value=(base[4].value + 1) % shamir.PRIME)
    for comment, shares, error in [
        ("too few shares", base[:2], "InvalidShare"),
        ("repeated index", [base[0], base[1], base[1]], "InvalidShare"),
        ("fourth share off the polynomial", [base[0], base[1], base[2], tampered], "InvalidShare"),
    ]:
        with_error = None
        try:
            shamir.reconstruct_secret(shares, threshold=3, length=32)
        except InvalidShare as exc:
            with_error = type(exc).__name__
        assert with_error == error, comment
        cases.append(
            {
                "comment": comment,
                "valid": False,
                "threshold": 3,
                "length": 32,
                "shares": [_h(s.to_bytes()) for s in shares],
                "error": error,
            }
        )
    for comment, raw in [
        ("share bytes one short", base[0].to_bytes()[:-1]),
        ("share index zero", bytes(4) + base[0].to_bytes()[4:]),
        ("share value not below p", (1).to_bytes(4, "big") + shamir.PRIME.to_bytes(66, "big")),
    ]:
        try:
            shamir.Share.from_bytes(raw)
        except InvalidShare:
            pass
        else:
            raise AssertionError(comment)
        cases.append({"comment": comment, "valid": False, "share_bytes": _h(raw), "error": "InvalidShare"})
    return {
        "source": "home-made: Shamir over p = 2^521 - 1; randomness = consecutive 66-byte draws, each masked "
        "to 521 bits and rejected if >= p, giving coefficients a_1..a_{t-1}; share = index (4 bytes BE) || "
        "f(index) (66 bytes BE)",
        "generator": GENERATOR,
        "cases": cases,
    }


# ---------------------------------------------------------------------------------------- Encoding


def encoding_vectors() -> dict:
    cases = []
    for comment, clip, n, bits, noise, values, seed in [
        (
            "32-bit, 10 summands, values inside the range",
            1.0,
            10,
            32,
            0.0,
            [0.0, 0.5, -0.5, 1.0, -1.0, 0.123456789],
            7,
        ),
        ("16-bit, 3 summands, saturation counted", 2.0, 3, 16, 0.0, [2.5, -3.0, 1.999, -0.001], 11),
        ("8-bit, 2 summands, coarse grid", 1.0, 2, 8, 0.0, [0.3, -0.3, 0.01, 0.99], 13),
        ("64-bit, 100 summands, scale capped at 2^50 units", 0.5, 100, 64, 0.0, [0.25, -0.25, 1e-9], 17),
        ("24-bit, 5 summands with noise headroom 4.0", 1.0, 5, 24, 4.0, [0.75, -0.75], 19),
    ]:
        codec = FixedPointCodec(clip_norm=clip, num_summands=n, bits=bits, noise_bound=noise)
        coins = np.random.default_rng(seed).random(len(values))
        encoded = codec.encode(np.array(values), rng=np.random.default_rng(seed))
        cases.append(
            {
                "comment": comment,
                "kind": "encode",
                "clip_norm": clip,
                "num_summands": n,
                "bits": bits,
                "noise_bound": noise,
                "scale": codec.scale.hex(),
                "headroom_bits": codec.headroom_bits,
                "values": values,
                "rng_seed": seed,
                "coins": [c.hex() for c in coins],
                "words": [int(w) for w in encoded.words],
                "wire": _h(words_to_bytes(encoded.words, bits)),
                "saturated": encoded.saturated,
                "quantisation_bound": codec.quantisation_bound(n).hex(),
            }
        )
    for comment, clip, n, bits, words in [
        ("8-bit sums: 0, max positive, wrapped negatives", 1.0, 2, 8, [0, 127, 128, 255]),
        ("32-bit sums around the sign bit", 1.0, 10, 32, [1, 2**31 - 1, 2**31, 2**32 - 1]),
        ("64-bit sums around the sign bit", 1.0, 10, 64, [1, 2**63 - 1, 2**63, 2**64 - 1]),
    ]:
        codec = FixedPointCodec(clip_norm=clip, num_summands=n, bits=bits)
        decoded = codec.decode_sum(np.array(words, dtype=np.uint64))
        cases.append(
            {
                "comment": comment,
                "kind": "decode",
                "clip_norm": clip,
                "num_summands": n,
                "bits": bits,
                "noise_bound": 0.0,
                "words": words,
                "signed": [int(v) for v in codec.from_words(np.array(words, dtype=np.uint64))],
                "decoded": [float(v).hex() for v in decoded],
            }
        )
    for comment, kwargs in [
        ("7 bits is below the minimum", {"clip_norm": 1.0, "num_summands": 2, "bits": 7}),
        ("8 bits cannot hold 100 summands", {"clip_norm": 1.0, "num_summands": 100, "bits": 8}),
        ("clip_norm must be positive", {"clip_norm": 0.0, "num_summands": 2, "bits": 32}),
    ]:
        try:
            FixedPointCodec(**kwargs)
        except CodreamError:
            pass
        else:
            raise AssertionError(comment)
        cases.append({"comment": comment, "kind": "invalid", **kwargs, "error": "ConfigError"})
    return {
        "source": "home-made: clip, scale, stochastic rounding q = floor(x) + (coin < frac(x)) with coins = "
        "numpy.random.default_rng(rng_seed).random(len(values)), two's complement mod 2^bits; floats as "
        "float.hex()",
        "generator": GENERATOR,
        "cases": cases,
    }


# ------------------------------------------------------------------------------------------ X25519

RFC7748_SCALAR_MULT = [
    (
        "RFC 7748 5.2 vector 1",
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        "RFC 7748 5.2 vector 2 (u with its top bit set, ignored)",
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
RFC7748_ITERATED = [
    (1, "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"),
    (1000, "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"),
]
RFC7748_DH = {
    "alice_private": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "alice_public": "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
    "bob_private": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "bob_public": "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
    "shared": "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
}
# Points of order 1, 2, 4 or 8 and their non-canonical encodings: X25519 with any of them gives
# the all-zero secret.
LOW_ORDER = [
    ("low order: 0", "0000000000000000000000000000000000000000000000000000000000000000"),
    ("low order: 1", "0100000000000000000000000000000000000000000000000000000000000000"),
    ("low order: order-8 point", "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ("low order: other order-8 point", "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ("low order: p - 1", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ("low order: p (non-canonical 0)", "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    (
        "low order: p + 1 (non-canonical 1)",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ),
    ("low order: 0 with top bit set", "0000000000000000000000000000000000000000000000000000000000000080"),
    (
        "low order: order-8 point with top bit set",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    ),
]


def x25519_vectors() -> dict:
    cases = []
    for comment, scalar, u, out in RFC7748_SCALAR_MULT:
        assert X25519KeyPair.from_private_bytes(bytes.fromhex(scalar)).exchange(bytes.fromhex(u)).hex() == out
        cases.append(
            {"comment": comment, "kind": "scalar_mult", "private": scalar, "peer_public": u, "shared": out}
        )
    k = u = (9).to_bytes(32, "little")
    iterated = dict(RFC7748_ITERATED)
    for i in range(1, max(iterated) + 1):
        k, u = X25519KeyPair.from_private_bytes(k).exchange(u), k
        if i in iterated:
            assert k.hex() == iterated[i], i
    for iterations, out in RFC7748_ITERATED:
        cases.append(
            {
                "comment": f"RFC 7748 5.2 after {iterations} iterations",
                "kind": "iterated",
                "iterations": iterations,
                "result": out,
            }
        )
    alice = X25519KeyPair.from_private_bytes(bytes.fromhex(RFC7748_DH["alice_private"]))
    bob = X25519KeyPair.from_private_bytes(bytes.fromhex(RFC7748_DH["bob_private"]))
    assert alice.public_bytes().hex() == RFC7748_DH["alice_public"]
    assert bob.public_bytes().hex() == RFC7748_DH["bob_public"]
    assert alice.exchange(bob.public_bytes()).hex() == RFC7748_DH["shared"]
    cases.append({"comment": "RFC 7748 6.1 Diffie-Hellman", "kind": "dh", **RFC7748_DH})
    for comment, point in LOW_ORDER + [
        ("31-byte key", "09" * 31),
        ("33-byte key", "09" * 33),
        ("empty key", ""),
    ]:
        try:
            alice.exchange(bytes.fromhex(point))
        except ProtocolAbort as exc:
            reason = exc.reason.name
        else:
            raise AssertionError(comment)
        cases.append(
            {
                "comment": comment,
                "kind": "invalid",
                "private": RFC7748_DH["alice_private"],
                "peer_public": point,
                "error": f"ProtocolAbort.{reason}",
            }
        )
    # check_public_key: what a party refuses when a key is advertised, before anyone uses it. It
    # also refuses non-canonical spellings of ordinary points, which exchange() accepts.
    bob_public = bytes.fromhex(RFC7748_DH["bob_public"])
    for comment, point in [
        *LOW_ORDER,
        ("31-byte key", "09" * 31),
        (
            "non-canonical: RFC 7748 Bob's key with the top bit set",
            (bob_public[:31] + bytes([bob_public[31] | 0x80])).hex(),
        ),
        ("non-canonical: 9 + p", (9 + 2**255 - 19).to_bytes(32, "little").hex()),
        ("RFC 7748 Alice's public key", RFC7748_DH["alice_public"]),
        ("RFC 7748 Bob's public key", RFC7748_DH["bob_public"]),
        ("base point 9", (9).to_bytes(32, "little").hex()),
    ]:
        try:
            check_public_key(bytes.fromhex(point))
        except ProtocolAbort as exc:
            error = f"ProtocolAbort.{exc.reason.name}"
        else:
            error = None
        cases.append(
            {"comment": f"check: {comment}", "kind": "check_public_key", "public": point, "error": error}
        )
    return {
        "source": "RFC 7748 sections 5.2 and 6.1; low-order points of Curve25519 "
        "(and non-canonical encodings)",
        "generator": GENERATOR,
        "cases": cases,
    }


# -------------------------------------------------------------------------------------------- AEAD

GCM_SPEC = [
    (
        "GCM spec test case 13: AES-256, empty plaintext",
        "00" * 32,
        "00" * 12,
        "",
        "",
        "530f8afbc74536b9a963b4f1c4cb738b",
    ),
    (
        "GCM spec test case 14: AES-256, one zero block",
        "00" * 32,
        "00" * 12,
        "00" * 16,
        "",
        "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919",
    ),
]


def aead_vectors() -> dict:
    cases = []
    for comment, key, nonce, plaintext, ad, ct in GCM_SPEC:
        blob = aead._seal_from_parts(
            bytes.fromhex(key), bytes.fromhex(nonce), bytes.fromhex(plaintext), bytes.fromhex(ad)
        )
        assert blob.hex() == nonce + ct, comment
        cases.append(
            {
                "comment": comment,
                "valid": True,
                "key": key,
                "nonce": nonce,
                "plaintext": plaintext,
                "associated_data": ad,
                "sealed": nonce + ct,
            }
        )
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(12))
    ad = SESSION_ID + (3).to_bytes(4, "big") + (8).to_bytes(4, "big")
    plaintext = b"\x00\x01" + bytes(range(70))
    blob = aead._seal_from_parts(key, nonce, plaintext, ad)
    cases.append(
        {
            "comment": "codream share payload, sender 3 to receiver 8",
            "valid": True,
            "key": _h(key),
            "nonce": _h(nonce),
            "plaintext": _h(plaintext),
            "associated_data": _h(ad),
            "sealed": _h(blob),
        }
    )
    flipped_tag = blob[:-1] + bytes([blob[-1] ^ 0x80])
    flipped_ct = blob[:20] + bytes([blob[20] ^ 1]) + blob[21:]
    flipped_nonce = bytes([blob[0] ^ 1]) + blob[1:]
    for comment, k, b, a in [
        ("tag altered", key, flipped_tag, ad),
        ("ciphertext altered", key, flipped_ct, ad),
        ("nonce altered", key, flipped_nonce, ad),
        ("associated data altered (receiver 9)", key, blob, ad[:-1] + b"\x09"),
        ("wrong key", bytes(32), blob, ad),
        ("truncated below nonce and tag", key, blob[:27], ad),
        ("tag cut short", key, blob[:-1], ad),
        ("empty blob", key, b"", ad),
    ]:
        try:
            aead.open_sealed(k, b, associated_data=a)
        except DecryptionError:
            pass
        else:
            raise AssertionError(comment)
        cases.append(
            {
                "comment": comment,
                "valid": False,
                "key": _h(k),
                "sealed": _h(b),
                "associated_data": _h(a),
                "error": "DecryptionError",
            }
        )
    return {
        "source": "McGrew and Viega, The Galois/Counter Mode of Operation (GCM), test cases 13-14; home-made "
        "codream cases (sealed = nonce || ciphertext || tag)",
        "generator": GENERATOR,
        "cases": cases,
    }


FILES = {
    "prg.json": prg_vectors,
    "hkdf.json": hkdf_vectors,
    "shamir.json": shamir_vectors,
    "encoding.json": encoding_vectors,
    "x25519.json": x25519_vectors,
    "aead.json": aead_vectors,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if any file would change")
    args = parser.parse_args(argv)
    stale = []
    for name, build in FILES.items():
        text = json.dumps(build(), indent=1) + "\n"
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print("stale vector files: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
