"""The Flower engine without Flower processes: server and node objects joined by an in-process loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import numpy as np

from codream.aggregation import AggregationRound, Aggregator, create_aggregator
from codream.federation.config import DistillConfig, DreamConfig, FederationConfig
from codream.federation.flower.engine import CodreamNode, CodreamServer, config_to_dict
from codream.federation.flower.serverapp import connect_clients
from codream.federation.flower.wire import decode, encode
from codream.federation.flower.worker import error_payload
from codream.federation.simulation import Federation
from codream.secagg.runner import Dropout, DropoutSchedule, Stage


def tiny_config(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=4,
        alpha=None,
        samples_per_client=60,
        limit_test=100,
        models=("mlp",),
        rounds=2,
        seed=5,
        method="conditional",
        dream=DreamConfig(batch_size=8, global_steps=2),
        distill=DistillConfig(kd_steps=3, batch_size=8, warmup_steps=10, buffer_size=32),
    )
    base.update(overrides)
    return FederationConfig(**base)


class Loopback:
    """A `Transport` that hands each request straight to an in-process `CodreamNode`.

    `crash` = (node, kind, round, vector): that node stops answering from that request on, as a
    killed SuperNode does. `node_config` (or `node_config(i)` for node i) is added to each node's own
    configuration.
    """

    def __init__(
        self,
        num_nodes: int,
        crash: tuple[int, str, int, int] | None = None,
        *,
        aggregation: str = "secure",
        node_config: Mapping[str, object] | Callable[[int], Mapping[str, object]] | None = None,
    ) -> None:
        def own(i: int) -> Mapping[str, object]:
            return node_config(i) if callable(node_config) else (node_config or {})

        self.nodes = {
            100 + i: CodreamNode(
                {"partition-id": i, "num-partitions": num_nodes, "aggregation": aggregation, **own(i)}
            )
            for i in range(num_nodes)
        }
        self.crash = crash
        self.crashed: set[int] = set()

    def node(self, client_id: int) -> CodreamNode:
        return self.nodes[100 + client_id]

    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def exchange(self, requests, *, timeout):
        out = {}
        for node, body in requests.items():
            request = decode(body)
            if self.crash is not None and node == 100 + self.crash[0]:
                _, kind, r, j = self.crash
                if (
                    request.kind == kind
                    and request.fields.get("round") == r
                    and request.fields.get("vector") == j
                ):
                    self.crashed.add(node)
            if node in self.crashed:
                continue
            try:
                reply = self.nodes[node].handle(request)
            except Exception as err:  # noqa: BLE001 - as the worker does
                reply = error_payload(err)
            out[node] = encode(reply)
        return out


def run_loopback(config, tmp_path, *, aggregation="secure", crash=None, transport=None, **run_options):
    """Run `config` through a `CodreamServer` over `transport` (default: a `Loopback` of its nodes)."""
    run_config = {
        "codream-config": json.dumps(config_to_dict(config)),
        "aggregation": aggregation,
        "out-dir": str(tmp_path),
        "record-trace": True,
        **run_options,
    }
    server = CodreamServer(run_config)
    if transport is None:
        transport = Loopback(config.num_clients, crash, aggregation=aggregation)
    channel, ready = connect_clients(
        transport,
        num_nodes=config.num_clients,
        setup=server.setup_payload(),
        wait_timeout=1,
        setup_timeout=1,
        step_timeout=1,
    )
    return server.run(channel, ready), channel


class Tracing(Aggregator):
    """An aggregator that keeps every sum its inner one returns, by (round, release index)."""

    def __init__(self, inner: Aggregator) -> None:
        self.inner = inner
        self.name = inner.name
        self.mode = inner.mode
        self.sums: dict[tuple[int, int], tuple[np.ndarray, tuple[int, ...]]] = {}
        self.reports = []

    def open_round(self, *, round_index, participants, specs):
        inner = self.inner.open_round(round_index=round_index, participants=participants, specs=specs)
        outer = self

        class _Round(AggregationRound):
            def __init__(self) -> None:
                super().__init__(round_index=round_index, participants=participants, specs=specs)

            def sum(self, spec, vectors, *, context=b""):
                res = inner.sum(spec, vectors, context=context)
                outer.sums[(round_index, self._next)] = (
                    np.asarray(res.total, dtype=np.float64),
                    res.contributors,
                )
                self._next += 1
                return res

            def close(self):
                report = inner.close()
                outer.reports.append(report)
                return report

        return _Round()


def in_process_twin(
    config, aggregation, *, graph="complete", crash=None, noise_multiplier=None, malicious=False
):
    """The in-process run a Flower run of `config` must equal: (federation after its rounds, tracer).

    `crash` = (client, round, release): the client never sends that release and is gone afterwards,
    as a SuperNode killed there. Secure runs seed the rounding coins with the run seed, as every
    node does; secure+dp runs take `noise_multiplier` (the nodes' own) and OS randomness.
    """
    schedules = {}
    if crash is not None:
        cid, r, j = crash
        schedules = {r: DropoutSchedule({cid: Dropout(Stage.MASKED_INPUT, j)})}
    options = {}
    if aggregation == "secure+dp":
        options = {"noise_multiplier": noise_multiplier, "delta": 1e-5}
    if aggregation == "secure":
        options["rounding_seed"] = config.seed
    tracer = Tracing(
        create_aggregator(aggregation, graph=graph, schedules=schedules, malicious=malicious, **options)
    )
    fed = Federation(config, aggregator=tracer)
    if crash is not None:
        fed.transport.depart(crash[0], crash[1])
    fed.run()
    return fed, tracer
