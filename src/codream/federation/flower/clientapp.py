"""The Flower ClientApp: relays each engine message to this node's codream worker.

Flower runs this in a fresh process per message. The first message of a run starts the worker (see
`worker.py`) and keeps its socket address and a random 32-byte authentication key in the node's run
context (which the SuperNode holds in memory on this machine); later messages connect to it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .wire import decode, encode
from .worker import error_payload

__all__ = ["app"]

log = logging.getLogger(__name__)

#: Record and key names inside Flower messages and the node context.
RECORD = "codream"
PAYLOAD = "payload"
WORKER_STATE = "codream-worker"
ACTION = "codream"
#: When set (the local harness sets it), workers write their logs into this folder.
LOG_DIR_ENV = "CODREAM_FLOWER_LOG_DIR"

_CONNECT_TIMEOUT = 120.0

app = ClientApp()


def _socket_dir() -> Path:
    d = Path(tempfile.gettempdir()) / f"codream-flower-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _start_worker(context: Context) -> tuple[str, bytes, subprocess.Popen]:
    rc = context.run_config
    address = str(_socket_dir() / f"{secrets.token_hex(8)}.sock")
    authkey = secrets.token_bytes(32)
    node_config = {k: v for k, v in context.node_config.items()}
    argv = [
        sys.executable,
        "-m",
        "codream.federation.flower.worker",
        "--address",
        address,
        "--watch-pid",
        str(os.getppid()),
        "--idle-timeout",
        str(float(rc.get("worker-idle-timeout", 600.0))),
    ]
    log_dir = os.environ.get(LOG_DIR_ENV)
    out = subprocess.DEVNULL
    if log_dir:
        name = f"worker-{node_config.get('partition-id', context.node_id)}.log"
        out = open(Path(log_dir) / name, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    assert proc.stdin is not None
    spec = {
        "authkey": authkey.hex(),
        "handler": str(rc.get("handler", "codream")),
        "node_config": node_config,
    }
    proc.stdin.write((json.dumps(spec) + "\n").encode())
    proc.stdin.close()
    context.state[WORKER_STATE] = ConfigRecord(
        {"address": address, "authkey": authkey, "pid": proc.pid, "run_id": str(context.run_id)}
    )
    return address, authkey, proc


def _ask(
    address: str, authkey: bytes, request: bytes, *, wait: float, proc: subprocess.Popen | None = None
) -> bytes:
    deadline = time.monotonic() + wait
    while True:
        try:
            conn = Client(address, family="AF_UNIX", authkey=authkey)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"the codream worker exited (code {proc.returncode}) before it listened"
                ) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with conn:
        conn.send_bytes(request)
        return conn.recv_bytes()


@app.query(ACTION)
def relay(msg: Message, context: Context) -> Message:
    """Hand the engine payload to the worker; answer with its reply (or with a typed error payload).

    Whatever the message holds, the node answers: a message without a codream payload, or one that
    does not decode (`InvalidMessage`, the only exception `decode` raises), gets an error payload.
    """
    try:
        record = msg.content.config_records.get(RECORD)
        request = None if record is None else record.get(PAYLOAD)
        if not isinstance(request, bytes):
            raise TypeError("the engine payload must be bytes")
        kind = decode(request).kind
        worker = context.state.config_records.get(WORKER_STATE)
        if worker is not None and worker.get("run_id") != str(context.run_id):
            worker = None  # Flower keeps a node's context across the runs of a series
        if kind == "setup":  # once per run: a fresh worker
            address, authkey, proc = _start_worker(context)
            wait = _CONNECT_TIMEOUT
        elif worker is None:
            raise RuntimeError(f"no codream worker on this node for a {kind!r} message")
        else:
            address, authkey, proc = str(worker["address"]), bytes(worker["authkey"]), None
            wait = 1.0
        reply = _ask(address, authkey, request, wait=wait, proc=proc)
    except Exception as err:  # noqa: BLE001 - the server decides what a failed node means
        log.error("relay failed: %s", err)
        reply = encode(error_payload(err))
    return Message(RecordDict({RECORD: ConfigRecord({PAYLOAD: reply})}), reply_to=msg)
