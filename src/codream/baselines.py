"""The baselines CoDream is compared against, on the same partitions and seed.

- **local-only**: each client trains its own model on its own data and never communicates.
- **FedAvg** (McMahan et al. 2017): one shared architecture; each round every client starts from the
  global model, trains locally, and the server replaces the global model by the sample-count-weighted
  mean of *all* parameters and buffers (BatchNorm running statistics included).
- **centralized**: a model trained on the union of all clients' data, the upper reference a federation
  tries to approach. With heterogeneous clients, each distinct architecture is trained once on the union
  and every client is credited with its own architecture's accuracy.

Training budgets are matched in examples processed: per round, every client model in local-only and
FedAvg takes ``local_steps`` SGD steps of ``batch_size`` examples; a centralized model takes
``local_steps * num_clients`` steps, i.e. as many example-gradients as the whole federation computes
in a round. All methods use the same optimiser settings and evaluate on the full test set after every
round. The reported accuracy is the final round's; the best over rounds (selected on the test set, as
the CoDream reference code does) is kept separately and labelled as such.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .data import Dataset
from .devices import resolve_device
from .evaluation import accuracy
from .exceptions import ConfigError, TrainingDiverged
from .models import NORMS, build_model
from .training import TrainStats, train_supervised

__all__ = [
    "BaselineConfig",
    "BaselineResult",
    "Method",
    "fedavg_average",
    "run_baseline",
    "run_centralized",
    "run_fedavg",
    "run_local_only",
]

logger = logging.getLogger(__name__)


class Method(enum.Enum):
    """Which baseline produced a result."""

    LOCAL = "local"
    FEDAVG = "fedavg"
    CENTRALIZED = "centralized"


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """Training budget and optimiser settings shared by all baselines.

    Attributes:
        rounds: evaluation rounds (FedAvg: communication rounds).
        local_steps: SGD steps per client model per round; a centralized model takes
            ``local_steps * num_clients`` per round (same examples processed as the federation).
        batch_size: examples per step.
        lr: SGD learning rate.
        momentum: SGD momentum (the optimiser is rebuilt each round, as in FedAvg's local training).
        weight_decay: L2 penalty.
        norm: normalisation layer of the convolutional models (see `codream.models`).
        seed: seeds model initialisation and batch order.
        eval_batch_size: examples per forward pass at evaluation.
    """

    rounds: int = 10
    local_steps: int = 50
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    norm: str = "batch"
    seed: int = 0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        for name in ("rounds", "local_steps", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and self.momentum >= 0 and self.weight_decay >= 0):
            raise ConfigError("need lr > 0, momentum >= 0 and weight_decay >= 0")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """Accuracies of one baseline run; every accuracy is on the full test set, in [0, 1].

    Attributes:
        method: which baseline.
        models: each client's architecture.
        final_accuracy: per client, after the last round (FedAvg: the global model, the same for all).
        history: ``history[r][k]``: client k's accuracy after round r.
        best_over_rounds: per client, the maximum over rounds. Selected on the test set, so optimistic;
            reported only because the CoDream reference code reports it.
        val_history: ``val_history[r][k]``: the same on the data set's validation split (empty when it
            has none): what model selection may look at.
        steps_per_round: SGD steps each trained model takes per round.
        examples_per_round: examples processed per round by the whole method (the matched budget).
        seconds: wall-clock time of training and evaluation.
        config: the settings of the run.
    """

    method: Method
    models: tuple[str, ...]
    final_accuracy: tuple[float, ...]
    history: tuple[tuple[float, ...], ...]
    best_over_rounds: tuple[float, ...]
    steps_per_round: int
    examples_per_round: int
    seconds: float
    config: BaselineConfig
    val_history: tuple[tuple[float, ...], ...] = ()

    @property
    def mean(self) -> float:
        """Mean final accuracy over clients."""
        return float(np.mean(self.final_accuracy))

    @property
    def std(self) -> float:
        """Standard deviation (population) of the final accuracy over clients."""
        return float(np.std(self.final_accuracy))

    @property
    def best_mean(self) -> float:
        """Mean over clients of the best-over-rounds accuracy (test-set selection)."""
        return float(np.mean(self.best_over_rounds))

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        out = asdict(self)
        out["method"] = self.method.value
        out.update(mean=self.mean, std=self.std, best_over_rounds_mean=self.best_mean)
        return out


def fedavg_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts: every parameter and buffer, BatchNorm running statistics included.

    Floating tensors are averaged in float64 and cast back. Integer buffers (BatchNorm's
    ``num_batches_tracked``, a step counter that clients taking equal steps agree on) get the weighted
    mean rounded to the nearest integer.

    Args:
        states: one state dict per client, all with the same keys and shapes.
        weights: one non-negative weight per client (sample counts), not all zero.

    Returns:
        The averaged state dict, on the device and with the dtypes of the first state.

    Raises:
        ConfigError: no states, mismatched keys or shapes, or bad weights.
    """
    if not states or len(states) != len(weights):
        raise ConfigError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    w = w / w.sum()
    keys = list(states[0])
    out: dict[str, torch.Tensor] = {}
    for i, state in enumerate(states):
        if list(state) != keys:
            raise ConfigError(f"state {i} has different keys from state 0")
    for key in keys:
        ref = states[0][key]
        if any(s[key].shape != ref.shape for s in states):
            raise ConfigError(f"tensor {key!r} has different shapes across states")
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for weight, state in zip(w, states, strict=True):
            acc += float(weight) * state[key].detach().to(ref.device, torch.float64)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else torch.round(acc).to(ref.dtype)
    return out


