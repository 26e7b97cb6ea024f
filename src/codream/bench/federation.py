"""CoDream against its baselines on the same partitions: the logic behind benchmarks/federation.py.

For every partition (Dirichlet alpha, or IID) and seed, the data set is split once and every method
runs on that same split:

- `codream`: the default (class-conditional) method with the size's learning settings; its rows add the
  class-weighted *teacher ensemble* of the clients' own models, p(c) = sum_k w_k(c) p_k(c) / sum_k w_k(c)
  (what the federation knows; computable from sums) and the *server student*, a model trained only on
  the released dreams and labels (post-processing: the federation's one global model);
- `codream-paper`: the plain method of the paper (entropy + BatchNorm dreams, plain local CE alternating
  with KD), at the size's dream and KD budget;
- `local`: each client trains alone (codream.baselines);
- `fedavg`: one shared architecture for all clients (codream.baselines);
- `centralized`: each architecture trained on the union of the clients' data (codream.baselines);
- `ablation` (not run by default): `codream` changed in one piece at a time (`ABLATION`).

A validation split (`BenchmarkSize.validation`) is carved from the training data before the partition;
every method reports its accuracy there, and variants are compared on it (the test set is only
reported). Budgets are matched in local cross-entropy steps: a baseline client takes, per round, as many
cross-entropy steps as a CoDream client does (warm-up spread over the rounds plus the interleaved CE
steps); CoDream's KD steps on dreams come on top, as in the paper. Accuracies are final-round test
accuracies, mean ± std over all (client, seed) pairs; the best-over-rounds figure is reported apart.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import pin_threads
from ..exceptions import ConfigError
from ..federation.config import DistillConfig, DreamConfig, FederationConfig, Method

__all__ = [
    "BenchmarkResults",
    "BenchmarkSize",
    "MethodRun",
    "SIZES",
    "run_benchmark",
    "summarise",
    "write_markdown",
]

log = logging.getLogger(__name__)

METHODS = ("codream", "codream-paper", "local", "fedavg", "centralized")


@dataclass(frozen=True, slots=True)
class BenchmarkSize:
    """How big one benchmark run is.

    Attributes:
        name: "cpu", "full" or "tiny".
        samples_per_client: training samples per client.
        rounds: rounds per method.
        limit_test: test samples used for evaluation (None: all 10000).
        dream: dream settings of CoDream.
        distill: distillation settings of CoDream.
        seeds: seeds to run.
        validation: fraction of the training data held out (per class, seeded, before the partition;
            `codream.data.split_validation`) for model selection: every method reports its accuracy
            there, and tuning compares variants on it; the test split is only reported (0: none).
    """

    name: str
    samples_per_client: int
    rounds: int
    limit_test: int | None
    dream: DreamConfig
    distill: DistillConfig
    seeds: tuple[int, ...] = (0, 1)
    validation: float = 0.03


SIZES: dict[str, BenchmarkSize] = {
    # A few seconds per method: shows the script works end to end.
    "tiny": BenchmarkSize(
        name="tiny",
        samples_per_client=200,
        rounds=2,
        limit_test=500,
        dream=DreamConfig(batch_size=32, global_steps=8),
        distill=DistillConfig(kd_steps=15, warmup_steps=40, buffer_size=128),
        seeds=(0, 1),
    ),
    # Sized to finish within an hour on 2 idle CPU cores with --jobs 2 --threads 1: about 35 minutes by
    # the per-round timings of smaller runs (the centralized baseline, 4 architectures trained on the
    # union, is about a third of it).
    "cpu": BenchmarkSize(
        name="cpu",
        samples_per_client=1000,
        rounds=8,
        limit_test=2000,
        dream=DreamConfig(batch_size=64, global_steps=40),
        distill=DistillConfig(kd_steps=100, ce_ratio=0.4, warmup_steps=150, buffer_size=1024),
        seeds=(0, 1),
    ),
    # For a GPU: the paper's 1000 samples per client, longer dream optimisation, more rounds.
    "full": BenchmarkSize(
        name="full",
        samples_per_client=1000,
        rounds=20,
        limit_test=None,
        dream=DreamConfig(batch_size=256, global_steps=200),
        distill=DistillConfig(kd_steps=100, batch_size=128, warmup_steps=300, buffer_size=4096),
        seeds=(0, 1, 2),
    ),
}


@dataclass(frozen=True, slots=True)
class MethodRun:
    """One method on one partition and seed."""

    method: str
    alpha: float | None
    seed: int
    models: tuple[str, ...]
    final_accuracy: tuple[float, ...]
    best_over_rounds: tuple[float, ...]
    seconds: float
    seconds_per_round: float
    dream_steps_per_second: float | None = None
    class_coverage: tuple[int, ...] = ()
    label_confidence: tuple[float, ...] = ()
    history: tuple[tuple[float, ...], ...] = ()
    ensemble_accuracy: float | None = None
    student_accuracy: float | None = None
    student_best: float | None = None
    dream_step_seconds: float | None = None
    kd_step_seconds: float | None = None
    val_history: tuple[tuple[float, ...], ...] = ()
    ensemble_val_accuracy: float | None = None
    student_val_accuracy: float | None = None
    val_held_accuracy: tuple[float, ...] = ()
    val_lacked_accuracy: tuple[float, ...] = ()

    @property
    def val_accuracy(self) -> tuple[float, ...]:
        """Each client's final-round validation accuracy (empty without a validation split)."""
        return self.val_history[-1] if self.val_history else ()

    @property
    def selected_accuracy(self) -> tuple[float, ...]:
        """Each client's test accuracy in the round with the best mean validation accuracy (the
        model selection a run may make; empty without a validation split)."""
        if not self.val_history or len(self.val_history) != len(self.history):
            return ()
        best = int(np.argmax([np.mean(v) for v in self.val_history]))
        return self.history[best]


