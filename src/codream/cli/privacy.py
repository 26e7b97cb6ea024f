"""`codream privacy`: plan a noise multiplier, compute epsilon, report a run's privacy budget.

    codream privacy plan --epsilon 8 --rounds 100 --participations 30 --releases-per-round 21
    codream privacy plan --epsilon 4 --granularity example --epochs 10 --batch-size 64 --data-size 1000
    codream privacy epsilon --noise-multiplier 1.0 --rounds 30
    codream privacy epsilon --release-noise-multiplier 4.6 --releases-per-round 21 --rounds 30
    codream privacy report RUN_DIR [--json] [--plot PNG]

Client-level DP is stated against the server, which knows every cohort: a client's epsilon composes
the rounds it takes part in, unamplified by sampling, with the integer noise's Renyi curve (RDP only).
A noise multiplier is always the round's (z_eff, one accounted event per round) unless its name says
per release. Every command takes --json for machine-readable output. Bad input stops with one line and a
non-zero exit status, never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from ..exceptions import ConfigError

__all__ = ["privacy"]

ACCOUNTANTS = ("rdp", "prv")
NOISE = ("integer", "gaussian")
NO_AMPLIFICATION = (
    "client-level DP against the server gets no amplification by sampling: the server knows every "
    "cohort (it runs secure aggregation with them). Plan over the rounds one client takes part in "
    "(--participations)"
)
_positive = click.FloatRange(min=0, min_open=True)
_probability = click.FloatRange(min=0, max=1, min_open=True, max_open=True)
_rate = click.FloatRange(min=0, max=1, min_open=True)


def _accountants(choice: str, noise: str = "gaussian") -> tuple[str, ...]:
    """The accountants to run; "both" drops PRV for integer noise, which only RDP can account."""
    if choice != "both":
        return (choice,)
    return ("rdp",) if noise == "integer" else ACCOUNTANTS


def _emit(as_json: bool, payload: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(payload, indent=2, allow_nan=False) if as_json else text)


@click.group("privacy")
def privacy() -> None:
    """Plan, check and report differential-privacy budgets.

    Client-level DP (secure+dp), against the server under the zero-out relation: each round a client
    takes part in is one unamplified event with the round's effective noise multiplier z_eff, whatever
    its number of releases. Example-level DP (DP-SGD on each client): one training example is the unit;
    each DP-SGD step is one Poisson-sampled event.
    """


@privacy.command("plan")
@click.option("--epsilon", "target", type=_positive, required=True, help="Target epsilon.")
@click.option("--delta", type=_probability, default=1e-5, show_default=True, help="Target delta.")
@click.option(
    "--granularity",
    type=click.Choice(["client", "example"]),
    default="client",
    show_default=True,
    help="client: secure+dp rounds; example: DP-SGD steps on one client.",
)
@click.option("--rounds", type=click.IntRange(min=1), help="client: federation rounds.")
@click.option(
    "--participations",
    type=click.IntRange(min=1),
    help="client: rounds one client takes part in at most [default: --rounds].",
)
@click.option(
    "--noise",
    type=click.Choice(NOISE),
    default="integer",
    show_default=True,
    help="client: the noise family (codream's distributed noise is integer: RDP only).",
)
@click.option("--sample-rate", type=_rate, hidden=True)
@click.option("--cohort", type=click.IntRange(min=1), hidden=True)
@click.option("--population", type=click.IntRange(min=1), hidden=True)
@click.option(
    "--releases-per-round",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="client: vectors released per round (dream steps + soft labels).",
)
@click.option("--local-steps", type=click.IntRange(min=1), help="example: DP-SGD steps over the whole run.")
@click.option("--epochs", type=_positive, help="example: passes over the data instead of --local-steps.")
@click.option("--batch-size", type=click.IntRange(min=1), help="example: expected Poisson batch size.")
@click.option("--data-size", type=click.IntRange(min=1), help="example: the client's number of examples.")
@click.option("--accountant", type=click.Choice([*ACCOUNTANTS, "both"]), default="rdp", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plan_command(
    target: float,
    delta: float,
    granularity: str,
    rounds: int | None,
    participations: int | None,
    noise: str,
    sample_rate: float | None,
    cohort: int | None,
    population: int | None,
    releases_per_round: int,
    local_steps: int | None,
    epochs: float | None,
    batch_size: int | None,
    data_size: int | None,
    accountant: str,
    as_json: bool,
) -> None:
    """The noise multiplier that meets a target (epsilon, delta) over a schedule."""
    from ..privacy.calibration import ClientLevelSchedule, ExampleLevelSchedule, plan_noise
    from ..privacy.ledger import RELATION

    schedule: ClientLevelSchedule | ExampleLevelSchedule
    try:
        if granularity == "client":
            if rounds is None:
                raise click.UsageError("client-level planning needs --rounds")
            if sample_rate is not None or cohort is not None or population is not None:
                raise click.UsageError(NO_AMPLIFICATION)
            if participations is not None and participations > rounds:
                raise click.BadParameter(
                    f"{participations} exceeds the {rounds} rounds", param_hint="--participations"
                )
            schedule = ClientLevelSchedule(
                rounds=participations or rounds, releases_per_round=releases_per_round, mechanism=noise
            )
        else:
            if batch_size is None or data_size is None or (local_steps is None) == (epochs is None):
                raise click.UsageError(
                    "example-level planning needs --batch-size, --data-size "
                    "and one of --local-steps or --epochs"
                )
            if epochs is not None:
                schedule = ExampleLevelSchedule.from_epochs(
                    epochs=epochs, batch_size=batch_size, data_size=data_size
                )
            else:
                schedule = ExampleLevelSchedule(
                    local_steps=local_steps, batch_size=batch_size, data_size=data_size
                )
        chosen = _accountants(accountant, noise if granularity == "client" else "gaussian")
        plans = [plan_noise(schedule, target_epsilon=target, delta=delta, accountant=a) for a in chosen]
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    payload = {
        "granularity": granularity,
        "target_epsilon": target,
        "delta": delta,
        "mechanism": schedule.mechanism.value,
        "sample_rate": schedule.sample_rate,
        "steps": schedule.steps,
        "releases_per_round": schedule.releases_per_round,
        "plans": [p.to_dict() for p in plans],
    }
    event = "round" if granularity == "client" else "DP-SGD step"
    if granularity == "client":
        lines = [
            f"client-level DP against the server ({RELATION}), target epsilon {target:g} at delta {delta:g}: "
            f"{schedule.steps} rounds one client takes part in, unamplified, {schedule.mechanism.value} noise"
        ]
    else:
        lines = [
            f"example-level DP, target epsilon {target:g} at delta {delta:g}: "
            f"{schedule.steps} events ({event}s) at sample rate {schedule.sample_rate:.6g}"
        ]
    for p in plans:
        line = f"  {p.accountant}: noise multiplier {p.noise_multiplier:.4f} per {event}"
        line += f" (epsilon {p.epsilon:.4f})"
        if granularity == "client" and releases_per_round > 1:
            line += f"; each of the {releases_per_round} releases uses {p.per_release_noise_multiplier:.4f}"
        lines.append(line)
    if "prv" not in chosen and accountant == "both":
        lines.append("  prv: not applicable to integer noise (only its Renyi curve is bounded)")
    _emit(as_json, payload, "\n".join(lines))


@privacy.command("epsilon")
@click.option(
    "--noise-multiplier",
    type=_positive,
    help="The round's noise multiplier z_eff (one accounted event per round), as codream run and "
    "codream privacy plan print it.",
)
@click.option(
    "--release-noise-multiplier",
    type=_positive,
    help="Instead: the noise multiplier of each of the --releases-per-round releases; the round's "
    "z_eff is this / sqrt(releases per round).",
)
@click.option(
    "--sample-rate",
    type=_rate,
    default=1.0,
    show_default=True,
    help="Poisson rate q of each event; below 1 only where the adversary cannot learn who took part.",
)
@click.option("--rounds", type=click.IntRange(min=1), required=True, help="Rounds (accounted events).")
@click.option(
    "--noise",
    type=click.Choice(NOISE),
    default="integer",
    show_default=True,
    help="integer: Skellam / discrete Gaussian (RDP only, general subsampling bound); gaussian.",
)
@click.option("--delta", type=_probability, default=1e-5, show_default=True)
@click.option(
    "--releases-per-round",
    type=click.IntRange(min=1),
    default=None,
    help="Vectors each round releases, all from the same cohort (with --release-noise-multiplier).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def epsilon_command(
    noise_multiplier: float | None,
    release_noise_multiplier: float | None,
    sample_rate: float,
    rounds: int,
    noise: str,
    delta: float,
    releases_per_round: int | None,
    as_json: bool,
) -> None:
    """Epsilon spent by a client-level schedule, from each accountant that applies to the noise.

    "Noise multiplier" means the round's, z_eff, here as everywhere in codream: the number `codream run`
    prints and `privacy plan` plans. A round's releases share one cohort and compose into that one
    event; give --release-noise-multiplier with --releases-per-round to start from each release's.
    """
    from ..privacy.analysis.composition import effective_noise_multiplier
    from ..privacy.calibration import epsilon_for

    if (noise_multiplier is None) == (release_noise_multiplier is None):
        raise click.UsageError("give one of --noise-multiplier (the round's) or --release-noise-multiplier")
    if noise_multiplier is not None and releases_per_round not in (None, 1):
        raise click.UsageError(
            "--noise-multiplier is the round's z_eff and already covers its releases; for the noise "
            "of each release give --release-noise-multiplier with --releases-per-round"
        )
    releases = releases_per_round or 1
    results: dict[str, float] = {}
    refused: dict[str, str] = {}
    try:
        if release_noise_multiplier is not None:
            z_eff = effective_noise_multiplier([release_noise_multiplier] * releases)
        else:
            z_eff = float(noise_multiplier)  # type: ignore[arg-type]
        for a in ACCOUNTANTS:
            try:
                results[a] = epsilon_for(
                    noise_multiplier=z_eff,
                    sample_rate=sample_rate,
                    steps=rounds,
                    delta=delta,
                    accountant=a,
                    mechanism=noise,
                )
            except ConfigError as exc:
                if a == "rdp":
                    raise
                refused[a] = str(exc)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    payload = {
        "noise_multiplier": z_eff,
        "release_noise_multiplier": release_noise_multiplier,
        "releases_per_round": releases,
        "effective_noise_multiplier": z_eff,
        "noise": noise,
        "sample_rate": sample_rate,
        "rounds": rounds,
        "delta": delta,
        "epsilon": {
            a: (results[a] if math.isfinite(results[a]) else None) if a in results else None
            for a in ACCOUNTANTS
        },
        "refused": refused,
    }
    if release_noise_multiplier is not None:
        head = (
            f"{rounds} rounds at sample rate {sample_rate:g}, {releases} releases of noise multiplier "
            f"{release_noise_multiplier:g} per round ({noise} noise) -> one event per round with "
            f"z_eff = {z_eff:.4f}"
        )
    else:
        head = (
            f"{rounds} rounds at sample rate {sample_rate:g}, round noise multiplier z_eff = {z_eff:.4f} "
            f"({noise} noise)"
        )
    lines = [
        head,
        *(f"  {a}: epsilon = {e:.4f} at delta = {delta:g}" for a, e in results.items()),
        *(f"  {a}: not applicable ({why})" for a, why in refused.items()),
    ]
    _emit(as_json, payload, "\n".join(lines))


@privacy.command("report")
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write [default: RUN_DIR/plots/privacy_budget.png].",
)
@click.option("--no-plot", is_flag=True, help="Do not write the PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report_command(run_dir: Path, plot_path: Path | None, no_plot: bool, as_json: bool) -> None:
    """Per-round privacy table, totals, accountant and granularity of a run, and a PNG of epsilon."""
    from ..privacy.report import load_budget_report, plot_budget

    try:
        report = load_budget_report(run_dir)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="RUN_DIR") from None
    payload = report.to_dict()
    text = report.to_text()
    if not no_plot:
        base = run_dir if run_dir.is_dir() else run_dir.parent
        target = plot_path or base / "plots" / "privacy_budget.png"
        try:
            png = plot_budget(report, target)
        except OSError as exc:  # a read-only run directory, a full disk
            raise click.ClickException(
                f"cannot write the plot {target}: {exc.strerror or exc}; write it elsewhere with --plot "
                f"PNG, or leave it out: `codream privacy report {run_dir} --no-plot`"
            ) from None
        payload["plot"] = str(png)
        text += f"\nplot: {png}"
    _emit(as_json, payload, text)
