"""The long-lived codream process behind one SuperNode.

Flower starts a fresh ClientApp process for every message. A codream client, though, is a model with
its optimiser, a dream buffer, RNG streams and, in a secure round, secret keys that must never be
written anywhere. So the first ClientApp process of a run starts this worker; every ClientApp process
of the run then hands its message to the worker over a local socket (authenticated with a random key
that lives only in the node's run context) and returns the worker's answer. Secret keys stay in this
one process's memory for their whole life.

The worker exits when the server says the run is over, when it has been idle for `idle_timeout`
seconds, or when the Flower process that started it (the SuperNode's executor) is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Listener
from typing import Protocol

from ...exceptions import CodreamError, ProtocolAbort
from .wire import Payload, decode, encode

__all__ = ["NodeHandler", "handler_names", "register_handler", "serve"]

log = logging.getLogger(__name__)

FINISH = "finish"


class NodeHandler(Protocol):
    """The client side of one engine: answers each request of the server."""

    def handle(self, request: Payload) -> Payload: ...


HandlerFactory = Callable[[Mapping[str, object]], NodeHandler]
_HANDLERS: dict[str, str] = {
    "echo": "codream.federation.flower.echo:EchoNode",
    "codream": "codream.federation.flower.engine:CodreamNode",
}


def handler_names() -> list[str]:
    return sorted(_HANDLERS)


def register_handler(name: str, ref: str) -> None:
    """Register `module:attr` (a factory taking the node config) under `name`; refuses to replace."""
    if name in _HANDLERS:
        raise ValueError(f"node handler {name!r} is already registered")
    _HANDLERS[name] = ref


def load_handler(name: str, node_config: Mapping[str, object]) -> NodeHandler:
    import importlib

    try:
        ref = _HANDLERS[name]
    except KeyError:
        raise CodreamError(f"unknown node handler {name!r}; choose one of {handler_names()}") from None
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)(node_config)


def error_payload(err: BaseException) -> Payload:
    """How a failure travels back: its type, the abort reason if any, and a short detail."""
    fields: dict[str, object] = {"type": type(err).__name__, "detail": str(err)[:1000]}
    if isinstance(err, ProtocolAbort):
        fields["reason"] = err.reason.value
    return Payload("error", fields)


def serve(
    address: str,
    authkey: bytes,
    handler: NodeHandler,
    *,
    watch_pid: int | None = None,
    idle_timeout: float = 600.0,
) -> None:
    """Answer requests on `address` until told to finish, idle too long, or orphaned."""
    last = [time.monotonic()]
    busy = threading.Lock()

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            gone = watch_pid is not None and not _pid_alive(watch_pid)
            idle = not busy.locked() and time.monotonic() - last[0] > idle_timeout
            if gone or idle:
                log.info("worker exits: %s", "its Flower executor is gone" if gone else "idle")
                _cleanup(address)
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    with Listener(address, family="AF_UNIX", authkey=authkey) as listener:
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError) as err:  # a client that failed authentication
                log.warning("rejected a connection: %s", err)
                continue
            with conn, busy:
                last[0] = time.monotonic()
                try:
                    request = decode(conn.recv_bytes())
                    if request.kind == FINISH:
                        conn.send_bytes(encode(Payload(FINISH)))
                        break
                    reply = handler.handle(request)
                except Exception as err:  # noqa: BLE001 - every failure goes back to the server
                    log.error("request failed: %s", "".join(traceback.format_exception(err)))
                    reply = error_payload(err)
                try:
                    conn.send_bytes(encode(reply))
                except OSError as err:
                    log.warning("could not answer (the ClientApp went away): %s", err)
                last[0] = time.monotonic()
    _cleanup(address)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _cleanup(address: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(address)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m codream.federation.flower.worker`; secrets arrive as JSON on stdin."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True)
    p.add_argument("--watch-pid", type=int, default=None)
    p.add_argument("--idle-timeout", type=float, default=600.0)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s codream-worker %(levelname)s %(message)s")
    spec = json.loads(sys.stdin.readline())
    sys.stdin.close()
    authkey = bytes.fromhex(spec["authkey"])
    handler = load_handler(spec["handler"], spec["node_config"])
    serve(args.address, authkey, handler, watch_pid=args.watch_pid, idle_timeout=args.idle_timeout)


if __name__ == "__main__":
    main()
