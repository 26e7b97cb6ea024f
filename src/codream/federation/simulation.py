"""The in-process engine: every client and the server in one process, talking through the seam.

`Federation` builds the clients (data partition, one model per client, a trainer each) and the server,
and runs rounds. Each round opens one aggregation round with the full plan of vectors, then asks for
every sum in plan order; nothing a client computes reaches the server any other way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..aggregation import Aggregator, RoundReport, create_aggregator, release_context
from ..distill import TrainerFactory, sgd_trainer_factory
from ..exceptions import ConfigError
from .client import ClientRole
from .config import FederationConfig, Method
from .server import ServerRole, StudentTrainer

__all__ = ["Federation", "RoundMetrics"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """What one round did and cost.

    Attributes:
        round: 0-based round index.
        accuracies: the test accuracy of each client of the round's cohort after the round, in
            `participants` order (final, not selected).
        mean_accuracy, std_accuracy: over clients.
        best_accuracies: each client's best test accuracy over rounds so far (the paper's figure;
            selected on the test set, so optimistic).
        best_mean_accuracy: the best per-round mean accuracy so far (likewise optimistic).
        student_accuracy: the server's student, if it has one.
        class_coverage: distinct argmax classes of the aggregated soft labels of this round's dreams.
        label_confidence: mean max probability of the aggregated soft labels.
        dream_loss_start, dream_loss_end: mean over clients of their dream loss at the first and last
            global step.
        kd_loss, ce_loss: mean over clients of the round's KD and interleaved CE losses.
        warmup_loss: mean warm-up CE loss (round 0 only, else 0).
        survivors: clients whose contributions reached the last sum of the round.
        bytes_sent_per_client: as reported by the aggregator.
        seconds: wall time of the round; dream_seconds of its dream optimisation.
        dream_steps_per_second: global dream steps (all clients) per second.
        aggregation: the aggregator's report.
        participants: the round's cohort (every client unless `clients_per_round` is set).
    """

    round: int
    accuracies: tuple[float, ...]
    mean_accuracy: float
    std_accuracy: float
    best_accuracies: tuple[float, ...]
    best_mean_accuracy: float
    student_accuracy: float | None
    class_coverage: int
    label_confidence: float
    dream_loss_start: float
    dream_loss_end: float
    kd_loss: float
    ce_loss: float
    warmup_loss: float
    survivors: tuple[int, ...]
    bytes_sent_per_client: dict[int, int]
    seconds: float
    dream_seconds: float
    dream_steps_per_second: float
    aggregation: RoundReport = field(repr=False)
    participants: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists, client ids become strings)."""
        d = asdict(self)
        d["accuracies"] = list(self.accuracies)
        d["best_accuracies"] = list(self.best_accuracies)
        d["survivors"] = list(self.survivors)
        d["participants"] = list(self.participants)
        d["bytes_sent_per_client"] = {str(k): int(v) for k, v in self.bytes_sent_per_client.items()}
        agg = d["aggregation"]
        agg["participants"] = list(self.aggregation.participants)
        agg["survivors"] = list(self.aggregation.survivors)
        agg["bytes_sent_per_client"] = {
            str(k): int(v) for k, v in self.aggregation.bytes_sent_per_client.items()
        }
        return d


def default_trainer_factory(config: FederationConfig) -> TrainerFactory:
    """The plain SGD trainer with the configuration's learning settings."""
    return sgd_trainer_factory(config.distill)


