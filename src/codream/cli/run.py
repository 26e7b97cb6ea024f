"""`codream run`: one federation from flags or a config file, into a run directory.

The command resolves a `RunConfig`, builds the learning loop and the aggregator *before* it creates
the run directory (so a bad model name or a missing data folder leaves nothing behind), then runs the
rounds. After each round it writes the checkpoint first, then the round's line of metrics.jsonl and
the privacy ledger, so `--resume RUN_DIR` picks up from the last round whose checkpoint is on disk
and ends with the same numbers as an unbroken run. At the end it writes the final dreams, the plots
and summary.json / summary.md, and prints where they are; everything it prints also goes to run.log.
The run itself is the library's `codream.build.Run` (the same one `codream.build_run` returns); this
module adds the run directory, the progress bars, the hints and the Flower engine.

A run that stops early (an abort, a spent budget, a full disk, Ctrl-C, SIGTERM or SIGHUP) keeps what
its finished rounds wrote, summary and plots included, and its last line names a command that goes on
from there (see `codream.cli.hints`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import statistics
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..build import PrivacyPlan, Run, build_aggregator, resolve_device, round_record
from ..exceptions import CodreamError, ConfigError, PrivacyBudgetExceeded
from ..federation.server import CLASS_WEIGHTS_FILE
from ..rundir import LEDGER as LEDGER_FILE
from ..rundir import RunDir, to_jsonable
from .config import (
    RUN_OPTIONS,
    RunConfig,
    dump_toml,
    load_toml,
    resolve_run_config,
    run_options,
)

# PrivacyPlan, build_aggregator, resolve_device and round_record live in codream.build (the library's
# one builder); they are named here too for callers of the command's module.
__all__ = [
    "PrivacyPlan",
    "RunOutcome",
    "build_aggregator",
    "execute_run",
    "resolve_device",
    "round_record",
    "run_command",
]

log = logging.getLogger(__name__)

# Flags that may differ from the saved configuration when resuming: they change neither the numbers
# nor the randomness of the rounds already run (`rounds` only extends the run).
# `dropout` only simulates failures in the rounds still to run; each round's record keeps the value it ran
# with, so a seeded dropout that aborts a round can be lowered for the rest.
# `baselines` are trained after the rounds, apart from them.
RESUMABLE_CHANGES = frozenset({"rounds", "dropout", "device", "json", "out", "baselines"})

# Where the lines a run prints are logged (to its run.log only; they are on the console already).
CONSOLE_LOGGER = "codream.console"


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What `execute_run` leaves: the run directory, its summary and the per-round records."""

    run_dir: RunDir
    summary: dict[str, Any]
    records: list[dict[str, Any]]


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


def execute_run(
    rc: RunConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    federation_factory: Callable[[Any, Any], Any] | None = None,
) -> RunOutcome:
    """Run (or resume) the federation `rc` describes and write its run directory.

    The run itself is the library's `codream.build.Run`; this adds the run directory: the checkpoint
    and metrics line after every round, the ledger, and the summary, plots and baselines at the end.

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
    state = None
    if resume:
        rd = RunDir.open(run_dir if run_dir is not None else rc.out)
        state = rd.load_checkpoint()
    if rc.engine == "flower":
        return _execute_flower(rc, run_dir=run_dir, echo=echo, resume=resume)
    # Built before the run directory exists: a bad model name or a missing data folder leaves nothing.
    run = Run(rc, state=state, federation_factory=federation_factory)
    privacy, device = run.privacy, run.device
    fed_cfg = run.federation_config

    if resume:
        done = run.rounds_done
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
    if privacy.enabled:  # values computed from private data outside the guarantee: client_private.jsonl
        rd.withhold(privacy.granularity)
    if hasattr(run.aggregator, "attach"):
        run.aggregator.attach(rd.path)  # each client's own ledger file, merged with what a crash left there
    # The class weights are released once per run: kept the moment they arrive, adopted on resume.
    server = getattr(run.federation, "server", None)
    if server is not None:
        server.persist_release(rd.path / CLASS_WEIGHTS_FILE)
    if privacy.ledger is not None:
        rd.write_json(LEDGER_FILE, privacy.ledger.to_dict())  # matches the checkpoint, even after a crash
    if privacy.enabled:
        echo(privacy.describe())

    # The rounds on disk: a round whose checkpoint could not be written is not one of them.
    records = rd.read_metrics()
    run.records[:] = records
    dreams = run.last_dreams
    bars = _Progress(rc.rounds, done, progress)
    failure: CodreamError | None = None
    try:
        while run.rounds_done < rc.rounds:
            record = run.run_round(progress=bars.step)
            # The checkpoint first: a round counts as finished once its state is on disk.
            rd.save_checkpoint(run.state_dict())
            rd.append_metrics(record)
            records.append(record)
            dreams = run.last_dreams
            bars.end_round(report_line(record, rc.rounds), stream)
    except CodreamError as exc:
        # Budget refused, or too few survivors: keep what the finished rounds earned, then say why.
        failure = exc
    finally:
        bars.close()

    try:
        baselines = _baselines(run, echo) if records else {}
        outcome = _finish(
            rc,
            rd,
            records,
            privacy,
            device=device,
            dreams=dreams if records else None,
            baselines=baselines,
        )
    except CodreamError:
        if failure is not None:  # say what stopped the run, not a later echo of it (a disk still full)
            raise failure from None
        raise
    if failure is not None:
        raise failure
    return outcome


def _baselines(run: Run, echo: Callable[[str], None]) -> dict[str, Any]:
    """The run's baselines, on its partitions and budget (none for an engine without data, a stand-in)."""
    if not run.config.baselines or getattr(run.federation, "dataset", None) is None:
        return {}
    results = run.baselines()
    for name, res in results.items():
        echo(_baseline_line(name, res))
    return results


