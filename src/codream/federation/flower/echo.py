"""A minimal engine that exercises the deployment: each client answers a known vector, the server sums.

It needs no data and no torch, so tests of the process harness, the relay to the node workers and the
dropping of silent nodes run in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .channel import ClientChannel
from .wire import Payload

__all__ = ["EchoNode", "EchoServer", "echo_vector"]


def echo_vector(client_id: int, step: int, length: int) -> np.ndarray:
    """What client `client_id` answers at `step`: (client_id + 1) * 1000 + step, everywhere."""
    return np.full(length, (client_id + 1) * 1000 + step, dtype=np.int64)


class EchoNode:
    """The node side: its client id is its `partition-id`."""

    def __init__(self, node_config: Mapping[str, object]) -> None:
        self.client_id = int(node_config["partition-id"])  # type: ignore[arg-type]
        self.length = 0
        self.answered = 0

    def handle(self, request: Payload) -> Payload:
        if request.kind == "setup":
            self.length = int(request.get("length", int))
            return Payload("ready", {"client_id": self.client_id})
        if request.kind == "value":
            step = int(request.get("step", int))
            self.answered += 1
            return Payload(
                "value", {"answered": self.answered}, {"v": echo_vector(self.client_id, step, self.length)}
            )
        raise ValueError(f"echo node: unexpected request {request.kind!r}")


class EchoServer:
    """Sums the clients' vectors for `steps` steps; a client that stops answering leaves the sum."""

    def __init__(self, run_config: Mapping[str, object]) -> None:
        self.steps = int(run_config.get("steps", 3))  # type: ignore[arg-type]
        self.length = int(run_config.get("length", 4))  # type: ignore[arg-type]

    def setup_payload(self) -> Payload:
        return Payload("setup", {"length": self.length})

    def run(self, channel: ClientChannel, ready: Mapping[int, Payload]) -> dict:
        steps = []
        for step in range(self.steps):
            answers = channel.broadcast(Payload("value", {"step": step}))
            total = sum((a.array("v", "int64") for a in answers.values()), np.zeros(self.length, np.int64))
            steps.append({"step": step, "contributors": sorted(answers), "sum": total.tolist()})
        return {"clients": sorted(ready), "steps": steps}
