"""The in-process engine: every client and the server in one process, talking through the seam.

`Federation` builds the clients (data partition, one model per client, a trainer each) and the server,
and runs rounds with the one round script (`codream.federation.round.RoundLoop`) over the in-process
transport `InProcessClients`: each release is every cohort client's `client_release`, summed through
the in-process seam; nothing a client computes reaches the server any other way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..aggregation import Aggregator, ReleaseKind, RoundReport, create_aggregator
from ..distill import TrainerFactory
from ..exceptions import ConfigError
from .client import ClientRole
from .config import FederationConfig
from .parties import build_client, build_server, default_trainer_factory, load_federation_data
from .round import (
    Broadcast,
    Learned,
    Lesson,
    Release,
    RoundClients,
    RoundLoop,
    RoundMetrics,
    client_release,
    cohort_indices,
)
from .seeding import stream

__all__ = ["Federation", "InProcessClients", "RoundMetrics", "cohort_indices", "default_trainer_factory"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _generator(*seed_parts: int) -> torch.Generator:
    """The learning loop's seeded stream (`codream.federation.seeding.stream`)."""
    return stream(*seed_parts)


class InProcessClients(RoundClients):
    """The in-process transport: every client's `ClientRole` called directly, summed by an `Aggregator`.

    A release asks every cohort client, including those the aggregator's dropout schedule crashes
    (the seam leaves out what a crashed client would have sent). Every cohort client learns from
    the released dreams. The metrics it reports are what a server could know: dream losses only
    beside plain releases, as the Flower nodes send them.
    """

    def __init__(
        self,
        clients: Sequence[ClientRole],
        aggregator: Aggregator,
        x_test: Tensor,
        y_test: Tensor,
        *,
        student=None,
        validation: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.aggregator = aggregator
        self.x_test, self.y_test = x_test, y_test
        self.validation = validation  # (x_val, y_val): the split carved before the partition
        self.student = student  # the server's student model, for the adversarial dream term
        self.warmed: set[int] = set()
        #: Dream losses travel beside plain releases only: secure clients send nothing in the clear.
        self.losses_released = not aggregator.mode.secure
        #: Clients gone for good (a killed process, simulated), by the round they left in: they do not
        #: learn in that round and are not sampled again. Their crash inside the round is the
        #: aggregator's to simulate (`LocalAggregator(schedules=...)`).
        self.gone: dict[int, int] = {}
        self._round = None
        self._round_index = -1
        self._cohort: list[int] = []

    def depart(self, client_id: int, round_index: int) -> None:
        """Client `client_id` leaves the federation in round `round_index` (see `gone`)."""
        self.gone[client_id] = round_index

    def available(self, round_index: int, cohort: Sequence[int]) -> list[int]:
        return [c for c in cohort if self.gone.get(c, round_index) >= round_index]

    def warm_up(self, cohort: Sequence[int]) -> list[float]:
        losses = []
        for cid in cohort:
            if cid not in self.warmed:
                losses.append(self.clients[cid].warm_up())
                self.warmed.add(cid)
        return losses

    def open(self, round_index: int, cohort: Sequence[int], specs) -> None:
        self._round_index = round_index
        self._cohort = list(cohort)
        self._round = self.aggregator.open_round(
            round_index=round_index, participants=self._cohort, specs=specs
        )

    def release(self, b: Broadcast) -> Release:
        assert self._round is not None, "release before open"
        vectors = {cid: client_release(self.clients[cid], b, student=self.student) for cid in self._cohort}
        result = self._round.sum(b.spec, vectors, context=b.context())
        losses: tuple[float, ...] = ()
        if b.spec.kind is ReleaseKind.DREAM_GRADIENT and self.losses_released:
            # Of the clients whose release was summed; only plain clients send a loss beside it.
            terms = [self.clients[c].last_terms for c in result.contributors]
            losses = tuple(float(t.total) for t in terms if t is not None)
        return Release(result, losses)

    def close(self) -> RoundReport:
        assert self._round is not None, "close before open"
        report = self._round.close()
        self._round = None
        return report

    def learn(self, lessons: Mapping[int, Sequence[Lesson]], progress: Progress) -> dict[int, Learned]:
        lessons = {c: items for c, items in lessons.items() if self.gone.get(c, 1 << 62) > self._round_index}
        stats = {}
        for i, (cid, items) in enumerate(lessons.items()):
            client = self.clients[cid]
            for xb, yb in items:
                client.acquire(xb, yb)
            stats[cid] = client.distill()
            progress("distill", i + 1, len(lessons))
        out = {}
        for i, cid in enumerate(lessons):
            client = self.clients[cid]
            acc = client.evaluate(self.x_test, self.y_test)
            val = client.evaluate(*self.validation) if self.validation is not None else None
            out[cid] = Learned(acc, stats[cid].kd_loss, stats[cid].ce_loss, val)
            progress("evaluate", i + 1, len(lessons))
        return out


class Federation:
    """CoDream with all parties in one process.

    Args:
        config: the federation.
        aggregator: the seam (default: the in-process plain one).
        trainer_factory: builds each client's `LocalTrainer` (default: `SGDTrainer`).
        dataset: an already loaded `codream.data.Dataset` (default: load `config.dataset`).
    Raises:
        ConfigError, DataError: for an invalid configuration or missing data.
    """

    def __init__(
        self,
        config: FederationConfig,
        aggregator: Aggregator | None = None,
        trainer_factory: TrainerFactory | None = None,
        *,
        dataset=None,
    ) -> None:
        self.config = config
        self.aggregator = aggregator if aggregator is not None else create_aggregator("plain")
        data = load_federation_data(config, dataset)
        self.dataset = data.dataset
        self.x_test, self.y_test = data.x_test, data.y_test
        self.parts = data.parts
        self.clients: list[ClientRole] = [
            build_client(config, data, cid, trainer_factory) for cid in range(config.num_clients)
        ]
        self.server = build_server(config, data.input_shape, data.num_classes)
        student = self.server.student.model if self.server.student is not None else None
        val = None if self.dataset.x_val is None else (self.dataset.x_val, self.dataset.y_val)
        self.transport = InProcessClients(
            self.clients, self.aggregator, self.x_test, self.y_test, student=student, validation=val
        )
        self.loop = RoundLoop(config, self.server, self.transport, evaluate_student=self._evaluate)

    def _evaluate(self, model) -> float:
        from ..evaluation import accuracy

        return float(accuracy(model, self.x_test, self.y_test))

    @property
    def round(self) -> int:
        return self.loop.round

    @property
    def history(self) -> list[RoundMetrics]:
        return self.loop.history

    @property
    def client_ids(self) -> list[int]:
        return [c.client_id for c in self.clients]

    @property
    def last_dreams(self) -> tuple[Tensor, Tensor]:
        """The last round's dreams x (B, C, H, W) and aggregated soft labels (B, K)."""
        if self.server.x is None or self.server.soft_labels is None:
            raise ConfigError("no round has finished yet")
        return self.server.x, self.server.soft_labels

    def cohort(self, round_index: int) -> list[ClientRole]:
        """The clients taking part in round `round_index`: all, or a seeded sample without replacement."""
        return [self.clients[i] for i in self.loop.cohort(round_index)]

    def evaluate(self) -> list[float]:
        """Every client's accuracy on the test set."""
        return [c.evaluate(self.x_test, self.y_test) for c in self.clients]

    def run_round(self, progress: Progress | None = None) -> RoundMetrics:
        """Run one CoDream round (`RoundLoop.run_round`); its metrics are appended to `history`."""
        return self.loop.run_round(progress)

    def run(self, rounds: int | None = None, progress: Progress | None = None) -> list[RoundMetrics]:
        """Run `rounds` rounds (default `config.rounds`); returns their metrics."""
        n = self.config.rounds if rounds is None else rounds
        return [self.run_round(progress) for _ in range(n)]

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this federation stands (between rounds)."""
        loop = self.loop.state_dict()
        return {
            "round": loop["round"],
            "warmed": sorted(self.transport.warmed),
            "best": loop["best"],
            "best_mean": loop["best_mean"],
            "clients": [c.state_dict() for c in self.clients],
            "server": self.server.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; the next round then equals the unbroken run's, bit for bit.

        Raises:
            ConfigError: when the checkpoint has a different number of clients.
        """
        if len(state["clients"]) != len(self.clients):
            raise ConfigError(
                f"checkpoint has {len(state['clients'])} clients, this federation {len(self.clients)}"
            )
        for client, cs in zip(self.clients, state["clients"], strict=True):
            client.load_state_dict(cs)
        self.server.load_state_dict(state["server"])
        self.loop.load_state_dict(state)
        self.transport.warmed = {int(cid) for cid in state["warmed"]}
        torch.set_rng_state(state["torch_rng"])
