"""HKDF labels separate keys by purpose and vector; Ed25519 verification raises on any forgery."""

from __future__ import annotations

import pytest

from codream.crypto.kdf import hkdf_sha256, pairwise_mask_key, self_mask_key, share_encryption_key
from codream.crypto.signing import Ed25519KeyPair, verify_signature
from codream.exceptions import AbortReason, ConfigError, ProtocolAbort

SESSION = bytes(range(32))
SECRET = b"\x42" * 32


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_keys_for_different_vectors_purposes_and_sessions_differ() -> None:
    keys = {
        pairwise_mask_key(SECRET, session_id=SESSION, vector_index=0),
        pairwise_mask_key(SECRET, session_id=SESSION, vector_index=1),
        self_mask_key(SECRET, session_id=SESSION, vector_index=0),
        share_encryption_key(SECRET, session_id=SESSION),
        pairwise_mask_key(SECRET, session_id=bytes(32), vector_index=0),
    }
    assert len(keys) == 5


def test_derivation_follows_the_documented_labels() -> None:
    expected = hkdf_sha256(SECRET, salt=SESSION, info=b"codream/v1/pairwise-mask" + (7).to_bytes(4, "big"))
    assert pairwise_mask_key(SECRET, session_id=SESSION, vector_index=7) == expected


@pytest.mark.parametrize("session", [b"", bytes(31), bytes(33)])
def test_a_session_id_that_is_not_32_bytes_is_refused(session: bytes) -> None:
    with pytest.raises(ConfigError):
        self_mask_key(SECRET, session_id=session, vector_index=0)


def test_a_valid_signature_verifies_and_a_forgery_aborts() -> None:
    signer = Ed25519KeyPair.generate()
    signature = signer.sign(b"alive list")
    verify_signature(signer.public_bytes(), signature, b"alive list")
    for public, sig, msg in [
        (signer.public_bytes(), signature, b"alive lisT"),
        (Ed25519KeyPair.generate().public_bytes(), signature, b"alive list"),
        (signer.public_bytes(), signature[:-1] + bytes([signature[-1] ^ 1]), b"alive list"),
        (signer.public_bytes()[:31], signature, b"alive list"),
        (signer.public_bytes(), signature[:63], b"alive list"),
    ]:
        with pytest.raises(ProtocolAbort) as info:
            verify_signature(public, sig, msg)
        assert info.value.reason is AbortReason.INVALID_SIGNATURE


def test_a_signing_key_rebuilt_from_its_seed_signs_identically() -> None:
    seed = bytes(range(32))
    assert Ed25519KeyPair.from_private_bytes(seed).sign(b"m") == Ed25519KeyPair.from_private_bytes(seed).sign(
        b"m"
    )


@pytest.mark.parametrize("length", [1, 31, 32, 33, 64, 100, 8160])
@pytest.mark.parametrize("salt", [b"", bytes(range(32)), bytes(range(80))])
def test_hkdf_gives_the_bytes_of_the_cryptography_librarys_hkdf(length, salt):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from codream.crypto.kdf import hkdf_sha256

    ikm, info = bytes(range(7, 39)), b"codream/test" + bytes([length % 256])
    expected = HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)
    assert hkdf_sha256(ikm, salt=salt, info=info, length=length) == expected


def test_pairwise_mask_keys_for_many_peers_are_each_peers_pairwise_mask_key() -> None:
    from codream.crypto.kdf import pairwise_mask_keys

    session = bytes(range(32))
    secrets = {peer: bytes([peer]) * 32 for peer in (3, 1, 250)}
    keys = pairwise_mask_keys(secrets, session_id=session, vector_index=5)
    assert keys == {p: pairwise_mask_key(s, session_id=session, vector_index=5) for p, s in secrets.items()}
    with pytest.raises(ConfigError):
        pairwise_mask_keys(secrets, session_id=bytes(31), vector_index=5)
    with pytest.raises(ConfigError):
        pairwise_mask_keys(secrets, session_id=session, vector_index=2**32)