def _client_models(models: str | Sequence[str], num_clients: int) -> tuple[str, ...]:
    names = (models,) * num_clients if isinstance(models, str) else tuple(models)
    if len(names) != num_clients:
        raise ConfigError(f"{len(names)} model names for {num_clients} clients")
    return names


def _seed(config: BaselineConfig, method: Method, index: int, purpose: int) -> int:
    """A 63-bit seed for (method, model index, purpose), derived from the run seed."""
    tag = list(method.value.encode())
    return int(
        np.random.SeedSequence([config.seed, *tag, index, purpose]).generate_state(2, np.uint64)[0] >> 1
    )


def _check_parts(dataset: Dataset, parts: Sequence[np.ndarray]) -> list[torch.Tensor]:
    if not parts:
        raise ConfigError("need at least one client")
    out = []
    for k, p in enumerate(parts):
        idx = torch.as_tensor(np.asarray(p, dtype=np.int64))
        if len(idx) == 0:
            raise ConfigError(f"client {k} holds no data")
        if idx.min() < 0 or idx.max() >= len(dataset.y_train):
            raise ConfigError(f"client {k} indexes outside the training set of {len(dataset.y_train)}")
        out.append(idx)
    return out


@dataclass(frozen=True, slots=True)
class _RunStart:
    """What every baseline run (private ones included) starts from, checked once in one place."""

    start: float
    device: torch.device
    idx: list[torch.Tensor]
    names: tuple[str, ...]
    x_test: torch.Tensor
    y_test: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None = None

    def evaluate(self, model: nn.Module, config: BaselineConfig) -> float:
        """The model's accuracy on the full test set."""
        return accuracy(
            model, self.x_test, self.y_test, batch_size=config.eval_batch_size, device=self.device
        )

    def evaluate_val(self, model: nn.Module, config: BaselineConfig) -> float | None:
        """The model's accuracy on the data set's validation split (None without one)."""
        if self.val is None:
            return None
        return accuracy(model, *self.val, batch_size=config.eval_batch_size, device=self.device)


def _start_run(
    dataset: Dataset, parts: Sequence[np.ndarray], models: str | Sequence[str], device: str | torch.device
) -> _RunStart:
    """Start the clock, resolve the device, check the parts and architectures and move the test set."""
    start = time.perf_counter()
    dev = resolve_device(device)
    idx = _check_parts(dataset, parts)
    names = _client_models(models, len(idx))
    val = (
        None
        if dataset.x_val is None or dataset.y_val is None
        else (dataset.x_val.to(dev), dataset.y_val.to(dev))
    )
    return _RunStart(start, dev, idx, names, dataset.x_test.to(dev), dataset.y_test.to(dev), val)


def _local_clients(
    dataset: Dataset, run: _RunStart, config: BaselineConfig
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Generator]]:
    """Each client's own model, data and batch-order generator, seeded as local-only's (DP or not)."""
    clients = []
    for k, (name, ix) in enumerate(zip(run.names, run.idx, strict=True)):
        model = build_model(
            name,
            dataset.input_shape,
            dataset.num_classes,
            norm=config.norm,
            seed=_seed(config, Method.LOCAL, k, 0),
        ).to(run.device)
        gen = torch.Generator().manual_seed(_seed(config, Method.LOCAL, k, 1))
        clients.append((model, dataset.x_train[ix].to(run.device), dataset.y_train[ix].to(run.device), gen))
    return clients


