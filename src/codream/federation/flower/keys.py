"""Signing keys for malicious-server mode, provisioned out of band (never by the server).

In malicious mode every client signs what it sends with its own Ed25519 key, and every party checks
the signatures against the roster's verify keys. Those keys must not come from the server: a server
that could hand a node the roster's verify keys could put its own keys in place of honest clients'
(Sybils). So each node reads its own signing key and the roster's verify keys from files named in
its node config (``signing-key``, ``verify-keys``), and refuses a session whose verify keys differ
from its file; the ServerApp reads the same public file (run config ``verify-keys``).

`provision_keys` writes such files for a deployment on one machine (the local harness uses it); a real
deployment creates each node's signing key on that node and collects only the public keys.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...crypto.signing import Ed25519KeyPair
from ...exceptions import ConfigError

__all__ = ["load_signing_key", "load_verify_keys", "provision_keys"]

VERIFY_KEYS_FILE = "verify-keys.json"


def provision_keys(folder: str | Path, client_ids: Iterable[int]) -> tuple[Path, dict[int, Path]]:
    """Fresh signing keys (OS randomness) for `client_ids`: (verify-keys file, each client's key file).

    Each signing key is written readable by its owner only.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public: dict[str, str] = {}
    paths: dict[int, Path] = {}
    for cid in sorted(client_ids):
        seed = os.urandom(32)
        path = folder / f"client-{cid}.signing-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(seed.hex() + "\n")
        paths[cid] = path
        public[str(cid)] = Ed25519KeyPair.from_private_bytes(seed).public_bytes().hex()
    verify = folder / VERIFY_KEYS_FILE
    verify.write_text(json.dumps(public, indent=1, sort_keys=True) + "\n")
    return verify, paths


def load_signing_key(path: str | Path) -> Ed25519KeyPair:
    """This node's signing key from its file (64 hex digits).

    Raises:
        ConfigError: a missing or malformed file.
    """
    try:
        text = Path(path).read_text().strip()
        return Ed25519KeyPair.from_private_bytes(bytes.fromhex(text))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read the signing key {str(path)!r}: {err}") from None


def load_verify_keys(path: str | Path) -> dict[int, bytes]:
    """The roster's verify keys, by client id, from a JSON object {"id": "64 hex digits"}.

    Raises:
        ConfigError: a missing or malformed file.
    """
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, Mapping):
            raise ValueError("not a JSON object")
        keys = {int(k): bytes.fromhex(str(v)) for k, v in raw.items()}
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read the verify keys {str(path)!r}: {err}") from None
    bad = [cid for cid, key in keys.items() if len(key) != 32]
    if bad:
        raise ConfigError(f"verify keys of clients {bad} in {str(path)!r} are not 32 bytes")
    return keys
