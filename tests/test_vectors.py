"""Known-answer vectors of protocols/vectors/*.json, each checked against codream and, where one
exists, an independent construction (raw AES blocks, HMAC, field arithmetic)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from codream.crypto import aead, kdf, prg, shamir
from codream.crypto.agreement import X25519KeyPair, check_public_key
from codream.exceptions import AbortReason, ConfigError, DecryptionError, InvalidShare, ProtocolAbort
from codream.secagg.encoding import FixedPointCodec, words_to_bytes

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
FILES = ["prg.json", "hkdf.json", "shamir.json", "encoding.json", "x25519.json", "aead.json"]


def _load() -> list:
    params = []
    for name in FILES:
        document = json.loads((VECTORS / name).read_text())
        assert document["source"] and document["generator"] == "protocols/vectors/generate.py"
        for case in document["cases"]:
            params.append(pytest.param(name, case, id=f"{name[:-5]}: {case['comment']}"))
    return params


@pytest.mark.parametrize(("name", "case"), _load())
def test_vector(name: str, case: dict) -> None:
    CHECKS[name](case)


def test_every_vector_file_is_up_to_date_with_its_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("vector_generator", VECTORS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, build in module.FILES.items():
        if name == "x25519.json":
            continue  # 1000 X25519 iterations; the file's cases are checked one by one above
        assert json.loads((VECTORS / name).read_text()) == json.loads(json.dumps(build())), name


# ------------------------------------------------------------------------------------------ checks


def _aes_counter_blocks(key: bytes, length: int) -> bytes:
    blocks = -(-length // 16)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return ecb.update(b"".join(i.to_bytes(16, "big") for i in range(blocks)))[:length]


def _hmac_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def check_prg(case: dict) -> None:
    key = bytes.fromhex(case["key"])
    if "ikm" in case:
        derived = kdf.hkdf_sha256(
            bytes.fromhex(case["ikm"]), salt=bytes.fromhex(case["salt"]), info=bytes.fromhex(case["info"])
        )
        assert derived == key
    stream = bytes.fromhex(case["keystream"])
    assert prg.keystream(key, len(stream)) == stream
    assert _aes_counter_blocks(key, len(stream)) == stream
    bits, count = case["bits"], case["count"]
    width = 4 if bits <= 32 else 8
    independent = [
        int.from_bytes(stream[i * width : (i + 1) * width], "little") % 2**bits for i in range(count)
    ]
    assert independent == case["words"]
    assert prg.mask_words(key, count, bits=bits).tolist() == case["words"]


def check_hkdf(case: dict) -> None:
    ikm, salt, info = (bytes.fromhex(case[k]) for k in ("ikm", "salt", "info"))
    okm = bytes.fromhex(case["okm"])
    assert kdf.hkdf_sha256(ikm, salt=salt, info=info, length=case["length"]) == okm
    assert _hmac_hkdf(ikm, salt, info, case["length"]) == okm
    function = case.get("function")
    if function == "pairwise_mask_key":
        assert kdf.pairwise_mask_key(ikm, session_id=salt, vector_index=case["vector_index"]) == okm
    elif function == "self_mask_key":
        assert kdf.self_mask_key(ikm, session_id=salt, vector_index=case["vector_index"]) == okm
    elif function == "share_encryption_key":
        assert kdf.share_encryption_key(ikm, session_id=salt) == okm


def check_shamir(case: dict) -> None:
    if not case["valid"]:
        with pytest.raises(InvalidShare):
            if "share_bytes" in case:
                shamir.Share.from_bytes(bytes.fromhex(case["share_bytes"]))
            else:
                shares = [shamir.Share.from_bytes(bytes.fromhex(s)) for s in case["shares"]]
                shamir.reconstruct_secret(shares, threshold=case["threshold"], length=case["length"])
        return
    secret = bytes.fromhex(case["secret"])
    draws = [bytes.fromhex(d) for d in case["randomness"]]
    # Independent: coefficients from the documented rejection rule, Horner mod p by hand.
    p = 2**521 - 1
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [c for c in (int.from_bytes(d, "big") % 2**521 for d in draws) if c < p]
    assert len(coefficients) == case["threshold"]
    expected = []
    for x in range(1, case["num_shares"] + 1):
        value = sum(c * x**i for i, c in enumerate(coefficients)) % p
        expected.append((x.to_bytes(4, "big") + value.to_bytes(66, "big")).hex())
    assert expected == case["shares"]
    feed = iter(draws)
    shares = shamir.split_secret(
        secret, threshold=case["threshold"], num_shares=case["num_shares"], randbytes=lambda n: next(feed)
    )
    assert [s.to_bytes().hex() for s in shares] == case["shares"]
    subset = [s for s in shares if s.index in case["reconstruct_from"]]
    assert shamir.reconstruct_secret(subset, threshold=case["threshold"], length=len(secret)) == secret


def check_encoding(case: dict) -> None:
    kwargs = {k: case[k] for k in ("clip_norm", "num_summands", "bits")}
    if case["kind"] == "invalid":
        with pytest.raises(ConfigError):
            FixedPointCodec(**kwargs)
        return
    codec = FixedPointCodec(**kwargs, noise_bound=case["noise_bound"])
    bits = case["bits"]
    if case["kind"] == "decode":
        words = np.array(case["words"], dtype=np.uint64)
        signed = [w - 2**bits if w >= 2 ** (bits - 1) else w for w in case["words"]]
        assert signed == case["signed"]
        assert codec.from_words(words).tolist() == signed
        assert [float(v).hex() for v in codec.decode_sum(words)] == case["decoded"]
        return
    scale = float.fromhex(case["scale"])
    assert codec.scale == scale
    assert codec.headroom_bits == case["headroom_bits"]
    clip = case["clip_norm"]
    independent = []
    for value, coin in zip(case["values"], case["coins"], strict=True):
        x = min(max(value, -clip), clip) * scale
        q = math.floor(x) + (float.fromhex(coin) < x - math.floor(x))
        independent.append(q % 2**bits)
    assert independent == case["words"]
    assert sum(abs(v) > clip for v in case["values"]) == case["saturated"]
    encoded = codec.encode(np.array(case["values"]), rng=np.random.default_rng(case["rng_seed"]))
    assert encoded.words.tolist() == case["words"]
    assert encoded.saturated == case["saturated"]
    assert words_to_bytes(encoded.words, bits).hex() == case["wire"]
    assert codec.quantisation_bound(case["num_summands"]).hex() == case["quantisation_bound"]


def check_x25519(case: dict) -> None:
    kind = case["kind"]
    if kind == "scalar_mult":
        pair = X25519KeyPair.from_private_bytes(bytes.fromhex(case["private"]))
        assert pair.exchange(bytes.fromhex(case["peer_public"])).hex() == case["shared"]
    elif kind == "iterated":
        k = u = (9).to_bytes(32, "little")
        for _ in range(case["iterations"]):
            k, u = X25519KeyPair.from_private_bytes(k).exchange(u), k
        assert k.hex() == case["result"]
    elif kind == "dh":
        alice = X25519KeyPair.from_private_bytes(bytes.fromhex(case["alice_private"]))
        bob = X25519KeyPair.from_private_bytes(bytes.fromhex(case["bob_private"]))
        assert alice.public_bytes().hex() == case["alice_public"]
        assert bob.public_bytes().hex() == case["bob_public"]
        assert (
            alice.exchange(bob.public_bytes()).hex()
            == bob.exchange(alice.public_bytes()).hex()
            == case["shared"]
        )
    elif kind == "check_public_key":
        public = bytes.fromhex(case["public"])
        if case["error"] is None:
            check_public_key(public)
            return
        with pytest.raises(ProtocolAbort) as info:
            check_public_key(public)
        assert case["error"] == f"ProtocolAbort.{info.value.reason.name}"
        # Independently: every refused 32-byte key is non-canonical (u >= p, top bit included) or
        # forces the all-zero secret.
        if len(public) == 32 and int.from_bytes(public, "little") < 2**255 - 19:
            with pytest.raises(ProtocolAbort):
                X25519KeyPair.generate().exchange(public)
    else:
        pair = X25519KeyPair.from_private_bytes(bytes.fromhex(case["private"]))
        with pytest.raises(ProtocolAbort) as info:
            pair.exchange(bytes.fromhex(case["peer_public"]))
        assert case["error"] == f"ProtocolAbort.{info.value.reason.name}"
        assert info.value.reason is AbortReason.INVALID_PUBLIC_KEY


def check_aead(case: dict) -> None:
    key, blob, ad = (bytes.fromhex(case[k]) for k in ("key", "sealed", "associated_data"))
    if not case["valid"]:
        with pytest.raises(DecryptionError):
            aead.open_sealed(key, blob, associated_data=ad)
        return
    nonce, plaintext = bytes.fromhex(case["nonce"]), bytes.fromhex(case["plaintext"])
    assert aead._seal_from_parts(key, nonce, plaintext, ad) == blob
    assert aead.open_sealed(key, blob, associated_data=ad) == plaintext


CHECKS = {
    "prg.json": check_prg,
    "hkdf.json": check_hkdf,
    "shamir.json": check_shamir,
    "encoding.json": check_encoding,
    "x25519.json": check_x25519,
    "aead.json": check_aead,
}