@dataclass(frozen=True, slots=True)
class BenchmarkResults:
    """Everything one benchmark produced, plus what is needed to reproduce it."""

    size: str
    dataset: str
    num_clients: int
    models: tuple[str, ...]
    fedavg_model: str
    alphas: tuple[float | None, ...]
    seeds: tuple[int, ...]
    config: dict
    runs: list[MethodRun] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    machine: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def override_size(size: BenchmarkSize, settings: Sequence[str]) -> BenchmarkSize:
    """Apply ``key=value`` overrides to a size: ``dream.global_steps=60``, ``distill.kd_steps=40``,
    ``samples_per_client=500``, ``rounds=4``, ``limit_test=1000``, ``validation=0.05`` (values parsed
    as JSON, else text).

    Raises:
        ConfigError: for a malformed setting or an unknown key.
    """
    import json

    dream, distill, top = {}, {}, {}
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        section, dot, name = key.partition(".")
        if dot and section == "dream":
            dream[name] = value
        elif dot and section == "distill":
            distill[name] = value
        elif not dot and key in ("samples_per_client", "rounds", "limit_test", "validation"):
            top[key] = value
        else:
            raise ConfigError(
                f"unknown setting {key!r}: use dream.*, distill.*, samples_per_client, rounds, limit_test, "
                "validation"
            )
    try:
        return replace(
            size, dream=replace(size.dream, **dream), distill=replace(size.distill, **distill), **top
        )
    except TypeError as exc:
        raise ConfigError(f"unknown setting: {exc}") from None


def _alpha_label(alpha: float | None) -> str:
    return "IID" if alpha is None or math.isinf(alpha) else f"Dir({alpha:g})"


# The learning options the paper method runs without (its plain acquisition), whatever the size sets.
_PAPER_LEARNING = dict(
    temperature=1.0,
    label_temperature=1.0,
    label_weighting="target",
    joint=False,
    local_loss="plain",
    kd_batchnorm="dreams",
    augment="none",
)