def _fedavg_models(
    dataset: Dataset, run: _RunStart, config: BaselineConfig
) -> tuple[nn.Module, nn.Module, list[torch.Generator]]:
    """The global model, a worker of the same architecture and initialisation, and each client's
    batch-order generator, seeded as FedAvg's (DP or not)."""
    build = dict(norm=config.norm, seed=_seed(config, Method.FEDAVG, 0, 0))
    global_model = build_model(run.names[0], dataset.input_shape, dataset.num_classes, **build).to(run.device)
    worker = build_model(run.names[0], dataset.input_shape, dataset.num_classes, **build).to(run.device)
    gens = [torch.Generator().manual_seed(_seed(config, Method.FEDAVG, k, 1)) for k in range(len(run.idx))]
    return global_model, worker, gens


def _examples_per_round(steps: int, batch_size: int, idx: Sequence[torch.Tensor]) -> int:
    """Examples all clients process in a round of `steps` steps (a batch never exceeds a client's data)."""
    return steps * sum(min(batch_size, len(ix)) for ix in idx)


def _best(history: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.max(np.asarray(history), axis=0))


def _result(
    method: Method,
    run: _RunStart,
    history: list[tuple[float, ...]],
    config: BaselineConfig,
    *,
    steps: int,
    examples: int,
    val_history: list[tuple[float, ...]] | None = None,
) -> BaselineResult:
    """Package a finished baseline: final and best-over-rounds accuracies come from its history."""
    return BaselineResult(
        method=method,
        models=run.names,
        final_accuracy=history[-1],
        history=tuple(history),
        best_over_rounds=_best(history),
        steps_per_round=steps,
        examples_per_round=examples,
        seconds=time.perf_counter() - run.start,
        config=config,
        val_history=tuple(val_history or ()),
    )


def run_local_only(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    models: str | Sequence[str],
    config: BaselineConfig = BaselineConfig(),
    *,
    device: str | torch.device = "auto",
) -> BaselineResult:
    """Each client trains its own model on its own data only.

    Args:
        dataset: the data set; clients' data are ``dataset.x_train[parts[k]]``.
        parts: one index array per client (from `codream.data.partition`).
        models: one architecture for all clients, or one name per client.
        config: budget and optimiser settings.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a `torch.device`.

    Returns:
        The `BaselineResult`.

    Raises:
        ConfigError: mismatched models/parts, bad indices, unknown model or device.
    """
    run = _start_run(dataset, parts, models, device)
    dev = run.device
    clients = _local_clients(dataset, run, config)
    history: list[tuple[float, ...]] = []
    val_history: list[tuple[float, ...]] = []
    for r in range(config.rounds):
        accs, val_accs = [], []
        for model, x, y, gen in clients:
            _train(model, x, y, config, config.local_steps, gen, dev)
            accs.append(run.evaluate(model, config))
            val_accs.append(run.evaluate_val(model, config))
        history.append(tuple(accs))
        if run.val is not None:
            val_history.append(tuple(val_accs))
        logger.info("local-only round %d/%d: mean accuracy %.4f", r + 1, config.rounds, float(np.mean(accs)))
    return _result(
        Method.LOCAL,
        run,
        history,
        config,
        steps=config.local_steps,
        examples=_examples_per_round(config.local_steps, config.batch_size, run.idx),
        val_history=val_history,
    )


def run_fedavg(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    model: str | Sequence[str],
    config: BaselineConfig = BaselineConfig(),
    *,
    device: str | torch.device = "auto",
) -> BaselineResult:
    """FedAvg with full participation and sample-count weights.

    Args:
        dataset: the data set.
        parts: one index array per client.
        model: the one shared architecture (a sequence is accepted if all its names are equal).
        config: budget and optimiser settings; each client takes ``local_steps`` steps per round from
            the global model with a fresh optimiser.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a `torch.device`.

    Returns:
        The `BaselineResult`; every client is credited with the global model's accuracy.

    Raises:
        ConfigError: heterogeneous architectures, bad indices, unknown model or device.
    """
    run = _start_run(dataset, parts, model, device)
    dev, idx = run.device, run.idx
    if len(set(run.names)) != 1:
        raise ConfigError(f"FedAvg needs one shared architecture, got {sorted(set(run.names))}")
    global_model, worker, gens = _fedavg_models(dataset, run, config)
    data = [(dataset.x_train[ix].to(dev), dataset.y_train[ix].to(dev)) for ix in idx]
    weights = [float(len(ix)) for ix in idx]
    history: list[tuple[float, ...]] = []
    val_history: list[tuple[float, ...]] = []
    for r in range(config.rounds):
        states = []
        for (x, y), gen in zip(data, gens, strict=True):
            worker.load_state_dict(global_model.state_dict())
            _train(worker, x, y, config, config.local_steps, gen, dev)
            states.append({key: value.detach().clone() for key, value in worker.state_dict().items()})
        global_model.load_state_dict(fedavg_average(states, weights))
        acc = run.evaluate(global_model, config)
        history.append((acc,) * len(idx))
        if run.val is not None:
            val_history.append((run.evaluate_val(global_model, config),) * len(idx))
        logger.info("fedavg round %d/%d: accuracy %.4f", r + 1, config.rounds, acc)
    return _result(
        Method.FEDAVG,
        run,
        history,
        config,
        steps=config.local_steps,
        examples=_examples_per_round(config.local_steps, config.batch_size, idx),
        val_history=val_history,
    )


