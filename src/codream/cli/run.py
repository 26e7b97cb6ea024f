"""`codream run`: one federation from flags or a config file, into a run directory.

The command resolves a `RunConfig`, builds the learning loop and the aggregator *before* it creates
the run directory (so a bad model name or a missing data folder leaves nothing behind), then runs the
rounds. After each round it writes the checkpoint first, then the round's line of metrics.jsonl and
the privacy ledger, so `--resume RUN_DIR` picks up from the last round whose checkpoint is on disk
and ends with the same numbers as an unbroken run. At the end it writes the final dreams, the plots
and summary.json / summary.md, and prints where they are; everything it prints also goes to run.log.

A run that stops early (an abort, a spent budget, a full disk, Ctrl-C, SIGTERM or SIGHUP) keeps what
its finished rounds wrote, summary and plots included, and its last line names a command that goes on
from there (see `codream.cli.hints`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..exceptions import CodreamError, ConfigError, PrivacyBudgetExceeded
from ..rundir import LEDGER as LEDGER_FILE
from ..rundir import RunDir, to_jsonable
from .config import (
    RUN_OPTIONS,
    RunConfig,
    aggregator_options,
    dump_toml,
    federation_config,
    load_toml,
    resolve_run_config,
    run_options,
)

__all__ = ["RunOutcome", "build_aggregator", "execute_run", "round_record", "run_command"]

log = logging.getLogger(__name__)

# Flags that may differ from the saved configuration when resuming: they change neither the numbers
# nor the randomness of the rounds already run (`rounds` only extends the run).
# `dropout` only simulates failures in the rounds still to run; each round's record keeps the value it ran
# with, so a seeded dropout that aborts a round can be lowered for the rest.
RESUMABLE_CHANGES = frozenset({"rounds", "dropout", "device", "json", "out"})

# Where the lines a run prints are logged (to its run.log only; they are on the console already).
CONSOLE_LOGGER = "codream.console"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What `execute_run` leaves: the run directory, its summary and the per-round records."""

    run_dir: RunDir
    summary: dict[str, Any]
    records: list[dict[str, Any]]


# --- building the pieces -------------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    """auto -> cuda when available, else cpu; an explicit cuda without a GPU is a clear error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return name