def _baseline_line(name: str, res: Any) -> str:
    label = BASELINE_LABELS.get(name, name)
    return f"baseline {label}: final accuracy {100 * res.mean:.1f} ± {100 * res.std:.1f}%"


#: How the baselines are named in lines, plots and summaries.
BASELINE_LABELS = {"local": "local-only", "fedavg": "FedAvg", "centralized": "centralized"}


def _config_toml(rc: RunConfig) -> str:
    """config.toml: every setting but the run directory, so `--config RUN_DIR/config.toml` runs anew."""
    return dump_toml({k: v for k, v in rc.to_dict().items() if k != "out"})


def _finish(
    rc: RunConfig,
    rd: RunDir,
    records: list[dict[str, Any]],
    privacy: PrivacyPlan,
    *,
    device: str,
    dreams: tuple[Any, Any] | None,
    extra: Mapping[str, Any] | None = None,
    baselines: Mapping[str, Any] | None = None,
) -> RunOutcome:
    """Write the final dreams, the plots (with the baselines) and summary.json / summary.md."""
    from .. import plots, report
    from ..data import class_names

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
    if rd.granularity is not None:
        files["client_private"] = rd.private_path.name
        files["readme"] = "README.md"
    models = list(rc.client_models)
    if dreams is not None:
        x, y = dreams
        rd.save_dreams(x, y)
        plots.plot_dreams(x, y, rd.plots_dir / "dreams.png", class_names=class_names(rc.dataset))
        files["dreams"] = "dreams.pt"
        files["dreams_plot"] = "plots/dreams.png"
    curves = {
        BASELINE_LABELS.get(name, name): [float(sum(h) / len(h)) for h in res.history]
        for name, res in (baselines or {}).items()
    }
    plots.plot_accuracy(
        records,
        rd.plots_dir / "accuracy.png",
        models=models,
        title=f"{rc.dataset}, {rc.clients} clients, {rc.aggregation}"
        + (" (accuracies outside the DP guarantee)" if rd.granularity == "client" else ""),
        baselines=curves,
    )
    if privacy.enabled:  # a run without DP spends no budget: no plot of it
        plots.plot_epsilon(
            records, rd.plots_dir / "epsilon.png", delta=privacy.delta, target=privacy.target_epsilon
        )
        files["epsilon_plot"] = "plots/epsilon.png"
    cfg = rc.to_dict() | {"client_models": models, "device": device}
    summary = report.summarise(cfg, records, privacy=privacy.summary(), files=files)
    if baselines:
        summary["baselines"] = {
            name: {
                "label": BASELINE_LABELS.get(name, name),
                "final_accuracy": list(res.final_accuracy),
                "final_accuracy_mean": res.mean,
                "final_accuracy_std": res.std,
                "accuracy_mean_per_round": curves[BASELINE_LABELS.get(name, name)],
                "steps_per_round": res.steps_per_round,
            }
            for name, res in baselines.items()
        }
    summary["engine"] = rc.engine
    summary["run_dir"] = str(rd.path)
    if extra:
        summary.update(extra)
    if rd.granularity is not None:
        from ..privacy.outputs import describe_outside

        summary["outside_guarantee"] = {
            "file": rd.private_path.name,
            "values": describe_outside(rd.granularity),
        }
    rd.write_json("summary.json", summary)
    rd.write_text("summary.md", report.summary_markdown(summary, records, rc.to_dict()))
    return RunOutcome(run_dir=rd, summary=summary, records=records)


