"""One table of run options: click flags, TOML config keys and the `RunConfig` dataclass.

Every `codream run` flag is also a key of a ``--config FILE.toml`` (the flag's name with ``_`` for
``-``). Values come, in rising priority, from the defaults, the file, then the command line, and all
three go through the same click type, so a bad value reads the same wherever it was written. The
resolved `RunConfig` is written to the run directory as TOML, so ``codream run --config
RUN_DIR/config.toml`` repeats a run exactly.

The mapping onto the learning loop's own dataclasses (`FederationConfig` and the aggregator's options)
lives here too, so that the CLI is the only place that knows flag names.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from ..exceptions import ConfigError

__all__ = [
    "AGGREGATIONS",
    "MAX_SEED",
    "SECAGG_MODES",
    "RUN_OPTIONS",
    "RunConfig",
    "RunOption",
    "aggregator_options",
    "dump_toml",
    "federation_config",
    "load_toml",
    "resolve_run_config",
    "run_options",
]

AGGREGATIONS = ("plain", "secure", "secure+dp")
SECAGG_MODES = ("semi-honest", "malicious")

#: The largest seed every seeded component accepts (numpy's legacy seeding, used by the digits split).
MAX_SEED = 2**32 - 1


class CommaList(click.ParamType):
    """A comma-separated list of names on the command line, or a TOML array of strings."""

    name = "list"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, ...]:
        if isinstance(value, tuple):
            items = list(value)
        elif isinstance(value, list):
            items = value
        elif isinstance(value, str):
            items = value.split(",")
        else:
            self.fail(f"expected a comma-separated list of names, got {value!r}", param, ctx)
        names = tuple(str(v).strip() for v in items)
        if not names or any(not n for n in names):
            self.fail(f"expected a comma-separated list of names, got {value!r}", param, ctx)
        return names


class OptionalInt(click.ParamType):
    """An integer, or ``none``/``all`` for "no limit" (TOML has no null)."""

    name = "integer|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.lower() in {"none", "all", ""}):
            return None
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            self.fail(f"{value!r} is not an integer", param, ctx)
        try:
            return int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not an integer (or 'none')", param, ctx)


@dataclass(frozen=True, slots=True)
class RunOption:
    """One option of `codream run`: its flag, config key, type, default and help."""

    key: str
    type: Any
    default: Any
    help: str
    flag: str | None = None  # defaults to --key with dashes
    short: str | None = None
    is_flag: bool = False

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + self.key.replace("_", "-")


# The defaults make `codream run` alone a small, useful federation on the embedded digits data.
RUN_OPTIONS: tuple[RunOption, ...] = (
    RunOption("dataset", str, "digits", "Data set: digits (embedded), fashion-mnist, mnist or idx."),
    RunOption(
        "data_dir",
        click.Path(file_okay=False),
        None,
        "Folder with the IDX files (fashion-mnist/mnist/idx); default /usr/share/datasets/fashion-mnist.",
    ),
    RunOption(
        "limit_test", OptionalInt(), None, "Evaluate on only this many test examples (all by default)."
    ),
    RunOption("clients", click.IntRange(min=1), 4, "Number of clients."),
    RunOption(
        "clients_per_round",
        OptionalInt(),
        None,
        "Cohort sampled (seeded) from the clients every round (default: every client, every round).",
    ),
    RunOption(
        "partition",
        click.Choice(["iid", "dirichlet"]),
        "iid",
        "How the training data is split: iid, or dirichlet over class priors (see --alpha).",
    ),
    RunOption(
        "alpha",
        click.FloatRange(min=0, min_open=True),
        0.5,
        "Dirichlet concentration for --partition dirichlet (smaller is more skewed).",
    ),
    RunOption(
        "samples_per_client",
        OptionalInt(),
        None,
        "Training examples per client (default: the data split evenly).",
    ),
    RunOption(
        "models",
        CommaList(),
        ("cnn", "mlp"),
        "Client models, comma-separated, repeated in turn when shorter than --clients "
        "(cnn,mlp for 4 clients: cnn,mlp,cnn,mlp).",
    ),
    RunOption(
        "method",
        click.Choice(["conditional", "paper"]),
        None,
        "CoDream variant: conditional (class-targeted dreams) or paper.",
    ),
    RunOption("rounds", click.IntRange(min=1), 3, "Federation rounds."),
    RunOption(
        "warmup_steps",
        click.IntRange(min=0),
        60,
        "Local cross-entropy steps each client takes before the first round.",
    ),
    RunOption("dream_batch", click.IntRange(min=1), None, "Dreams per round."),
    RunOption(
        "global_steps",
        click.IntRange(min=1),
        20,
        "Global dream steps per round; each one is an aggregated release.",
    ),
    RunOption(
        "local_steps",
        click.IntRange(min=1),
        None,
        "Local dream steps a client takes per global step.",
    ),
    RunOption(
        "dream_lr",
        click.FloatRange(min=0, min_open=True),
        None,
        "Server's data-space learning rate for dreams.",
    ),
    RunOption("kd_steps", click.IntRange(min=0), 30, "Distillation steps per client per round."),
    RunOption(
        "bank_size",
        click.IntRange(min=0),
        0,
        "Released dreams the server keeps for clients that missed their rounds (with cohorts; 0: none).",
    ),
    RunOption(
        "kd_temperature",
        click.FloatRange(min=0, min_open=True),
        None,
        "Distillation temperature.",
    ),
    RunOption("kd_batch", click.IntRange(min=1), None, "Distillation batch size."),
    RunOption(
        "kd_lr",
        click.FloatRange(min=0, min_open=True),
        None,
        "Clients' learning rate for distillation and local steps.",
    ),
    RunOption(
        "ce_ratio",
        click.FloatRange(min=0),
        None,
        "Local cross-entropy steps per distillation step.",
    ),
    RunOption(
        "aggregation",
        click.Choice(AGGREGATIONS),
        "plain",
        "How client vectors are summed: plain, secure (secure aggregation against an honest-but-curious "
        "server: one that deviates from the protocol can unmask a client, see protocols/secagg.md) or "
        "secure+dp (plus each client's own DP noise).",
    ),
    RunOption(
        "privacy_unit",
        click.Choice(["client", "example"]),
        "client",
        "What DP protects: a client's whole data (with --aggregation secure+dp) or one training example "
        "(DP-SGD on every client, GroupNorm models; with plain or secure aggregation).",
    ),
    RunOption(
        "epsilon",
        click.FloatRange(min=0, min_open=True),
        None,
        "Privacy target (secure+dp, or --privacy-unit example); the noise multiplier is calibrated to it.",
    ),
    RunOption(
        "delta",
        click.FloatRange(min=0, max=1, min_open=True, max_open=True),
        1e-5,
        "Privacy delta (secure+dp, or --privacy-unit example).",
    ),
    RunOption(
        "noise_multiplier",
        click.FloatRange(min=0, min_open=True),
        None,
        "Noise multiplier instead of --epsilon (per round for secure+dp, per DP-SGD step for examples).",
    ),
    RunOption(
        "threshold",
        click.IntRange(min=1),
        None,
        "Secure-aggregation threshold t: clients needed to finish a round (default: a majority).",
    ),
    RunOption(
        "graph",
        click.Choice(["complete", "harary"]),
        "complete",
        "Secure-aggregation neighbour graph: complete (SecAgg) or harary (SecAgg+).",
    ),
    RunOption(
        "secagg_mode",
        click.Choice(SECAGG_MODES),
        "semi-honest",
        "Secure-aggregation threat model. semi-honest: the server follows the protocol (honest-but-"
        "curious; one that deviates can unmask a client). malicious: a server that deviates in any way "
        "(forged lists, per-client views, withheld or altered messages), colluding with up to "
        "--corrupt-fraction of the clients, still learns only the sum of the honest inputs; clients "
        "sign their keys and every unmask request, and a client that deals bad shares is excluded "
        "while the round finishes for the others. Costs a signature round per vector and a larger "
        "threshold (protocols/secagg.md §3).",
    ),
    RunOption(
        "corrupt_fraction",
        click.FloatRange(min=0, max=1, max_open=True),
        0.1,
        "Fraction of a round's clients that may collude with the server (secure aggregation): sizes the "
        "threshold, the fewest inputs a sum may hold and, with --secagg-mode malicious, the quorum.",
    ),
    RunOption(
        "dropout",
        click.FloatRange(min=0, max=1, max_open=True),
        0.0,
        "Probability that a client drops at a random protocol stage (seeded).",
    ),
    RunOption("device", click.Choice(["auto", "cpu", "cuda"]), "auto", "Where models run."),
    RunOption(
        "seed",
        click.IntRange(min=0, max=MAX_SEED),
        0,
        f"Seed for everything learned (data split, models, dreams, dropouts), 0 to {MAX_SEED}.",
    ),
    RunOption(
        "threads",
        OptionalInt(),
        1,
        "CPU threads of torch, numpy's BLAS and OpenMP ('none': each library's choice). Small models run "
        "fastest on one, many times faster than oversubscribed on a shared machine.",
    ),
    RunOption(
        "engine",
        click.Choice(["simulation", "flower"]),
        "simulation",
        "simulation (in process) or flower (Flower engine).",
    ),
    RunOption("out", click.Path(file_okay=False), None, "Run directory (default: runs/<timestamp>)."),
    RunOption(
        "json", bool, False, "Print the final summary as JSON on stdout instead of text.", is_flag=True
    ),
)

_BY_KEY = {o.key: o for o in RUN_OPTIONS}


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything `codream run` was asked to do, resolved from defaults, a config file and flags.

    ``None`` means "the learning loop's own default" for the learning settings, and "not set" for the
    privacy targets. Validation here covers what only the CLI knows (how settings relate to each other);
    names of models and data sets are checked by the code that owns their registries.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    limit_test: int | None = None
    clients: int = 4
    clients_per_round: int | None = None
    partition: str = "iid"
    alpha: float = 0.5
    samples_per_client: int | None = None
    models: tuple[str, ...] = ("cnn", "mlp")
    method: str | None = None
    rounds: int = 3
    warmup_steps: int | None = 60
    dream_batch: int | None = None
    global_steps: int | None = 20
    local_steps: int | None = None
    dream_lr: float | None = None
    kd_steps: int | None = 30
    bank_size: int = 0
    kd_temperature: float | None = None
    kd_batch: int | None = None
    kd_lr: float | None = None
    ce_ratio: float | None = None
    aggregation: str = "plain"
    privacy_unit: str = "client"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    threshold: int | None = None
    graph: str = "complete"
    secagg_mode: str = "semi-honest"
    corrupt_fraction: float = 0.1
    dropout: float = 0.0
    device: str = "auto"
    seed: int = 0
    threads: int | None = 1
    engine: str = "simulation"
    out: str | None = None
    json: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"--aggregation {self.aggregation!r} is unknown; choose one of {list(AGGREGATIONS)}"
            )
        if len(self.models) > self.clients:
            raise ConfigError(
                f"--models lists {len(self.models)} models for {self.clients} clients; "
                f"give at most {self.clients} comma-separated names (they repeat in turn)"
            )
        if self.threshold is not None and self.threshold > self.clients:
            raise ConfigError(
                f"--threshold {self.threshold} is above the number of clients ({self.clients}); "
                f"use a threshold between 1 and {self.clients}"
            )
        if self.threshold is not None and self.aggregation == "plain":
            raise ConfigError(
                "--threshold applies to secure aggregation; add --aggregation secure or secure+dp"
            )
        if self.secagg_mode not in SECAGG_MODES:
            raise ConfigError(
                f"--secagg-mode {self.secagg_mode!r} is unknown; choose one of {list(SECAGG_MODES)}"
            )
        if self.aggregation == "plain" and (
            self.secagg_mode != "semi-honest" or self.corrupt_fraction != 0.1
        ):
            raise ConfigError(
                "--secagg-mode and --corrupt-fraction apply to secure aggregation; add --aggregation secure "
                "or secure+dp"
            )
        if not 0.0 <= self.corrupt_fraction < 1.0:
            raise ConfigError(f"--corrupt-fraction must lie in [0, 1), got {self.corrupt_fraction}")
        if self.privacy_unit not in ("client", "example"):
            raise ConfigError(f"--privacy-unit {self.privacy_unit!r} is unknown; choose client or example")
        if self.privacy_unit == "example" and self.aggregation == "secure+dp":
            raise ConfigError(
                "--privacy-unit example trains with DP-SGD on every client; choose --aggregation plain or "
                "secure with it (secure+dp protects whole clients)"
            )
        if (
            self.aggregation != "secure+dp"
            and self.privacy_unit != "example"
            and (self.epsilon is not None or self.noise_multiplier is not None)
        ):
            raise ConfigError(
                "--epsilon/--noise-multiplier need --aggregation secure+dp or --privacy-unit example"
            )
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ConfigError(
                "give either --epsilon (a target to calibrate to) or --noise-multiplier, not both"
            )
        if self.dropout > 0 and self.aggregation == "plain":
            raise ConfigError(
                "--dropout simulates clients failing inside the secure protocol; "
                "add --aggregation secure or secure+dp"
            )
        if self.clients_per_round is not None and not (1 <= self.clients_per_round <= self.clients):
            raise ConfigError(
                f"--clients-per-round {self.clients_per_round} must be between 1 and --clients "
                f"({self.clients})"
            )
        if self.samples_per_client is not None and self.samples_per_client < 1:
            raise ConfigError(f"--samples-per-client must be at least 1, got {self.samples_per_client}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        if not math.isfinite(self.alpha):
            raise ConfigError("--alpha must be finite; use --partition iid for an even split")

    @property
    def client_models(self) -> tuple[str, ...]:
        """One model name per client."""
        return tuple(self.models[i % len(self.models)] for i in range(self.clients))

    @property
    def dirichlet_alpha(self) -> float | None:
        return None if self.partition == "iid" else self.alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, no tuples), ``None`` left out: what the TOML file holds."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


# Options left unset (None) take the learning loop's own default: (dataclass, field) where it lives.
_LOOP_DEFAULTS: dict[str, tuple[str, str]] = {
    "method": ("FederationConfig", "method"),
    "dream_batch": ("DreamConfig", "batch_size"),
    "local_steps": ("DreamConfig", "local_steps"),
    "dream_lr": ("DreamConfig", "lr"),
    "kd_temperature": ("DistillConfig", "temperature"),
    "kd_batch": ("DistillConfig", "batch_size"),
    "kd_lr": ("DistillConfig", "lr"),
    "ce_ratio": ("DistillConfig", "ce_ratio"),
}


def shown_default(key: str) -> str | None:
    """The default `codream run --help` shows for `key`: its own, or the learning loop's when unset."""
    import enum

    from ..federation import config as loop

    opt = _BY_KEY[key]
    value = opt.default
    if value is None and key in _LOOP_DEFAULTS:
        cls_name, field_name = _LOOP_DEFAULTS[key]
        value = getattr(getattr(loop, cls_name)(), field_name)
    if value is None:
        return None
    if isinstance(value, enum.Enum):
        value = value.value
    return ",".join(value) if isinstance(value, tuple) else str(value)


