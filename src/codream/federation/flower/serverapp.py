"""The Flower ServerApp: waits for the nodes, sets each one up, and drives the chosen engine's rounds.

Everything the ServerApp needs comes from the Flower run config (the app's pyproject.toml, see
`app.write_app_dir`): which engine (`handler`), how many nodes to wait for, the step timeouts, the
codream configuration as JSON, and where to write results.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ...exceptions import CodreamError
from .channel import ClientChannel, FlowerChannel, Transport
from .wire import Payload, encode

__all__ = ["app", "connect_clients"]

log = logging.getLogger(__name__)

RESULTS_FILE = "flower-results.json"

_SERVERS = {
    "echo": "codream.federation.flower.echo:EchoServer",
    "codream": "codream.federation.flower.engine:CodreamServer",
}

app = ServerApp()


def connect_clients(
    transport: Transport,
    *,
    num_nodes: int,
    setup: Payload,
    wait_timeout: float,
    setup_timeout: float,
    step_timeout: float,
) -> tuple[ClientChannel, dict[int, Payload]]:
    """Wait for `num_nodes` nodes, send each the setup payload, and map them by their client id.

    Returns:
        The channel to the clients that set up, and each one's set-up answer by client id.

    Raises:
        CodreamError: when too few nodes connect in time, or two nodes claim the same client id.
    """
    deadline = time.monotonic() + wait_timeout
    while len(nodes := transport.node_ids()) < num_nodes:
        if time.monotonic() > deadline:
            raise CodreamError(
                f"only {len(nodes)} of {num_nodes} SuperNodes connected within {wait_timeout:.0f} s"
            )
        time.sleep(0.2)
    # Every connected node is set up; a node for a client the run does not have fails its set-up.
    provisional = ClientChannel(transport, {n: n for n in nodes}, step_timeout=setup_timeout)
    answers = provisional.broadcast(setup)
    by_client: dict[int, int] = {}
    for node, payload in sorted(answers.items()):
        cid = payload.get("client_id", int)
        if cid in by_client:
            raise CodreamError(
                f"SuperNodes {by_client[cid]} and {node} both claim client id {cid}; "
                "give each SuperNode its own partition-id"
            )
        by_client[cid] = node
    channel = ClientChannel(transport, by_client, step_timeout=step_timeout)
    for node, why in provisional.dropped.items():
        log.warning("SuperNode %d failed set-up: %s", node, why)
    return channel, {cid: answers[node] for cid, node in by_client.items()}


def _load_server(name: str):
    try:
        module, attr = _SERVERS[name].split(":")
    except KeyError:
        raise CodreamError(f"unknown engine {name!r}; choose one of {sorted(_SERVERS)}") from None
    return getattr(importlib.import_module(module), attr)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the engine named by the run config's `handler` and write its results to `out-dir`."""
    rc = dict(context.run_config)
    _show_progress()
    out_dir = Path(str(rc.get("out-dir", "."))).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE
    started = time.time()
    try:
        server_cls = _load_server(str(rc.get("handler", "codream")))
        server = server_cls(rc)
        channel, ready = connect_clients(
            FlowerChannel(grid),
            num_nodes=int(rc["num-nodes"]),
            setup=server.setup_payload(),
            wait_timeout=float(rc.get("wait-timeout", 60.0)),
            setup_timeout=float(rc.get("setup-timeout", 120.0)),
            step_timeout=float(rc.get("step-timeout", 30.0)),
        )
        results = server.run(channel, ready)
        results["dropped"] = {str(k): v for k, v in channel.dropped.items()}
        # Tell the workers to exit; one that does not hear it exits when idle or when its node stops.
        alive = {channel.nodes[c]: encode(Payload("finish")) for c in channel.alive}
        told = channel.transport.exchange(alive, timeout=float(rc.get("finish-timeout", 30.0)))
        if len(told) < len(alive):
            log.info("%d of %d workers confirmed the end of the run", len(told), len(alive))
        results["status"] = "completed"
    except Exception as err:
        log.error("codream ServerApp failed: %s", err)
        results = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
    results["seconds"] = time.time() - started
    tmp = results_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_jsonable))
    tmp.replace(results_path)
    if results["status"] != "completed":
        raise CodreamError(results["error"])


def _show_progress() -> None:
    """Let codream's INFO lines (one per round) reach the run's log stream (`flwr run --stream`)."""
    root = logging.getLogger("codream")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("codream %(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