def _generator(*seed_parts: int) -> torch.Generator:
    """A torch generator seeded from a tuple of ints (independent streams per purpose and client)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def cohort_indices(num_clients: int, per_round: int | None, seed: int, round_index: int) -> list[int]:
    """Round `round_index`'s cohort, sorted: every client, or `per_round` of them drawn by the run seed.

    Both engines draw it the same way. The cohort is public (the server runs the protocol with it), so
    a seeded draw costs nothing: client-level DP is accounted without amplification by sampling.
    """
    if per_round is None or per_round >= num_clients:
        return list(range(num_clients))
    order = torch.randperm(num_clients, generator=_generator(seed, 5, round_index))
    return sorted(order[:per_round].tolist())


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
        from ..data import load_dataset, partition
        from ..models import build_model

        self.config = config
        self.aggregator = aggregator if aggregator is not None else create_aggregator("plain")
        factory = trainer_factory if trainer_factory is not None else default_trainer_factory(config)
        if dataset is None:
            dataset = load_dataset(
                config.dataset, config.data_dir, limit_test=config.limit_test, seed=config.seed
            )
        self.dataset = dataset
        self.x_test, self.y_test = dataset.x_test, dataset.y_test
        if config.limit_test is not None and config.limit_test < len(self.y_test):
            self.x_test, self.y_test = self.x_test[: config.limit_test], self.y_test[: config.limit_test]
        self.parts = partition(
            dataset.y_train,
            config.num_clients,
            alpha=config.alpha,
            samples_per_client=config.samples_per_client,
            seed=config.seed,
        )
        self.clients: list[ClientRole] = []
        for cid, (name, idx) in enumerate(zip(config.client_models(), self.parts, strict=True)):
            idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
            x_k, y_k = dataset.x_train[idx_t].to(config.device), dataset.y_train[idx_t].to(config.device)
            model = build_model(
                name,
                dataset.input_shape,
                dataset.num_classes,
                norm=config.norm,
                seed=config.seed * 1009 + cid,
            ).to(config.device)
            trainer = factory(model, x_k, y_k, _generator(config.seed, 1, cid))
            self.clients.append(
                ClientRole(
                    cid, trainer, y_k.cpu(), dataset.num_classes, config, _generator(config.seed, 2, cid)
                )
            )
        student = None
        if config.distill.student is not None:
            s_model = build_model(
                config.distill.student,
                dataset.input_shape,
                dataset.num_classes,
                norm=config.norm,
                seed=config.seed * 1009 + 997,
            ).to(config.device)
            student = StudentTrainer(s_model, config, _generator(config.seed, 3))
        self.server = ServerRole(
            config, dataset.input_shape, dataset.num_classes, _generator(config.seed, 4), student=student
        )
        self.round = 0
        self._warmed: set[int] = set()
        self._best: list[float] = [0.0] * config.num_clients
        self._best_mean = 0.0
        self.history: list[RoundMetrics] = []

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
        chosen = cohort_indices(
            len(self.clients), self.config.clients_per_round, self.config.seed, round_index
        )
        return [self.clients[i] for i in chosen]

    def evaluate(self) -> list[float]:
        """Every client's accuracy on the test set."""
        return [c.evaluate(self.x_test, self.y_test) for c in self.clients]

    def run_round(self, progress: Progress | None = None) -> RoundMetrics:
        """Run one CoDream round: dreams, soft labels, distillation, evaluation.

        Args:
            progress: called as progress(stage, done, total) with stage in {"warmup", "dream",
                "distill", "evaluate"}.
        Returns:
            The round's metrics (also appended to `history`).
        """
        cfg = self.config
        r = self.round
        say = progress or (lambda stage, done, total: None)
        t0 = time.perf_counter()
        warmup_loss = 0.0
        cohort = self.cohort(r)
        cold = [c for c in cohort if c.client_id not in self._warmed]
        if cold:
            losses = []
            for i, client in enumerate(cold):
                losses.append(client.warm_up())
                self._warmed.add(client.client_id)
                say("warmup", i + 1, len(cold))
            warmup_loss = float(np.mean(losses))

        server = self.server
        specs = server.specs()
        plan = iter(specs)
        agg = self.aggregator.open_round(
            round_index=r, participants=[c.client_id for c in cohort], specs=specs
        )
        x = server.begin_round(r)
        targets = None
        if cfg.method is Method.CONDITIONAL:
            spec = next(plan)
            res = agg.sum(
                spec, {c.client_id: c.class_weights() for c in cohort}, context=release_context(r, spec)
            )
            targets = server.receive_class_weights(res)
        student = server.student.model if server.student is not None else None
        for client in cohort:
            client.begin_round(r, targets=targets, student=student)

        t_dream = time.perf_counter()
        loss_start = loss_end = 0.0
        for s in range(cfg.dream.global_steps):
            vectors = {c.client_id: c.dream_gradient(x, s) for c in cohort}
            step_loss = float(np.mean([c.last_terms.total for c in cohort]))
            if s == 0:
                loss_start = step_loss
            loss_end = step_loss
            spec = next(plan)
            context = release_context(r, spec, x.numpy(), None if targets is None else targets.numpy())
            x = server.apply_dream_step(agg.sum(spec, vectors, context=context))
            say("dream", s + 1, cfg.dream.global_steps)
        dream_seconds = time.perf_counter() - t_dream

        spec = next(plan)
        context = release_context(r, spec, x.numpy(), None if targets is None else targets.numpy())
        res = agg.sum(spec, {c.client_id: c.soft_labels(x) for c in cohort}, context=context)
        _, target_logits = server.receive_soft_labels(res)
        report = agg.close()
        server.bank_round()

        kd, ce = [], []
        for i, client in enumerate(cohort):
            if server.bank is None:
                client.acquire(x, target_logits)
            else:
                # This round's dreams and every earlier banked round the client has not had yet.
                for xb, yb in server.bank.take(client.client_id):
                    client.acquire(xb, yb)
            stats = client.distill()
            kd.append(stats.kd_loss)
            ce.append(stats.ce_loss)
            say("distill", i + 1, len(cohort))
        server.distill_student()

        accs = []
        for i, client in enumerate(cohort):
            accs.append(client.evaluate(self.x_test, self.y_test))
            say("evaluate", i + 1, len(cohort))
        student_acc = None
        if server.student is not None:
            from ..evaluation import accuracy

            student_acc = float(accuracy(server.student.model, self.x_test, self.y_test))
        for client, a in zip(cohort, accs, strict=True):
            self._best[client.client_id] = max(self._best[client.client_id], a)
        mean_acc = float(np.mean(accs))
        self._best_mean = max(self._best_mean, mean_acc)
        probs = server.label_probabilities()
        metrics = RoundMetrics(
            round=r,
            accuracies=tuple(accs),
            mean_accuracy=mean_acc,
            std_accuracy=float(np.std(accs)),
            best_accuracies=tuple(self._best),
            best_mean_accuracy=self._best_mean,
            student_accuracy=student_acc,
            class_coverage=int(probs.argmax(dim=1).unique().numel()),
            label_confidence=float(probs.max(dim=1).values.mean()),
            dream_loss_start=loss_start,
            dream_loss_end=loss_end,
            kd_loss=float(np.mean(kd)),
            ce_loss=float(np.mean(ce)),
            warmup_loss=warmup_loss,
            survivors=tuple(res.contributors),
            bytes_sent_per_client=dict(report.bytes_sent_per_client),
            seconds=time.perf_counter() - t0,
            dream_seconds=dream_seconds,
            dream_steps_per_second=cfg.dream.global_steps / dream_seconds if dream_seconds > 0 else math.inf,
            aggregation=report,
            participants=tuple(c.client_id for c in cohort),
        )
        self.history.append(metrics)
        self.round += 1
        log.info(
            "round %d: mean acc %.4f +- %.4f, coverage %d, confidence %.3f, %.1fs",
            r + 1,  # counted from 1, as codream run's lines and reports count rounds
            mean_acc,
            metrics.std_accuracy,
            metrics.class_coverage,
            metrics.label_confidence,
            metrics.seconds,
        )
        return metrics

    def run(self, rounds: int | None = None, progress: Progress | None = None) -> list[RoundMetrics]:
        """Run `rounds` rounds (default `config.rounds`); returns their metrics."""
        n = self.config.rounds if rounds is None else rounds
        return [self.run_round(progress) for _ in range(n)]

    def state_dict(self) -> dict:
        """Everything needed to continue exactly where this federation stands (between rounds)."""
        return {
            "round": self.round,
            "warmed": sorted(self._warmed),
            "best": list(self._best),
            "best_mean": self._best_mean,
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
        self.round = int(state["round"])
        self._warmed = {int(cid) for cid in state["warmed"]}
        self._best = [float(b) for b in state["best"]]
        self._best_mean = float(state["best_mean"])
        torch.set_rng_state(state["torch_rng"])