def run_options(command: Callable) -> Callable:
    """Decorate a click command with one option per `RUN_OPTIONS` entry (defaults stay in the table)."""
    for opt in reversed(RUN_OPTIONS):
        decls = [opt.flag_name] + ([opt.short] if opt.short else [])
        if opt.key == "json":
            decls.append("as_json")
        if opt.is_flag:
            command = click.option(*decls, is_flag=True, default=opt.default, help=opt.help)(command)
        else:
            shown = shown_default(opt.key)
            loop_default = opt.default is None and shown is not None
            command = click.option(
                *decls,
                type=opt.type,
                default=opt.default,
                # click shows a string default in parentheses, as a description; state the value instead
                help=f"{opt.help}  [default: {shown}]" if loop_default else opt.help,
                show_default=opt.default is not None,
            )(command)
    return command


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file; a missing or malformed file raises one clear `ConfigError`.

    Keys may sit at the top level or under a ``[run]`` table.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a folder; give a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text TOML") from None
    if set(data) == {"run"} and isinstance(data["run"], dict):
        data = data["run"]
    return data


def _option_key(key: str) -> str:
    return key.replace("-", "_")


def _convert(ctx: click.Context, key: str, value: Any, source: str) -> Any:
    opt = _BY_KEY[key]
    if opt.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r}")
        return value
    param = next(p for p in ctx.command.params if p.name == (key if key != "json" else "as_json"))
    if isinstance(value, dict):
        raise ConfigError(f"{source}: key {key!r} must be a single value, got a table")
    if isinstance(value, list) and not isinstance(opt.type, CommaList):
        raise ConfigError(f"{source}: key {key!r} must be a single value, got a list")
    if isinstance(value, bool) and opt.type is not bool:
        raise ConfigError(f"{source}: key {key!r} must not be true/false, got {value!r}")
    if isinstance(value, float) and _wants_int(opt.type):
        # click would truncate 2.5 to 2; a float where a count belongs is a mistake, not a request.
        raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise ConfigError(f"{source}: key {key!r}: {exc.format_message()}") from None