def _execute_flower(
    rc: RunConfig, *, run_dir: str | Path | None, echo: Callable[[str], None], resume: bool = False
) -> RunOutcome:
    """The same run on a local Flower deployment (one SuperNode process per client).

    Its per-round metrics become the same metrics.jsonl records. The server keeps its state after
    every round and every node its own (RUN_DIR/flower/), so `resume` continues a stopped run from
    its last finished round. Under secure+dp every SuperNode gets the run's DP
    parameters in its own node config, draws its own noise and keeps its own ledger in
    RUN_DIR/client_ledgers/, from which the run's epsilon is read. The nodes hold the same validation
    split as the simulation and report their accuracy on it (not under secure+dp: measured by models
    trained on private data without noise, it stays on the nodes), so the best round is selected on it.
    """
    from ..build import import_plugins, run_baselines
    from ..devices import pin_threads

    try:
        from ..federation.flower.local import run_flower
        from ..federation.flower.settings import flower_federation_config
    except ImportError as exc:
        raise ConfigError(
            f"--engine flower needs the flwr package ({exc}); pip install codream[flower]"
        ) from None
    device = resolve_device(rc.device)
    import_plugins(rc)  # this process trains the baselines on the user's models and data too
    # What the Flower engine does not carry is refused before the run directory exists (so --out stays
    # free for the corrected command), never silently dropped.
    fed_cfg = flower_federation_config(rc, device=device, deployment=False)
    pin_threads(rc.threads)
    privacy = PrivacyPlan(rc, fed_cfg)
    build_aggregator(rc, privacy)  # refuses bad secure-aggregation options before anything starts
    node_options: dict[int, dict[str, object]] = {}
    if privacy.example:  # each node's own DP-SGD, calibrated to its own data size, in its node config
        from ..federation.parties import load_federation_data

        data = load_federation_data(fed_cfg)
        sizes = [len(part) for part in data.parts]
        node_options = {c: privacy.example_node_config(sizes[c]) for c in range(fed_cfg.num_clients)}
    import numpy as np

    out = run_dir if run_dir is not None else rc.out
    if out is None:
        out = Path("runs") / _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S")
    if resume:
        rd = RunDir.open(out)
        if not (rd.path / "flower" / "server_state.pt").exists():
            raise ConfigError(f"{rd.path} holds no finished Flower round to resume; start it again")
    else:
        rd = RunDir.create(out)
    rc = rc.replace(out=str(out))
    rd.write_config(_config_toml(rc), federation=to_jsonable(fed_cfg))
    if privacy.enabled:
        rd.withhold(privacy.granularity)
    echo(f"starting a Flower deployment with {rc.clients} SuperNodes (logs in {rd.path / 'flower' / 'logs'})")
    if privacy.example:
        zs = sorted({round(float(o["dp-sgd-noise-multiplier"]), 4) for o in node_options.values()})  # type: ignore[arg-type]
        echo(
            f"example-level DP: DP-SGD on every node, noise multiplier {', '.join(map(str, zs))} over "
            f"{privacy.dp_steps} planned steps, target epsilon {privacy.target_epsilon} at delta "
            f"{privacy.delta:g} (GroupNorm models)"
        )
    dp = None
    if privacy.enabled and not privacy.example:
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
        corrupt_fraction=rc.corrupt_fraction,
        malicious=rc.secagg_mode == "malicious",
        imports=rc.imports or (),
        resume=resume,
        dp=dp,
        ledger_dir=rd.path / "client_ledgers",
        node_options=node_options,
    )
    withheld = _NodeMetrics(rd.path / "flower" / "node_state", fed_cfg.num_clients)
    epsilons: dict[int, float] = {}
    if privacy.example:
        epsilons = withheld.example_ledger(rd, privacy, [int(r["round"]) for r in results.get("rounds", [])])
    elif privacy.enabled:
        epsilons = _flower_run_ledger(rd, privacy, rc.delta)
    if resume:  # the deployment's rounds are every finished round, the earlier ones included
        rd.truncate_metrics(0)
    records = []
    for raw in results.get("rounds", []):
        i = int(raw["round"])  # 0-based, counted over the whole run (a resumed run goes on from it)
        if privacy.enabled:  # the nodes kept what lies outside the guarantee; the operator holds it
            raw = withheld.merge(raw)
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
    baselines = run_baselines(fed_cfg, rc.baselines, device=device) if records and rc.baselines else {}
    for name, res in baselines.items():
        echo(_baseline_line(name, res))
    return _finish(
        rc,
        rd,
        records,
        privacy,
        device=device,
        dreams=dreams,
        extra={"deployment": deployment},
        baselines=baselines,
    )


