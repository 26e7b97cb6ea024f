"""The private baselines a user would pick instead of CoDream, accounted exactly like CoDream's DP runs.

- **DP-FedAvg** (McMahan, Ramage, Talwar & Zhang 2018): one shared architecture; each round every
  client of the cohort trains locally from the global model and releases its *model update*
  (local minus global parameters) as one planned vector through the same seam CoDream's releases go
  through. Under `secure+dp` the client half clips it to L2 norm `clip_norm`, adds its share of the
  distributed integer noise and masks it; the server decodes the noised sum and moves the global
  model by its mean over the contributors. Client-level DP, accounted per client, unamplified, one
  event per round it took part in: the cohorts are the public draw CoDream's loop uses
  (`cohort_indices`), so the server knows them exactly as it does in CoDream. Every client in every
  round is the cohort-free case. Models must keep no running statistics (GroupNorm): BatchNorm's
  buffers would be private values outside the noised update.
- **Local-only DP-SGD** (example-level): each client trains its own model with DP-SGD on its own
  data (`DPSGDTrainer`, the accountant of CoDream's example-level runs) and releases nothing but that
  model. Its schedule is CoDream's example-level one, so at the same target epsilon both spend the same
  DP-SGD steps; it has no label histogram to pay for.

Both evaluate on the test set after every round, like `codream.baselines`, and say what they spent.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .aggregation import Aggregator, ReleaseKind, VectorSpec, release_context
from .baselines import (
    BaselineConfig,
    BaselineResult,
    Method,
    _examples_per_round,
    _fedavg_models,
    _local_clients,
    _result,
    _start_run,
    _train,
)
from .data import Dataset
from .exceptions import ConfigError
from .federation.simulation import cohort_indices

__all__ = [
    "DPBaselineRun",
    "LocalDPSGDConfig",
    "check_no_running_statistics",
    "model_update_spec",
    "run_dp_fedavg",
    "run_local_dp_sgd",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DPBaselineRun:
    """A private baseline's accuracies and what it spent.

    Attributes:
        result: accuracies per round, as `codream.baselines` reports them.
        client_epsilons: each client's own epsilon at the end (DP-FedAvg: its seam ledger over the
            rounds it took part in; local DP-SGD: its DP-SGD accountant).
        epsilon: the largest of them; epsilon_mean their mean.
        noise_multiplier: z per round (DP-FedAvg, z_eff of its one release) or per DP-SGD step.
        extra: measured details (participations, clipped fraction of updates, update dimension, ...).
    """

    result: BaselineResult
    client_epsilons: dict[int, float]
    epsilon: float
    epsilon_mean: float
    noise_multiplier: float | None
    extra: dict[str, float] = field(default_factory=dict)


def model_update_spec(length: int, clip_norm: float) -> VectorSpec:
    """The one vector a DP-FedAvg client releases per round: its parameter update, bounded by clip_norm."""
    return VectorSpec("model_update", length, clip_norm, ReleaseKind.VECTOR)


def check_no_running_statistics(model: nn.Module, *, why: str) -> None:
    """Refuse a model with floating-point buffers (BatchNorm running statistics): they are private data.

    Raises:
        ConfigError: naming the first such buffer and `why` it matters.
    """
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            raise ConfigError(
                f"buffer {name!r} holds statistics of private data ({why}); build it with norm='group'"
            )


def _flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in model.parameters()])


def _set_flat_parameters(model: nn.Module, flat: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[i : i + n].reshape(p.shape).to(p.dtype))
            i += n


def run_dp_fedavg(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    model: str,
    config: BaselineConfig,
    aggregator: Aggregator,
    *,
    clip_norm: float,
    clients_per_round: int | None = None,
    server_lr: float = 1.0,
    device: str | torch.device = "auto",
) -> DPBaselineRun:
    """DP-FedAvg through the seam: every round, each cohort client's clipped, noised update is summed.

    Args:
        dataset: the data set; clients' data are ``dataset.x_train[parts[k]]``.
        parts: one index array per client.
        model: the one shared architecture.
        config: budget and optimiser settings (``local_steps`` local SGD steps per round from the
            global model; `norm` must keep no running statistics, e.g. "group").
        aggregator: the seam, e.g. ``create_aggregator("secure+dp", noise_multiplier=z, ...)``
            (client-level DP) or ``create_aggregator("secure")`` (no noise, the curve's end).
        clip_norm: the L2 bound of each client's update (the sensitivity the noise is calibrated to).
        clients_per_round: the cohort, drawn as CoDream's loop draws it (public); None: every client.
        server_lr: the global model moves by server_lr times the mean of the decoded sum.
        device: where the models train.
    Raises:
        ConfigError: bad settings, a model with running statistics, or a refusal of the seam.
    A client whose local training diverges (the noise can throw the global model far off) releases a
    zero update; `extra["diverged_updates"]` counts them.
        PrivacyBudgetExceeded: a client refuses a round past its own target (rounds so far are kept
            in the aggregator's ledgers).
    """
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be finite and > 0, got {clip_norm}")
    if not (math.isfinite(server_lr) and server_lr > 0):
        raise ConfigError(f"server_lr must be finite and > 0, got {server_lr}")
    run = _start_run(dataset, parts, model, device)
    dev, idx = run.device, run.idx
    n = len(idx)
    if clients_per_round is not None and not 1 <= clients_per_round <= n:
        raise ConfigError(f"clients_per_round must lie in [1, {n}], got {clients_per_round}")
    global_model, worker, gens = _fedavg_models(dataset, run, config)
    check_no_running_statistics(global_model, why="DP-FedAvg releases only the noised parameter update")
    flat = _flat_parameters(global_model)
    spec = model_update_spec(int(flat.numel()), float(clip_norm))
    history: list[tuple[float, ...]] = []
    participations = [0] * n
    norms: list[float] = []
    diverged = 0
    for r in range(config.rounds):
        cohort = cohort_indices(n, clients_per_round, config.seed, r)
        agg = aggregator.open_round(round_index=r, participants=cohort, specs=[spec])
        updates = {}
        for k in cohort:
            worker.load_state_dict(global_model.state_dict())
            x, y = dataset.x_train[idx[k]].to(dev), dataset.y_train[idx[k]].to(dev)
            stats = _train(worker, x, y, config, config.local_steps, gens[k], dev, divergence_ok=True)
            update = (_flat_parameters(worker) - flat).cpu().numpy()
            if not (math.isfinite(stats.last_loss) and np.all(np.isfinite(update))):
                # Local training diverged from a noised global model: the client releases a zero update
                # (its bounded, planned vector still goes through the seam) and it is counted.
                diverged += 1
                update = np.zeros_like(update)
            else:
                norms.append(float(np.linalg.norm(update)))  # client-local; a simulation reads it
            updates[k] = update
            participations[k] += 1
        res = agg.sum(spec, updates, context=release_context(r, spec, flat.cpu().numpy()))
        agg.close()
        if res.contributors:
            flat = flat + server_lr * torch.as_tensor(res.mean, dtype=torch.float64, device=flat.device)
            _set_flat_parameters(global_model, flat)
        acc = run.evaluate(global_model, config)
        history.append((acc,) * n)
        logger.info("dp-fedavg round %d/%d: accuracy %.4f", r + 1, config.rounds, acc)
    result = _result(
        Method.FEDAVG,
        run,
        history,
        config,
        steps=config.local_steps,
        examples=_examples_per_round(config.local_steps, config.batch_size, idx),
    )
    epsilons = _seam_epsilons(aggregator)
    took_part = [p for p in participations if p]
    return DPBaselineRun(
        result=result,
        client_epsilons=epsilons,
        epsilon=max(epsilons.values(), default=0.0),
        epsilon_mean=float(np.mean(list(epsilons.values()))) if epsilons else 0.0,
        noise_multiplier=getattr(aggregator, "noise_multiplier", None),
        extra={
            "update_dimension": float(spec.length),
            "clip_norm": float(clip_norm),
            "clipped_fraction": float(np.mean([v > clip_norm for v in norms])) if norms else 0.0,
            "update_norm_median": float(np.median(norms)) if norms else 0.0,
            "participations_max": float(max(participations)),
            "diverged_updates": float(diverged),
            "participations_mean": float(np.mean(took_part)) if took_part else 0.0,
        },
    )


def _seam_epsilons(aggregator: Aggregator) -> dict[int, float]:
    """Each client's own epsilon from the seam's client ledgers (secure+dp), else none."""
    inner = getattr(aggregator, "inner", aggregator)
    clients = getattr(inner, "clients", {})
    return {cid: float(s.epsilon or 0.0) for cid, s in sorted(clients.items()) if s.ledger is not None}


@dataclass(frozen=True, slots=True)
class LocalDPSGDConfig:
    """The DP-SGD of local-only training: the same settings CoDream's example-level clients use.

    Attributes:
        noise_multiplier: z of every DP-SGD step (calibrate it with `plan_noise` and
            `ExampleLevelSchedule(local_steps=warmup_steps + rounds * steps_per_round, ...)`).
        max_grad_norm: per-example clip bound.
        batch_size: expected Poisson batch size.
        warmup_steps: DP-SGD steps before the first evaluation, beside round 1's.
        steps_per_round: DP-SGD steps per round.
        lr, momentum: the DP-SGD optimiser's.
        accountant, delta: as the example-level runs'.
        noise_seed, sampling_seed: seeded noise and batches for reproducible benchmarks only (the
            trainers then say they are not private).
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    batch_size: int = 32
    warmup_steps: int = 0
    steps_per_round: int = 1
    lr: float = 0.05
    momentum: float = 0.0
    accountant: str = "prv"
    delta: float = 1e-5
    noise_seed: int | None = None
    sampling_seed: int | None = None

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.steps_per_round < 0 or self.warmup_steps + self.steps_per_round < 1:
            raise ConfigError(
                f"need warmup_steps, steps_per_round >= 0 and at least one step, got {self.warmup_steps} "
                f"and {self.steps_per_round}"
            )


def run_local_dp_sgd(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    models: str | Sequence[str],
    config: BaselineConfig,
    dp: LocalDPSGDConfig,
    *,
    device: str | torch.device = "auto",
) -> DPBaselineRun:
    """Each client trains its own model with DP-SGD on its own data and never communicates.

    Args:
        dataset, parts, models: as `codream.baselines.run_local_only`.
        config: rounds, seed, `norm` (must keep no running statistics: "group") and eval batch.
        dp: the DP-SGD schedule and settings.
        device: where the models train.
    Raises:
        ConfigError: bad settings or a model DP-SGD refuses.
    """
    from .privacy.example_level import DPSGDTrainer

    run = _start_run(dataset, parts, models, device)
    trainers = []
    for k, (model, x, y, gen) in enumerate(_local_clients(dataset, run, config)):
        trainers.append(
            DPSGDTrainer(
                model,
                x,
                y,
                gen,
                noise_multiplier=dp.noise_multiplier,
                max_grad_norm=dp.max_grad_norm,
                batch_size=min(dp.batch_size, len(y)),
                lr=dp.lr,
                momentum=dp.momentum,
                accountant=dp.accountant,
                delta=dp.delta,
                noise_seed=None if dp.noise_seed is None else dp.noise_seed * 1009 + k,
                sampling_seed=None if dp.sampling_seed is None else dp.sampling_seed * 1009 + k,
            )
        )
    history: list[tuple[float, ...]] = []
    for r in range(config.rounds):
        steps = dp.steps_per_round + (dp.warmup_steps if r == 0 else 0)
        accs = []
        for t in trainers:
            for _ in range(steps):
                t.ce_step()
            accs.append(run.evaluate(t.model, config))
        history.append(tuple(accs))
        logger.info(
            "local DP-SGD round %d/%d: mean accuracy %.4f", r + 1, config.rounds, float(np.mean(accs))
        )
    result = _result(
        Method.LOCAL,
        run,
        history,
        config,
        steps=dp.steps_per_round,
        examples=_examples_per_round(dp.steps_per_round, dp.batch_size, run.idx),
    )
    epsilons = {k: float(t.epsilon()) for k, t in enumerate(trainers)}
    return DPBaselineRun(
        result=result,
        client_epsilons=epsilons,
        epsilon=max(epsilons.values()),
        epsilon_mean=float(np.mean(list(epsilons.values()))),
        noise_multiplier=dp.noise_multiplier,
        extra={
            "dp_sgd_steps": float(dp.warmup_steps + config.rounds * dp.steps_per_round),
            "not_private": float(any(not t.private for t in trainers)),
        },
    )
