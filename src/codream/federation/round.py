"""The CoDream round, written once: the server's script over the clients' transport.

`RoundLoop` is the whole round as protocols/codream.md describes it: warm up newly sampled clients,
sum their class weights (conditional method; once per run, in its first round), optimise the dreams
from summed gradients, sum the soft labels, hand every client its lessons (this round's dreams, or
whatever the dream bank holds for it), and let the server's student learn. It never touches a
client: everything goes through a `RoundClients` transport, which turns one `Broadcast` into one sum
over the clients that answered.

Two transports exist. The in-process engine (`codream.federation.simulation.InProcessClients`) calls
each `ClientRole` and sums through the in-process seam; the Flower engine
(`codream.federation.flower.engine.FlowerClients`) sends the broadcast to each client's node, whose
`ClientSeam` and secure-aggregation state answer, and drives the server half of the seam over the
replies. Both compute a client's release with `client_release`, so with the same seed and plain
aggregation the two engines compute the same numbers.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..aggregation import AggregateResult, ReleaseKind, RoundReport, VectorSpec, release_context
from ..exceptions import ConfigError, InvalidMessage
from .config import FederationConfig, Method
from .seeding import stream
from .server import ServerRole

__all__ = [
    "Broadcast",
    "Learned",
    "Lesson",
    "Release",
    "RoundClients",
    "RoundLoop",
    "RoundMetrics",
    "best_round",
    "client_release",
    "cohort_indices",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
Lesson = tuple[Tensor, Tensor]  # dreams (n, C, H, W) and their target logits (n, K)


def cohort_indices(num_clients: int, per_round: int | None, seed: int, round_index: int) -> list[int]:
    """Round `round_index`'s cohort, sorted: every client, or `per_round` of them drawn by the run seed.

    Both engines draw it the same way. The cohort is public (the server runs the protocol with it), so
    a seeded draw costs nothing: client-level DP is accounted without amplification by sampling.
    """
    if per_round is None or per_round >= num_clients:
        return list(range(num_clients))
    order = torch.randperm(num_clients, generator=stream(seed, 5, round_index))
    return sorted(order[:per_round].tolist())


@dataclass(frozen=True, slots=True)
class Broadcast:
    """What the server sends the round's clients with one planned release.

    Attributes:
        round_index: the federation round.
        spec: the release the clients answer with.
        x: the current dreams (B, C, H, W), for dream and soft-label releases.
        targets: the dreams' target classes (B,), conditional method.
        begin: the round's first release after the class weights: clients take the targets now.
    """

    round_index: int
    spec: VectorSpec
    x: Tensor | None = None
    targets: Tensor | None = None
    begin: bool = False

    def context(self) -> bytes:
        """The bytes every honest client computes this release from (`release_context`)."""
        if self.spec.kind is ReleaseKind.CLASS_WEIGHTS:
            return release_context(self.round_index, self.spec)
        x = None if self.x is None else self.x.detach().cpu().numpy()
        t = None if self.targets is None else self.targets.cpu().numpy().astype(np.int64)
        return release_context(self.round_index, self.spec, x, t)


def client_release(role, b: Broadcast, *, student: nn.Module | None = None) -> np.ndarray:
    """The float vector client `role` (a `ClientRole`) releases for broadcast `b`, both engines' way.

    Raises:
        InvalidMessage: a broadcast that lacks what its release needs.
    """
    if b.begin:
        role.begin_round(b.round_index, targets=b.targets, student=student)
    kind = b.spec.kind
    if kind is ReleaseKind.CLASS_WEIGHTS:
        return role.class_weights()
    if b.x is None:
        raise InvalidMessage(f"release {b.spec.name!r} needs the dreams")
    if kind is ReleaseKind.DREAM_GRADIENT:
        return role.dream_gradient(b.x, b.spec.step)
    if kind is ReleaseKind.SOFT_LABELS:
        return role.soft_labels(b.x)
    raise InvalidMessage(f"unknown release {b.spec.name!r}")


@dataclass(frozen=True, slots=True)
class Release:
    """One release's sum and the per-client dream losses the transport could report (may be empty)."""

    result: AggregateResult
    losses: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Learned:
    """A client's answer after its lessons: test accuracy, KD loss, CE loss (None: withheld), and its
    accuracy on the validation split (None: no split, or withheld).

    A node under client-level DP withholds all four: they are measured on a model trained on its
    private data without noise, so they stay on the node.
    """

    accuracy: float | None
    kd_loss: float | None
    ce_loss: float | None
    val_accuracy: float | None = None