class _NodeMetrics:
    """The values the nodes of a local Flower run kept to themselves under DP, for the operator.

    The server's round metrics lack them (the nodes never sent them); the operator of a local
    deployment holds every node's state-dir, so it rebuilds the simulation's whole record, whose
    values outside the guarantee then go to client_private.jsonl as in-process.
    """

    def __init__(self, state_dir: Path, num_clients: int) -> None:
        from ..federation.flower.engine import read_node_metrics

        self.by_client = {c: read_node_metrics(state_dir, c) for c in range(num_clients)}
        self.best = [0.0] * num_clients
        self.best_mean = 0.0

    def merge(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(raw)
        r = int(raw["round"])
        evaluated = [int(c) for c in raw.get("evaluated", ())]
        kept = [self.by_client.get(c, {}).get(r) for c in evaluated]
        if not evaluated or any(k is None for k in kept):
            return out
        accs = [float(k["accuracy"]) for k in kept if "accuracy" in k]
        if len(accs) == len(evaluated):
            for c, a in zip(evaluated, accs, strict=True):
                self.best[c] = max(self.best[c], a)
            mean = statistics.fmean(accs)
            self.best_mean = max(self.best_mean, mean)
            out.update(
                accuracies=accs,
                mean_accuracy=mean,
                std_accuracy=statistics.pstdev(accs),
                best_accuracies=list(self.best),
                best_mean_accuracy=self.best_mean,
            )
        for key in ("kd_loss", "ce_loss"):
            values = [float(k[key]) for k in kept if key in k]
            if len(values) == len(evaluated):
                out[key] = statistics.fmean(values)
        return out

    def example_ledger(self, rd: RunDir, privacy: PrivacyPlan, rounds: list[int]) -> dict[int, float]:
        """The run's example-level ledger from the epsilons the nodes recorded after each round they
        learned in (a node keeps its epsilon between its rounds); each round's largest epsilon."""
        from ..privacy.ledger import Granularity, PrivacyLedger

        ledger = PrivacyLedger(
            delta=privacy.delta,
            target_epsilon=privacy.target_epsilon,
            granularity=Granularity.EXAMPLE,
            accountant="prv",
            path=rd.ledger_path,
        )
        out: dict[int, float] = {}
        for r in sorted(rounds):
            after = {
                c: max((float(k["epsilon"]) for q, k in rs.items() if q <= r and "epsilon" in k), default=0.0)
                for c, rs in self.by_client.items()
            }
            ledger.record_client_epsilons(round_index=r, client_epsilons=after)
            out[r] = max(after.values(), default=0.0)
        privacy.ledger = ledger
        return out


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
        # Written before the validation split existed: that run's clients hold all the training data.
        saved.setdefault("validation", 0.0)
        changed = sorted(
            k
            for k in _typed_flags(ctx) - RESUMABLE_CHANGES
            if _differs(saved, k, params["as_json" if k == "json" else k])
        )
        if changed:
            raise ConfigError(
                f"--resume cannot change {', '.join('--' + k.replace('_', '-') for k in changed)} "
                "(the rounds already run used the saved values); "
                "only --rounds, --dropout, --device, --baselines and --json may change"
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