#: ``--methods ablation``: the benchmark's `codream` changed in one piece at a time (each row on its
#: own, not cumulative), each a candidate the tuning runs measured (the distillation options of
#: `DistillConfig`); the difference to the `codream` row is what that piece buys or costs. Every row
#: takes the same local cross-entropy steps per round (40 at the cpu size), so the matched baselines
#: hold for all of them: the budget row gives them as 300 x 0.1334. The student row leaves the clients
#: as they are (it is post-processing) and adds the server student's rows. Measured at the tuning
#: size: benchmarks/results/federation-tuning.md.
ABLATION: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codream + restricted joint local CE", ("distill.local_loss=restricted", "distill.joint=true")),
    ("codream + adjusted joint local CE", ("distill.local_loss=adjusted", "distill.joint=true")),
    (
        "codream + 256 dreams, 300 KD steps",
        (
            "dream.batch_size=256",
            "distill.kd_steps=300",
            "distill.ce_ratio=0.1334",
            "distill.buffer_size=2048",
        ),
    ),
    ("codream + labels at T = 3", ("distill.label_temperature=3", "distill.temperature=3")),
    ("codream + class-weighted labels", ("distill.label_weighting=class",)),
    ("codream + mixed BatchNorm", ("distill.kd_batchnorm=mixed",)),
    ("codream + shift/flip", ("distill.augment=shift_flip",)),
    ("codream + server student", ("distill.student=cnn",)),
)
ABLATION_METHOD = "ablation"


def ablation_sizes(size: BenchmarkSize) -> list[tuple[str, BenchmarkSize]]:
    """The `ABLATION` rows on `size`: (run name, the size with that row's change)."""
    return [(label, override_size(size, changes)) for label, changes in ABLATION]


def ensemble_accuracy(fed, x, y) -> float:
    """Accuracy of the class-weighted ensemble of a federation's client models on (x, y)."""
    from ..distill import class_weighted_ensemble

    weights = torch.as_tensor(np.stack([c.class_weights() for c in fed.clients]), dtype=torch.float32)
    p = class_weighted_ensemble([c.model for c in fed.clients], weights, x.to(fed.config.device))
    return float((p.argmax(dim=1).cpu() == y.cpu()).float().mean())


def _run_codream(method: str, cfg: FederationConfig, dataset, device: str) -> MethodRun:
    from ..build import build_federation

    if method == "codream-paper":
        cfg = replace(cfg, method=Method.PAPER, distill=replace(cfg.distill, student=None, **_PAPER_LEARNING))
    else:
        cfg = replace(cfg, method=Method.CONDITIONAL)
    fed = build_federation(replace(cfg, device=device), dataset=dataset)
    val = _validation(fed.dataset, device)
    t0 = time.perf_counter()
    metrics, kd_seconds, kd_steps, val_history = [], 0.0, 0, []
    for _ in range(cfg.rounds):
        metrics.append(fed.run_round())
        kd_seconds += sum(c.last_distill.seconds for c in fed.clients if c.last_distill is not None)
        kd_steps += sum(c.last_distill.kd_steps for c in fed.clients if c.last_distill is not None)
        if val is not None:  # evaluation neither trains nor draws random numbers: the run is unchanged
            val_history.append(tuple(c.evaluate(*val) for c in fed.clients))
    seconds = time.perf_counter() - t0
    last = metrics[-1]
    students = [m.student_accuracy for m in metrics if m.student_accuracy is not None]
    dream_seconds = sum(m.dream_seconds for m in metrics)
    return MethodRun(
        method=method,
        alpha=cfg.alpha,
        seed=cfg.seed,
        models=cfg.client_models(),
        final_accuracy=tuple(last.accuracies),
        best_over_rounds=tuple(last.best_accuracies),
        seconds=seconds,
        seconds_per_round=float(np.mean([m.seconds for m in metrics])),
        dream_steps_per_second=float(np.mean([m.dream_steps_per_second for m in metrics])),
        class_coverage=tuple(m.class_coverage for m in metrics),
        label_confidence=tuple(round(m.label_confidence, 4) for m in metrics),
        history=tuple(tuple(m.accuracies) for m in metrics),
        ensemble_accuracy=ensemble_accuracy(fed, fed.x_test, fed.y_test),
        student_accuracy=students[-1] if students else None,
        student_best=max(students) if students else None,
        # One global dream step (every client's gradient and the server's update) and one client's KD
        # step (with its share of interleaved CE steps), averaged over the run.
        dream_step_seconds=dream_seconds / max(cfg.rounds * cfg.dream.global_steps, 1),
        kd_step_seconds=kd_seconds / kd_steps if kd_steps else None,
        val_history=tuple(val_history),
        ensemble_val_accuracy=None if val is None else ensemble_accuracy(fed, *val),
        student_val_accuracy=(
            None if val is None or fed.server.student is None else _accuracy(fed.server.student.model, val)
        ),
        **({} if val is None else _held_and_lacked(fed, val)),
    )