class RoundClients(ABC):
    """The round's transport: how broadcasts reach the clients and their sums come back."""

    @abstractmethod
    def warm_up(self, cohort: Sequence[int]) -> list[float] | None:
        """Warm up the clients of `cohort` that never learned yet; their warm-up losses (None: withheld)."""

    @abstractmethod
    def open(self, round_index: int, cohort: Sequence[int], specs: Sequence[VectorSpec]) -> None:
        """Start the round's aggregation with its plan; every client admits it or refuses it."""

    @abstractmethod
    def release(self, b: Broadcast) -> Release:
        """Ask the round's clients for release `b.spec` and sum their answers."""

    @abstractmethod
    def close(self) -> RoundReport:
        """Finish the round's aggregation; what it cost."""

    @abstractmethod
    def learn(self, lessons: Mapping[int, Sequence[Lesson]], progress: Progress) -> dict[int, Learned]:
        """Each client acquires its lessons, distils and is evaluated; the answers that came back."""

    def available(self, round_index: int, cohort: Sequence[int]) -> list[int]:
        """The clients of round `round_index`'s `cohort` the transport can still reach (default: all)."""
        return list(cohort)

    def transport_stats(self) -> dict[str, float]:
        """Counters the transport keeps (exchanges, their time); cumulative."""
        return {}


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """What one round did and cost.

    Attributes:
        round: 0-based round index.
        accuracies: the test accuracy of each client in `evaluated` after the round (final, not
            selected); empty when the clients withheld them (client-level DP on a deployment).
        mean_accuracy, std_accuracy: over those clients.
        best_accuracies: each client's best test accuracy over rounds so far (the paper's figure;
            selected on the test set, so optimistic).
        best_mean_accuracy: the best per-round mean accuracy so far (likewise optimistic).
        student_accuracy: the server's student, if it has one.
        class_coverage: distinct argmax classes of the aggregated soft labels of this round's dreams.
        label_confidence: mean max probability of the aggregated soft labels.
        dream_loss_start, dream_loss_end: mean over clients of their dream loss at the first and last
            global step (None where the transport had no losses: clients withhold them under DP).
        kd_loss, ce_loss: mean over clients of the round's KD and interleaved CE losses (None when
            withheld).
        warmup_loss: mean warm-up CE loss of the clients warmed up this round (0 if none; None when
            withheld).
        survivors: clients whose contributions reached the last sum of the round.
        bytes_sent_per_client: as reported by the aggregation.
        seconds: wall time of the round; dream_seconds of its dream optimisation.
        dream_steps_per_second: global dream steps (all clients) per second.
        aggregation: the aggregation's report.
        participants: the round's cohort (every client unless `clients_per_round` is set).
        evaluated: the clients `accuracies` belong to (the cohort, less any that stopped answering).
        exchanges, seconds_per_exchange: server-to-clients exchanges of the round and their mean wall
            time (deployed engines; None in process).
        val_accuracies: the accuracy of each client in `evaluated` on the validation split (carved
            from the training data before the partition), what the best round is selected on; None
            without a split, or when a client withheld it (deployed nodes under client-level DP).
        mean_val_accuracy: their mean (None likewise).
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
    dream_loss_start: float | None
    dream_loss_end: float | None
    kd_loss: float | None
    ce_loss: float | None
    warmup_loss: float | None
    survivors: tuple[int, ...]
    bytes_sent_per_client: dict[int, int]
    seconds: float
    dream_seconds: float
    dream_steps_per_second: float
    aggregation: RoundReport = field(repr=False)
    participants: tuple[int, ...] = ()
    evaluated: tuple[int, ...] = ()
    exchanges: int | None = None
    seconds_per_exchange: float | None = None
    val_accuracies: tuple[float, ...] | None = None
    mean_val_accuracy: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists, client ids become strings)."""
        d = asdict(self)
        for key in ("accuracies", "best_accuracies", "survivors", "participants", "evaluated"):
            d[key] = list(getattr(self, key))
        if self.val_accuracies is not None:
            d["val_accuracies"] = list(self.val_accuracies)
        d["bytes_sent_per_client"] = {str(k): int(v) for k, v in self.bytes_sent_per_client.items()}
        agg = d["aggregation"]
        agg["participants"] = list(self.aggregation.participants)
        agg["survivors"] = list(self.aggregation.survivors)
        agg["bytes_sent_per_client"] = {
            str(k): int(v) for k, v in self.aggregation.bytes_sent_per_client.items()
        }
        return d