class PrivacyPlan:
    """The DP side of a run: calibrated noise, the ledger, and epsilon after each round.

    For secure+dp it calibrates the per-round noise multiplier to the target (default epsilon 8) over
    the whole planned schedule, for a client that takes part in every round: the server knows each
    round's cohort, so sampling amplifies nothing against it, and each client's own ledger composes
    the rounds it was in (one event per round over its releases), unamplified. A resumed run keeps
    the multiplier it started with, so extending ``--rounds`` cannot quietly weaken the noise; each
    client's ledger then refuses rounds past the target.
    For plain and secure everything is None.
    """

    DEFAULT_EPSILON = 8.0

    def __init__(self, rc: RunConfig, fed_cfg: Any, *, saved: Mapping[str, Any] | None = None) -> None:
        self.rc = rc
        self.example = rc.privacy_unit == "example"
        if self.example:
            self._init_example(rc, fed_cfg)
            return
        self.granularity = "client"
        self.enabled = rc.aggregation == "secure+dp"
        self.delta = rc.delta if self.enabled else None
        self.target_epsilon = rc.epsilon
        self.noise_multiplier: float | None = rc.noise_multiplier
        self.releases_per_round = int(getattr(fed_cfg, "releases_per_round", 1))
        # The cohort's share of the clients (1: every client in every round). It is reported, never
        # accounted: the server knows every cohort, so a client's rounds compose unamplified.
        cohort = getattr(fed_cfg, "clients_per_round", None)
        self.sample_rate = 1.0 if cohort is None else cohort / rc.clients
        self.planned_epsilon: float | None = None
        self.ledger: Any = None
        if not self.enabled:
            return
        if self.noise_multiplier is None and self.target_epsilon is None:
            self.target_epsilon = self.DEFAULT_EPSILON
        if saved and saved.get("noise_multiplier") is not None:
            self.noise_multiplier = float(saved["noise_multiplier"])
            self.planned_epsilon = saved.get("planned_epsilon")
        elif self.noise_multiplier is None:
            self._calibrate()

    def _init_example(self, rc: RunConfig, fed_cfg: Any) -> None:
        """Example-level DP: every client trains with DP-SGD; its noise is calibrated to its data size."""
        from ..privacy.ledger import PrivacyLedger

        dc = fed_cfg.distill
        self.granularity = "example"
        self.enabled = True
        self.delta = rc.delta
        self.target_epsilon = rc.epsilon
        if rc.noise_multiplier is None and rc.epsilon is None:
            self.target_epsilon = self.DEFAULT_EPSILON
        self.noise_multiplier = rc.noise_multiplier
        self.releases_per_round = int(getattr(fed_cfg, "releases_per_round", 1))
        self.sample_rate = None  # each client's own batch / data size, set when its trainer is built
        self.batch_size = dc.ce_batch_size
        self.lr, self.momentum = dc.lr, dc.momentum
        self.round_steps = dc.ce_steps_per_round
        # Planned DP-SGD steps per client: the warm-up and every round's interleaved CE steps (never fewer
        # than a client takes; a client outside a round's cohort takes fewer).
        self.dp_steps = dc.warmup_steps + rc.rounds * self.round_steps
        self.planned_epsilon = None
        self.ledger = PrivacyLedger(
            delta=rc.delta, target_epsilon=self.target_epsilon, granularity="example", accountant="prv"
        )
        self._planned: dict[int, Any] = {}
        self._trainers: dict[int, Any] = {}

    def _example_plan(self, data_size: int) -> Any:
        from ..privacy.calibration import ExampleLevelSchedule, plan_noise

        if data_size not in self._planned:
            batch = min(self.batch_size, data_size)
            schedule = ExampleLevelSchedule(local_steps=self.dp_steps, batch_size=batch, data_size=data_size)
            try:
                self._planned[data_size] = plan_noise(
                    schedule, target_epsilon=self.target_epsilon, delta=self.delta, accountant="prv"
                )
            except ConfigError as exc:
                raise ConfigError(
                    f"--epsilon {self.target_epsilon:g} cannot be met by {self.dp_steps} DP-SGD steps "
                    f"on {data_size} examples at delta {self.delta:g} ({exc}); raise --epsilon or take "
                    "fewer steps"
                ) from None
        return self._planned[data_size]

    def trainer_factory(self) -> Any:
        """For example-level DP, the factory of each client's DP-SGD trainer; None otherwise."""
        if not self.example:
            return None
        from ..privacy.example_level import DPSGDTrainer

        def factory(model: Any, x: Any, y: Any, generator: Any) -> Any:
            n = int(x.shape[0])
            if self.noise_multiplier is not None and self.target_epsilon is None:
                z = self.noise_multiplier
            else:
                plan = self._example_plan(n)
                z = plan.noise_multiplier
                self.planned_epsilon = max(self.planned_epsilon or 0.0, plan.epsilon)
            trainer = DPSGDTrainer(
                model,
                x,
                y,
                generator,
                noise_multiplier=z,
                batch_size=min(self.batch_size, n),
                lr=self.lr,
                momentum=self.momentum,
                delta=self.delta,
            )
            self._trainers[len(self._trainers)] = trainer
            return trainer

        return factory

    def before_round(self, round_index: int) -> None:
        """Example-level: refuse a round whose DP-SGD steps would take a client past the target."""
        if self.example and self._trainers and self.target_epsilon is not None:
            from ..privacy.example_level import check_example_round

            check_example_round(self.ledger, self._trainers, steps=self.round_steps, round_index=round_index)

    def describe(self) -> str:
        """The line a run prints about its noise before the first round."""
        if self.example:
            zs = sorted({round(t.noise_multiplier, 4) for t in self._trainers.values()})
            return (
                f"example-level DP: DP-SGD on every client, noise multiplier {', '.join(map(str, zs))} over "
                f"{self.dp_steps} planned steps, target epsilon {_fmt_opt(self.target_epsilon)} at delta "
                f"{self.delta:g} (GroupNorm models)"
            )
        # The round's z_eff, the number `codream privacy epsilon --noise-multiplier` takes; its releases
        # each carry sqrt(releases) times more (they compose into the one accounted event).
        per_release = self.noise_multiplier * math.sqrt(self.releases_per_round)
        return (
            f"secure+dp: noise multiplier {self.noise_multiplier:.4g} per round (z_eff; each of its "
            f"{self.releases_per_round} releases {per_release:.4g}), target epsilon "
            f"{_fmt_opt(self.target_epsilon)} at delta {self.delta:g}"
        )

    def after_round(self, round_index: int) -> None:
        """Example-level: record every client's epsilon; the run's is their maximum."""
        if self.example and self._trainers:
            from ..privacy.example_level import record_example_round

            record_example_round(self.ledger, self._trainers, round_index=round_index)

    def _calibrate(self) -> None:
        from ..privacy.calibration import ClientLevelSchedule, plan_noise

        schedule = ClientLevelSchedule(
            rounds=self.rc.rounds, sample_rate=1.0, releases_per_round=self.releases_per_round
        )
        try:
            plan = plan_noise(schedule, target_epsilon=self.target_epsilon, delta=self.rc.delta)
        except ConfigError as exc:
            raise ConfigError(
                f"--epsilon {self.target_epsilon:g} cannot be met over {self.rc.rounds} rounds at delta "
                f"{self.rc.delta:g} ({exc}); raise --epsilon or --delta, or run fewer --rounds"
            ) from None
        self.noise_multiplier = plan.noise_multiplier
        self.planned_epsilon = plan.epsilon

    def aggregator_options(self) -> dict[str, Any]:
        if not self.enabled or self.example:
            return {}
        return {
            "noise_multiplier": self.noise_multiplier,
            "delta": self.rc.delta,
            "target_epsilon": self.target_epsilon,
        }

    def bind(self, aggregator: Any) -> None:
        """Find the run's ledger the secure+dp seam keeps: every client's own epsilon, round by round
        (example-level keeps its own)."""
        if self.enabled and not self.example:
            self.ledger = getattr(aggregator, "ledger", None)

    def attach(self, path: Path) -> None:
        """Let the ledger rewrite `path` after every round (it exists only once the run dir does)."""
        if self.ledger is not None:
            self.ledger.path = path

    def epsilon(self) -> float | None:
        if not self.enabled or self.ledger is None:
            return None
        return float(self.ledger.spent)

    def summary(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        out: dict[str, Any] = {
            "granularity": self.granularity,
            "delta": self.rc.delta,
            "target_epsilon": self.target_epsilon,
            "noise_multiplier": self.noise_multiplier,
            "planned_epsilon": self.planned_epsilon,
            "sample_rate": self.sample_rate,
            "releases_per_round": self.releases_per_round,
            "epsilon": self.epsilon(),
        }
        if self.example and self._trainers:
            trainers = list(self._trainers.values())
            out["noise_multiplier"] = max(t.noise_multiplier for t in trainers)
            out["sample_rate"] = max(t.sample_rate for t in trainers)
            out["dp_sgd_steps"] = self.dp_steps
        if self.ledger is not None:
            out["accountant"] = getattr(self.ledger, "accountant_name", None)
            out["ledger"] = self.ledger.to_dict()
            last = self.ledger.rounds[-1].client_epsilons if self.ledger.rounds else {}
            if last:
                out["client_epsilon_max"] = max(last.values())
                out["client_epsilon_mean"] = sum(last.values()) / len(last)
        if not self.example:
            # The server knows who took part: a client's contribution replaced by nothing is the
            # neighbouring relation the guarantee holds for, and no amplification by sampling applies.
            out["relation"] = "zero-out"
            out["accounting"] = "per client, over the rounds it took part in, unamplified"
        return out

    def state_dict(self) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        return {
            "noise_multiplier": self.noise_multiplier,
            "planned_epsilon": self.planned_epsilon,
            "ledger": self.ledger.state_dict() if self.ledger is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if state and state.get("ledger") is not None and self.ledger is not None:
            self.ledger.load_state_dict(state["ledger"])


def build_aggregator(rc: RunConfig, privacy: PrivacyPlan) -> Any:
    """The aggregator `rc.aggregation` names, configured from the run's flags.

    `secure` gets its stochastic-rounding coins from the run seed, so a secure run is reproducible
    and `--resume` equals an unbroken run (the coins protect no secret: the masks do). `secure+dp`
    keeps OS randomness for its coins and noise.
    """
    from ..aggregation import create_aggregator

    opts = aggregator_options(rc)
    if rc.aggregation == "secure":
        opts["rounding_seed"] = rc.seed
    opts.update(privacy.aggregator_options())
    aggregator = create_aggregator(rc.aggregation, **opts)
    privacy.bind(aggregator)
    return aggregator


def make_federation(fed_cfg: Any, aggregator: Any, trainer_factory: Any = None) -> Any:
    """The simulation engine's `Federation` (loads data and builds every client's model)."""
    from ..federation.simulation import Federation

    return Federation(fed_cfg, aggregator=aggregator, trainer_factory=trainer_factory)


# --- per-round records ---------------------------------------------------------------------------------


def round_record(
    metrics: Any, *, round_number: int, epsilon: float | None, delta: float | None, seconds: float
) -> dict[str, Any]:
    """The line of metrics.jsonl for one round: a fixed schema on top of the round's `RoundMetrics`.

    Both engines run the same round script, so `metrics` is a `RoundMetrics` or its `to_dict()`.
    Keys: round (1-based), accuracy (per evaluated client), accuracy_mean, accuracy_std,
    participants, survivors, bytes_sent_per_client (mean over clients), clipped, overflowed (None
    under DP: not released), seconds, epsilon, delta, and ``federation`` with the whole metrics.
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


# --- progress ------------------------------------------------------------------------------------------


class _Progress:
    """tqdm bars: rounds outside, the steps of the current stage (dream steps, distillation) inside."""

    def __init__(self, total_rounds: int, done: int, enabled: bool | None) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.rounds = tqdm(
            total=total_rounds,
            initial=done,
            desc="rounds",
            unit="round",
            position=0,
            disable=None if enabled is None else not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        self.inner = None
        self.stage = None

    def step(self, stage: str, i: int, n: int) -> None:
        if self.rounds.disable:
            return
        if self.inner is None or stage != self.stage:
            if self.inner is not None:
                self.inner.close()
            self.stage = stage
            self.inner = self._tqdm(
                total=n, desc=stage, unit="step", position=1, leave=False, file=sys.stderr, dynamic_ncols=True
            )
        self.inner.n = min(i, n)
        self.inner.refresh()

    def end_round(self, line: str, stream: Any) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner, self.stage = None, None
        self.rounds.update(1)
        self._tqdm.write(line, file=stream)
        logging.getLogger(CONSOLE_LOGGER).info(line)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()
        self.rounds.close()


# --- the run -------------------------------------------------------------------------------------------


def _aggregator_state(aggregator: Any) -> Any:
    return aggregator.state_dict() if hasattr(aggregator, "state_dict") else None


def execute_run(
    rc: RunConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    federation_factory: Callable[[Any, Any], Any] = make_federation,
) -> RunOutcome:
    """Run (or resume) the federation `rc` describes and write its run directory.

    Args:
        rc: the resolved run configuration.
        run_dir: where to write; defaults to `rc.out`, else runs/<UTC timestamp>.
        resume: continue the run in `run_dir` from its last checkpoint.
        progress: tqdm bars on stderr (None: only on a terminal).
        echo: where the per-round lines go (default: stdout, or stderr with --json).
        federation_factory: builds the engine from (FederationConfig, aggregator); a seam for tests.
    Returns:
        The run directory, the final summary and the per-round records.
    Raises:
        ConfigError, DataError, PrivacyBudgetExceeded, ProtocolAbort: bad input or an aborted protocol.
    """
    stream = sys.stderr if rc.json else sys.stdout
    echo = echo or (lambda line: click.echo(line, file=stream))
    device = resolve_device(rc.device)
    from ..devices import pin_threads

    pin_threads(rc.threads)
    fed_cfg = federation_config(rc, device=device)
    state = None
    if resume:
        rd = RunDir.open(run_dir if run_dir is not None else rc.out)
        state = rd.load_checkpoint()
    privacy = PrivacyPlan(rc, fed_cfg, saved=state.get("privacy") if state else None)
    aggregator = build_aggregator(rc, privacy)
    if rc.engine == "flower":
        if privacy.example:
            raise ConfigError(
                "--privacy-unit example works with --engine simulation only; the Flower engine does not "
                "carry DP-SGD clients yet"
            )
        if resume:
            raise ConfigError(
                "--resume works with --engine simulation only; the Flower engine runs in one go"
            )
        return _execute_flower(rc, fed_cfg, privacy, device=device, run_dir=run_dir, echo=echo)
    # Built before the run directory exists: a bad model name or a missing data folder leaves nothing.
    if privacy.example:
        federation = make_federation(fed_cfg, aggregator, trainer_factory=privacy.trainer_factory())
    else:
        federation = federation_factory(fed_cfg, aggregator)

    if resume:
        done = 0
        if state is not None:
            federation.load_state_dict(state["federation"])
            if state.get("aggregator") is not None and hasattr(aggregator, "load_state_dict"):
                aggregator.load_state_dict(state["aggregator"])
            privacy.load_state_dict(state.get("privacy"))
            done = int(state["round"])
        if rc.rounds < done:
            raise ConfigError(
                f"{rd.path} has finished {done} rounds; --rounds {rc.rounds} would undo some of them: "
                f"give --rounds {done} or more"
            )
        if privacy.ledger is not None:
            # The ledger file is the truth: a round charged after the last checkpoint stays charged.
            privacy.ledger.merge_file(rd.ledger_path)
            if privacy.example:
                from ..privacy.example_level import restore_example_accountants

                restore_example_accountants(privacy.ledger, privacy._trainers)
        dropped = rd.truncate_metrics(done)
        if dropped:
            log.info("dropped %d metrics line(s) written after the last checkpoint", dropped)
        echo(f"resuming {rd.path} after round {done} of {rc.rounds}")
    else:
        out = run_dir if run_dir is not None else rc.out
        if out is None:
            out = Path("runs") / _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
        rd = RunDir.create(out)
        rc = rc.replace(out=str(out))
        done = 0
    if not resume or done < rc.rounds:  # a resume with nothing left to run changes no setting
        rd.write_config(_config_toml(rc), federation=to_jsonable(fed_cfg))
    privacy.attach(rd.ledger_path)
    if hasattr(aggregator, "attach"):
        aggregator.attach(rd.path)  # each client's own ledger file, merged with what a crash left there
    if privacy.ledger is not None:
        rd.write_json(LEDGER_FILE, privacy.ledger.to_dict())  # matches the checkpoint, even after a crash
    if privacy.enabled:
        echo(privacy.describe())

    records = rd.read_metrics()
    # The last finished round's dreams, kept aside: a round that aborts has already replaced the
    # federation's own with its fresh, unfinished batch.
    dreams = _finished_dreams(federation) if done else None
    bars = _Progress(rc.rounds, done, progress)
    failure: CodreamError | None = None
    try:
        for r in range(done, rc.rounds):
            t0 = time.perf_counter()
            privacy.before_round(r)
            metrics = federation.run_round(progress=bars.step)
            privacy.after_round(r)
            seconds = time.perf_counter() - t0
            record = round_record(
                metrics, round_number=r + 1, epsilon=privacy.epsilon(), delta=privacy.delta, seconds=seconds
            )
            if rc.aggregation != "plain":
                record["dropout"] = rc.dropout  # --resume may lower it for the rounds still to run
            # The checkpoint first: a round counts as finished once its state is on disk.
            rd.save_checkpoint(
                {
                    "round": r + 1,
                    "federation": federation.state_dict(),
                    "aggregator": _aggregator_state(aggregator),
                    "privacy": privacy.state_dict(),
                }
            )
            rd.append_metrics(record)
            records.append(record)
            dreams = _finished_dreams(federation)
            bars.end_round(report_line(record, rc.rounds), stream)
    except CodreamError as exc:
        # Budget refused, or too few survivors: keep what the finished rounds earned, then say why.
        failure = exc
    finally:
        bars.close()

    try:
        outcome = _finish(rc, rd, records, privacy, device=device, dreams=dreams if records else None)
    except CodreamError:
        if failure is not None:  # say what stopped the run, not a later echo of it (a disk still full)
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return outcome


def _config_toml(rc: RunConfig) -> str:
    """config.toml: every setting but the run directory, so `--config RUN_DIR/config.toml` runs anew."""
    return dump_toml({k: v for k, v in rc.to_dict().items() if k != "out"})


def _finished_dreams(federation: Any) -> tuple[Any, Any] | None:
    """The dreams and soft labels of the federation's last finished round (None before the first)."""
    try:
        return federation.last_dreams
    except ConfigError:
        return None


def _fmt_opt(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _finish(
    rc: RunConfig,
    rd: RunDir,
    records: list[dict[str, Any]],
    privacy: PrivacyPlan,
    *,
    device: str,
    dreams: tuple[Any, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Write the final dreams, the plots and summary.json / summary.md."""
    from .. import plots, report
    from ..data import CLASS_NAMES

    files = {
        "config": "config.toml",
        "metrics": "metrics.jsonl",
        "metrics_csv": "metrics.csv",
        "log": "run.log",
        "summary_json": "summary.json",
        "summary_md": "summary.md",
        "accuracy_plot": "plots/accuracy.png",
    }
    if rd.checkpoint_path.exists():
        files["checkpoint"] = "checkpoint.pt"
    if privacy.enabled:
        files["privacy_ledger"] = LEDGER_FILE
    models = list(rc.client_models)
    if dreams is not None:
        x, y = dreams
        rd.save_dreams(x, y)
        plots.plot_dreams(x, y, rd.plots_dir / "dreams.png", class_names=CLASS_NAMES.get(rc.dataset))
        files["dreams"] = "dreams.pt"
        files["dreams_plot"] = "plots/dreams.png"
    plots.plot_accuracy(
        records,
        rd.plots_dir / "accuracy.png",
        models=models,
        title=f"{rc.dataset}, {rc.clients} clients, {rc.aggregation}",
    )
    if privacy.enabled:  # a run without DP spends no budget: no plot of it
        plots.plot_epsilon(
            records, rd.plots_dir / "epsilon.png", delta=privacy.delta, target=privacy.target_epsilon
        )
        files["epsilon_plot"] = "plots/epsilon.png"
    cfg = rc.to_dict() | {"client_models": models, "device": device}
    summary = report.summarise(cfg, records, privacy=privacy.summary(), files=files)
    summary["engine"] = rc.engine
    summary["run_dir"] = str(rd.path)
    if extra:
        summary.update(extra)
    rd.write_json("summary.json", summary)
    rd.write_text("summary.md", report.summary_markdown(summary, records, rc.to_dict()))
    return RunOutcome(run_dir=rd, summary=summary, records=records)


def _execute_flower(
    rc: RunConfig,
    fed_cfg: Any,
    privacy: PrivacyPlan,
    *,
    device: str,
    run_dir: str | Path | None,
    echo: Callable[[str], None],
) -> RunOutcome:
    """The same run on a local Flower deployment (one SuperNode process per client).

    The Flower engine runs all rounds in one go (no per-round checkpoint); its per-round metrics
    become the same metrics.jsonl records. Under secure+dp every SuperNode gets the run's DP
    parameters in its own node config, draws its own noise and keeps its own ledger in
    RUN_DIR/client_ledgers/, from which the run's epsilon is read.
    """
    # What the Flower engine does not carry is refused before the run directory exists (so --out stays
    # free for the corrected command), never silently dropped. (Example-level DP is refused with the
    # configuration.) Simulated crashes: on Flower, clients drop for real.
    if rc.dropout > 0:
        raise ConfigError(
            f"--dropout {rc.dropout:g}: carried by --engine simulation only (on Flower, clients drop for "
            "real); drop it or use --engine simulation"
        )
    if rc.corrupt_fraction != 0.1:
        raise ConfigError(
            f"--corrupt-fraction {rc.corrupt_fraction:g}: carried by --engine simulation only (the Flower "
            "server assumes the default 0.1); drop it or use --engine simulation"
        )
    try:
        from ..federation.flower.local import run_flower
    except ImportError as exc:
        raise ConfigError(
            f"--engine flower needs the flwr package ({exc}); pip install codream[flower]"
        ) from None
    import numpy as np

    out = run_dir if run_dir is not None else rc.out
    if out is None:
        out = Path("runs") / _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    rd = RunDir.create(out)
    rc = rc.replace(out=str(out))
    rd.write_config(_config_toml(rc), federation=to_jsonable(fed_cfg))
    echo(f"starting a Flower deployment with {rc.clients} SuperNodes (logs in {rd.path / 'flower' / 'logs'})")
    dp = None
    if privacy.enabled:
        dp = {
            "noise_multiplier": privacy.noise_multiplier,
            "delta": rc.delta,
            "target_epsilon": privacy.target_epsilon,
        }
    results = run_flower(
        fed_cfg,
        aggregation=rc.aggregation,
        out_dir=rd.path / "flower",
        rounds=rc.rounds,
        threshold=rc.threshold,
        graph=rc.graph,
        malicious=rc.secagg_mode == "malicious",
        dp=dp,
        ledger_dir=rd.path / "client_ledgers",
    )
    epsilons: dict[int, float] = {}
    if privacy.enabled:
        epsilons = _flower_run_ledger(rd, privacy, rc.delta)
    records = []
    for i, raw in enumerate(results.get("rounds", [])):
        eps = epsilons.get(i)
        record = round_record(
            raw,
            round_number=i + 1,
            epsilon=eps,
            delta=rc.delta if eps is not None else None,
            seconds=float(raw.get("seconds", 0.0)),
        )
        rd.append_metrics(record)
        records.append(record)
        echo(report_line(record, rc.rounds))
    dreams = None
    npz = rd.path / "flower" / "dreams.npz"
    if npz.exists():
        import torch

        with np.load(npz) as data:
            dreams = (torch.from_numpy(data["x"]), torch.from_numpy(data["soft_labels"]))
    deployment = to_jsonable(results.get("deployment", {}))
    return _finish(rc, rd, records, privacy, device=device, dreams=dreams, extra={"deployment": deployment})


def _flower_run_ledger(rd: RunDir, privacy: PrivacyPlan, delta: float) -> dict[int, float]:
    """The run's ledger of a Flower secure+dp run, from the ledgers the nodes kept themselves.

    Returns each round's largest client epsilon, and makes it the run's ledger (privacy_ledger.json).
    """
    from ..privacy.client_ledger import load_client_ledgers
    from ..privacy.ledger import Granularity, PrivacyLedger

    ledgers = load_client_ledgers(rd.path)
    run_ledger = PrivacyLedger(
        delta=delta,
        target_epsilon=privacy.target_epsilon,
        granularity=Granularity.CLIENT,
        path=rd.ledger_path,
    )
    rounds = sorted({c.round_index for led in ledgers for c in led.charges})
    out: dict[int, float] = {}
    for r in rounds:
        after = {
            led.client_id: max((c.epsilon for c in led.charges if c.round_index <= r), default=0.0)
            for led in ledgers
        }
        charged = sum(1 for led in ledgers for c in led.charges if c.round_index == r)
        run_ledger.record_client_epsilons(
            round_index=r, client_epsilons=after, details={"charged_clients": float(charged)}
        )
        out[r] = max(after.values())
    privacy.ledger = run_ledger
    return out


def report_line(record: Mapping[str, Any], total: int) -> str:
    from ..report import format_round_line

    return format_round_line(record, total)


# --- the click command ---------------------------------------------------------------------------------


def _typed_flags(ctx: click.Context) -> set[str]:
    typed = set()
    for opt in RUN_OPTIONS:
        pname = "as_json" if opt.key == "json" else opt.key
        if ctx.get_parameter_source(pname) is ParameterSource.COMMANDLINE:
            typed.add(opt.key)
    return typed


@click.command("run")
@run_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML file of run settings (keys are the flag names with _); flags override it.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    help="Continue the run in this directory from its last finished round.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bars on stderr (default: on a terminal)."
)
@click.pass_context
def run_command(
    ctx: click.Context, config_file: str | None, resume_dir: str | None, progress: bool | None, **params: Any
) -> None:
    """Run a CoDream federation and write its run directory.

    With no options: 4 clients (cnn and mlp models) on the embedded digits data, plain aggregation,
    a few rounds, about a minute on a laptop CPU. Every option can also be set in --config FILE.toml
    (same names, with _ for -); options on the command line win.
    """
    if resume_dir is not None:
        if config_file is not None:
            raise ConfigError("--resume reads the run's own config.toml; drop --config")
        RunDir.open(resume_dir)  # a precise error for a folder that holds no run
        saved = load_toml(Path(resume_dir) / "config.toml")
        saved.pop("out", None)  # written by earlier versions; the run directory is where it is now
        changed = sorted(
            k
            for k in _typed_flags(ctx) - RESUMABLE_CHANGES
            if _differs(saved, k, params["as_json" if k == "json" else k])
        )
        if changed:
            raise ConfigError(
                f"--resume cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} "
                "(the rounds already run used the saved values); "
                "only --rounds, --dropout, --device and --json may change"
            )
        rc = resolve_run_config(ctx, params, saved, file_label=f"{resume_dir}/config.toml").replace(
            out=resume_dir
        )
    else:
        file_values = load_toml(config_file) if config_file else None
        rc = resolve_run_config(ctx, params, file_values, file_label=config_file or "config")
        if rc.out is None:
            rc = rc.replace(out=str(Path("runs") / _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")))
    outcome = _run_explained(ctx, rc, resume=resume_dir is not None, progress=progress)
    _print_outcome(outcome, as_json=rc.json)


def _run_explained(ctx: click.Context, rc: RunConfig, *, resume: bool, progress: bool | None) -> RunOutcome:
    """`execute_run`, with a run log, SIGTERM/SIGHUP handled as Ctrl-C, and a next step for every stop."""
    from . import hints
    from .signals import Terminated, stop_signals

    stream = sys.stderr if rc.json else sys.stdout
    console = logging.getLogger(CONSOLE_LOGGER)

    def echo(line: str) -> None:
        click.echo(line, file=stream)
        console.info(line)

    with stop_signals(), RunDir.logging_to(rc.out, loggers=("codream", CONSOLE_LOGGER)):
        try:
            return execute_run(
                rc, run_dir=rc.out if resume else None, resume=resume, progress=progress, echo=echo
            )
        except KeyboardInterrupt as exc:
            line = hints.interrupted_message(rc)
            console.info(line)
            click.echo("\n" + line, err=True)
            ctx.exit(exc.exit_code if isinstance(exc, Terminated) else 130)
        except CodreamError as exc:
            if isinstance(exc, PrivacyBudgetExceeded):
                done = len(RunDir(rc.out).read_metrics()) if rc.out else 0
                stop: CodreamError = PrivacyBudgetExceeded(hints.budget_message(exc, round_number=done + 1))
            else:
                stop = exc
            hints.attach(stop, hints.failure_hint(exc, rc))
            console.info("Error: %s%s", stop, f" ({stop.hint})" if getattr(stop, "hint", None) else "")
            raise stop from None


def _differs(saved: Mapping[str, Any], key: str, typed_value: Any) -> bool:
    value = saved.get(key)
    if isinstance(typed_value, tuple):
        typed_value = list(typed_value)
    return value != typed_value


def _print_outcome(outcome: RunOutcome, *, as_json: bool) -> None:
    s = outcome.summary
    rd = outcome.run_dir.path
    if as_json:
        click.echo(json.dumps(to_jsonable(s), indent=2))
        return
    if s.get("final_accuracy_mean") is not None:
        line = (
            f"final accuracy {100 * s['final_accuracy_mean']:.1f} ± {100 * s['final_accuracy_std']:.1f}% "
            f"over {s['clients']} clients after {s['rounds_completed']} rounds"
        )
        if s.get("epsilon") is not None:
            line += f", epsilon {s['epsilon']:.2f} (delta {s['delta']:g})"
        click.echo(line)
    click.echo(f"report: {rd / 'summary.md'}")
    written = s.get("files", {})
    shown = [rd / written[k] for k in ("accuracy_plot", "dreams_plot", "epsilon_plot") if k in written]
    click.echo(f"plots:  {', '.join(map(str, shown))}")