def _wants_int(kind: Any) -> bool:
    return kind is int or isinstance(kind, click.types.IntParamType | OptionalInt)


def resolve_run_config(
    ctx: click.Context,
    params: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    file_label: str = "config",
) -> RunConfig:
    """Merge defaults, a config file and command-line flags into a validated `RunConfig`.

    Args:
        ctx: the click context of the running command (tells which flags were typed).
        params: the command's parameter values as click passed them.
        file_values: keys read from a config file, or None.
        file_label: how to name the file in messages.
    Raises:
        ConfigError: unknown keys, values of the wrong type, or settings that contradict each other.
    """
    values: dict[str, Any] = {}
    for opt in RUN_OPTIONS:
        pname = "as_json" if opt.key == "json" else opt.key
        values[opt.key] = params[pname]
    if file_values:
        unknown = sorted(k for k in file_values if _option_key(k) not in _BY_KEY)
        if unknown:
            raise ConfigError(
                f"{file_label}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys are the run flags: {', '.join(sorted(_BY_KEY))}"
            )
        for raw_key, raw_value in file_values.items():
            key = _option_key(raw_key)
            pname = "as_json" if key == "json" else key
            if ctx.get_parameter_source(pname) is ParameterSource.COMMANDLINE:
                continue  # the flag wins over the file
            values[key] = _convert(ctx, key, raw_value, file_label)
    return RunConfig(**values)


