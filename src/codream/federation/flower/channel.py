"""The ServerApp's side of the wire: send one engine payload per client, collect answers, with a deadline.

`ClientChannel` is what an engine's server logic talks to; it knows clients by their codream ids.
A client that does not answer a step within the step timeout, answers with a Flower error, whose
answer does not decode, or whose answer's fields do not read (`ClientChannel.read`), is dropped for
the rest of the run with a logged reason: it is never asked again, and the protocol goes on with the
others if enough remain (the engine decides what "enough" is). A crafted reply costs its sender its
place in the run, never the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from ...exceptions import CodreamError, InvalidMessage
from .wire import Payload, decode, encode

__all__ = ["ClientChannel", "FlowerChannel", "Transport"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Transport(Protocol):
    """Moves one request per node and returns the answers that arrived in time, by node."""

    def node_ids(self) -> list[int]: ...

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]: ...


class FlowerChannel:
    """A `Transport` over a Flower `Grid`: one `query.codream` message per node, polled replies.

    Args:
        grid: the ServerApp's grid.
        poll_interval: seconds between pulls for replies (Flower's own `send_and_receive` waits 3 s).
    """

    def __init__(self, grid, *, poll_interval: float = 0.05) -> None:
        self.grid = grid
        self.poll_interval = poll_interval

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in self.grid.get_node_ids())

    def exchange(self, requests: Mapping[int, bytes], *, timeout: float) -> dict[int, bytes]:
        from flwr.app import ConfigRecord, Message, RecordDict

        from .clientapp import ACTION, PAYLOAD, RECORD

        messages = [
            Message(
                RecordDict({RECORD: ConfigRecord({PAYLOAD: body})}),
                dst_node_id=node,
                message_type=f"query.{ACTION}",
                ttl=max(60.0, 2 * timeout),
            )
            for node, body in requests.items()
        ]
        ids = list(self.grid.push_messages(messages))
        pending = {mid: node for mid, node in zip(ids, requests, strict=True) if mid}
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.has_error():
                    # Flower's own refusal (e.g. an app the node's --trusted-entities cannot verify):
                    # passed on as an error answer, so the client is dropped with Flower's reason.
                    reason = str(reply.error.reason)[:1000]
                    log.warning("node %d answered with a Flower error: %s", node, reason)
                    answers[node] = encode(Payload("error", {"type": "FlowerError", "detail": reason}))
                    continue
                try:
                    body = reply.content.config_records[RECORD][PAYLOAD]
                except KeyError:
                    log.warning("node %d answered without a codream payload", node)
                    continue
                if isinstance(body, bytes):
                    answers[node] = body
                else:
                    log.warning("node %d answered with a %s payload, not bytes", node, type(body).__name__)
            if pending:
                time.sleep(self.poll_interval)
        for node in pending.values():
            log.debug("node %d did not answer within %.1f s", node, timeout)
        return answers


class ClientChannel:
    """Clients by codream id over a `Transport`; tracks who has been dropped.

    Args:
        transport: moves bytes to nodes.
        nodes: codream client id -> transport node id.
        step_timeout: seconds each protocol step waits for answers.
    """

    def __init__(self, transport: Transport, nodes: Mapping[int, int], *, step_timeout: float) -> None:
        self.transport = transport
        self.nodes = dict(nodes)
        self.step_timeout = step_timeout
        self.dropped: dict[int, str] = {}
        #: Transport nodes refused a client id when the run connected, and why (see connect_clients).
        self.refused_nodes: dict[int, str] = {}
        #: Those of them that were set up (so run a worker that should be told the run is over).
        self.refused_workers: list[int] = []
        self.bytes_sent: dict[int, int] = dict.fromkeys(self.nodes, 0)
        self.bytes_received: dict[int, int] = dict.fromkeys(self.nodes, 0)
        #: Server-to-nodes exchanges so far and the wall time they took: the deployed round's cost
        #: is mostly their count times the transport's latency.
        self.exchanges = 0
        self.exchange_seconds = 0.0

    @property
    def alive(self) -> list[int]:
        return sorted(c for c in self.nodes if c not in self.dropped)

    def drop(self, client: int, why: str) -> None:
        if client not in self.dropped:
            log.warning("client %d dropped: %s", client, why)
            self.dropped[client] = why

    def exchange(
        self, requests: Mapping[int, Payload], *, timeout: float | None = None, errors_drop: bool = True
    ) -> dict[int, Payload]:
        """Send each alive client its request; return the decoded answers of those that answered.

        Clients that time out, fail in transport, or send undecodable bytes are dropped. An answer
        of kind "error" drops the client too unless `errors_drop` is False (then it is returned).
        Answers come in the order the transport returned them (for Flower: the order they arrived).
        """
        wanted = {c: p for c, p in requests.items() if c not in self.dropped}
        unknown = set(wanted) - set(self.nodes)
        if unknown:
            raise CodreamError(f"requests for unknown clients {sorted(unknown)}")
        raw = {self.nodes[c]: encode(p) for c, p in wanted.items()}
        for c in wanted:
            self.bytes_received[c] += len(raw[self.nodes[c]])
        t0 = time.perf_counter()
        by_node = self.transport.exchange(raw, timeout=self.step_timeout if timeout is None else timeout)
        self.exchanges += 1
        self.exchange_seconds += time.perf_counter() - t0
        answers: dict[int, Payload] = {}
        client_of = {self.nodes[c]: c for c in wanted}
        for node, body in by_node.items():
            c = client_of.get(node)
            if c is None:  # an answer nobody asked this node for
                continue
            self.bytes_sent[c] += len(body)
            try:
                payload = decode(body)
            except InvalidMessage as err:
                self.drop(c, f"undecodable answer to {wanted[c].kind!r}: {err}")
                continue
            if payload.kind == "error" and errors_drop:
                self.drop(
                    c,
                    f"error on {wanted[c].kind!r}: {str(payload.fields.get('type'))[:100]}: "
                    f"{str(payload.fields.get('detail'))[:1000]}",
                )
                continue
            answers[c] = payload
        for c in wanted:
            if self.nodes[c] not in by_node:
                self.drop(c, f"no answer to {wanted[c].kind!r}")
        return answers

    def read(
        self, answers: Mapping[int, Payload], reader: Callable[[Payload], T], *, what: str
    ) -> dict[int, T]:
        """`reader` applied to each answer; a client whose answer it refuses is dropped, with why.

        Readers use `Payload`'s typed accessors (`integer`, `number`, `array`, ...), which raise
        `InvalidMessage` and nothing else for a missing or mistyped value, so reading a reply cannot
        fail the run. Returns what was read, by client, in the order of `answers`.
        """
        out: dict[int, T] = {}
        for c, payload in answers.items():
            try:
                out[c] = reader(payload)
            except InvalidMessage as err:
                self.drop(c, f"malformed {what}: {err}")
        return out

    def broadcast(
        self, payload: Payload, clients: Iterable[int] | None = None, **kwargs
    ) -> dict[int, Payload]:
        """The same request to every alive client (or to `clients`)."""
        targets = self.alive if clients is None else [c for c in clients if c not in self.dropped]
        return self.exchange({c: payload for c in targets}, **kwargs)
