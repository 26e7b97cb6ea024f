"""The Flower ServerApp: waits for the nodes, sets each one up, and drives the chosen engine's rounds.

Everything the ServerApp needs comes from the Flower run config (the app's pyproject.toml, see
`app.write_app_dir`): which engine (`handler`), how many nodes to wait for, the step timeouts, the
codream configuration as JSON, where to write results, and optionally ``client-nodes``, which binds
each codream client id to the Flower node id registered for that client's key (see `connect_clients`).
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from ...exceptions import CodreamError, ConfigError
from .channel import ClientChannel, FlowerChannel, Transport
from .wire import Payload, encode

__all__ = ["app", "connect_clients", "parse_client_nodes"]

log = logging.getLogger(__name__)

RESULTS_FILE = "flower-results.json"

_SERVERS = {
    "echo": "codream.federation.flower.echo:EchoServer",
    "codream": "codream.federation.flower.engine:CodreamServer",
}

app = ServerApp()


def parse_client_nodes(value: object) -> dict[int, int]:
    """The run config's ``client-nodes``: ``"CID=NODE CID=NODE ..."`` (spaces or commas between).

    NODE is the Flower node id that ``flwr supernode register`` printed for that client's public key.
    An empty value means no binding.

    Raises:
        ConfigError: a malformed pair, or a client id or node id named twice.
    """
    text = str(value).strip()
    if not text:
        return {}
    mapping: dict[int, int] = {}
    for pair in re.split(r"[\s,]+", text):
        m = re.fullmatch(r"(\d+)=(\d+)", pair)
        if m is None:
            raise ConfigError(f"client-nodes: {pair!r} is not CLIENT_ID=NODE_ID")
        cid, node = int(m[1]), int(m[2])
        if cid in mapping:
            raise ConfigError(f"client-nodes names client {cid} twice")
        mapping[cid] = node
    if len(set(mapping.values())) != len(mapping):
        raise ConfigError("client-nodes binds one node to two client ids")
    return mapping


def connect_clients(
    transport: Transport,
    *,
    num_nodes: int,
    setup: Payload,
    wait_timeout: float,
    setup_timeout: float,
    step_timeout: float,
    client_nodes: Mapping[int, int] | None = None,
) -> tuple[ClientChannel, dict[int, Payload]]:
    """Wait for `num_nodes` nodes, send each the setup payload, and map them by their client id.

    A node's client id is not whatever it claims. With `client_nodes` (client id -> Flower node id),
    only the listed nodes are set up and each must claim exactly its own id. Without it, the first
    node to claim an id keeps it (first in the order the answers arrived). A node that claims an id
    it may not have (taken, bound to another node, not an integer), or whose set-up fails, is refused
    with the reason in `channel.refused_nodes` and the run goes on without it.

    Returns:
        The channel to the clients that set up, and each one's set-up answer by client id.

    Raises:
        CodreamError: when too few (listed) nodes connect in time.
    """
    from ...secagg.config import MAX_CLIENT_ID

    listed = set(client_nodes.values()) if client_nodes else None
    deadline = time.monotonic() + wait_timeout
    while True:
        nodes = transport.node_ids()
        online = [n for n in nodes if listed is None or n in listed]
        if len(online) >= num_nodes:
            break
        if time.monotonic() > deadline:
            raise CodreamError(
                f"only {len(online)} of {num_nodes} {'listed ' if listed else ''}SuperNodes connected "
                f"within {wait_timeout:.0f} s"
            )
        time.sleep(0.2)
    refused: dict[int, str] = {n: "not in the run's client-nodes" for n in nodes if n not in online}
    # Every connected (listed) node is set up; a node for a client the run does not have fails its set-up.
    provisional = ClientChannel(transport, {n: n for n in online}, step_timeout=setup_timeout)
    answers = provisional.broadcast(setup)
    claims = provisional.read(
        answers, lambda p: p.integer("client_id", minimum=0, maximum=MAX_CLIENT_ID), what="set-up answer"
    )
    by_client: dict[int, int] = {}
    for node, cid in claims.items():
        if client_nodes and client_nodes.get(cid) != node:
            bound = client_nodes.get(cid)
            refused[node] = f"claims client id {cid}, which client-nodes binds to " + (
                f"node {bound}" if bound is not None else "no node"
            )
        elif cid in by_client:
            refused[node] = f"claims client id {cid}, already bound to node {by_client[cid]}"
        else:
            by_client[cid] = node
    for node, why in provisional.dropped.items():
        refused[node] = f"failed set-up: {why}"
    for node, why in sorted(refused.items()):
        log.warning("SuperNode %d refused: %s", node, why)
    channel = ClientChannel(transport, by_client, step_timeout=step_timeout)
    channel.refused_nodes = refused
    channel.refused_workers = sorted(n for n in refused if n in answers)
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
        num_nodes = int(rc["num-nodes"])
        client_nodes = parse_client_nodes(rc.get("client-nodes", ""))
        if client_nodes and len(client_nodes) < num_nodes:
            raise ConfigError(
                f"client-nodes binds {len(client_nodes)} clients; the run waits for {num_nodes}"
            )
        channel, ready = connect_clients(
            FlowerChannel(grid),
            num_nodes=num_nodes,
            setup=server.setup_payload(),
            wait_timeout=float(rc.get("wait-timeout", 60.0)),
            setup_timeout=float(rc.get("setup-timeout", 120.0)),
            step_timeout=float(rc.get("step-timeout", 30.0)),
            client_nodes=client_nodes or None,
        )
        results = server.run(channel, ready)
        results["dropped"] = {str(k): v for k, v in channel.dropped.items()}
        results["refused_nodes"] = {str(k): v for k, v in channel.refused_nodes.items()}
        # Tell the workers to exit; one that does not hear it exits when idle or when its node stops.
        alive = {channel.nodes[c]: encode(Payload("finish")) for c in channel.alive}
        alive.update({n: encode(Payload("finish")) for n in channel.refused_workers})
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