def dump_toml(values: Mapping[str, Any]) -> str:
    """Write a flat mapping of scalars and lists as TOML (tomllib reads only)."""
    lines = []
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} as TOML")


# --- mapping onto the learning loop's dataclasses ------------------------------------------------------


def _set_fields(cls: type, base: Any, wanted: Mapping[str, Any]) -> Any:
    """`dataclasses.replace` with only the keys that `cls` has and that are not None."""
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {k: v for k, v in wanted.items() if k in names and v is not None}
    return dataclasses.replace(base, **changes) if changes else base


def federation_config(rc: RunConfig, *, device: str | None = None) -> Any:
    """Build the learning loop's `FederationConfig` from a `RunConfig`.

    Settings left at None keep the learning loop's defaults.

    Raises:
        ConfigError: a value the learning loop refuses.
    """
    from ..federation.config import DistillConfig, DreamConfig, FederationConfig

    dream = _set_fields(
        DreamConfig,
        DreamConfig(),
        {
            "batch_size": rc.dream_batch,
            "global_steps": rc.global_steps,
            "local_steps": rc.local_steps,
            "lr": rc.dream_lr,
        },
    )
    example_dp = rc.privacy_unit == "example"
    if example_dp:
        # DP-SGD needs per-example gradients: BatchNorm mixes examples (GroupNorm instead), and the
        # dream loss's BatchNorm term reads running statistics of private data.
        dream = dataclasses.replace(dream, w_bn=0.0)
    distill = _set_fields(
        DistillConfig,
        DistillConfig(),
        {
            "kd_steps": rc.kd_steps,
            "temperature": rc.kd_temperature,
            "batch_size": rc.kd_batch,
            "warmup_steps": rc.warmup_steps,
            "lr": rc.kd_lr,
            "ce_ratio": rc.ce_ratio,
        },
    )
    if rc.bank_size:
        # Every client's buffer must hold the whole bank it may acquire.
        distill = dataclasses.replace(
            distill, bank_size=rc.bank_size, buffer_size=max(distill.buffer_size, rc.bank_size)
        )
    base = FederationConfig()
    names = {f.name for f in dataclasses.fields(FederationConfig)}
    wanted: dict[str, Any] = {
        "dataset": rc.dataset,
        "data_dir": rc.data_dir,
        "num_clients": rc.clients,
        "clients_per_round": rc.clients_per_round,
        "alpha": rc.dirichlet_alpha,
        "samples_per_client": rc.samples_per_client,
        "models": rc.client_models,
        "rounds": rc.rounds,
        "seed": rc.seed,
        "device": device or rc.device,
        "method": rc.method,
        "limit_test": rc.limit_test,
        "norm": "group" if example_dp else None,
        "dream": dream,
        "distill": distill,
    }
    changes = {k: v for k, v in wanted.items() if k in names and (v is not None or k == "alpha")}
    try:
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None


def aggregator_options(rc: RunConfig) -> dict[str, Any]:
    """Keyword options for `create_aggregator(rc.aggregation, ...)` (privacy options added by run)."""
    if rc.aggregation == "plain":
        return {}
    opts: dict[str, Any] = {
        "threshold": rc.threshold,
        "graph": rc.graph,
        "dropout": rc.dropout,
        "seed": rc.seed,
        "malicious": rc.secagg_mode == "malicious",
        "corrupt_fraction": rc.corrupt_fraction,
    }
    return opts
