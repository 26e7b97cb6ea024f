"""Hazardous materials: low-level cryptographic building blocks of secure aggregation.

Everything here is easy to misuse (a reused key, a missing label, a share revealed twice), so
protocol code calls these parts and users call :mod:`codream.secagg`, never this package directly.
Each module wraps one family from pyca/`cryptography`:

- :mod:`.kdf`: HKDF-SHA256 and the labels that separate every derived key by purpose and vector;
- :mod:`.prg`: AES-256-CTR keystream read as mask words;
- :mod:`.shamir`: t-of-n Shamir sharing over the prime field p = 2^521 - 1;
- :mod:`.agreement`: X25519 key agreement that rejects malformed and low-order peer keys;
- :mod:`.aead`: AES-256-GCM sealing with a random nonce, one error type for every failure;
- :mod:`.signing`: Ed25519 signatures whose verification raises instead of returning a bool.

Byte layouts and derivations are specified in ``protocols/secagg-primitives.md``.
"""

from __future__ import annotations

from . import aead, agreement, kdf, prg, shamir, signing

__all__ = ["aead", "agreement", "kdf", "prg", "shamir", "signing"]