def best_round(records: Sequence[Mapping]) -> Mapping | None:
    """The round (a `RoundMetrics.to_dict()`) with the best mean validation accuracy; None without one.

    Model selection never looks at the test set: the chosen round's ``mean_accuracy`` is the test
    accuracy to report. The first of equally good rounds wins.
    """
    scored = [r for r in records if r.get("mean_val_accuracy") is not None]
    return max(scored, key=lambda r: r["mean_val_accuracy"]) if scored else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


class RoundLoop:
    """Rounds of CoDream between one `ServerRole` and the clients behind a `RoundClients` transport.

    Args:
        config: the federation.
        server: the server role (dreams, plan, bank, student).
        clients: the transport.
        evaluate_student: the server student's test accuracy (None without a student).
    """

    def __init__(
        self,
        config: FederationConfig,
        server: ServerRole,
        clients: RoundClients,
        *,
        evaluate_student: Callable[[nn.Module], float] | None = None,
    ) -> None:
        self.config = config
        self.server = server
        self.clients = clients
        self.evaluate_student = evaluate_student
        self.round = 0
        self.best: list[float] = [0.0] * config.num_clients
        self.best_mean = 0.0
        self.history: list[RoundMetrics] = []

    def cohort(self, round_index: int) -> list[int]:
        """Round `round_index`'s seeded cohort, less the clients the transport cannot reach."""
        cfg = self.config
        chosen = cohort_indices(cfg.num_clients, cfg.clients_per_round, cfg.seed, round_index)
        return self.clients.available(round_index, chosen)

    def run_round(self, progress: Progress | None = None) -> RoundMetrics:
        """Run one CoDream round: dreams, soft labels, distillation, evaluation.

        Args:
            progress: called as progress(stage, done, total) with stage in {"warmup", "dream",
                "distill", "evaluate"}.
        Returns:
            The round's metrics (also appended to `history`).
        Raises:
            ConfigError: no client left to run the round with.
            ProtocolAbort, PolicyRefusal, PrivacyBudgetExceeded: from the aggregation.
        """
        cfg, server, clients = self.config, self.server, self.clients
        say = progress or (lambda stage, done, total: None)
        r = self.round
        t0 = time.perf_counter()
        stats0 = clients.transport_stats()
        cohort = self.cohort(r)
        if not cohort:
            raise ConfigError(f"round {r + 1}: no client is left to take part")
        warm = clients.warm_up(cohort)  # None: the clients withheld their losses (DP)
        warmup_loss = None if warm is None else (_mean(warm) if warm else 0.0)
        say("warmup", len(cohort), len(cohort))

        specs = server.specs()
        plan = iter(specs)
        clients.open(r, cohort, specs)
        x = server.begin_round(r)
        targets = None
        if cfg.method is Method.CONDITIONAL:
            # Released once per run (the first round's survivors), never over another cohort again.
            if server.needs_class_weights:
                server.receive_class_weights(clients.release(Broadcast(r, next(plan))).result)
            targets = server.assign_targets()
        begin = True
        losses: list[tuple[float, ...]] = []
        t_dream = time.perf_counter()
        for s in range(cfg.dream.global_steps):
            rel = clients.release(Broadcast(r, next(plan), x, targets, begin))
            begin = False
            losses.append(rel.losses)
            x = server.apply_dream_step(rel.result)
            say("dream", s + 1, cfg.dream.global_steps)
        dream_seconds = time.perf_counter() - t_dream
        res = clients.release(Broadcast(r, next(plan), x, targets, begin)).result
        _, target_logits = server.receive_soft_labels(res)
        report = clients.close()
        server.bank_round()

        learners = list(cohort)
        if server.bank is None:
            lessons = {c: [(x, target_logits)] for c in learners}
        else:  # this round's dreams and every earlier banked round the client has not had yet
            lessons = {c: server.bank.take(c) for c in learners}
        learned = clients.learn(lessons, say)
        server.distill_student()
        student_acc = None
        if server.student is not None and self.evaluate_student is not None:
            student_acc = float(self.evaluate_student(server.student.model))

        evaluated = tuple(sorted(learned))
        # All or nothing: a client that withheld its accuracy (DP) leaves the round without any.
        reported = [learned[c].accuracy for c in evaluated]
        accs = [float(a) for a in reported] if all(a is not None for a in reported) else []
        for c, a in zip(evaluated, accs, strict=False):
            self.best[c] = max(self.best[c], a)
        mean_acc = float(np.mean(accs)) if accs else math.nan
        if accs:
            self.best_mean = max(self.best_mean, mean_acc)
        ces = [learned[c].ce_loss for c in evaluated if learned[c].ce_loss is not None]
        vals = [learned[c].val_accuracy for c in evaluated if learned[c].val_accuracy is not None]
        val_accs = tuple(float(v) for v in vals) if evaluated and len(vals) == len(evaluated) else None
        kds = [learned[c].kd_loss for c in evaluated if learned[c].kd_loss is not None]
        probs = server.label_probabilities()
        stats1 = clients.transport_stats()
        exchanges = seconds_per_exchange = None
        if "exchanges" in stats1:
            exchanges = int(stats1["exchanges"] - stats0.get("exchanges", 0))
            seconds_per_exchange = (stats1["exchange_seconds"] - stats0.get("exchange_seconds", 0.0)) / max(
                1, exchanges
            )
        metrics = RoundMetrics(
            round=r,
            accuracies=tuple(accs),
            mean_accuracy=mean_acc,
            std_accuracy=float(np.std(accs)) if accs else math.nan,
            best_accuracies=tuple(self.best),
            best_mean_accuracy=self.best_mean,
            student_accuracy=student_acc,
            class_coverage=int(probs.argmax(dim=1).unique().numel()),
            label_confidence=float(probs.max(dim=1).values.mean()),
            dream_loss_start=_mean(losses[0]) if losses else None,
            dream_loss_end=_mean(losses[-1]) if losses else None,
            kd_loss=(_mean(kds) if len(kds) == len(evaluated) else None) if evaluated else math.nan,
            ce_loss=_mean(ces) if len(ces) == len(evaluated) else None,
            warmup_loss=warmup_loss,
            survivors=tuple(res.contributors),
            bytes_sent_per_client=dict(report.bytes_sent_per_client),
            seconds=time.perf_counter() - t0,
            dream_seconds=dream_seconds,
            dream_steps_per_second=cfg.dream.global_steps / dream_seconds if dream_seconds > 0 else math.inf,
            aggregation=report,
            participants=tuple(cohort),
            evaluated=evaluated,
            exchanges=exchanges,
            seconds_per_exchange=seconds_per_exchange,
            val_accuracies=val_accs,
            mean_val_accuracy=float(np.mean(val_accs)) if val_accs else None,
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

    def state_dict(self) -> dict:
        """The loop's own state (round, bests); the server and clients keep theirs."""
        return {"round": self.round, "best": list(self.best), "best_mean": self.best_mean}

    def load_state_dict(self, state: Mapping) -> None:
        self.round = int(state["round"])
        self.best = [float(b) for b in state["best"]]
        self.best_mean = float(state["best_mean"])
