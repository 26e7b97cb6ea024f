"""One builder: a run's configuration in, a federation to run round by round out.

Everything that runs CoDream builds it here: `codream run`, the benchmarks and tuning scripts, and (one
client at a time, through `build_client`) a Flower node. So the data split, the validation split, every
client's model, seeds and trainer, the aggregator and the privacy plan are the same wherever a run is
built. Three levels:

- `build_run(config, **settings) -> Run`: from a `RunConfig`, a TOML file or keyword arguments; the
  run's privacy plan, aggregator and federation, run with `Run.run_round()`, read through `Run.records`.
- `build_federation(config, ...)`: the simulation engine's `Federation` from a `RunConfig` or a
  learning-loop `FederationConfig`, with your own aggregator, trainer factory or data.
- `build_client(config, client_id, ...)`: one client exactly as the federation builds it.

Each round's record holds what model selection needs: every evaluated client's accuracy on the
validation split (carved from the training data, see `codream.data.split_validation`; both engines'
round script reports it), and, in a `Run`'s first round, its accuracy right after the local warm-up.
`Run.best_round()` selects on the validation split; the test set is only reported.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .exceptions import ConfigError
from .privacy_plan import PrivacyPlan
from .runconfig import RunConfig, aggregator_options, federation_config
from .rundir import to_jsonable

__all__ = [
    "PrivacyPlan",
    "Run",
    "build_aggregator",
    "build_client",
    "build_federation",
    "build_run",
    "import_modules",
    "import_plugins",
    "load_federation_data",
    "matched_baseline_config",
    "resolve_device",
    "round_record",
    "run_baselines",
]

# (stage, done, total), as `Federation.run_round` reports its progress.
Progress = Callable[[str, int, int], None]


def resolve_device(name: str) -> str:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is a clear error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return name


def import_plugins(rc: RunConfig) -> None:
    """Import the modules `rc.imports` names (they register models and data sets); each once.

    Raises:
        ConfigError: a module that cannot be found or fails while it is imported.
    """
    import_modules(rc.imports or ())


def import_modules(entries: Iterable[str], *, key: str = "imports") -> None:
    """Import each entry once: one ending in ``.py`` is a file path (relative to the working
    directory), any other a module name on the import path. The one way codream loads user code
    (a run's `imports`, a Flower node's own ``imports`` node config, the Flower server's).

    Raises:
        ConfigError: naming `key`, for a module that cannot be found or fails while it is imported.
    """
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    for entry in entries:
        try:
            if entry.endswith(".py"):
                path = Path(entry).resolve()
                name = f"codream_plugin_{path.stem}_{abs(hash(str(path))):x}"
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ConfigError(f"{key}: {entry!r} is not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(entry)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the module raises, the run cannot start
            raise ConfigError(
                f"{key}: cannot import {entry!r} ({type(exc).__name__}: {exc}); give a module on the "
                "import path (PYTHONPATH) or the path of a .py file"
            ) from None


def build_aggregator(rc: RunConfig, privacy: PrivacyPlan) -> Any:
    """The aggregator `rc.aggregation` names, configured from the run's settings and privacy plan."""
    from .aggregation import create_aggregator

    opts = aggregator_options(rc)
    if rc.aggregation == "secure":
        opts["rounding_seed"] = rc.seed
    opts.update(privacy.aggregator_options())
    aggregator = create_aggregator(rc.aggregation, **opts)
    privacy.bind(aggregator)
    return aggregator


def _learning_config(config: RunConfig | Any, device: str | None = None) -> Any:
    """The `FederationConfig` of a `RunConfig` (device resolved), or the `FederationConfig` given."""
    if isinstance(config, RunConfig):
        import_plugins(config)
        return federation_config(config, device=device or resolve_device(config.device))
    from .federation.config import FederationConfig

    if not isinstance(config, FederationConfig):
        raise ConfigError(f"expected a RunConfig or a FederationConfig, got {type(config).__name__}")
    return config


def load_federation_data(config: RunConfig | Any, dataset: Any = None) -> Any:
    """The data a federation trains on, loaded once: the data set with its validation split carved out,
    its partition over the clients and the (limited) test split (`codream.federation.parties`).

    A Flower node loads it once and passes it to `build_client`; its ``dataset.x_val`` / ``x_test``
    are what the node evaluates on.

    Args:
        config: a `RunConfig` or a `FederationConfig`.
        dataset: an already loaded `codream.data.Dataset` (default: load ``config``'s data set).
    Returns:
        A `codream.federation.parties.FederationData`.
    """
    from .federation.parties import load_federation_data as load

    return load(_learning_config(config, device="cpu"), dataset)


def _trainer_factory(config: RunConfig | Any, trainer_factory: Any) -> Any:
    if trainer_factory is not None:
        return trainer_factory
    if isinstance(config, RunConfig) and config.privacy_unit == "example":
        return PrivacyPlan(config, _learning_config(config)).trainer_factory()
    return None


def build_federation(
    config: RunConfig | Any,
    *,
    aggregator: Any = None,
    trainer_factory: Any = None,
    dataset: Any = None,
) -> Any:
    """The simulation engine's `Federation` (loads the data unless given, builds every client).

    Args:
        config: a `RunConfig` (its aggregator and DP-SGD trainers are built from it unless given) or
            a learning-loop `FederationConfig` (plain aggregation unless `aggregator` is given).
        aggregator: the seam to use instead.
        trainer_factory: builds each client's `LocalTrainer` (default: SGD, or DP-SGD for
            ``privacy_unit = "example"``).
        dataset: an already loaded `codream.data.Dataset`; its validation split is carved here if it
            has none yet.
    Raises:
        ConfigError, DataError: an invalid configuration or missing data.
    """
    from .federation.simulation import Federation

    cfg = _learning_config(config)
    if aggregator is None and isinstance(config, RunConfig):
        aggregator = build_aggregator(config, PrivacyPlan(config, cfg))
    return Federation(cfg, aggregator, _trainer_factory(config, trainer_factory), dataset=dataset)


def build_client(
    config: RunConfig | Any, client_id: int, *, data: Any = None, trainer_factory: Any = None
) -> Any:
    """Client `client_id` of the federation `config` describes, exactly as `Federation` builds it.

    The same function as the engines' (`codream.federation.parties.build_client`): same partition,
    validation split, model, initialisation seed and random streams, so a node that builds its client
    here releases what the simulation's client would.

    Args:
        config: a `RunConfig` (DP-SGD trainers for ``privacy_unit = "example"``) or a `FederationConfig`.
        client_id: 0 .. clients - 1.
        data: `load_federation_data`'s result (to load the data once), a `codream.data.Dataset`, or
            None to load it here.
        trainer_factory: builds the client's `LocalTrainer` instead of the default.
    Returns:
        The `codream.federation.ClientRole` (its trainer holds the model and the client's data).
    Raises:
        ConfigError: a client id outside the federation, or any error of the configuration.
    """
    from .federation.parties import FederationData
    from .federation.parties import build_client as build

    cfg = _learning_config(config)
    if isinstance(client_id, bool) or not isinstance(client_id, int) or not 0 <= client_id < cfg.num_clients:
        raise ConfigError(f"client id {client_id!r} is outside 0..{cfg.num_clients - 1}")
    if not isinstance(data, FederationData):
        data = load_federation_data(cfg, data)
    return build(cfg, data, client_id, _trainer_factory(config, trainer_factory))


# --- baselines -----------------------------------------------------------------------------------------


def matched_baseline_config(config: Any) -> Any:
    """The `BaselineConfig` whose clients take, per round, the cross-entropy steps a CoDream client takes.

    The warm-up spread over the rounds plus the round's interleaved CE steps, with the clients' own
    optimiser settings; CoDream's KD steps on dreams come on top (as in the paper).
    """
    from .baselines import BaselineConfig

    dc = config.distill
    rounds = max(config.rounds, 1)
    steps = max(1, math.ceil((dc.warmup_steps + rounds * dc.ce_steps_per_round) / rounds))
    return BaselineConfig(
        rounds=rounds,
        local_steps=steps,
        batch_size=dc.ce_batch_size,
        lr=dc.lr,
        momentum=dc.momentum,
        weight_decay=dc.weight_decay,
        norm=config.norm,
        seed=config.seed,
    )


def run_baselines(
    config: RunConfig | Any, methods: Sequence[str], *, dataset: Any = None, device: str | None = None
) -> dict[str, Any]:
    """The baselines `methods` (local, fedavg, centralized) on the federation's own partitions.

    Returns:
        ``{method: codream.baselines.BaselineResult}``, evaluated on the test set after every round.
    """
    from .baselines import run_baseline

    cfg = _learning_config(config)
    loaded = load_federation_data(cfg, dataset)
    data, parts = loaded.dataset, loaded.parts
    bcfg = matched_baseline_config(cfg)
    models = cfg.client_models()
    return {m: run_baseline(m, data, parts, models, bcfg, device=device or cfg.device) for m in methods}


# --- per-round records ---------------------------------------------------------------------------------


def round_record(
    metrics: Any, *, round_number: int, epsilon: float | None, delta: float | None, seconds: float
) -> dict[str, Any]:
    """The line of metrics.jsonl for one round: a fixed schema on top of the round's `RoundMetrics`.

    Both engines run the same round script, so `metrics` is a `RoundMetrics` or its `to_dict()`.
    Keys: round (1-based), accuracy (per evaluated client), accuracy_mean, accuracy_std,
    val_accuracy and val_accuracy_mean (on the validation split, where the engine reported it: what
    the best round is selected on), participants, survivors, bytes_sent_per_client (mean over
    clients), clipped, overflowed (None under DP: not released), seconds, epsilon, delta, and
    ``federation`` with the whole metrics. A `Run` adds, in the first round, warmup_accuracy /
    warmup_val_accuracy.
    """
    raw = metrics.to_dict() if hasattr(metrics, "to_dict") else dict(metrics)
    acc = [float(a) for a in raw["accuracies"]]
    report = raw["aggregation"]
    per_client = report.get("bytes_sent_per_client") or {}
    record: dict[str, Any] = {
        "round": round_number,
        "accuracy": acc,
        "accuracy_mean": statistics.fmean(acc) if acc else math.nan,
        "accuracy_std": statistics.pstdev(acc) if len(acc) > 1 else 0.0,
    }
    val = raw.get("val_accuracies")
    if val:
        record["val_accuracy"] = [float(a) for a in val]
        record["val_accuracy_mean"] = statistics.fmean(record["val_accuracy"])
    record |= {
        "participants": len(raw["participants"]),
        "survivors": len(raw["survivors"]),
        "bytes_sent_per_client": (
            statistics.fmean(float(v) for v in per_client.values()) if per_client else None
        ),
        "clipped": report.get("clipped"),
        "overflowed": report.get("overflowed"),
        "seconds": float(seconds),
        "epsilon": epsilon,
        "delta": delta,
    }
    if raw.get("warmup_accuracy") is not None:
        record["warmup_accuracy"] = [float(a) for a in raw["warmup_accuracy"]]
    record["federation"] = to_jsonable(raw)
    return record


# --- the run -------------------------------------------------------------------------------------------


class Run:
    """A federation built from a `RunConfig`, run round by round (the simulation engine).

    Attributes:
        config: the `RunConfig`.
        federation_config: the learning loop's `FederationConfig` built from it.
        device: where the models run.
        privacy: the `PrivacyPlan` (noise, ledger, epsilon).
        aggregator: the seam every client vector goes through.
        federation: the `codream.federation.Federation`.
        records: one dict per finished round (the lines of a run directory's metrics.jsonl).

    Args:
        config: the run's configuration.
        state: a `state_dict()` to continue from (the checkpoint of a stopped run).
        federation_factory: builds the engine from (FederationConfig, aggregator) instead of
            `build_federation` (a stand-in for tests; ignored for example-level DP).
    Raises:
        ConfigError, DataError: an invalid configuration or missing data, before anything runs.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        state: Mapping[str, Any] | None = None,
        federation_factory: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        from .devices import pin_threads

        if config.engine != "simulation":
            raise ConfigError(
                f"a Run drives the simulation engine; engine {config.engine!r} runs through "
                "`codream run --engine flower` (build each node's client with build_client)"
            )
        self.config = config
        self.device = resolve_device(config.device)
        pin_threads(config.threads)
        import_plugins(config)
        self.federation_config = federation_config(config, device=self.device)
        self.privacy = PrivacyPlan(
            config, self.federation_config, saved=state.get("privacy") if state else None
        )
        self.aggregator = build_aggregator(config, self.privacy)
        if self.privacy.example or federation_factory is None:
            self.federation = build_federation(
                self.federation_config,
                aggregator=self.aggregator,
                trainer_factory=self.privacy.trainer_factory(),
            )
        else:
            self.federation = federation_factory(self.federation_config, self.aggregator)
        self.records: list[dict[str, Any]] = []
        self._round = 0
        self._dreams: tuple[Any, Any] | None = None
        self._warm: dict[int, tuple[float, float | None]] = {}
        if state is not None:
            self.load_state_dict(state)

    # -- running ---------------------------------------------------------------------------------------

    @property
    def rounds_done(self) -> int:
        """Rounds finished (a resumed run counts the ones before its checkpoint)."""
        return self._round

    @property
    def validation(self) -> tuple[Any, Any] | None:
        """The validation split (x, y) the clients are evaluated on, or None without one."""
        data = getattr(self.federation, "dataset", None)
        if data is None or getattr(data, "x_val", None) is None:
            return None
        return data.x_val, data.y_val

    def run_round(self, progress: Progress | None = None) -> dict[str, Any]:
        """Run the next round; returns its record (also appended to `records`).

        Args:
            progress: called as progress(stage, done, total), as `Federation.run_round` reports.
        Raises:
            ConfigError: every planned round has run (build the run with more ``rounds``).
            PrivacyBudgetExceeded, ProtocolAbort: the round would overspend, or too few clients survived;
                the finished rounds stay as they were.
        """
        import time

        r = self._round
        if r >= self.config.rounds:
            raise ConfigError(
                f"the run planned {self.config.rounds} rounds and has run them; build it with rounds= "
                "more (the privacy plan is calibrated to the planned rounds)"
            )
        t0 = time.perf_counter()
        self.privacy.before_round(r)
        metrics = self.federation.run_round(progress=self._watch_warmup(r, progress))
        self.privacy.after_round(r)
        seconds = time.perf_counter() - t0
        record = round_record(
            metrics,
            round_number=r + 1,
            epsilon=self.privacy.epsilon(),
            delta=self.privacy.delta,
            seconds=seconds,
        )
        if self.config.aggregation != "plain":
            record["dropout"] = self.config.dropout  # a resume may lower it for the rounds still to run
        self._add_selection(record, metrics)
        self._round = r + 1
        self.records.append(record)
        self._dreams = _finished_dreams(self.federation)
        return record

    def run(self, rounds: int | None = None, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Run `rounds` more rounds (default: the rest of the planned ones); returns their records."""
        n = self.config.rounds - self._round if rounds is None else rounds
        return [self.run_round(progress) for _ in range(n)]

    def _watch_warmup(self, r: int, progress: Progress | None) -> Progress | None:
        """Progress that also measures the cohort right after its warm-up (first round only).

        The round reports the "warmup" stage once its cohort has warmed up, before it opens the round;
        evaluation neither trains nor draws random numbers, so measuring here changes nothing the round
        computes.
        """
        clients = getattr(self.federation, "clients", None)
        if r != 0 or clients is None or not hasattr(self.federation, "cohort"):
            return progress
        cohort = self.federation.cohort(0)
        x_test, y_test = self.federation.x_test, self.federation.y_test
        val = self.validation

        def watch(stage: str, done: int, total: int) -> None:
            if stage == "warmup" and done == total and not self._warm:
                for client in cohort:
                    self._warm[client.client_id] = (
                        client.evaluate(x_test, y_test),
                        client.evaluate(*val) if val is not None else None,
                    )
            if progress is not None:
                progress(stage, done, total)

        return watch

    def _add_selection(self, record: dict[str, Any], metrics: Any) -> None:
        """The first round's warm-up point (the round's validation accuracy is the engine's own)."""
        evaluated = list(getattr(metrics, "evaluated", ()) or getattr(metrics, "participants", ()) or ())
        val = self.validation
        if self._warm and evaluated and all(c in self._warm for c in evaluated):
            record["warmup_accuracy"] = [self._warm[c][0] for c in evaluated]
            if val is not None:
                record["warmup_val_accuracy"] = [float(self._warm[c][1]) for c in evaluated]
        self._warm = {}

    # -- reading ---------------------------------------------------------------------------------------

    @property
    def last_dreams(self) -> tuple[Any, Any] | None:
        """The dreams (B, C, H, W) and aggregated soft labels (B, K) of the last finished round."""
        return self._dreams

    def best_round(self) -> dict[str, Any] | None:
        """The record of the round with the best mean validation accuracy (None without a split).

        Its ``accuracy_mean`` is the test accuracy to report; nothing is selected on the test set.
        """
        scored = [r for r in self.records if r.get("val_accuracy_mean") is not None]
        return max(scored, key=lambda r: r["val_accuracy_mean"]) if scored else None

    def summary(self) -> dict[str, Any]:
        """The run's final numbers (as summary.json holds them): accuracies, best round, cost, epsilon."""
        from .report import summarise

        cfg = self.config.to_dict() | {
            "client_models": list(self.config.client_models),
            "device": self.device,
        }
        return summarise(cfg, self.records, privacy=self.privacy.summary())

    def baselines(self) -> dict[str, Any]:
        """The configured baselines (``config.baselines``) on this run's partitions and budget."""
        data = getattr(self.federation, "dataset", None)
        if not self.config.baselines:
            return {}
        return run_baselines(self.federation_config, self.config.baselines, dataset=data, device=self.device)

    # -- checkpoints -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run stands (between rounds)."""
        agg = self.aggregator
        return {
            "round": self._round,
            "federation": self.federation.state_dict(),
            "aggregator": agg.state_dict() if hasattr(agg, "state_dict") else None,
            "privacy": self.privacy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`; the next round equals the unbroken run's."""
        self.federation.load_state_dict(state["federation"])
        if state.get("aggregator") is not None and hasattr(self.aggregator, "load_state_dict"):
            self.aggregator.load_state_dict(state["aggregator"])
        self.privacy.load_state_dict(state.get("privacy"))
        self._round = int(state["round"])
        self._dreams = _finished_dreams(self.federation) if self._round else None


def _finished_dreams(federation: Any) -> tuple[Any, Any] | None:
    """The dreams and soft labels of the federation's last finished round (None before the first)."""
    try:
        return federation.last_dreams
    except ConfigError:
        return None


def build_run(
    config: RunConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
    /,
    **settings: Any,
) -> Run:
    """Build a run: from a `RunConfig`, a TOML file, a mapping of settings, or keywords alone.

    Keyword `settings` are run keys (``clients=2``, ``models=["mlp"]``, ``dream={"w_tv": 1e-4}``) and
    win over the file or mapping; they are checked like a config file's keys.

    Example::

        run = build_run(dataset="digits", clients=2, models="mlp", rounds=1)
        record = run.run_round()
        print(record["accuracy_mean"], record["val_accuracy_mean"])

    Raises:
        ConfigError, DataError: an unknown key, a bad value, or data that cannot be loaded.
    """
    if isinstance(config, RunConfig):
        rc = config.replace(**settings) if settings else config
    elif isinstance(config, str | os.PathLike):
        rc = RunConfig.from_toml(config, **settings)
    elif isinstance(config, Mapping) or config is None:
        values = {str(k).replace("-", "_"): v for k, v in (config or {}).items()}
        values.update({k.replace("-", "_"): v for k, v in settings.items()})
        rc = RunConfig.from_dict(values, source="build_run()")
    else:
        raise ConfigError(
            f"build_run takes a RunConfig, a TOML path or a mapping, got {type(config).__name__}"
        )
    return Run(rc)
