"""What privacy costs: CoDream's accuracy and time per round against epsilon, per kind of federation.

Two federations on Fashion-MNIST with clients of different architectures, each on a Dirichlet(0.1)
and an IID partition, each over several seeds:

- **cross-silo**: a few clients that all take part in every round. The private unit is one training
  example: every client trains with DP-SGD (`DPSGDTrainer`, GroupNorm models, no BatchNorm term in the
  dream loss); its noise multiplier is calibrated (PRV accountant) from the target epsilon and the
  whole run's DP-SGD steps. Epsilon = inf is the same GroupNorm federation with plain SGD.
- **cross-device**: a large population from which a seeded cohort is sampled every round. The private
  unit is one client's whole data: `secure+dp` clips every released vector and adds distributed
  integer noise, calibrated (RDP) from the target epsilon for a client that takes part in every round,
  without amplification by sampling (the server knows the cohorts), `releases_per_round` composed into
  one event per round; each client's own ledger accounts the rounds it took part in. Epsilon = inf is
  `secure` without noise.
  This part needs `FederationConfig.clients_per_round`; without it the part is skipped and the results
  say so.

Beside the DP sweep, each federation runs CoDream with `plain` and `secure` aggregation (no DP), and
the baselines of `codream.baselines` on the same partitions: local-only (floor), centralized
(ceiling) and FedAvg on one shared architecture; and, at every epsilon of the sweep, the private
baselines of `codream.dp_baselines` with the same accountant: DP-FedAvg (client-level, through the same
`secure+dp` seam; cross-silo with every client each round, cross-device with the same cohorts) and
local-only DP-SGD (example-level, cross-silo, CoDream's DP-SGD schedule). Every accuracy is the
*final* round's mean over clients on the test set; nothing is selected on the test set (the
best-over-rounds mean is kept in the JSON, labelled). Time per round and bytes sent per client per
round come from the federation's own `RoundMetrics` and the aggregator's `RoundReport`.

Where the DP runs miss their target, the report says by how much and gives the quantities that limit
them: the noise-to-signal ratio of a released dream gradient (noise L2 norm / clip norm, at the
released dimension), the cohort, the dream batch and the releases per round. The remedies
(`Remedy`) rerun the client-level DP point at epsilon = 8 with fewer releases per round, a smaller
dream batch, or dream gradients released at a lower dimension (`ProjectedReleases`), and the
example-level DP point with larger, fewer DP-SGD steps or with KD on dreams at a smaller learning rate.

Sizes: `quick` (seconds, for tests), `cpu` (the default; about 40 minutes of one core, half that on two
with ``--jobs 2 --threads 1``) and `full` (larger data and models, and cross-device settings under which
CoDream beats local-only; about 6 minutes on one H100 with ``--jobs 16 --threads 1`` and CUDA MPS).
Each states itself in the results file.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from ..aggregation import Aggregator, ProjectedReleases, ReleaseKind, create_aggregator
from ..baselines import BaselineConfig, BaselineResult, run_centralized, run_fedavg, run_local_only
from ..data import Dataset, load_dataset, partition
from ..devices import pin_threads, resolve_device
from ..exceptions import ConfigError
from ..federation.config import DistillConfig, DreamConfig, FederationConfig
from ..federation.simulation import Federation
from ..privacy.projection import (
    BlockMeans,
    LowFrequency,
    ReleaseProjection,
)

__all__ = [
    "SIZES",
    "Remedy",
    "RunRecord",
    "Runner",
    "TradeoffResults",
    "TradeoffSize",
    "cli",
    "cohort_sampling_supported",
    "delta_for",
    "hardware",
    "parse_projection",
    "plan_noise_cached",
    "run_tradeoff",
    "summarise",
    "write_json",
    "write_markdown",
    "write_plots",
]

log = logging.getLogger(__name__)

INF = math.inf


def _inner_aggregator(aggregator: Aggregator) -> Aggregator:
    return aggregator.inner if isinstance(aggregator, ProjectedReleases) else aggregator


def _local_clipped_fraction(aggregator: Aggregator) -> float:
    """Clipped releases over all releases, from the clients' own counts (simulation only)."""
    clients = getattr(_inner_aggregator(aggregator), "clients", {})
    released = sum(c.local_stats.released for c in clients.values())
    return sum(c.local_stats.clipped for c in clients.values()) / released if released else 0.0


def _epsilon_spent(aggregator: Aggregator) -> float:
    """The largest epsilon any client spent (each client's own ledger)."""
    ledger = getattr(_inner_aggregator(aggregator), "ledger", None)
    return float(ledger.spent) if ledger is not None else math.nan


# -- sizes -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remedy:
    """One change to the client-level DP runs that may lower the noise-to-signal ratio.

    Attributes:
        name: short label used in tables.
        description: what it changes and why it should help.
        global_steps: dream steps per round (= dream releases per round); None keeps the size's.
        dream_batch: dreams per round; None keeps the size's.
        projection: release each dream gradient through a fixed orthonormal projection
            (`codream.privacy.projection`, named as `parse_projection` reads it: ``blocks:2`` for 2x2
            block means, ``dct:7`` for the 7x7 lowest DCT frequencies); None releases it whole.
        renormalize: rescale each projected release to the client's unprojected norm, so that it
            spends the whole clip budget (`ProjectedReleases`).
        dp_batch_factor: example-level DP (cross-silo): DP-SGD batches this many times larger and
            as many times fewer steps, so the same examples are seen with less noise per step.
        dp_kd_lr: example-level DP: the learning rate of the clients' KD steps on dreams (None: the
            same as their DP-SGD steps).
    """

    name: str
    description: str
    global_steps: int | None = None
    dream_batch: int | None = None
    projection: str | None = None
    renormalize: bool = False
    dp_batch_factor: int = 1
    dp_kd_lr: float | None = None


@dataclass(frozen=True, slots=True)
class TradeoffSize:
    """Everything that sets how large (and how slow) the benchmark is.

    Attributes:
        name: "quick", "cpu" or "full".
        dataset: data set name for `load_dataset`.
        limit_test: test examples every accuracy is measured on.
        partitions: Dirichlet alphas; None is IID.
        seeds: one federation per seed (partition, initialisation, dreams, minibatches).
        epsilons: target epsilons of the DP sweep; inf means the same federation without DP.
        rounds: CoDream rounds (and baseline rounds).
        dream_batch, global_steps: dreams per round, and dream steps (releases) per round.
        kd_steps, warmup_steps: per client per round, and before the first round.
        batch_size: KD, cross-entropy and DP-SGD (expected Poisson) batch size.
        silo_clients, silo_models, silo_samples: the cross-silo federation.
        population, cohorts, device_models, device_samples, device_warmup_steps, device_kd_steps,
        device_rounds, device_dream_batch, device_global_steps: the cross-device federation; the
            population is sampled into each cohort every round. Smaller than the cross-silo settings
            because a round costs a whole cohort of clients.
        device_graph: neighbour graph of secure aggregation for cohorts ("harary" keeps masking
            work logarithmic in the cohort).
        device_bank: `DistillConfig.bank_size` of the cross-device federation: released dreams the
            server keeps for clients that missed their rounds (0: none; released output, so free of
            privacy cost).
        device_batch_size: KD and CE batch of the cross-device federation and its baselines (None:
            `batch_size`); a client there holds only `device_samples` examples.
        dp_clip: per-example gradient clip norm of DP-SGD.
        silo_accountant: accountant of example-level DP ("prv", tighter; "rdp", faster to calibrate).
        device_limit_test: test examples of the cross-device runs (every evaluated client of a
            large population is evaluated on them after every round).
        fedavg_model: the one shared architecture of the FedAvg baseline.
        remedies: client-level DP variants run at `remedy_epsilon`.
        silo_remedies: example-level DP variants (`Remedy.dp_batch_factor`) run at `remedy_epsilon`.
        silo_client_level_epsilons: epsilons at which the cross-silo federation also runs client-level
            `secure+dp` (every client in every round): its cost per round, and its accuracy as contrast.
        remedy_epsilon: the epsilon the remedies are compared at.
        remedy_partitions, remedy_cohorts: where the remedies run (None: all).
        private_baselines: run the private baselines at every epsilon of the sweep: DP-FedAvg
            (client-level, one shared `fedavg_model` with GroupNorm, its update one planned vector of
            the same `secure+dp` seam; cross-silo with every client in every round, cross-device per
            cohort) and local-only DP-SGD (example-level, cross-silo, CoDream's DP-SGD schedule).
        dp_fedavg_clip: the L2 bound of a DP-FedAvg client's model update.
        private_baseline_epsilons: the epsilons the private baselines run at (None: `epsilons`).
    """

    name: str
    dataset: str = "fashion-mnist"
    limit_test: int | None = 2000
    partitions: tuple[float | None, ...] = (0.1, None)
    seeds: tuple[int, ...] = (0, 1)
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, INF)
    rounds: int = 3
    dream_batch: int = 16
    global_steps: int = 8
    kd_steps: int = 12
    warmup_steps: int = 40
    batch_size: int = 32
    silo_clients: int = 4
    silo_models: tuple[str, ...] = ("cnn", "mlp", "cnn", "mlp")
    silo_samples: int = 500
    population: int = 200
    cohorts: tuple[int, ...] = (20, 100)
    device_models: tuple[str, ...] = ("mlp", "cnn")
    device_samples: int = 30
    device_rounds: int = 2
    device_dream_batch: int = 8
    device_global_steps: int = 4
    device_warmup_steps: int = 6
    device_kd_steps: int = 5
    device_graph: str = "harary"
    device_bank: int = 0
    device_batch_size: int | None = None
    dp_clip: float = 1.0
    silo_accountant: str = "prv"
    device_limit_test: int | None = 500
    fedavg_model: str = "cnn"
    remedies: tuple[Remedy, ...] = ()
    silo_remedies: tuple[Remedy, ...] = ()
    silo_client_level_epsilons: tuple[float, ...] = (8.0,)
    remedy_epsilon: float = 8.0
    remedy_partitions: tuple[float | None, ...] | None = None
    remedy_cohorts: tuple[int, ...] | None = None
    private_baselines: bool = True
    dp_fedavg_clip: float = 2.0
    private_baseline_epsilons: tuple[float, ...] | None = None

    @property
    def baseline_epsilons(self) -> tuple[float, ...]:
        """The epsilons the private baselines run at (none when they are off)."""
        if not self.private_baselines:
            return ()
        return self.epsilons if self.private_baseline_epsilons is None else self.private_baseline_epsilons

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("need at least one seed")
        if not self.partitions:
            raise ConfigError("need at least one partition")
        if not self.epsilons or any(not (e > 0) for e in self.epsilons):
            raise ConfigError(f"epsilons must be > 0 (inf allowed), got {self.epsilons}")
        for c in self.cohorts:
            if not (1 <= c < self.population):
                raise ConfigError(
                    f"cohort {c} must be at least 1 and smaller than the population {self.population}"
                )
        if self.rounds < 1 or self.global_steps < 1 or self.dream_batch < 1:
            raise ConfigError("rounds, global_steps and dream_batch must be >= 1")

    def describe(self) -> str:
        """One paragraph for the results file."""
        parts = ", ".join(_label(a) for a in self.partitions)
        return (
            f"Size `{self.name}`: {self.dataset}, partitions {parts}, "
            f"seeds {', '.join(map(str, self.seeds))}. **Cross-silo**: {self.silo_clients} clients "
            f"({', '.join(self.silo_models)}) of {self.silo_samples} training examples each, "
            f"test set of {self.limit_test or 'all'} examples; {self.rounds} rounds of "
            f"{self.global_steps} dream steps on {self.dream_batch} dreams, {self.kd_steps} KD steps "
            f"with {_ce_steps(self.kd_steps)} interleaved CE steps per client per round, "
            f"{self.warmup_steps} warm-up steps, "
            f"batch {self.batch_size}. **Cross-device**: population {self.population} "
            f"({', '.join(self.device_models)} alternating) of {self.device_samples} examples each, "
            f"cohorts {', '.join(map(str, self.cohorts))} sampled per round, {self.device_rounds} "
            f"rounds of {self.device_global_steps} dream steps on {self.device_dream_batch} dreams, "
            f"{self.device_kd_steps} KD steps with {_ce_steps(self.device_kd_steps)} CE steps and "
            f"{self.device_warmup_steps} warm-up steps per client, "
            f"test set of {self.device_limit_test or 'all'} examples, secure aggregation on a "
            f"{self.device_graph} graph"
            + (
                f", a server dream bank of the last {self.device_bank} released dreams"
                if self.device_bank
                else ""
            )
            + (f", batch {self.device_batch_size}" if self.device_batch_size else "")
            + "."
        )