def _held_and_lacked(fed, val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, tuple[float, ...]]:
    """Each client's final validation accuracy on the classes it holds and on those it lacks (weight 0):
    the second is what it can only have learnt from the dreams (nan where it lacks none)."""
    from ..evaluation import predict_proba

    x, y = val
    held, lacked = [], []
    for c in fed.clients:
        right = predict_proba(c.model, x).argmax(dim=1) == y.cpu()
        has = torch.as_tensor(c.class_weights() > 0)[y.cpu()]
        held.append(float(right[has].float().mean()) if has.any() else math.nan)
        lacked.append(float(right[~has].float().mean()) if (~has).any() else math.nan)
    return {"val_held_accuracy": tuple(held), "val_lacked_accuracy": tuple(lacked)}


def _validation(dataset, device: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if getattr(dataset, "x_val", None) is None:
        return None
    return dataset.x_val.to(device), dataset.y_val.to(device)


def _accuracy(model, val: tuple[torch.Tensor, torch.Tensor]) -> float:
    from ..evaluation import accuracy

    return float(accuracy(model, *val))


def _run_baseline(
    method: str, cfg: FederationConfig, dataset, parts, fedavg_model: str, device: str
) -> MethodRun:
    from ..baselines import run_baseline
    from ..build import matched_baseline_config

    bcfg = matched_baseline_config(cfg)  # the budget `codream run`'s baselines get too
    models = fedavg_model if method == "fedavg" else cfg.client_models()
    t0 = time.perf_counter()
    res = run_baseline(method, dataset, parts, models, bcfg, device=device)
    seconds = time.perf_counter() - t0
    return MethodRun(
        method=method,
        alpha=cfg.alpha,
        seed=cfg.seed,
        models=tuple(res.models),
        final_accuracy=tuple(res.final_accuracy),
        best_over_rounds=tuple(res.best_over_rounds),
        seconds=seconds,
        seconds_per_round=seconds / max(cfg.rounds, 1),
        history=tuple(tuple(h) for h in res.history),
        val_history=tuple(tuple(h) for h in res.val_history),
    )


@dataclass(frozen=True, slots=True)
class _Job:
    """All methods on one (seed, partition): the unit of work a worker process runs."""

    dataset: str
    data_dir: str | None
    size: BenchmarkSize
    rounds: int
    models: tuple[str, ...]
    fedavg_model: str
    alpha: float | None
    seed: int
    methods: tuple[str, ...]
    device: str


def _run_job(job: _Job) -> list[MethodRun]:
    from ..data import load_dataset, partition, split_validation

    data = load_dataset(job.dataset, job.data_dir, limit_test=job.size.limit_test, seed=job.seed)
    # Carved once, before the partition, so every method trains on the same clients' data.
    data = split_validation(data, job.size.validation, seed=job.seed)
    cfg = FederationConfig(
        dataset=job.dataset,
        data_dir=job.data_dir,
        num_clients=len(job.models),
        alpha=job.alpha,
        samples_per_client=job.size.samples_per_client,
        models=job.models,
        rounds=job.rounds,
        seed=job.seed,
        validation=job.size.validation,
        device=job.device,
        dream=job.size.dream,
        distill=job.size.distill,
    )
    parts = partition(
        data.y_train,
        cfg.num_clients,
        alpha=job.alpha,
        samples_per_client=job.size.samples_per_client,
        seed=job.seed,
    )
    runs = []
    for method in job.methods:
        if method == ABLATION_METHOD:
            for label, size in ablation_sizes(job.size):
                ablated = replace(cfg, dream=size.dream, distill=size.distill)
                runs.append(replace(_run_codream("codream", ablated, data, job.device), method=label))
                log.info("%s", _describe(runs[-1]))
            continue
        if method.startswith("codream"):
            runs.append(_run_codream(method, cfg, data, job.device))
        else:
            runs.append(_run_baseline(method, cfg, data, parts, job.fedavg_model, job.device))
        log.info("%s", _describe(runs[-1]))
    return runs


def _describe(run: MethodRun) -> str:
    return (
        f"{_alpha_label(run.alpha)} seed {run.seed} {run.method}: final mean "
        f"{100 * np.mean(run.final_accuracy):.1f}% ({run.seconds:.0f}s)"
    )


def _collect(results: BenchmarkResults, runs: list[MethodRun], say: Callable[[str], None]) -> None:
    for run in runs:
        results.runs.append(run)
        say(_describe(run))


def run_benchmark(
    *,
    size: str | BenchmarkSize = "cpu",
    dataset: str = "fashion-mnist",
    data_dir: str | None = None,
    models: Sequence[str] = ("resnet8", "cnn", "vgg", "mlp"),
    fedavg_model: str = "cnn",
    alphas: Sequence[float | None] = (0.1, None),
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] = METHODS,
    device: str = "cpu",
    rounds: int | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> BenchmarkResults:
    """Run every method on every partition and seed.

    Args:
        size: a name in `SIZES` or a `BenchmarkSize`.
        dataset, data_dir: the data (see `codream.data.load_dataset`).
        models: one architecture per client (the number of clients is its length).
        fedavg_model: FedAvg's one shared architecture.
        alphas: Dirichlet concentrations; None means IID.
        seeds: overrides the size's seeds.
        methods: a subset of `METHODS`, and `ABLATION_METHOD` for the `ABLATION` rows of `codream`.
        device: torch device for every method.
        rounds: overrides the size's rounds.
        jobs: worker processes, each running all methods of one (seed, partition); results do not
            depend on it (every run is seeded on its own).
        progress: called with a line of text after every finished run.
    Returns:
        The `BenchmarkResults`.
    Raises:
        ConfigError: unknown size or method; DataError: missing data.
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise ConfigError(f"unknown benchmark size {size!r}; choose one of {sorted(SIZES)}")
        size = SIZES[size]
    unknown = [m for m in methods if m not in (*METHODS, ABLATION_METHOD)]
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {[*METHODS, ABLATION_METHOD]}")
    seeds = tuple(seeds) if seeds is not None else size.seeds
    n_rounds = rounds if rounds is not None else size.rounds
    say = progress or (lambda line: None)
    models = tuple(models)
    results = BenchmarkResults(
        size=size.name,
        dataset=dataset,
        num_clients=len(models),
        models=models,
        fedavg_model=fedavg_model,
        alphas=tuple(alphas),
        seeds=seeds,
        config={
            "samples_per_client": size.samples_per_client,
            "rounds": n_rounds,
            "limit_test": size.limit_test,
            "validation": size.validation,
            "dream": _plain(asdict(size.dream)),
            "distill": _plain(asdict(size.distill)),
        },
        device=device,
        threads=torch.get_num_threads(),
        machine=f"{platform.machine()} {platform.processor() or platform.system()}",
    )
    t_all = time.perf_counter()
    jobs_list = [
        _Job(
            dataset,
            data_dir,
            size,
            n_rounds,
            tuple(models),
            fedavg_model,
            alpha,
            seed,
            tuple(methods),
            device,
        )
        for seed in seeds
        for alpha in alphas
    ]
    if jobs <= 1:
        outputs = (_run_job(job) for job in jobs_list)
        for runs in outputs:
            _collect(results, runs, say)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = torch.get_num_threads()
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=mp.get_context("spawn"),
            initializer=pin_threads,
            initargs=(threads,),
        ) as pool:
            for runs in pool.map(_run_job, jobs_list):
                _collect(results, runs, say)
    object.__setattr__(results, "seconds", time.perf_counter() - t_all)
    return results


def _plain(d: dict) -> dict:
    """Enums to their values, for JSON and markdown."""
    return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}


@dataclass(frozen=True, slots=True)
class Summary:
    """One (partition, method) row of the results table.

    `method` is a method name, or "<method>: teacher ensemble" / "<method>: server student" for the
    extra rows of a CoDream run (one accuracy per seed; their std is over seeds).
    """

    alpha: float | None
    method: str
    mean: float
    std: float
    seed_means: tuple[float, ...]
    best_mean: float | None
    seconds_per_round: float | None
    dream_steps_per_second: float | None = None
    coverage: float | None = None
    confidence: float | None = None
    dream_step_seconds: float | None = None
    kd_step_seconds: float | None = None
    val_mean: float | None = None
    selected_mean: float | None = None
    held_mean: float | None = None
    lacked_mean: float | None = None


def _nanmean_or_none(values: list[float]) -> float | None:
    present = [v for v in values if not math.isnan(v)]
    return float(np.mean(present)) if present else None


def _mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def summarise(results: BenchmarkResults) -> list[Summary]:
    """Mean ± std over all (client, seed) pairs for every partition and method, plus the extra rows."""
    out = []
    for alpha in results.alphas:
        for method in dict.fromkeys(r.method for r in results.runs):
            runs = [r for r in results.runs if r.method == method and r.alpha == alpha]
            if not runs:
                continue
            accs = np.array([a for r in runs for a in r.final_accuracy])
            best = np.array([a for r in runs for a in r.best_over_rounds])
            cov = [c for r in runs for c in r.class_coverage]
            conf = [c for r in runs for c in r.label_confidence]
            val = [a for r in runs for a in r.val_accuracy]
            selected = [a for r in runs for a in r.selected_accuracy]
            out.append(
                Summary(
                    alpha=alpha,
                    method=method,
                    mean=float(accs.mean()),
                    std=float(accs.std()),
                    seed_means=tuple(float(np.mean(r.final_accuracy)) for r in runs),
                    best_mean=float(best.mean()),
                    seconds_per_round=float(np.mean([r.seconds_per_round for r in runs])),
                    dream_steps_per_second=_mean_or_none([r.dream_steps_per_second for r in runs]),
                    coverage=float(np.mean(cov)) if cov else None,
                    confidence=float(np.mean(conf)) if conf else None,
                    dream_step_seconds=_mean_or_none([r.dream_step_seconds for r in runs]),
                    kd_step_seconds=_mean_or_none([r.kd_step_seconds for r in runs]),
                    val_mean=float(np.mean(val)) if val else None,
                    selected_mean=float(np.mean(selected)) if len(selected) == len(accs) else None,
                    held_mean=_nanmean_or_none([a for r in runs for a in r.val_held_accuracy]),
                    lacked_mean=_nanmean_or_none([a for r in runs for a in r.val_lacked_accuracy]),
                )
            )
            for label, attr, best_attr, val_attr in (
                ("teacher ensemble", "ensemble_accuracy", None, "ensemble_val_accuracy"),
                ("server student", "student_accuracy", "student_best", "student_val_accuracy"),
            ):
                vals = [getattr(r, attr) for r in runs if getattr(r, attr) is not None]
                if not vals:
                    continue
                bests = [getattr(r, best_attr) for r in runs] if best_attr else []
                out.append(
                    Summary(
                        alpha=alpha,
                        method=f"{method}: {label}",
                        mean=float(np.mean(vals)),
                        std=float(np.std(vals)),
                        seed_means=tuple(float(v) for v in vals),
                        best_mean=_mean_or_none(bests),
                        seconds_per_round=None,
                        val_mean=_mean_or_none([getattr(r, val_attr) for r in runs]),
                    )
                )
    return out


def per_architecture(results: BenchmarkResults, alpha: float | None) -> dict[str, dict[str, float]]:
    """Final accuracy per architecture (mean over seeds and the clients of that architecture), by method.

    Only methods whose clients keep their own architectures (not FedAvg's one shared model).
    """
    out: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r.method for r in results.runs):
        runs = [r for r in results.runs if r.method == method and r.alpha == alpha]
        if not runs or any(tuple(r.models) != tuple(results.models) for r in runs):
            continue
        out[method] = {
            arch: float(
                np.mean([r.final_accuracy[i] for r in runs for i, m in enumerate(r.models) if m == arch])
            )
            for arch in dict.fromkeys(results.models)
        }
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def write_markdown(results: BenchmarkResults, path: str | Path | None, command: str) -> str:
    """Render the results as markdown (and write them to `path` if given); returns the text."""
    rows = summarise(results)
    cfg = results.config
    lines = [
        "# CoDream vs baselines",
        "",
        f"Data set **{results.dataset}**, {results.num_clients} clients of architectures "
        f"{', '.join(results.models)} (FedAvg: {results.fedavg_model} for all), "
        f"{cfg['samples_per_client']} training samples per client, {cfg['rounds']} rounds, "
        f"seeds {', '.join(map(str, results.seeds))}, size `{results.size}`, device {results.device} "
        f"({results.threads} torch thread(s), {results.machine}). "
        f"Total wall time {results.seconds / 60:.1f} min.",
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        "Accuracy: **final-round** test accuracy in %, mean ± std over all (client, seed) pairs; "
        "per-seed means in brackets. *Validation*: final-round accuracy on the validation split "
        f"({100 * cfg.get('validation', 0):g}% of the training data, held out per class before the "
        "partition; no client trains on it), the figure variants are compared and tuned on; "
        "*test at best val. round*: the test accuracy of the round with the best mean validation "
        "accuracy (model selection without looking at the test set). *Best over rounds* is each "
        "client's maximum test accuracy over rounds (selected on the test set, as the CoDream "
        "reference code reports it; optimistic, "
        "reported apart). *Teacher ensemble*: the class-weighted ensemble of the clients' own final "
        "models, p(c) ∝ Σ_k w_k(c) p_k(c) / Σ_k w_k(c), one accuracy per seed (std over seeds): what the "
        "federation knows. *Server student*: a model trained by the server only on the released dreams "
        "and labels. Coverage: distinct argmax classes of the aggregated soft labels of a round's dreams "
        "(of 10); confidence: their mean max probability. Dream step: one global step (every client's "
        "gradient and the server's update); KD step: one client's KD step with its share of CE steps.",
        "",
    ]

    def opt(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    for alpha in results.alphas:
        lines += [
            f"## {_alpha_label(alpha)}",
            "",
            "| method | final acc. (%) | per seed | validation (%) | test at best val. round (%) "
            "| best over rounds (%) | s / round | dream step (s) | KD step (s) | coverage | confidence |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in rows:
            if s.alpha != alpha:
                continue
            lines.append(
                f"| {s.method} | {_pct(s.mean)} ± {_pct(s.std)} | "
                f"[{', '.join(_pct(m) for m in s.seed_means)}] | "
                f"{'' if s.val_mean is None else _pct(s.val_mean)} | "
                f"{'' if s.selected_mean is None else _pct(s.selected_mean)} | "
                f"{'' if s.best_mean is None else _pct(s.best_mean)} | "
                f"{opt(s.seconds_per_round, '.1f')} | {opt(s.dream_step_seconds, '.3f')} | "
                f"{opt(s.kd_step_seconds, '.4f')} | {opt(s.coverage, '.1f')} | {opt(s.confidence, '.2f')} |"
            )
        by = {s.method: s for s in rows if s.alpha == alpha}
        if "codream" in by and "local" in by:
            lines.append("")
            lines.append(
                f"CoDream − local-only: {100 * (by['codream'].mean - by['local'].mean):+.1f} points"
                + (
                    "; CoDream (paper) − local-only: "
                    f"{100 * (by['codream-paper'].mean - by['local'].mean):+.1f}"
                    if "codream-paper" in by
                    else ""
                )
                + (
                    f"; CoDream − FedAvg: {100 * (by['codream'].mean - by['fedavg'].mean):+.1f}"
                    if "fedavg" in by
                    else ""
                )
                + "."
            )
        if "codream: server student" in by and "codream: teacher ensemble" in by:
            ratio = by["codream: server student"].mean / max(by["codream: teacher ensemble"].mean, 1e-12)
            lines.append("")
            lines.append(f"Server student / teacher ensemble: {100 * ratio:.0f} %.")
        split = [
            s for s in rows if s.alpha == alpha and s.held_mean is not None and s.lacked_mean is not None
        ]
        if split:
            lines += [
                "",
                "Final validation accuracy on the classes a client holds / lacks (%, mean over clients):",
                "",
            ]
            lines += [f"- {s.method}: {_pct(s.held_mean)} / {_pct(s.lacked_mean)}" for s in split]
        arch = per_architecture(results, alpha)
        if arch:
            names = list(dict.fromkeys(results.models))
            lines += [
                "",
                "Final accuracy per architecture (%, mean over seeds):",
                "",
                "| method | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
            ]
            for method, accs in arch.items():
                lines.append(f"| {method} | " + " | ".join(_pct(accs[n]) for n in names) + " |")
        lines.append("")
    lines += [
        "## Settings",
        "",
        f"- dreams: `{cfg['dream']}`",
        f"- distillation: `{cfg['distill']}`",
        "- baselines: same partition, optimiser (SGD, lr, momentum, weight decay) and number of local "
        "cross-entropy steps per client as a CoDream client (warm-up spread over the rounds plus the "
        "interleaved steps); CoDream's KD steps on dreams come on top.",
        "",
    ]
    text = "\n".join(lines)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text


# -- command line ----------------------------------------------------------------------------------------


def _alpha(text: str) -> float | None:
    return None if text.strip().lower() in ("iid", "inf", "none") else float(text)


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def federation_command(name: str, *, default_out: str | None = None, prog: str | None) -> Any:
    """The click command of this benchmark, for `benchmarks/federation.py` and `codream bench federation`.

    Without --out the results go to a fresh runs/bench/<UTC time>/federation.md, with --publish to the
    published benchmarks/results/federation.md; the JSON of every run goes beside the markdown.

    Args:
        name: the command's name.
        default_out: markdown file written when neither --out nor --publish is given (None: a fresh
            folder under runs/bench/).
        prog: how the results file names the command that made it, before its arguments (the
            process's arguments after the first three); None: ``python <script>``, arguments after it.
    """
    import json
    import shlex
    import sys

    import click

    from ..rundir import to_jsonable

    @click.command(name, help="CoDream against its baselines: accuracy per partition and model mix.")
    @click.option("--size", type=click.Choice(sorted(SIZES)), default="cpu", show_default=True)
    @click.option("--full", is_flag=True, help="Same as --size full (for a GPU).")
    @click.option("--dataset", default="fashion-mnist", show_default=True)
    @click.option("--data-dir", default=None, help="Folder of IDX files (default: the dataset's).")
    @click.option("--models", default="resnet8,cnn,vgg,mlp", show_default=True, help="One per client.")
    @click.option("--fedavg-model", default="cnn", show_default=True)
    @click.option("--alphas", default="0.1,iid", show_default=True, help="Dirichlet alphas; 'iid' for IID.")
    @click.option("--seeds", default=None, help="Comma-separated seeds (default: the size's).")
    @click.option(
        "--methods",
        default=",".join(METHODS),
        show_default=True,
        help=f"Comma-separated; '{ABLATION_METHOD}' adds codream changed in one piece at a time (ABLATION).",
    )
    @click.option("--rounds", type=int, default=None, help="Override the size's rounds.")
    @click.option("--device", default="cpu", show_default=True)
    @click.option(
        "--threads",
        type=int,
        default=1,
        show_default=True,
        help="torch CPU threads; small models run fastest on 1, especially on a shared machine.",
    )
    @click.option(
        "--jobs",
        type=int,
        default=1,
        show_default=True,
        help="Worker processes, one (seed, partition) each; use one per core with --threads 1.",
    )
    @click.option(
        "--set",
        "settings",
        multiple=True,
        help="Override a size setting, e.g. --set dream.global_steps=60 --set samples_per_client=500.",
    )
    @click.option(
        "--out",
        default=default_out,
        help="Markdown results file (JSON beside it) [default: runs/bench/<UTC time>/federation.md].",
    )
    @click.option(
        "--publish", is_flag=True, help="Replace the published benchmarks/results/federation.md instead."
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
    def command(
        size, full, dataset, data_dir, models, fedavg_model, alphas, seeds, methods, rounds, device, threads,
        jobs, settings, out, publish, as_json,
    ) -> None:  # fmt: skip
        from . import results_path

        out = results_path("federation.md", out=out, publish=publish)
        out.parent.mkdir(parents=True, exist_ok=True)
        pin_threads(threads)
        results = run_benchmark(
            size=override_size(SIZES["full" if full else size], settings),
            dataset=dataset,
            data_dir=data_dir,
            models=_names(models),
            fedavg_model=fedavg_model,
            alphas=[_alpha(a) for a in alphas.split(",")],
            seeds=None if seeds is None else [int(s) for s in seeds.split(",")],
            methods=_names(methods),
            device=device,
            rounds=rounds,
            jobs=jobs,
            progress=lambda line: click.echo(line, err=True),
        )
        head, args = (
            ("python " + shlex.quote(sys.argv[0]), sys.argv[1:]) if prog is None else (prog, sys.argv[3:])
        )
        text = write_markdown(results, out, " ".join([head, *(shlex.quote(a) for a in args)]))
        out.with_suffix(".json").write_text(json.dumps(results.to_dict(), indent=1, default=str))
        click.echo(json.dumps(to_jsonable(results.to_dict()), indent=1) if as_json else text)

    return command