def run_centralized(
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    models: str | Sequence[str],
    config: BaselineConfig = BaselineConfig(),
    *,
    device: str | torch.device = "auto",
) -> BaselineResult:
    """Train on the union of the clients' data; one model per distinct architecture.

    Args:
        dataset: the data set.
        parts: one index array per client; their union is the training set.
        models: one architecture, or one name per client.
        config: budget and optimiser settings; each model takes ``local_steps * num_clients`` steps
            per round.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a `torch.device`.

    Returns:
        The `BaselineResult`; client k is credited with the accuracy of its architecture's model.

    Raises:
        ConfigError: mismatched models/parts, bad indices, unknown model or device.
    """
    run = _start_run(dataset, parts, models, device)
    dev, idx, names = run.device, run.idx, run.names
    union = torch.unique(torch.cat(idx))
    x, y = dataset.x_train[union].to(dev), dataset.y_train[union].to(dev)
    steps = config.local_steps * len(idx)
    archs = list(dict.fromkeys(names))  # distinct, in first-seen order
    trained = {}
    for a, name in enumerate(archs):
        seed = _seed(config, Method.CENTRALIZED, a, 0)
        model = build_model(name, dataset.input_shape, dataset.num_classes, norm=config.norm, seed=seed).to(
            dev
        )
        trained[name] = (model, torch.Generator().manual_seed(_seed(config, Method.CENTRALIZED, a, 1)))
    history: list[tuple[float, ...]] = []
    val_history: list[tuple[float, ...]] = []
    for r in range(config.rounds):
        acc_by_arch, val_by_arch = {}, {}
        for name, (model, gen) in trained.items():
            _train(model, x, y, config, steps, gen, dev)
            acc_by_arch[name] = run.evaluate(model, config)
            val_by_arch[name] = run.evaluate_val(model, config)
        history.append(tuple(acc_by_arch[name] for name in names))
        if run.val is not None:
            val_history.append(tuple(val_by_arch[name] for name in names))
        logger.info("centralized round %d/%d: %s", r + 1, config.rounds, acc_by_arch)
    return _result(
        Method.CENTRALIZED,
        run,
        history,
        config,
        steps=steps,
        examples=steps * min(config.batch_size, len(union)) * len(archs),
        val_history=val_history,
    )


def run_baseline(
    method: Method | str,
    dataset: Dataset,
    parts: Sequence[np.ndarray],
    models: str | Sequence[str],
    config: BaselineConfig = BaselineConfig(),
    *,
    device: str | torch.device = "auto",
) -> BaselineResult:
    """Run a baseline by name (``"local"``, ``"fedavg"``, ``"centralized"``).

    Raises:
        ConfigError: unknown method, or any error of the method itself.
    """
    try:
        m = Method(method)
    except ValueError as exc:
        raise ConfigError(
            f"unknown baseline {method!r}; valid: {', '.join(x.value for x in Method)}"
        ) from exc
    runner = {Method.LOCAL: run_local_only, Method.FEDAVG: run_fedavg, Method.CENTRALIZED: run_centralized}[m]
    return runner(dataset, parts, models, config, device=device)


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: BaselineConfig,
    steps: int,
    gen: torch.Generator,
    device: torch.device,
    *,
    divergence_ok: bool = False,
) -> TrainStats:
    """`steps` SGD steps with the baselines' shared optimiser settings.

    Raises:
        TrainingDiverged: the last loss is not finite, unless `divergence_ok` (the caller handles it).
    """
    stats = train_supervised(
        model,
        x,
        y,
        steps=steps,
        batch_size=config.batch_size,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        generator=gen,
        device=device,
    )
    if not (divergence_ok or math.isfinite(stats.last_loss)):
        raise TrainingDiverged(f"training diverged (loss {stats.last_loss}); lower lr (now {config.lr})")
    return stats