def _ce_steps(kd_steps: int) -> int:
    """Cross-entropy steps interleaved with `kd_steps` KD steps at the learning loop's default ratio."""
    return DistillConfig(kd_steps=kd_steps).ce_steps_per_round


def _default_remedies(global_steps: int, dream_batch: int) -> tuple[Remedy, ...]:
    return (
        Remedy(
            "fewer-releases",
            f"{max(1, global_steps // 2)} instead of {global_steps} dream steps per round: fewer releases "
            "compose into the round's event, so each carries less noise (z_i = z_eff sqrt(J))",
            global_steps=max(1, global_steps // 2),
        ),
        Remedy(
            "smaller-batch",
            f"{max(1, dream_batch // 2)} instead of {dream_batch} dreams: the noise norm grows with "
            "sqrt(released dimension), the clipped signal does not",
            dream_batch=max(1, dream_batch // 2),
        ),
        Remedy(
            "low-resolution",
            "dream gradients released as 2x2 block means (1/4 of the dimension, orthonormal projection, "
            "so the clip bound holds), lifted back by the server",
            projection="blocks:2",
        ),
        Remedy(
            "combined",
            "fewer releases, smaller batch and low-resolution releases together",
            global_steps=max(1, global_steps // 2),
            dream_batch=max(1, dream_batch // 2),
            projection="blocks:2",
        ),
    )


_LARGE_DP_BATCH = Remedy(
    "dp-large-batch",
    "DP-SGD batches 4x larger and 4x fewer DP-SGD steps (same examples per round): the noise is averaged "
    "over 4x more examples per step, and fewer, larger steps cost less privacy per example seen",
    dp_batch_factor=4,
)

_SMALL_KD_LR = Remedy(
    "dp-kd-lr",
    "the clients' KD steps on dreams at learning rate 0.01 instead of DP-SGD's 0.05: at 0.05 (momentum 0.9) "
    "KD turns a weak DP-trained vgg into a constant predictor in the first round (benchmarks/dp_kd_lr.py)",
    dp_kd_lr=0.01,
)

QUICK = TradeoffSize(
    name="quick",
    limit_test=200,
    partitions=(0.1,),
    seeds=(0,),
    epsilons=(8.0, INF),
    rounds=1,
    dream_batch=4,
    global_steps=2,
    kd_steps=2,
    warmup_steps=2,
    batch_size=16,
    silo_clients=2,
    silo_models=("mlp", "cnn"),
    silo_samples=60,
    population=12,
    cohorts=(4,),
    device_models=("mlp",),
    device_samples=10,
    device_warmup_steps=1,
    device_kd_steps=1,
    device_graph="complete",
    device_rounds=1,
    device_dream_batch=4,
    device_global_steps=2,
    silo_accountant="rdp",
    device_limit_test=100,
    remedies=(
        Remedy("fewer-releases", "one dream step per round", global_steps=1),
        Remedy("low-resolution", "2x2 block means", projection="blocks:2"),
    ),
    silo_remedies=(
        Remedy("dp-large-batch", "DP-SGD batches twice as large, half the steps", dp_batch_factor=2),
    ),
)

CPU = TradeoffSize(
    name="cpu",
    remedies=_default_remedies(4, 8),
    silo_remedies=(_LARGE_DP_BATCH,),
    silo_client_level_epsilons=(),
    remedy_partitions=(0.1,),
    remedy_cohorts=(20,),
)

FULL = TradeoffSize(
    # Sized for about 8 minutes of one H100 machine (16 cores) with --jobs 16: larger data and models than
    # `cpu` in cross-silo, and in cross-device the settings under which non-private CoDream beats
    # local-only training on a validation split (benchmarks/results/tradeoff-tuning.md).
    name="full",
    limit_test=None,
    seeds=(0, 1),
    rounds=4,
    dream_batch=64,
    global_steps=20,
    kd_steps=40,
    warmup_steps=100,
    batch_size=64,
    silo_models=("resnet8", "cnn", "vgg", "mlp"),
    silo_samples=3000,
    population=200,
    device_models=("cnn", "mlp"),
    device_samples=40,
    device_warmup_steps=30,
    device_kd_steps=25,
    device_rounds=4,
    device_dream_batch=16,
    device_global_steps=10,
    device_limit_test=2000,
    device_bank=64,
    device_batch_size=32,
    remedies=_default_remedies(10, 16),
    silo_remedies=(_LARGE_DP_BATCH, _SMALL_KD_LR),
    silo_client_level_epsilons=(),
    remedy_cohorts=(20,),
)

SIZES: dict[str, TradeoffSize] = {s.name: s for s in (QUICK, CPU, FULL)}


def cohort_sampling_supported() -> bool:
    """Whether the learning loop can sample a cohort per round (`FederationConfig.clients_per_round`)."""
    return "clients_per_round" in {f.name for f in dataclasses.fields(FederationConfig)}


# -- the low-resolution release remedy --------------------------------------------------------------


def parse_projection(spec: str) -> ReleaseProjection:
    """A release projection from its short name: ``blocks:F`` (F x F block means) or ``dct:K``."""
    kind, _, arg = spec.partition(":")
    try:
        value = int(arg)
    except ValueError:
        raise ConfigError(f"projection {spec!r}: expected blocks:F or dct:K with an integer") from None
    if kind == "blocks":
        return BlockMeans(value)
    if kind == "dct":
        return LowFrequency(value)
    raise ConfigError(f"projection {spec!r}: unknown kind {kind!r}; use blocks:F or dct:K")


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run (one federation or baseline, one seed) and what it measured.

    Attributes:
        setting: "cross-silo" or "cross-device".
        partition: "dir0.1" style label or "iid".
        cohort: clients per round (cross-device), else None.
        mode: "plain", "secure", "example-dp", "secure+dp", "local", "fedavg", "centralized".
        epsilon: target epsilon (inf: none; None for modes without DP).
        seed: the run's seed.
        remedy: name of the remedy applied, if any.
        final_accuracies: each evaluated client's accuracy after the last round.
        mean_accuracy, std_accuracy: over those clients.
        best_mean_accuracy: best per-round mean over rounds (selected on the test set; labelled so).
        seconds_per_round: mean wall time of the rounds after the first (the first includes the
            warm-up); the first round's when there is only one.
        dream_seconds_per_round: likewise, dream optimisation only.
        bytes_per_client_per_round: mean over rounds and participants of the bytes each sent.
        epsilon_spent: epsilon the run actually spent (max over clients for example-level DP).
        noise_multiplier: z (DP-SGD step z, or the round's z_eff).
        release_noise_multiplier: z_i of each release (client-level only).
        nsr: noise L2 norm / clip norm of one released dream gradient (client-level only).
        nsr_cohort: the same noise over the largest summed signal, cohort x clip norm.
        released_dimension: coordinates of one released dream gradient.
        releases_per_round: vectors each client released per round.
        dream_batch: dreams per round.
        clipped_fraction: share of contributions clipped by the seam (client-level).
        extra: anything else (signal fraction of low-resolution releases, DP-SGD step NSR ...).
    """

    setting: str
    partition: str
    cohort: int | None
    mode: str
    epsilon: float | None
    seed: int
    remedy: str | None
    final_accuracies: tuple[float, ...]
    mean_accuracy: float
    std_accuracy: float
    best_mean_accuracy: float
    seconds_per_round: float | None = None
    dream_seconds_per_round: float | None = None
    bytes_per_client_per_round: float | None = None
    epsilon_spent: float | None = None
    noise_multiplier: float | None = None
    release_noise_multiplier: float | None = None
    nsr: float | None = None
    nsr_cohort: float | None = None
    released_dimension: int | None = None
    releases_per_round: int | None = None
    dream_batch: int | None = None
    clipped_fraction: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["final_accuracies"] = list(self.final_accuracies)
        d["epsilon"] = _json_eps(self.epsilon)
        return d


def _json_eps(e: float | None) -> float | str | None:
    return "inf" if e is not None and math.isinf(e) else e


@dataclass(slots=True)
class TradeoffResults:
    """All runs of one benchmark invocation, with the context the results file states."""

    size: TradeoffSize
    device: str
    runs: list[RunRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hardware: dict[str, str] = field(default_factory=dict)
    command: str = ""
    started: str = ""
    seconds: float = 0.0
    complete: bool = False  # False in a checkpoint written while units were still running

    def to_dict(self) -> dict:
        size = dataclasses.asdict(self.size)
        size["epsilons"] = [_json_eps(e) for e in self.size.epsilons]
        return {
            "size": size,
            "device": self.device,
            "hardware": self.hardware,
            "command": self.command,
            "started": self.started,
            "seconds": self.seconds,
            "complete": self.complete,
            "notes": list(self.notes),
            "runs": [r.to_dict() for r in self.runs],
            "summary": [_row_dict(r) for r in summarise(self.runs)],
        }


# -- running ---------------------------------------------------------------------------------------


def hardware(device: torch.device | str) -> dict[str, str]:
    """CPU model, core count and GPU name (if any) of this machine."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        # nproc honours OMP_NUM_THREADS: ask it for the cores this process may use (threads: below).
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        info["nproc"] = subprocess.run(
            ["nproc"], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["nproc"] = str(os.cpu_count())
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu or "unknown"
    info["cpu_count"] = str(os.cpu_count())
    info["torch_threads"] = str(torch.get_num_threads())
    dev = torch.device(device)
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
            info["cuda_mps"] = "on"
    return info


def _label(alpha: float | None) -> str:
    return "iid" if alpha is None or math.isinf(alpha) else f"dir{alpha:g}"


def delta_for(n: int) -> float:
    """Delta well below 1 / n (n: examples per client, or clients in the population)."""
    return min(1e-5, 0.1 / n)


@functools.lru_cache(maxsize=256)
def plan_noise_cached(schedule: Any, epsilon: float, delta: float, accountant: str) -> Any:
    """`plan_noise`, once per schedule and target: every partition and seed shares the answer."""
    from ..privacy.calibration import plan_noise

    return plan_noise(schedule, target_epsilon=epsilon, delta=delta, accountant=accountant)


def _label_histogram(config: FederationConfig) -> tuple[float | None, tuple[Any, ...]]:
    """The DP label histogram's z and event an example-level client of `config` is charged for.

    The conditional method's class weights are its only label-derived release (None, () otherwise).
    """
    from ..federation.config import Method
    from ..privacy.label_histogram import DEFAULT_LABEL_NOISE_MULTIPLIER, label_histogram_event

    if config.method is not Method.CONDITIONAL:
        return None, ()
    return DEFAULT_LABEL_NOISE_MULTIPLIER, (label_histogram_event(DEFAULT_LABEL_NOISE_MULTIPLIER),)


def _client_level_aggregator(
    *, rounds: int, releases_per_round: int, population: int, eps: float, seed: int, graph: str
) -> tuple[Aggregator, Any, float]:
    """A `secure+dp` aggregator calibrated to `eps` over `rounds` for a client in every round, with its
    noise plan and delta: CoDream's client-level runs and DP-FedAvg are accounted the same way.

    The server knows each cohort, so a client's rounds compose unamplified (q = 1).
    """
    from ..privacy.calibration import ClientLevelSchedule

    delta = delta_for(population)
    plan = plan_noise_cached(
        ClientLevelSchedule(rounds=rounds, sample_rate=1.0, releases_per_round=releases_per_round),
        eps,
        delta,
        "rdp",
    )
    agg = create_aggregator(
        "secure+dp",
        noise_multiplier=plan.noise_multiplier,
        delta=delta,
        target_epsilon=eps,
        accountant="rdp",
        noise_seed=seed,
        graph=graph,
        seed=seed,
    )
    return agg, plan, delta


def _baseline_record(
    res: BaselineResult,
    *,
    setting: str,
    alpha: float | None,
    cohort: int | None,
    mode: str,
    epsilon: float | None,
    seed: int,
    **measured: Any,
) -> RunRecord:
    """A baseline's record, private or not: its accuracies, seconds per round and what else it measured."""
    return RunRecord(
        setting=setting,
        partition=_label(alpha),
        cohort=cohort,
        mode=mode,
        epsilon=epsilon,
        seed=seed,
        remedy=None,
        final_accuracies=tuple(float(a) for a in res.final_accuracy),
        mean_accuracy=res.mean,
        std_accuracy=res.std,
        best_mean_accuracy=float(np.max(np.mean(np.asarray(res.history), axis=1))),
        seconds_per_round=res.seconds / res.config.rounds,
        **measured,
    )


@functools.lru_cache(maxsize=2)
def _load(name: str, limit_test: int | None) -> Dataset:
    return load_dataset(name, limit_train=None, limit_test=limit_test, seed=0)


class OutOfTime(Exception):
    """The time budget ran out before a run could start; the runs already finished are kept."""


class Runner:
    """Builds and runs the benchmark's federations and baselines of one size, one run at a time.

    The tuning scripts in `benchmarks/` use it to run the benchmark's configurations with their own
    variations (`silo_config`, `device_config`, `federation`, `example_dp`, `secure_dp`); set
    `dataset` first to run on another split (e.g. a validation split) than the benchmark's test set.
    """

    def __init__(
        self,
        size: TradeoffSize,
        device: torch.device,
        say: Callable[[str], None],
        deadline: float | None = None,
    ) -> None:
        self.size = size
        self.device = device
        self.say = say
        self.deadline = deadline  # time.time() after which no run starts
        self.only: frozenset[str] | None = None  # run keys (`run_keys`) to run; None: all
        self._dataset: Dataset | None = None

    def wants(self, key: str) -> bool:
        return self.only is None or key in self.only

    def check_time(self, what: str) -> None:
        """Refuse to start `what` once the budget is spent: a run that has started always finishes."""
        if self.deadline is not None and time.time() > self.deadline:
            raise OutOfTime(what)

    @property
    def dataset(self) -> Dataset:
        """The data set, loaded on first use (once per process, for every run and unit)."""
        if self._dataset is None:
            s = self.size
            needed = max(s.silo_clients * s.silo_samples, s.population * s.device_samples)
            self._dataset = _load(s.dataset, s.limit_test)
            if needed > len(self._dataset.y_train):
                raise ConfigError(f"size {s.name!r} needs {needed} training examples, {s.dataset} has fewer")
        return self._dataset

    @dataset.setter
    def dataset(self, value: Dataset) -> None:
        self._dataset = value

    # configs

    def dream(self, *, w_bn: float, cross_device: bool, remedy: Remedy | None = None) -> DreamConfig:
        s = self.size
        batch = s.device_dream_batch if cross_device else s.dream_batch
        steps = s.device_global_steps if cross_device else s.global_steps
        return DreamConfig(
            batch_size=remedy.dream_batch if remedy and remedy.dream_batch else batch,
            global_steps=remedy.global_steps if remedy and remedy.global_steps else steps,
            w_bn=w_bn,
        )

    def distill(self, *, cross_device: bool) -> DistillConfig:
        s = self.size
        bank = s.device_bank if cross_device else 0
        batch = s.device_batch_size or s.batch_size if cross_device else s.batch_size
        return DistillConfig(
            kd_steps=s.device_kd_steps if cross_device else s.kd_steps,
            warmup_steps=s.device_warmup_steps if cross_device else s.warmup_steps,
            batch_size=batch,
            ce_batch_size=batch,
            buffer_size=max(256, 4 * s.dream_batch, bank),
            bank_size=bank,
        )

    def silo_config(self, alpha: float | None, seed: int, *, norm: str) -> FederationConfig:
        s = self.size
        return FederationConfig(
            dataset=s.dataset,
            num_clients=s.silo_clients,
            alpha=alpha,
            samples_per_client=s.silo_samples,
            limit_test=s.limit_test,
            models=tuple(s.silo_models),
            norm=norm,
            rounds=s.rounds,
            seed=seed,
            device=str(self.device),
            dream=self.dream(w_bn=0.0 if norm == "group" else DreamConfig().w_bn, cross_device=False),
            distill=self.distill(cross_device=False),
        )

    def device_config(
        self, alpha: float | None, seed: int, cohort: int, remedy: Remedy | None = None
    ) -> FederationConfig:
        s = self.size
        models = tuple(s.device_models[i % len(s.device_models)] for i in range(s.population))
        kwargs: dict[str, Any] = dict(
            dataset=s.dataset,
            num_clients=s.population,
            alpha=alpha,
            samples_per_client=s.device_samples,
            limit_test=s.device_limit_test,
            models=models,
            norm="batch",
            rounds=s.device_rounds,
            seed=seed,
            device=str(self.device),
            dream=self.dream(w_bn=DreamConfig().w_bn, cross_device=True, remedy=remedy),
            distill=self.distill(cross_device=True),
            clients_per_round=cohort,
        )
        return FederationConfig(**kwargs)

    # one federation

    def federation(
        self,
        config: FederationConfig,
        aggregator: Aggregator,
        *,
        setting: str,
        partition_label: str,
        cohort: int | None,
        mode: str,
        epsilon: float | None,
        remedy: Remedy | None = None,
        trainer_factory: Callable | None = None,
        dp: dict[str, float] | None = None,
    ) -> tuple[RunRecord, Federation]:
        tag = (
            f"{setting} {partition_label} {mode} eps={epsilon} seed={config.seed}"
            + (f" cohort={cohort}" if cohort else "")
            + (f" remedy={remedy.name}" if remedy else "")
        )
        self.check_time(tag)
        self.say(f"start {tag}")
        start = time.perf_counter()
        fed = Federation(config, aggregator, trainer_factory, dataset=self.dataset)
        history = fed.run(config.rounds)
        last = history[-1]
        timed = history[1:] if len(history) > 1 else history
        per_client_bytes = []
        for m in history:
            rep = m.aggregation
            ids = rep.participants or tuple(m.bytes_sent_per_client)
            per_client_bytes.append(np.mean([m.bytes_sent_per_client.get(i, 0) for i in ids]))
        specs = fed.server.specs()
        dream_specs = [sp for sp in specs if sp.kind is ReleaseKind.DREAM_GRADIENT]
        released_dim = dream_specs[0].length if dream_specs else 0
        if isinstance(aggregator, ProjectedReleases) and dream_specs:
            released_dim = aggregator.released_spec(dream_specs[0]).length
        extra: dict[str, float] = {}
        record_kwargs: dict[str, Any] = {}
        fractions = [m.aggregation.projection_signal_fraction for m in history]
        if last.aggregation.projection_signal_fraction is not None:
            extra["projection_signal_fraction"] = float(
                np.mean([np.nan if f is None else f for f in fractions])
            )
        if last.aggregation.dp is not None:
            z_i = float(last.aggregation.dp.release_noise_multiplier)
            clip = dream_specs[0].clip_norm
            # Per-coordinate std of the summed noise the round guarantees, in float units.
            std = last.aggregation.dp.noise_std.get(dream_specs[0].name)
            nsr = (
                (float(std) * math.sqrt(released_dim) / clip)
                if std is not None
                else z_i * math.sqrt(released_dim)
            )
            n = len(last.aggregation.participants)
            record_kwargs.update(
                release_noise_multiplier=z_i,
                nsr=nsr,
                nsr_cohort=nsr / max(1, n),
                # Client-local counts (never released under DP), read here because this is a simulation.
                clipped_fraction=_local_clipped_fraction(aggregator),
                epsilon_spent=_epsilon_spent(aggregator),
            )
            extra["nsr_analytic"] = z_i * math.sqrt(released_dim)
        if dp:
            record_kwargs.update({k: v for k, v in dp.items() if k in ("noise_multiplier", "epsilon_spent")})
            extra.update({k: v for k, v in dp.items() if k not in ("noise_multiplier", "epsilon_spent")})
        record = RunRecord(
            setting=setting,
            partition=partition_label,
            cohort=cohort,
            mode=mode,
            epsilon=epsilon,
            seed=config.seed,
            remedy=remedy.name if remedy else None,
            final_accuracies=tuple(float(a) for a in last.accuracies),
            mean_accuracy=float(last.mean_accuracy),
            std_accuracy=float(last.std_accuracy),
            best_mean_accuracy=float(last.best_mean_accuracy),
            seconds_per_round=float(np.mean([m.seconds for m in timed])),
            dream_seconds_per_round=float(np.mean([m.dream_seconds for m in timed])),
            bytes_per_client_per_round=float(np.mean(per_client_bytes)),
            released_dimension=int(released_dim),
            releases_per_round=int(config.releases_per_round),
            dream_batch=int(config.dream.batch_size),
            extra=extra,
            **record_kwargs,
        )
        self.say(
            f"done  {tag}: acc {record.mean_accuracy:.4f}, {record.seconds_per_round:.2f} s/round "
            f"({time.perf_counter() - start:.1f} s)"
        )
        return record, fed

    # baselines

    def matched_budget(self, config: FederationConfig) -> dict[str, Any]:
        """What a baseline compared to the federations of `config` gets, in either setting: the same
        clients, data, rounds, test set and batch size, and CoDream's cross-entropy steps per round
        (its warm-up spread over the rounds)."""
        dc = config.distill
        return dict(
            num_clients=config.num_clients,
            samples=config.samples_per_client,
            local_steps=dc.ce_steps_per_round + math.ceil(dc.warmup_steps / config.rounds),
            rounds=config.rounds,
            limit_test=config.limit_test,
            batch_size=dc.batch_size,
        )

    def baselines(
        self,
        *,
        setting: str,
        alpha: float | None,
        seed: int,
        num_clients: int,
        samples: int,
        models: tuple[str, ...],
        local_steps: int,
        rounds: int,
        limit_test: int | None,
        out: list[RunRecord],
        cohort: int | None = None,
        centralized_clients: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Append local-only, centralized and FedAvg runs to `out`, each as soon as it ends."""
        s = self.size
        batch_size = batch_size or s.batch_size
        data = self.baseline_data(limit_test)
        parts = partition(
            self.dataset.y_train, num_clients, alpha=alpha, samples_per_client=samples, seed=seed
        )
        cfg = BaselineConfig(
            rounds=rounds, local_steps=max(1, local_steps), batch_size=batch_size, seed=seed, norm="batch"
        )
        # The centralized model takes local_steps x clients steps per round; with cohorts, match the
        # examples the largest cohort processes per round rather than the whole population's.
        share = (centralized_clients or num_clients) / num_clients
        central_cfg = dataclasses.replace(cfg, local_steps=max(1, round(cfg.local_steps * share)))
        runs = (
            ("local", lambda: run_local_only(data, parts, models, cfg, device=self.device)),
            ("centralized", lambda: run_centralized(data, parts, models, central_cfg, device=self.device)),
            ("fedavg", lambda: run_fedavg(data, parts, s.fedavg_model, cfg, device=self.device)),
        )
        for mode, fn in runs:
            tag = f"{setting} {_label(alpha)} {mode} seed={seed}"
            self.check_time(tag)
            self.say(f"start {tag}")
            res = fn()
            out.append(
                _baseline_record(
                    res,
                    setting=setting,
                    alpha=alpha,
                    cohort=cohort,
                    mode=mode,
                    epsilon=None,
                    seed=seed,
                    extra={"steps_per_round": float(res.steps_per_round)},
                )
            )

    def baseline_data(self, limit_test: int | None) -> Dataset:
        """The data set as the federations evaluate it: the first `limit_test` test examples."""
        data = self.dataset
        if limit_test is not None and limit_test < len(data.y_test):
            data = dataclasses.replace(data, x_test=data.x_test[:limit_test], y_test=data.y_test[:limit_test])
        return data

    def dp_fedavg(
        self,
        *,
        setting: str,
        alpha: float | None,
        seed: int,
        eps: float,
        num_clients: int,
        samples: int,
        local_steps: int,
        rounds: int,
        limit_test: int | None,
        cohort: int | None,
        batch_size: int,
        graph: str,
    ) -> RunRecord:
        """DP-FedAvg at `eps` (client-level), accounted like CoDream's `secure+dp`: per client, unamplified.

        Its one release per round, the clipped model update, goes through the same `secure+dp` seam with
        the same calibration for a client in every round; eps = inf is `secure` (clipped, no noise).
        """
        from ..dp_baselines import run_dp_fedavg

        s = self.size
        tag = f"{setting} {_label(alpha)} dp-fedavg eps={eps} seed={seed}" + (
            f" cohort={cohort}" if cohort else ""
        )
        self.check_time(tag)
        self.say(f"start {tag}")
        z: float | None = None
        delta: float | None = None
        if math.isinf(eps):
            agg = create_aggregator("secure", graph=graph, seed=seed)
        else:
            agg, plan, delta = _client_level_aggregator(
                rounds=rounds, releases_per_round=1, population=num_clients, eps=eps, seed=seed, graph=graph
            )
            z = float(plan.noise_multiplier)
        parts = partition(
            self.dataset.y_train, num_clients, alpha=alpha, samples_per_client=samples, seed=seed
        )
        cfg = BaselineConfig(
            rounds=rounds, local_steps=max(1, local_steps), batch_size=batch_size, seed=seed, norm="group"
        )
        run = run_dp_fedavg(
            self.baseline_data(limit_test),
            parts,
            s.fedavg_model,
            cfg,
            agg,
            clip_norm=s.dp_fedavg_clip,
            clients_per_round=cohort,
            device=self.device,
        )
        res = run.result
        d = int(run.extra["update_dimension"])
        nsr = None if z is None else z * math.sqrt(d)
        m = cohort or num_clients
        rec = _baseline_record(
            res,
            setting=setting,
            alpha=alpha,
            cohort=cohort,
            mode="dp-fedavg",
            epsilon=eps,
            seed=seed,
            epsilon_spent=None if z is None else run.epsilon,
            noise_multiplier=z,
            release_noise_multiplier=z,
            nsr=nsr,
            nsr_cohort=None if nsr is None else nsr / m,
            released_dimension=d,
            releases_per_round=1,
            # Client-local (never released under DP), read here because this is a simulation.
            clipped_fraction=run.extra["clipped_fraction"],
            extra={
                **({} if z is None else {"epsilon_mean": run.epsilon_mean, "delta": delta}),
                "clip_norm": s.dp_fedavg_clip,
                "update_norm_median": run.extra["update_norm_median"],
                "participations_max": run.extra["participations_max"],
                "diverged_updates": run.extra["diverged_updates"],
                "steps_per_round": float(res.steps_per_round),
            },
        )
        self.say(f"done  {tag}: acc {rec.mean_accuracy:.4f}, eps spent {rec.epsilon_spent}")
        return rec

    def local_dp_sgd(self, config: FederationConfig, alpha: float | None, eps: float, seed: int) -> RunRecord:
        """Local-only DP-SGD at `eps` (example-level): CoDream's DP-SGD schedule and settings, no release."""
        from ..dp_baselines import LocalDPSGDConfig, run_local_dp_sgd
        from ..privacy.calibration import ExampleLevelSchedule

        s = self.size
        tag = f"cross-silo {_label(alpha)} local-dp-sgd eps={eps} seed={seed}"
        self.check_time(tag)
        self.say(f"start {tag}")
        dc = config.distill
        batch = min(s.batch_size, s.silo_samples)
        steps = dc.warmup_steps + config.rounds * dc.ce_steps_per_round
        delta = delta_for(s.silo_samples)
        plan = plan_noise_cached(
            ExampleLevelSchedule(local_steps=steps, batch_size=batch, data_size=s.silo_samples),
            eps,
            delta,
            s.silo_accountant,
        )
        dp = LocalDPSGDConfig(
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=s.dp_clip,
            batch_size=batch,
            warmup_steps=dc.warmup_steps,
            steps_per_round=dc.ce_steps_per_round,
            lr=dc.lr,
            momentum=dc.momentum,
            accountant=s.silo_accountant,
            delta=delta,
            noise_seed=seed,
            sampling_seed=seed,  # reproducible benchmark runs: a test option (the trainers say not private)
        )
        parts = partition(
            self.dataset.y_train, s.silo_clients, alpha=alpha, samples_per_client=s.silo_samples, seed=seed
        )
        cfg = BaselineConfig(
            rounds=config.rounds, local_steps=max(1, dp.steps_per_round), seed=seed, norm="group"
        )
        run = run_local_dp_sgd(
            self.baseline_data(s.limit_test), parts, tuple(s.silo_models), cfg, dp, device=self.device
        )
        rec = _baseline_record(
            run.result,
            setting="cross-silo",
            alpha=alpha,
            cohort=None,
            mode="local-dp-sgd",
            epsilon=eps,
            seed=seed,
            epsilon_spent=run.epsilon,
            noise_multiplier=plan.noise_multiplier,
            extra={"delta": delta, "dp_sgd_steps": float(steps), "dp_sgd_batch": float(batch)},
        )
        self.say(f"done  {tag}: acc {rec.mean_accuracy:.4f}, eps spent {rec.epsilon_spent:.3g}")
        return rec

    # the two settings

    def cross_silo(self, alpha: float | None, seed: int, out: list[RunRecord]) -> None:
        """Append every cross-silo run of one partition and seed to `out`, each as soon as it ends."""
        s = self.size
        label = _label(alpha)
        base = dict(setting="cross-silo", partition_label=label, cohort=None)
        batch_cfg = self.silo_config(alpha, seed, norm="batch")
        for mode in ("plain", "secure"):
            if not self.wants(mode):
                continue
            agg = create_aggregator(mode) if mode == "plain" else create_aggregator(mode, seed=seed)
            out.append(self.federation(batch_cfg, agg, mode=mode, epsilon=None, **base)[0])
        for eps in s.silo_client_level_epsilons:
            if not self.wants(f"client-dp:{eps:g}"):
                continue
            # Client-level DP with every silo in every round (q = 1): what `secure+dp` costs per round
            # here, and why it does not suit a handful of clients.
            agg, dp = self.secure_dp(
                batch_cfg, s.silo_clients, eps, seed, population=s.silo_clients, graph="complete"
            )
            out.append(self.federation(batch_cfg, agg, mode="secure+dp", epsilon=eps, dp=dp, **base)[0])
        group_cfg = self.silo_config(alpha, seed, norm="group")
        for eps in s.epsilons:
            if not self.wants(f"eps:{eps:g}"):
                continue
            if math.isinf(eps):
                rec, _ = self.federation(
                    group_cfg, create_aggregator("plain"), mode="example-dp", epsilon=INF, **base
                )
                out.append(rec)
                continue
            out.append(self.example_dp(group_cfg, eps, seed, base=base))
        for eps in s.baseline_epsilons:
            if not math.isinf(eps) and self.wants(f"local-dp-sgd:{eps:g}"):
                out.append(self.local_dp_sgd(group_cfg, alpha, eps, seed))
        budget = self.matched_budget(group_cfg)
        for eps in s.baseline_epsilons:
            if self.wants(f"dp-fedavg:{eps:g}"):
                out.append(
                    self.dp_fedavg(
                        setting="cross-silo",
                        alpha=alpha,
                        seed=seed,
                        eps=eps,
                        cohort=None,
                        graph="complete",
                        **budget,
                    )
                )
        if s.remedy_partitions is None or alpha in s.remedy_partitions:
            for remedy in s.silo_remedies:
                if not self.wants(f"remedy:{remedy.name}"):
                    continue
                f = remedy.dp_batch_factor
                dc = group_cfg.distill
                # The same examples per round in f times fewer, f times larger DP-SGD steps.
                distill = dataclasses.replace(
                    dc, ce_ratio=dc.ce_ratio / f, warmup_steps=max(1, dc.warmup_steps // f)
                )
                cfg = dataclasses.replace(group_cfg, distill=distill)
                out.append(
                    self.example_dp(
                        cfg,
                        s.remedy_epsilon,
                        seed,
                        base=base,
                        batch=s.batch_size * f,
                        remedy=remedy,
                        kd_lr=remedy.dp_kd_lr,
                    )
                )
        if not self.wants("baselines"):
            return
        self.baselines(
            out=out, setting="cross-silo", alpha=alpha, seed=seed, models=group_cfg.models, **budget
        )

    def example_dp(
        self,
        config: FederationConfig,
        eps: float,
        seed: int,
        *,
        base: dict[str, Any],
        batch: int | None = None,
        remedy: Remedy | None = None,
        kd_lr: float | None = None,
    ) -> RunRecord:
        """One cross-silo federation with DP-SGD on every client, calibrated to `eps` for the whole run."""
        from ..privacy.calibration import ExampleLevelSchedule
        from ..privacy.example_level import dp_trainer_factory

        s = self.size
        batch = min(batch or s.batch_size, s.silo_samples)
        steps = config.distill.warmup_steps + config.rounds * config.distill.ce_steps_per_round
        delta = delta_for(s.silo_samples)
        label_z, label_events = _label_histogram(config)
        plan = plan_noise_cached(
            ExampleLevelSchedule(
                local_steps=steps, batch_size=batch, data_size=s.silo_samples, extra_events=label_events
            ),
            eps,
            delta,
            s.silo_accountant,
        )
        factory = dp_trainer_factory(
            noise_multiplier=plan.noise_multiplier,
            label_noise_multiplier=label_z,
            target_epsilon=eps,
            max_grad_norm=s.dp_clip,
            batch_size=batch,
            lr=config.distill.lr,
            momentum=config.distill.momentum,
            accountant=s.silo_accountant,
            delta=delta,
            noise_seed=seed,
            sampling_seed=seed,  # reproducible benchmark runs: a test option (the trainers say not private)
            **({} if kd_lr is None else {"kd_lr": kd_lr}),
        )
        rec, fed = self.federation(
            config,
            create_aggregator("plain"),
            mode="example-dp",
            epsilon=eps,
            trainer_factory=factory,
            remedy=remedy,
            **base,
        )
        spent = max(c.trainer.epsilon() for c in fed.clients)
        params = max(sum(p.numel() for p in c.model.parameters()) for c in fed.clients)
        return dataclasses.replace(
            rec,
            epsilon_spent=float(spent),
            noise_multiplier=plan.noise_multiplier,
            nsr=0.0,
            nsr_cohort=0.0,
            extra={
                **rec.extra,
                "delta": delta,
                "dp_sgd_steps": float(steps),
                "dp_sgd_batch": float(batch),
                "dp_sgd_step_nsr": plan.noise_multiplier * math.sqrt(params) / batch,
            },
        )

    def secure_dp(
        self,
        config: FederationConfig,
        cohort: int,
        eps: float,
        seed: int,
        *,
        population: int | None = None,
        graph: str | None = None,
    ) -> tuple[Aggregator, dict]:
        """A `secure+dp` aggregator calibrated to `eps` over the run for a client in every round.

        The server knows each cohort, so a client's rounds compose unamplified (q = 1); `sample_rate`
        (cohort / population) is recorded, never accounted.
        """
        s = self.size
        population = population or s.population
        agg, plan, delta = _client_level_aggregator(
            rounds=config.rounds,
            releases_per_round=config.releases_per_round,
            population=population,
            eps=eps,
            seed=seed,
            graph=graph or s.device_graph,
        )
        return agg, {
            "noise_multiplier": plan.noise_multiplier,
            "delta": delta,
            "sample_rate": cohort / population,
        }

    def cross_device(self, alpha: float | None, seed: int, cohort: int, out: list[RunRecord]) -> None:
        """Append every cross-device run of one partition, seed and cohort to `out`, as each ends."""
        s = self.size
        label = _label(alpha)
        base = dict(setting="cross-device", partition_label=label, cohort=cohort)
        cfg = self.device_config(alpha, seed, cohort)
        if self.wants("plain"):
            agg = create_aggregator("plain")
            out.append(self.federation(cfg, agg, mode="plain", epsilon=None, **base)[0])
        if self.wants("secure"):
            secure, _ = self.federation(
                cfg,
                create_aggregator("secure", graph=s.device_graph, seed=seed),
                mode="secure",
                epsilon=None,
                **base,
            )
            out.append(secure)
            if any(math.isinf(e) for e in s.epsilons):
                # Without noise secure+dp is `secure`: the same run, recorded once more as the curve's end.
                out.append(dataclasses.replace(secure, mode="secure+dp", epsilon=INF))
        for eps in s.epsilons:
            if math.isinf(eps) or not self.wants(f"eps:{eps:g}"):
                continue
            agg, dp = self.secure_dp(cfg, cohort, eps, seed)
            out.append(self.federation(cfg, agg, mode="secure+dp", epsilon=eps, dp=dp, **base)[0])
        budget = self.matched_budget(cfg)
        for eps in s.baseline_epsilons:
            if self.wants(f"dp-fedavg:{eps:g}"):
                out.append(
                    self.dp_fedavg(
                        setting="cross-device",
                        alpha=alpha,
                        seed=seed,
                        eps=eps,
                        cohort=cohort,
                        graph=s.device_graph,
                        **budget,
                    )
                )
        for remedy in _device_remedies(s, alpha, cohort):
            if not self.wants(f"remedy:{remedy.name}"):
                continue
            rcfg = self.device_config(alpha, seed, cohort, remedy)
            agg, dp = self.secure_dp(rcfg, cohort, s.remedy_epsilon, seed)
            if remedy.projection is not None:
                agg = ProjectedReleases(
                    agg,
                    parse_projection(remedy.projection),
                    self.dataset.input_shape,
                    renormalize=remedy.renormalize,
                )
            out.append(
                self.federation(
                    rcfg, agg, mode="secure+dp", epsilon=s.remedy_epsilon, remedy=remedy, dp=dp, **base
                )[0]
            )

    def device_baselines(self, alpha: float | None, seed: int, out: list[RunRecord]) -> None:
        largest = max(self.size.cohorts)
        cfg = self.device_config(alpha, seed, largest)
        self.baselines(
            out=out,
            setting="cross-device",
            alpha=alpha,
            seed=seed,
            models=cfg.models,
            centralized_clients=largest,
            **self.matched_budget(cfg),
        )


def _device_remedies(size: TradeoffSize, alpha: float | None, cohort: int) -> tuple[Remedy, ...]:
    """The client-level DP remedies run for this partition and cohort."""
    here = (size.remedy_partitions is None or alpha in size.remedy_partitions) and (
        size.remedy_cohorts is None or cohort in size.remedy_cohorts
    )
    return size.remedies if here else ()


@dataclass(frozen=True, slots=True)
class _Unit:
    """One independent piece of the benchmark: a worker process runs it whole."""

    kind: str  # "cross-silo", "cross-device" or "cross-device baselines"
    alpha: float | None
    seed: int
    cohort: int | None = None
    key: str | None = None  # one run key (`_run_keys`); None: every run of the kind

    @property
    def label(self) -> str:
        return (
            f"{self.kind} {_label(self.alpha)} seed {self.seed}"
            + (f" cohort {self.cohort}" if self.cohort is not None else "")
            + (f" [{self.key}]" if self.key is not None else "")
        )


def _run_keys(size: TradeoffSize, unit: _Unit) -> list[str]:
    """The runs of a whole unit, by key, in the order a sequential run takes them."""
    if unit.kind == "cross-device baselines":
        return ["baselines"]
    finite = [f"eps:{e:g}" for e in size.epsilons if not math.isinf(e)]
    if unit.kind == "cross-device":
        assert unit.cohort is not None
        remedies = _device_remedies(size, unit.alpha, unit.cohort)
        return [
            "plain",
            "secure",
            *finite,
            *(f"dp-fedavg:{e:g}" for e in size.baseline_epsilons),
            *(f"remedy:{r.name}" for r in remedies),
        ]
    here = size.remedy_partitions is None or unit.alpha in size.remedy_partitions
    return [
        "plain",
        "secure",
        *(f"client-dp:{e:g}" for e in size.silo_client_level_epsilons),
        *(f"eps:{e:g}" for e in size.epsilons),
        *(f"local-dp-sgd:{e:g}" for e in size.baseline_epsilons if not math.isinf(e)),
        *(f"dp-fedavg:{e:g}" for e in size.baseline_epsilons),
        *(f"remedy:{r.name}" for r in (size.silo_remedies if here else ())),
        "baselines",
    ]


def _units(size: TradeoffSize, settings: Sequence[str], *, split: bool = False) -> list[_Unit]:
    """Every unit of work, in the order a sequential run takes them (baselines before their federations).

    With `split`, each unit is cut into one unit per run (`_run_keys`), so that many workers can
    share the runs of one partition and seed.
    """
    units = []
    if "cross-silo" in settings:
        # Seed-major: a run cut short by its budget still has every partition of the first seed.
        units += [_Unit("cross-silo", a, sd) for sd in size.seeds for a in size.partitions]
    if "cross-device" in settings and cohort_sampling_supported():
        for a in size.partitions:
            for sd in size.seeds:
                units.append(_Unit("cross-device baselines", a, sd))
                units += [_Unit("cross-device", a, sd, c) for c in size.cohorts]
    if not split:
        return units
    return [dataclasses.replace(u, key=k) for u in units for k in _run_keys(size, u)]


def _without_remedies(size: TradeoffSize) -> TradeoffSize:
    """A size with its remedies removed: a resumed run may add remedies (and where they run), nothing else."""
    return dataclasses.replace(
        size, remedies=(), silo_remedies=(), remedy_partitions=None, remedy_cohorts=None
    )


def _unit_runs(unit: _Unit, runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The records among `runs` that the split unit `unit` writes."""
    setting = "cross-device" if unit.kind.startswith("cross-device") else "cross-silo"
    key = unit.key or ""
    if key.startswith(("eps:", "client-dp:")):
        eps = float(key.split(":", 1)[1])
        mode = "example-dp" if key.startswith("eps:") and setting == "cross-silo" else "secure+dp"
    elif key.startswith(("dp-fedavg:", "local-dp-sgd:")):
        mode, _, value = key.partition(":")
        eps = float(value)
    else:
        eps = None

    def match(r: RunRecord) -> bool:
        if key == "baselines":
            return r.mode in ("local", "fedavg", "centralized")
        if key.startswith("remedy:"):
            return r.remedy == key.split(":", 1)[1]
        if r.remedy is not None:
            return False
        if key == "secure" and setting == "cross-device":
            return r.mode == "secure" or (r.mode == "secure+dp" and r.epsilon == INF)
        if eps is None:
            return r.mode == key
        return r.mode == mode and r.epsilon == eps

    return [
        r
        for r in runs
        if r.setting == setting
        and r.partition == _label(unit.alpha)
        and r.seed == unit.seed
        and r.cohort == unit.cohort
        and match(r)
    ]


def _unit_done(unit: _Unit, runs: Sequence[RunRecord]) -> bool:
    """Whether `runs` already hold everything the split unit `unit` would record."""
    mine = _unit_runs(unit, runs)
    if unit.key == "baselines":
        return {"local", "fedavg", "centralized"} <= {r.mode for r in mine}
    return bool(mine)


def _priority(size: TradeoffSize, unit: _Unit) -> tuple[int, int]:
    """Order of a split run under a time budget: what the targets need first, the longest first within."""
    key = unit.key or ""
    target = size.remedy_epsilon
    ranks = {"baselines": 0, "plain": 1, "secure": 1, f"eps:{target:g}": 2, "eps:inf": 3}
    ranks[f"client-dp:{target:g}"] = 3
    rank = 5 if key.startswith("remedy:") else ranks.get(key, 4)
    if unit.cohort is not None:
        cost = unit.cohort
    else:
        cost = 10 * size.silo_clients if unit.kind == "cross-silo" else 0
    return rank, -cost


def _run_unit(runner: Runner, unit: _Unit, out: list[RunRecord], notes: list[str], strict: bool) -> None:
    """Run one unit into `out`; a failure or the end of the budget becomes a note, not a lost run."""
    runner.only = None if unit.key is None else frozenset({unit.key})
    try:
        if unit.kind == "cross-silo":
            runner.cross_silo(unit.alpha, unit.seed, out)
        elif unit.kind == "cross-device":
            assert unit.cohort is not None
            runner.cross_device(unit.alpha, unit.seed, unit.cohort, out)
        else:
            runner.device_baselines(unit.alpha, unit.seed, out)
    except OutOfTime as exc:
        notes.append(
            f"{unit.label}: the time budget ran out before `{exc}`; it and the rest of the unit did not run."
        )
        runner.say(notes[-1])
    except Exception as exc:
        if strict:
            raise
        # One failed unit must not lose the runs before it: record it and go on.
        log.exception("%s failed", unit.label)
        notes.append(f"{unit.label} failed and is partly missing: {type(exc).__name__}: {exc}")
        runner.say(notes[-1])


def _worker(
    size: TradeoffSize, unit: _Unit, device: str, deadline: float | None, threads: int | None
) -> tuple[list[RunRecord], list[str]]:
    """Run one unit in a worker process (spawned, so CUDA initialises cleanly in each)."""
    if threads:
        pin_threads(threads)

    def say(line: str) -> None:
        print(f"[{unit.label}] {line}", file=sys.stderr, flush=True)

    runner = Runner(size, resolve_device(device), say, deadline)
    out: list[RunRecord] = []
    notes: list[str] = []
    _run_unit(runner, unit, out, notes, strict=False)
    return out, notes


def run_tradeoff(
    size: str | TradeoffSize = "cpu",
    *,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "auto",
    settings: Sequence[str] = ("cross-silo", "cross-device"),
    progress: Callable[[str], None] | None = None,
    checkpoint: str | Path | None = None,
    strict: bool = False,
    jobs: int = 1,
    budget_s: float | None = None,
    threads: int | None = None,
    command: str = "",
    resume: TradeoffResults | None = None,
) -> TradeoffResults:
    """Run the trade-off benchmark.

    Args:
        size: "quick", "cpu", "full" or a `TradeoffSize`.
        seeds: override the size's seeds.
        device: "auto" (CUDA when available), "cpu", "cuda[:N]".
        settings: which federations to run ("cross-silo", "cross-device").
        progress: called with one line per run started and finished.
        checkpoint: JSON file rewritten after every unit of runs, so a long run that stops keeps
            what it measured.
        strict: raise the first error; otherwise a unit (one setting, partition, seed, cohort)
            that fails is recorded in the notes with its error, and the others still run. Only with
            `jobs` = 1.
        jobs: worker processes, each running whole units (with `jobs` > 1 they share the machine,
            and a GPU, so times per round include that contention; the results file says so).
        budget_s: no run starts after this many seconds (runs already started finish); what did
            not run is listed in the notes.
        threads: torch threads in each worker process (jobs > 1); None keeps torch's default.
        command: the command line, recorded in the results (and so in every checkpoint).
        resume: results of an earlier run of the same size (a budget-cut run, or a checkpoint): only
            the runs missing from it are run, one unit per run, and the results hold both.
    Returns:
        The `TradeoffResults` (every run, plus notes on anything skipped).
    Raises:
        ConfigError: unknown size, setting or device, or jobs < 1; DataError when the data set is missing.
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise ConfigError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        size = SIZES[size]
    if seeds is not None:
        size = dataclasses.replace(size, seeds=tuple(int(s) for s in seeds))
    unknown = set(settings) - {"cross-silo", "cross-device"}
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}; choose from cross-silo, cross-device")
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if resume is not None and _without_remedies(resume.size) != _without_remedies(size):
        raise ConfigError(
            f"cannot resume: the results are of another size ({resume.size.name!r} with other settings); "
            "only the remedies may differ"
        )
    if budget_s is not None and not budget_s > 0:
        raise ConfigError(f"budget_s must be > 0, got {budget_s}")
    dev = resolve_device(device)
    say = progress or (lambda line: log.info("%s", line))
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    deadline = None if budget_s is None else time.time() + budget_s
    results = TradeoffResults(size=size, device=str(dev), hardware=hardware(dev), started=started)
    results.hardware["jobs"] = str(jobs)
    results.command = command
    if "cross-device" in settings and not cohort_sampling_supported():
        results.notes.append(
            "cross-device part skipped: this version of the learning loop has no per-round cohort "
            "sampling (FederationConfig.clients_per_round is missing), so cohorts of "
            f"{', '.join(map(str, size.cohorts))} out of {size.population} clients cannot be run."
        )
        say(results.notes[-1])
    units = _units(size, settings, split=jobs > 1 or resume is not None)
    elsewhere = False
    if resume is not None:
        units = [u for u in units if not _unit_done(u, resume.runs)]
        # Notes name split units, or whole ones (a sequential run's): both are superseded.
        whole = {dataclasses.replace(u, key=None).label for u in units}
        labels = tuple({u.label for u in units} | {w + ":" for w in whole} | {w + " failed" for w in whole})
        # A unit that runs again replaces whatever part of it the earlier run recorded.
        results.runs = [r for r in resume.runs if not any(_unit_runs(u, [r]) for u in units)]
        # Notes on units that run now, and the closing note, are written afresh.
        results.notes = [
            n for n in resume.notes if not n.startswith(labels) and not n.startswith("remedies not run")
        ]
        results.command = f"{resume.command}; resumed with: {command}"
        results.started = resume.started
        elsewhere = (
            resume.hardware.get("gpu") != results.hardware.get("gpu") or resume.device != results.device
        )
        if elsewhere:
            # Accuracies compare across machines; times per round do not. The file keeps the first
            # machine's description and run time; a note names this one and its time.
            here = (results.device, _hardware_line(results.hardware), len(units))
            results.hardware = resume.hardware
            results.device = resume.device

    def run_seconds() -> float:
        """The whole benchmark's time: an earlier call's plus this one's, unless this ran elsewhere."""
        if resume is None:
            return time.perf_counter() - t0
        return resume.seconds + (0.0 if elsewhere else time.perf_counter() - t0)

    def save() -> None:
        if checkpoint is not None:
            results.seconds = run_seconds()
            write_json(results, checkpoint)

    if jobs == 1:
        runner = Runner(size, dev, say, deadline)
        for unit in units:
            _run_unit(runner, unit, results.runs, results.notes, strict)
            save()
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        done: dict[int, tuple[list[RunRecord], list[str]]] = {}
        before = list(results.notes)
        before_runs = list(results.runs)
        # Workers take units in submission order: the runs the targets need first, longest first.
        order = sorted(range(len(units)), key=lambda i: (_priority(size, units[i]), i))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, size, units[i], str(dev), deadline, threads): i for i in order}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    done[i] = fut.result()
                except Exception as exc:  # the worker process itself died
                    done[i] = ([], [f"{units[i].label} failed: {type(exc).__name__}: {exc}"])
                say(f"finished {units[i].label} ({len(done)}/{len(units)} units)")
                # Keep the sequential order in the results, whatever order the workers finish in.
                results.runs = before_runs + [r for k in sorted(done) for r in done[k][0]]
                results.notes = before + [n for k in sorted(done) for n in done[k][1]]
                save()
    if size.remedies and not any(r.remedy and r.setting == "cross-device" for r in results.runs):
        results.notes.append(
            "remedies not run: they apply to client-level DP, which needs the cross-device part."
        )
    if elsewhere:
        device, line, count = here
        results.notes.append(
            f"The {count} runs this resumed call added ran on `{device}` ({line}), the others on "
            f"`{resume.device}` ({_hardware_line(resume.hardware)}): compare their times per round only "
            f"among themselves. They took {(time.perf_counter() - t0) / 60:.1f} min there."
        )
    results.seconds = run_seconds()
    results.complete = True
    return results


# -- summary ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """Runs of one configuration over seeds.

    Attributes:
        mean: mean over seeds of the final mean client accuracy.
        std_clients: mean over seeds of the std over clients.
        std_seeds: std over seeds of the final mean accuracy (0 with one seed).
        seeds: how many seeds.
        Other fields: means over seeds of the runs' fields (None where no run has them).
    """

    setting: str
    partition: str
    cohort: int | None
    mode: str
    epsilon: float | None
    remedy: str | None
    mean: float
    std_clients: float
    std_seeds: float
    seeds: int
    best_mean: float
    seconds_per_round: float | None
    dream_seconds_per_round: float | None
    bytes_per_client_per_round: float | None
    epsilon_spent: float | None
    noise_multiplier: float | None
    release_noise_multiplier: float | None
    nsr: float | None
    nsr_cohort: float | None
    released_dimension: int | None
    releases_per_round: int | None
    dream_batch: int | None
    clipped_fraction: float | None
    extra: dict[str, float]


def _mean_opt(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def summarise(runs: Sequence[RunRecord]) -> list[SummaryRow]:
    """Group runs that differ only in the seed; accuracy as mean, std over clients, std over seeds."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.setting, r.partition, r.cohort, r.mode, r.epsilon, r.remedy), []).append(r)
    rows = []
    for (setting, part, cohort, mode, eps, remedy), rs in groups.items():
        means = [r.mean_accuracy for r in rs]
        extra_keys = sorted({k for r in rs for k in r.extra})
        rows.append(
            SummaryRow(
                setting=setting,
                partition=part,
                cohort=cohort,
                mode=mode,
                epsilon=eps,
                remedy=remedy,
                mean=float(np.mean(means)),
                std_clients=float(np.mean([r.std_accuracy for r in rs])),
                std_seeds=float(np.std(means)),
                seeds=len(rs),
                best_mean=float(np.mean([r.best_mean_accuracy for r in rs])),
                seconds_per_round=_mean_opt([r.seconds_per_round for r in rs]),
                dream_seconds_per_round=_mean_opt([r.dream_seconds_per_round for r in rs]),
                bytes_per_client_per_round=_mean_opt([r.bytes_per_client_per_round for r in rs]),
                epsilon_spent=_mean_opt([r.epsilon_spent for r in rs]),
                noise_multiplier=_mean_opt([r.noise_multiplier for r in rs]),
                release_noise_multiplier=_mean_opt([r.release_noise_multiplier for r in rs]),
                nsr=_mean_opt([r.nsr for r in rs]),
                nsr_cohort=_mean_opt([r.nsr_cohort for r in rs]),
                released_dimension=rs[0].released_dimension,
                releases_per_round=rs[0].releases_per_round,
                dream_batch=rs[0].dream_batch,
                clipped_fraction=_mean_opt([r.clipped_fraction for r in rs]),
                extra={
                    k: v for k in extra_keys if (v := _mean_opt([r.extra.get(k) for r in rs])) is not None
                },
            )
        )
    return rows


def _row_dict(row: SummaryRow) -> dict:
    d = dataclasses.asdict(row)
    d["epsilon"] = _json_eps(row.epsilon)
    return d


def _find(
    rows: Sequence[SummaryRow],
    *,
    setting: str,
    partition: str,
    cohort: int | None,
    mode: str,
    epsilon: float | None = None,
    remedy: str | None = None,
) -> SummaryRow | None:
    for r in rows:
        if (r.setting, r.partition, r.cohort, r.mode, r.remedy) == (
            setting,
            partition,
            cohort,
            mode,
            remedy,
        ) and (r.epsilon == epsilon):
            return r
    return None


# -- writers ---------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _acc(row: SummaryRow) -> str:
    return f"{100 * row.mean:.1f} ± {100 * row.std_clients:.1f} ± {100 * row.std_seeds:.1f}"


def _num(x: float | None, fmt: str = "{:.3g}") -> str:
    return "-" if x is None else fmt.format(x)


def _eps_str(e: float | None) -> str:
    if e is None:
        return "-"
    return "∞" if math.isinf(e) else f"{e:g}"


def _bytes(b: float | None) -> str:
    if b is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def _places(rows: Sequence[SummaryRow]) -> list[tuple[str, str, int | None]]:
    return list(dict.fromkeys((r.setting, r.partition, r.cohort) for r in rows if r.mode not in _BASELINES))


_BASELINES = ("local", "fedavg", "centralized")
_PRIVATE = {"cross-silo": "example-dp", "cross-device": "secure+dp"}
#: The private baselines a user would pick instead, per setting, with the unit their ε protects.
_PRIVATE_BASELINES = {
    "cross-silo": (("local-dp-sgd", "local DP-SGD (example)"), ("dp-fedavg", "DP-FedAvg (client)")),
    "cross-device": (("dp-fedavg", "DP-FedAvg (client)"),),
}


def _comparison(rows: Sequence[SummaryRow]) -> list[str]:
    """CoDream under DP against the private baselines at each ε, per place, and who wins where."""
    out: list[str] = []
    for setting, part, cohort in _places(rows):
        ours = _PRIVATE[setting]
        others = _PRIVATE_BASELINES[setting]
        eps_all = sorted(
            {
                r.epsilon
                for r in rows
                if (r.setting, r.partition, r.cohort) == (setting, part, cohort)
                and r.remedy is None
                and r.epsilon is not None
                and r.mode in (ours, *(m for m, _ in others))
            }
        )
        if not any(
            _find(rows, setting=setting, partition=part, cohort=cohort, mode=m, epsilon=e)
            for m, _ in others
            for e in eps_all
        ):
            continue
        local = _find(rows, setting=setting, partition=part, cohort=None, mode="local")
        where = f"{setting} {part}" + (f", cohort {cohort}" if cohort else "")
        out += [
            f"### {where}",
            "",
            f"| ε | CoDream ({ours}) | " + " | ".join(name for _, name in others) + " | best |",
            "|---:|---|" + "---|" * len(others) + "---|",
        ]
        wins, losses, ties = [], [], []
        for e in eps_all:
            mine = _find(rows, setting=setting, partition=part, cohort=cohort, mode=ours, epsilon=e)
            theirs = [
                (name, _find(rows, setting=setting, partition=part, cohort=cohort, mode=m, epsilon=e))
                for m, name in others
            ]
            cells = [_acc(mine) if mine else "-"] + [_acc(r) if r else "-" for _, r in theirs]
            present = [(f"CoDream ({ours})", mine)] + theirs
            present = [(n, r) for n, r in present if r is not None]
            best = max(present, key=lambda nr: nr[1].mean)[0] if present else "-"
            out.append(f"| {_eps_str(e)} | " + " | ".join(cells) + f" | {best} |")
            if mine is None:
                continue
            for name, r in theirs:
                if r is None:
                    continue
                diff = 100 * (mine.mean - r.mean)
                spread = 100 * max(mine.std_seeds, r.std_seeds)
                item = f"ε = {_eps_str(e)} vs {name} ({diff:+.1f} points)"
                if abs(diff) <= spread:
                    ties.append(item)
                elif diff > 0:
                    wins.append(item)
                else:
                    losses.append(item)
        out.append("")
        out.append(
            f"- **{where}**: CoDream wins at "
            + ("; ".join(wins) or "no ε")
            + ". It loses at "
            + ("; ".join(losses) or "no ε")
            + "."
            + (f" Within the spread over seeds: {'; '.join(ties)}." if ties else "")
            + (
                f" Local-only training without DP (BatchNorm), which releases nothing to the server: "
                f"{_pct(local.mean)}."
                if local is not None
                else ""
            )
        )
        out.append("")
    return out


def _weak_reference(rows: Sequence[SummaryRow], setting: str, part: str, plain: SummaryRow) -> str:
    """A caution when non-private CoDream itself does not beat local-only training at this size."""
    local = _find(rows, setting=setting, partition=part, cohort=None, mode="local")
    if local is None or plain.mean > local.mean:
        return ""
    return (
        f" Caution: at this size non-private CoDream ({_pct(plain.mean)}) does not beat local-only training "
        f"({_pct(local.mean)}), so this comparison says little about what DP costs a useful federation."
    )


def _targets(rows: Sequence[SummaryRow], size: TradeoffSize, runs: Sequence[RunRecord] = ()) -> list[str]:
    """Lines on each target: met or missed, by how much, and what limits it."""
    lines = []
    for setting, part, cohort in _places(rows):
        where = f"{setting} {part}" + (f", cohort {cohort}" if cohort else "")
        plain = _find(rows, setting=setting, partition=part, cohort=cohort, mode="plain")
        secure = _find(rows, setting=setting, partition=part, cohort=cohort, mode="secure")
        dp8 = _find(rows, setting=setting, partition=part, cohort=cohort, mode=_PRIVATE[setting], epsilon=8.0)
        if plain and dp8:
            gap = 100 * (plain.mean - dp8.mean)
            status = "met" if gap <= 3.0 else f"MISSED by {gap - 3.0:.1f} points"
            limit = ""
            if gap > 3.0:
                if setting == "cross-device":
                    limit = (
                        f" Limited by the noise on the dream gradients: NSR {_num(dp8.nsr)} per client "
                        f"(noise L2 norm / clip norm at the released dimension {dp8.released_dimension}), "
                        f"{_num(dp8.nsr_cohort)} against the whole cohort's signal ({cohort} x clip norm); "
                        f"dream batch {dp8.dream_batch}, "
                        f"{dp8.releases_per_round} releases per round composed "
                        f"into one event (z_eff {_num(dp8.noise_multiplier)}, z per release "
                        f"{_num(dp8.release_noise_multiplier)}), cohort {cohort} of {size.population} "
                        "(no amplification), "
                        f"{size.device_rounds} rounds."
                        + (
                            f" At this noise, the summed signal of {math.ceil(dp8.nsr)} aligned clients "
                            "would only just match the noise norm."
                            if dp8.nsr is not None
                            else ""
                        )
                    )
                else:
                    limit = (
                        f" Limited by the DP-SGD noise in local training (released dream gradients carry no "
                        f"noise, NSR 0): z = {_num(dp8.noise_multiplier)} on every one of "
                        f"{_num(dp8.extra.get('dp_sgd_steps'), '{:.0f}')} steps, step NSR z sqrt(P)/B = "
                        f"{_num(dp8.extra.get('dp_sgd_step_nsr'))} (P parameters of the largest model, "
                        f"B = {size.batch_size}), on {size.silo_samples} examples per client; dream batch "
                        f"{dp8.dream_batch}, {dp8.releases_per_round} releases per round; BatchNorm and its "
                        "dream-loss term are unavailable (GroupNorm, w_bn = 0)."
                        + _architecture_gap(runs, size, part)
                    )
            lines.append(
                f"- **{where}**: accuracy at ε = 8 ({_PRIVATE[setting]}) {_pct(dp8.mean)} "
                f"vs non-private CoDream "
                f"(`plain`) {_pct(plain.mean)}: "
                + (f"{gap:.1f} points below" if gap >= 0 else f"{-gap:.1f} points above")
                + f", target ≤ 3 below: {status}.{limit}"
                + _weak_reference(rows, setting, part, plain)
            )
        if plain and secure:
            d_acc = 100 * (plain.mean - secure.mean)
            ok_acc = abs(d_acc) <= 0.5
            ratio = (
                secure.seconds_per_round / plain.seconds_per_round
                if secure.seconds_per_round and plain.seconds_per_round
                else None
            )
            ok_time = ratio is not None and ratio <= 2.0
            acc_status = "met" if ok_acc else f"MISSED by {abs(d_acc) - 0.5:.1f} points"
            time_status = (
                "met" if ok_time else ("not measured" if ratio is None else f"MISSED by {ratio - 2.0:.2f}x")
            )
            lines.append(
                f"- **{where}**: `secure` {_pct(secure.mean)} vs `plain` {_pct(plain.mean)} "
                f"({-d_acc:+.1f} points; target within 0.5: {acc_status}); time per round "
                f"{_num(secure.seconds_per_round, '{:.2f}')} "
                f"s vs {_num(plain.seconds_per_round, '{:.2f}')} s "
                f"(ratio {_num(ratio, '{:.2f}')}; target ≤ 2x: {time_status})."
                + (
                    " The accuracy difference is within the spread over seeds "
                    f"({100 * max(plain.std_seeds, secure.std_seeds):.1f} points): "
                    f"secure aggregation only adds "
                    "fixed-point rounding far below the dream gradient's scale."
                    if not ok_acc and abs(d_acc) <= 100 * 2 * max(plain.std_seeds, secure.std_seeds)
                    else ""
                )
            )
    return lines


def _client_means(runs: Sequence[RunRecord], **match: Any) -> list[float] | None:
    """Each client's final accuracy, averaged over seeds, for the runs (without remedy) that match."""
    sel = [r for r in runs if r.remedy is None and all(getattr(r, k) == v for k, v in match.items())]
    if not sel or len({len(r.final_accuracies) for r in sel}) != 1:
        return None
    return [float(a) for a in np.mean([r.final_accuracies for r in sel], axis=0)]


def _per_architecture(runs: Sequence[RunRecord], size: TradeoffSize) -> list[str]:
    """Cross-silo accuracy per client (one architecture each), mean over seeds: who pays for privacy."""
    names = [f"{i}: {m}" for i, m in enumerate(size.silo_models)]
    out = [
        "",
        "### Per client (architecture), mean over seeds",
        "",
        "| partition | mode | ε | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    kinds = [("plain", None), ("secure", None)]
    kinds += [("example-dp", e) for e in sorted(size.epsilons)]
    kinds += [("local-dp-sgd", e) for e in sorted(size.baseline_epsilons) if not math.isinf(e)]
    kinds += [(m, None) for m in _BASELINES]
    for part in dict.fromkeys(r.partition for r in runs if r.setting == "cross-silo"):
        for mode, eps in kinds:
            accs = _client_means(runs, setting="cross-silo", partition=part, mode=mode, epsilon=eps)
            if accs is not None and len(accs) == len(names):
                cells = " | ".join(f"{100 * a:.1f}" for a in accs)
                out.append(f"| {part} | {mode} | {_eps_str(eps)} | {cells} |")
    return out if len(out) > 5 else []


def _architecture_gap(runs: Sequence[RunRecord], size: TradeoffSize, part: str) -> str:
    """One sentence: each silo's accuracy at ε = 8 against the same GroupNorm model without DP."""
    dp = _client_means(runs, setting="cross-silo", partition=part, mode="example-dp", epsilon=8.0)
    free = _client_means(runs, setting="cross-silo", partition=part, mode="example-dp", epsilon=INF)
    if dp is None or free is None or len(dp) != len(free) != len(size.silo_models):
        return ""
    pairs = ", ".join(
        f"{m} {100 * a:.1f} vs {100 * b:.1f}" for m, a, b in zip(size.silo_models, dp, free, strict=True)
    )
    worst = max(range(len(dp)), key=lambda i: free[i] - dp[i])
    return (
        f" Per client at ε = 8 vs the same GroupNorm model without DP: {pairs}; "
        f"{size.silo_models[worst]} loses the most ({100 * (free[worst] - dp[worst]):.1f} points)."
    )


def _kept(r: RunRecord) -> float | None:
    """The share of the dream gradient's norm a projected release kept (older results: `lowres_...`)."""
    return r.extra.get("projection_signal_fraction", r.extra.get("lowres_signal_fraction"))


def _hardware_line(hw: Mapping[str, str]) -> str:
    line = f"{hw.get('cpu', '?')}, nproc = {hw.get('nproc', '?')} of {hw.get('cpu_count', '?')} cores"
    line += f", torch threads = {hw.get('torch_threads', '?')}"
    return f"GPU {hw['gpu']}; CPU {line}" if "gpu" in hw else line


def write_markdown(results: TradeoffResults, path: str | Path, *, plots: Sequence[str | Path] = ()) -> Path:
    """Write the results file: context, accuracy tables, costs, targets, remedies, notes.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = results.size
    rows = summarise(results.runs)
    hw = results.hardware
    hw_line = _hardware_line(hw)
    if int(hw.get("jobs", "1")) > 1:
        hw_line += (
            f"; {hw['jobs']} worker processes ran units side by side on this machine"
            + (" and its one GPU" if "gpu" in hw else "")
            + (" (through CUDA MPS)" if hw.get("cuda_mps") == "on" else "")
            + ", so every time per round includes that contention (compare times within a table only)"
        )
    out = [
        "# What privacy costs: accuracy and time per round against epsilon",
        "",
        f"Command: `{results.command}`  ",
        f"Date: {results.started}; run time {results.seconds / 60:.1f} min on device `{results.device}`  ",
        f"Hardware: {hw_line}; torch {hw.get('torch', '?')}, Python {hw.get('python', '?')}  ",
        f"Seeds: {', '.join(map(str, size.seeds))}",
        "",
        size.describe(),
        "",
        "Accuracy is the **final** round's test accuracy, in %, as mean over clients ± std over clients "
        "(mean over seeds) ± std over seeds of the mean; nothing is selected on the test set (the "
        "best-over-rounds mean, which is, is in the JSON as `best_mean`). Baselines (local-only, FedAvg on "
        f"one `{size.fedavg_model}`, centralized) use BatchNorm models and a matched number of SGD steps "
        "per round. Cross-silo DP: example-level DP-SGD on every client (GroupNorm models, no BatchNorm "
        "term in the dream loss; ε = ∞ is that federation with plain SGD), "
        f"{size.silo_accountant.upper()} accountant, δ = "
        f"{delta_for(size.silo_samples):g} (< 1/examples per client). "
        f"Cross-device DP: `secure+dp`, client-level, "
        f"RDP accountant, δ = {delta_for(size.population):g} (< 1/population); every client is accounted "
        "by its own ledger over the rounds it took part in, without amplification by sampling (the "
        "server knows every cohort), and the noise is calibrated for a client that takes part in every "
        "round, so the ε spent is the largest any client spent; all releases of a round compose into "
        "one event (ε = ∞ is the `secure` run). Example-level runs of the conditional method also pay "
        "for one DP label histogram per client (z = 20), planned into their budget. "
        "The cross-silo DP runs sum through `plain` aggregation: the example-level guarantee does not "
        "rest on it, and what secure aggregation costs is the `secure` row.",
        "",
    ]
    for note in results.notes:
        out += [f"> **Note:** {note}", ""]
    for setting in ("cross-silo", "cross-device"):
        srows = [r for r in rows if r.setting == setting]
        if not srows:
            continue
        out += [f"## {setting}", "", "### Accuracy against ε", ""]
        out += [
            "| partition | cohort | mode | ε target | ε spent | accuracy % | z "
            "| z per release | NSR (per client) "
            "| NSR (cohort) | clipped |",
            "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        ordered = sorted(
            (r for r in srows if r.remedy is None),
            key=lambda r: (
                r.partition,
                r.cohort or 0,
                _BASELINES.index(r.mode) + 10 if r.mode in _BASELINES else 0,
                r.mode,
                math.inf if r.epsilon is None else r.epsilon,
            ),
        )
        for r in ordered:
            out.append(
                f"| {r.partition} | {r.cohort or '-'} | {r.mode} | {_eps_str(r.epsilon)} "
                f"| {_num(r.epsilon_spent)} "
                f"| {_acc(r)} | {_num(r.noise_multiplier)} "
                f"| {_num(r.release_noise_multiplier)} | {_num(r.nsr)} "
                f"| {_num(r.nsr_cohort)} | {_num(r.clipped_fraction, '{:.0%}')} |"
            )
        if setting == "cross-silo":
            out += _per_architecture(results.runs, size)
        out += ["", "### Cost per round", ""]
        out += [
            "| partition | cohort | mode | ε | s / round | dream s / round | bytes sent / client / round |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in ordered:
            if r.mode in _BASELINES or (r.epsilon is not None and r.epsilon not in (8.0, INF)):
                continue
            out.append(
                f"| {r.partition} | {r.cohort or '-'} | {r.mode} | {_eps_str(r.epsilon)} "
                f"| {_num(r.seconds_per_round, '{:.2f}')} | {_num(r.dream_seconds_per_round, '{:.2f}')} "
                f"| {_bytes(r.bytes_per_client_per_round)} |"
            )
        out.append("")
        out.append(
            "Seconds per round: mean of the rounds after the first (the first includes the warm-up), or the "
            "first round's when there is only one; wall clock, so on a shared machine it also counts waiting "
            "for a core."
            + (
                " A client warms up the first time it is sampled, so later rounds still include the "
                "warm-up of newly sampled clients."
                if setting == "cross-device"
                else ""
            )
        )
        out.append("")
    comparison = _comparison(rows)
    if comparison:
        out += [
            "## CoDream under DP against the private baselines, at equal ε",
            "",
            "Each private baseline is calibrated to the same target ε with the same accountant as the "
            "CoDream runs it stands beside. **DP-FedAvg** (McMahan et al. 2018): one shared "
            f"`{size.fedavg_model}` with GroupNorm; each round every client of the cohort (cross-silo: "
            "every client) trains locally from the global model and releases its model update as one "
            "vector through the same `secure+dp` seam (clipped to L2 norm "
            f"{size.dp_fedavg_clip:g}, distributed Skellam noise, secure aggregation); client-level, "
            "accounted per client over the rounds it took part in, without amplification, with the same "
            "calibration as CoDream's `secure+dp` (one release per round); ε = ∞ is the same run through "
            "`secure` (clipped, no noise). **Local DP-SGD**: each silo trains its own GroupNorm model "
            "with CoDream's example-level DP-SGD schedule (the same steps, batch, clip and accountant) and "
            "releases nothing else; it has no label histogram to pay for. 'Wins' and 'loses' compare the "
            "means over seeds; a difference within the larger std over seeds is listed as within the "
            "spread. A client-level ε (DP-FedAvg, and CoDream `secure+dp`) protects a whole client's data, "
            "an example-level ε (CoDream `example-dp`, local DP-SGD) one training example.",
            "",
            *comparison,
        ]
    out += ["## Targets", ""]
    target_lines = _targets(rows, size, results.runs)
    out += target_lines or ["- no target could be evaluated (missing runs)."]
    out.append("")
    remedy_rows = [r for r in rows if r.remedy is not None]
    if remedy_rows:
        out += [
            f"## Remedies (ε = {size.remedy_epsilon:g})",
            "",
            "| setting | partition | cohort | remedy | accuracy % | vs no remedy (points) "
            "| released dim | releases / round | dream batch | z per release | NSR (per client) "
            "| NSR (cohort) | signal kept | DP-SGD batch | DP-SGD step NSR | s / round |",
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(remedy_rows, key=lambda r: (r.setting, r.partition, r.cohort or 0, r.remedy or "")):
            ref = _find(
                rows,
                setting=r.setting,
                partition=r.partition,
                cohort=r.cohort,
                mode=r.mode,
                epsilon=r.epsilon,
            )
            delta_pts = "-" if ref is None else f"{100 * (r.mean - ref.mean):+.1f}"
            out.append(
                f"| {r.setting} | {r.partition} | {r.cohort or '-'} | {r.remedy} | {_acc(r)} | {delta_pts} "
                f"| {r.released_dimension} "
                f"| {r.releases_per_round} | {r.dream_batch} "
                f"| {_num(r.release_noise_multiplier)} | {_num(r.nsr)} "
                f"| {_num(r.nsr_cohort)} | {_num(_kept(r), '{:.0%}')} "
                f"| {_num(r.extra.get('dp_sgd_batch'), '{:.0f}')} | {_num(r.extra.get('dp_sgd_step_nsr'))} "
                f"| {_num(r.seconds_per_round, '{:.2f}')} |"
            )
        out += [""]
        ran = {r.remedy for r in remedy_rows}
        for remedy in (*size.silo_remedies, *size.remedies):
            if remedy.name in ran:
                out.append(f"- `{remedy.name}`: {remedy.description}.")
        if any(r.setting == "cross-device" for r in remedy_rows):
            out += [
                "- Larger cohorts: compare the cohort rows above (the noise is shared by the cohort, so the "
                "NSR against the cohort's signal falls roughly as 1/cohort at a given q).",
                "- Adaptive clipping: for client-level releases a quantile-tracking bound would not change "
                "the released scale, since every client normalises its dream gradient to the clip norm; for "
                "example-level DP-SGD it exists (`AdaptiveClipping`) and is measured on a validation split "
                "in [dp_sgd_tuning.md](dp_sgd_tuning.md), where it did not help.",
            ]
        out.append("")
    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
        out.append("")
    path.write_text("\n".join(out) + "\n")
    return path


def write_json(results: TradeoffResults, path: str | Path) -> Path:
    """Write every run and the summary as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results.to_dict(), indent=1, default=_json_default) + "\n")
    return path


def _remedy(fields: Mapping[str, Any]) -> Remedy:
    """A `Remedy` from JSON, including files that named 2x2 block means `downsample: 2`."""
    fields = dict(fields)
    factor = int(fields.pop("downsample", 1))
    if factor > 1:
        fields.setdefault("projection", f"blocks:{factor}")
    return Remedy(**fields)


def read_json(path: str | Path) -> TradeoffResults:
    """Results written by `write_json` (or a run's checkpoint), to render the tables and plots again."""
    data = json.loads(Path(path).read_text())

    def eps(e: Any) -> float | None:
        return INF if e == "inf" else (None if e is None else float(e))

    size_fields = dict(data["size"])
    size_fields["epsilons"] = tuple(eps(e) for e in size_fields["epsilons"])
    for name, value in list(size_fields.items()):
        if name in ("remedies", "silo_remedies"):
            size_fields[name] = tuple(_remedy(r) for r in value)
        elif isinstance(value, list):
            size_fields[name] = tuple(value)
    known = {f.name for f in dataclasses.fields(TradeoffSize)}
    size = TradeoffSize(**{k: v for k, v in size_fields.items() if k in known})
    runs = []
    for r in data["runs"]:
        r = dict(r)
        r["epsilon"] = eps(r["epsilon"])
        r["final_accuracies"] = tuple(r["final_accuracies"])
        runs.append(RunRecord(**r))
    return TradeoffResults(
        size=size,
        device=data["device"],
        runs=runs,
        notes=list(data["notes"]),
        hardware=dict(data["hardware"]),
        command=data.get("command", ""),
        started=data.get("started", ""),
        seconds=float(data.get("seconds", 0.0)),
        complete=bool(data.get("complete", True)),  # files older than the flag hold finished runs
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isinf(obj):
        return "inf"
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def write_plots(results: TradeoffResults, stem: str | Path) -> list[Path]:
    """PNG plots: accuracy against ε (one panel per partition) and time per round by aggregation mode.

    Args:
        stem: path prefix; writes ``<stem>_accuracy.png`` and ``<stem>_time.png``.
    Returns:
        The paths written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in summarise(results.runs) if r.remedy is None]
    finite = sorted({r.epsilon for r in rows if r.epsilon is not None and math.isfinite(r.epsilon)})
    inf_x = (max(finite) * 2) if finite else 1.0
    parts = list(dict.fromkeys(r.partition for r in rows))
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(6.5 * max(1, len(parts)), 4.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, part in zip(axes[0], parts, strict=False):
        places = [p for p in _places(rows) if p[1] == part]
        for i, (setting, _, cohort) in enumerate(places):
            colour = colours[i % len(colours)]
            label = setting + (f" (cohort {cohort})" if cohort else "")
            styles = {"dp-fedavg": ("s", "--"), "local-dp-sgd": ("^", "-.")}
            curves = [(_PRIVATE[setting], "o", "-", f"CoDream {_PRIVATE[setting]}")]
            curves += [(mode, *styles[mode], name) for mode, name in _PRIVATE_BASELINES[setting]]
            for mode, marker, style, name in curves:
                curve = sorted(
                    (
                        r
                        for r in rows
                        if (r.setting, r.partition, r.cohort, r.mode) == (setting, part, cohort, mode)
                        and r.epsilon is not None
                    ),
                    key=lambda r: r.epsilon,
                )
                if curve:
                    xs = [inf_x if math.isinf(r.epsilon) else r.epsilon for r in curve]
                    ax.errorbar(
                        xs,
                        [100 * r.mean for r in curve],
                        yerr=[100 * r.std_seeds for r in curve],
                        marker=marker,
                        linestyle=style,
                        color=colour,
                        label=f"{label}: {name}",
                        capsize=3,
                    )
            for mode, style in (("plain", "-"), ("local", ":")):
                ref = _find(
                    rows,
                    setting=setting,
                    partition=part,
                    cohort=cohort if mode == "plain" else None,
                    mode=mode,
                )
                if ref is None and mode != "plain":
                    ref = _find(rows, setting=setting, partition=part, cohort=cohort, mode=mode)
                if ref is not None:
                    ax.axhline(
                        100 * ref.mean,
                        color=colour,
                        linestyle=style,
                        linewidth=1,
                        alpha=0.8,
                        label=f"{label}: {'plain CoDream' if mode == 'plain' else mode}",
                    )
        ax.set_xscale("log", base=2)
        ticks = [*finite, inf_x]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in finite] + ["∞"])
        ax.set_xlabel("target ε")
        ax.set_ylabel("final mean client accuracy (%)")
        ax.set_title(f"Fashion-MNIST, {part}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Accuracy against ε (size {results.size.name}, seeds {', '.join(map(str, results.size.seeds))})"
    )
    fig.tight_layout()
    acc_path = stem.parent / f"{stem.name}_accuracy.png"
    fig.savefig(acc_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    bars = []
    for setting, part, cohort in _places(rows):
        for mode, eps in (("plain", None), ("secure", None), ("secure+dp", 8.0), ("example-dp", 8.0)):
            r = _find(rows, setting=setting, partition=part, cohort=cohort, mode=mode, epsilon=eps)
            if r is not None and r.seconds_per_round is not None:
                name = (
                    "secure+dp ε=8"
                    if mode == "secure+dp"
                    else ("example-dp ε=8" if mode == "example-dp" else mode)
                )
                bars.append(
                    (f"{setting}\n{part}" + (f" n={cohort}" if cohort else ""), name, r.seconds_per_round)
                )
    groups = list(dict.fromkeys(b[0] for b in bars))
    modes = list(dict.fromkeys(b[1] for b in bars))
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs = [groups.index(g) + j * width for g, m, _ in bars if m == mode]
        ys = [v for _, m, v in bars if m == mode]
        ax.bar(xs, ys, width=width, label=mode, color=colours[j % len(colours)])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, fontsize=7)
    ax.set_ylabel("wall time per round (s)")
    ax.set_title(f"Time per round by aggregation mode (device {results.device})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    time_path = stem.parent / f"{stem.name}_time.png"
    fig.savefig(time_path, dpi=110)
    plt.close(fig)
    return [acc_path, time_path]


# -- command line ----------------------------------------------------------------------------------


def _command_line() -> str:
    """The command as typed, with the thread settings that change its timings."""
    exe = os.path.relpath(sys.executable)
    exe = exe if not exe.startswith("..") else sys.executable
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ]
    return " ".join([*env, *(shlex.quote(a) for a in [exe, *sys.argv])])


def _shrunk_size(
    size: TradeoffSize, *, epsilons: str | None, cohorts: str | None, no_remedies: bool
) -> tuple[TradeoffSize, str]:
    """The size with the command line's smaller grid, and the note that says what was left out."""
    changes: dict[str, Any] = {}
    said = []
    if epsilons:
        eps = tuple(INF if e.strip() == "inf" else float(e) for e in epsilons.split(","))
        changes["epsilons"] = eps
        said.append(
            f"target epsilons {', '.join(map(_eps_str, eps))} "
            f"instead of {', '.join(map(_eps_str, size.epsilons))}"
        )
    if cohorts:
        cs = tuple(int(c) for c in cohorts.split(","))
        changes["cohorts"] = cs
        said.append(f"cohorts {', '.join(map(str, cs))} instead of {', '.join(map(str, size.cohorts))}")
    if no_remedies and (size.remedies or size.silo_remedies):
        changes.update(remedies=(), silo_remedies=())
        said.append(
            "no remedies (the size has "
            + ", ".join(r.name for r in (*size.silo_remedies, *size.remedies))
            + ")"
        )
    if not changes:
        return size, ""
    if (
        "remedy_epsilon" not in changes
        and "epsilons" in changes
        and size.remedy_epsilon not in changes["epsilons"]
    ):
        changes["remedies"], changes["silo_remedies"] = (), ()
    return dataclasses.replace(size, **changes), (
        f"Grid shrunk from the `{size.name}` size to fit the time available: " + "; ".join(said) + "."
    )


@click.command("tradeoff")
@click.option("--quick", "size", flag_value="quick", help="Tiny size (seconds; for tests).")
@click.option(
    "--cpu",
    "size",
    flag_value="cpu",
    default=True,
    help="CPU size (default; about 40 min of one core, half with --jobs 2).",
)
@click.option("--full", "size", flag_value="full", help="GPU size (about 6 min on one H100 with --jobs 16).")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the size's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option(
    "--settings", default="cross-silo,cross-device", show_default=True, help="Which federations to run."
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes, each running whole units (setting, partition, seed, cohort); they share the "
    "machine and its GPU, so times per round include that contention.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Torch threads per worker process (with --jobs > 1).",
)
@click.option(
    "--budget-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Start no run after this many minutes (started runs finish); what did not run is listed.",
)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Run nothing: render the tables and plots again from a results or checkpoint JSON file.",
)
@click.option(
    "--resume",
    "resume_json",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Results or checkpoint JSON of an earlier run of the same size: run only what it lacks (remedies "
    "added to the size since included), and write both together.",
)
@click.option(
    "--epsilons",
    default=None,
    help="Comma-separated target epsilons, 'inf' allowed (default: the size's); a smaller grid is named "
    "in the results' notes.",
)
@click.option("--cohorts", default=None, help="Comma-separated cross-device cohorts (default: the size's).")
@click.option("--no-remedies", is_flag=True, help="Run no remedy (named in the results' notes).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Markdown results file; the PNGs and JSON go beside it with the same stem "
    "(default: runs/bench/<UTC time>/tradeoff[_quick|_full].md, a fresh folder).",
)
@click.option(
    "--publish",
    is_flag=True,
    help="Replace the published results, benchmarks/results/tradeoff[_quick|_full].md, instead.",
)
def cli(
    size: str,
    seeds: str | None,
    device: str,
    settings: str,
    jobs: int,
    threads: int | None,
    budget_minutes: float | None,
    from_json: str | None,
    resume_json: str | None,
    as_json: bool,
    out: str | None,
    publish: bool,
    epsilons: str | None = None,
    cohorts: str | None = None,
    no_remedies: bool = False,
) -> None:
    """What privacy costs: accuracy and time per round against epsilon, cross-silo and cross-device."""
    from . import results_path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    out_path = results_path(
        "tradeoff.md" if size == "cpu" else f"tradeoff_{size}.md", out=out, publish=publish
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stem = out_path.with_suffix("")
    if from_json is not None:
        results = read_json(from_json)
        if not results.complete:
            results.notes.append(
                "Rendered from a checkpoint of a run that did not finish: runs under way when it was "
                "written are missing, beyond those the notes above name."
            )
    else:
        resume = read_json(resume_json) if resume_json is not None else None
        chosen, shrunk = _shrunk_size(
            SIZES[size], epsilons=epsilons, cohorts=cohorts, no_remedies=no_remedies
        )
        results = run_tradeoff(
            chosen,
            seeds=seed_list,
            device=device,
            settings=[s.strip() for s in settings.split(",") if s.strip()],
            progress=lambda line: click.echo(line, err=True),
            checkpoint=stem.with_suffix(".json"),
            jobs=jobs,
            threads=threads,
            budget_s=None if budget_minutes is None else budget_minutes * 60,
            command=_command_line(),
            resume=resume,
        )
        if shrunk:
            results.notes.insert(0, shrunk)
    plots = write_plots(results, stem)
    write_json(results, stem.with_suffix(".json"))
    write_markdown(results, out_path, plots=plots)
    if as_json:
        click.echo(json.dumps(results.to_dict(), indent=1, default=_json_default))
    else:
        click.echo(out_path.read_text())
