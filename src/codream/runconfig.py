"""The run configuration: one table of settings, one TOML format, for the library, `codream run`, the
benchmarks and the Flower deployment's app command (`codream.federation.flower.settings`).

A `RunConfig` is everything a run is asked to do. It is read from a TOML file (`RunConfig.from_toml`),
from keyword arguments or a mapping (`RunConfig.from_dict`), or typed on the command line; every way
goes through the same option table (`RUN_OPTIONS`) and the same type checks, so a bad value reads the
same wherever it was written and a run directory's config.toml repeats its run exactly.

Keys are the `codream run` flags with ``_`` for ``-``. Two tables reach every other setting of the
learning loop: ``[dream]`` (fields of `DreamConfig`) and ``[distill]`` (fields of `DistillConfig`), for
the fields that no top-level key sets (``[dream] w_tv = 1e-4``, ``[distill] student = "cnn"``).

`federation_config` maps a `RunConfig` onto the learning loop's `FederationConfig`; the aggregator's
options come from `aggregator_options`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .exceptions import ConfigError

__all__ = [
    "AGGREGATIONS",
    "BASELINES",
    "MAX_SEED",
    "RUN_OPTIONS",
    "SECAGG_MODES",
    "RunConfig",
    "RunOption",
    "aggregator_options",
    "coerce_settings",
    "dump_toml",
    "federation_config",
    "load_toml",
]

AGGREGATIONS = ("plain", "secure", "secure+dp")
SECAGG_MODES = ("semi-honest", "malicious")

#: The baselines a run can train beside CoDream, on the same partitions (see `codream.baselines`).
BASELINES = ("local", "fedavg", "centralized")

#: The learning-loop tables a config may hold, beside the top-level keys.
TABLES = ("dream", "distill")

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
    RunOption(
        "validation",
        click.FloatRange(min=0, max=1, max_open=True),
        0.1,
        "Fraction of the training data held out (seeded, per class) as the validation split: the best "
        "round is selected on it, and the test set is only reported (0: none).",
    ),
    RunOption("clients", click.IntRange(min=1), 4, "Number of clients."),
    RunOption(
        "imports",
        CommaList(),
        None,
        "Python modules (names, or paths of .py files) imported before the run is built: they register "
        "your own models and data sets (codream.register_model / register_dataset) for --models and "
        "--dataset to name.",
    ),
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
        "baselines",
        CommaList(),
        ("local",),
        "Baselines trained beside the run on the same partitions and budget, drawn in its accuracy plot: "
        "local (each client alone), fedavg (one shared model), centralized, or none.",
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
    """Everything a run is asked to do: defaults, then a config file, then flags or keywords.

    ``None`` means "the learning loop's own default" for the learning settings, and "not set" for the
    privacy targets. Validation here covers how settings relate to each other; names of models and
    data sets are checked by the registries that own them (`codream.register_model`,
    `codream.register_dataset`) when the run is built. ``dream`` and ``distill`` hold learning-loop
    fields that no top-level key sets.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    limit_test: int | None = None
    validation: float = 0.1
    clients: int = 4
    imports: tuple[str, ...] | None = None
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
    baselines: tuple[str, ...] = ("local",)
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
    dream: Mapping[str, Any] = field(default_factory=dict)
    distill: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("models", "baselines", "imports"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                value = value.split(",")
            object.__setattr__(self, name, tuple(str(v).strip() for v in value))
        baselines = () if self.baselines == ("none",) else self.baselines
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(
                f"--baselines {','.join(unknown)}: unknown; choose from {', '.join(BASELINES)} or none"
            )
        object.__setattr__(self, "baselines", baselines)
        if "fedavg" in baselines and len(set(self.models)) > 1:
            raise ConfigError(
                f"--baselines fedavg needs one shared architecture, --models has {len(set(self.models))} "
                f"({','.join(dict.fromkeys(self.models))}); drop fedavg or give one model"
            )
        for table in TABLES:
            object.__setattr__(self, table, _check_table(table, getattr(self, table)))
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
        """Plain values (lists, no tuples), ``None`` and empty tables left out: what the TOML file holds.

        No baselines are written as ``["none"]``: a file without the key would get the default ones.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in TABLES and not value):
                continue
            if f.name == "baselines" and not value:
                value = ("none",)
            out[f.name] = (
                dict(value) if f.name in TABLES else list(value) if isinstance(value, tuple) else value
            )
        return out

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with `changes` (checked like keys of a config file)."""
        return dataclasses.replace(self, **coerce_settings(changes, source="replace()"))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """A `RunConfig` from keys as a config file holds them (``-`` or ``_``), the rest defaults.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or settings that contradict each
                other; the message names `source`.
        """
        return cls(**coerce_settings(values, source=source))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> RunConfig:
        """Read a config file (a run directory's config.toml too); `overrides` win over its keys.

        Raises:
            ConfigError: a missing or malformed file, or any error of `from_dict`.
        """
        values = {_option_key(k): v for k, v in load_toml(path).items()}
        values.update({_option_key(k): v for k, v in overrides.items()})
        return cls.from_dict(values, source=str(path))

    def to_toml(self) -> str:
        """The TOML text `from_toml` reads back into this configuration."""
        return dump_toml(self.to_dict())


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


def _check_table(table: str, values: Any) -> dict[str, Any]:
    """A ``[dream]`` / ``[distill]`` table: known fields of the learning loop's dataclass, no flagged ones."""
    from .federation.config import DistillConfig, DreamConfig

    if not isinstance(values, Mapping):
        raise ConfigError(f"[{table}] must be a table of settings, got {type(values).__name__}")
    cls = DreamConfig if table == "dream" else DistillConfig
    names = {f.name for f in dataclasses.fields(cls)}
    flagged = {fld: key for key, (tbl, fld) in _FLAGGED.items() if tbl == table}
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _option_key(str(raw_key))
        if key in flagged:
            raise ConfigError(f"[{table}] {key}: set it with the top-level key {flagged[key]!r}")
        if key not in names:
            raise ConfigError(
                f"[{table}] {key}: not a {cls.__name__} field; valid: "
                f"{', '.join(sorted(names - set(flagged)))}"
            )
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def coerce_settings(values: Mapping[str, Any], *, source: str = "config") -> dict[str, Any]:
    """Check and convert run settings as a config file holds them, through each option's own type.

    A float where a count belongs, true/false for a number, a list or table for a single value are
    refused, never truncated or guessed. Keys may use ``-`` or ``_``.

    Raises:
        ConfigError: an unknown key or a bad value, naming `source` and the key.
    """
    unknown = sorted(
        str(k) for k in values if _option_key(str(k)) not in _BY_KEY and _option_key(str(k)) not in TABLES
    )
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys are the run flags: "
            f"{', '.join(sorted(_BY_KEY))}, and the tables [{'], ['.join(TABLES)}]"
        )
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = _option_key(str(raw_key))
        if key in TABLES:
            out[key] = value  # checked by RunConfig against the learning loop's fields
            continue
        out[key] = _coerce(key, value, source)
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    opt = _BY_KEY[key]
    if opt.is_flag:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key {key!r} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, dict):
        raise ConfigError(f"{source}: key {key!r} must be a single value, got a table")
    if isinstance(value, list | tuple) and not isinstance(opt.type, CommaList):
        raise ConfigError(f"{source}: key {key!r} must be a single value, got a list")
    if isinstance(value, bool) and opt.type is not bool:
        raise ConfigError(f"{source}: key {key!r} must not be true/false, got {value!r}")
    if isinstance(value, float) and _wants_int(opt.type):
        # click would truncate 2.5 to 2; a float where a count belongs is a mistake, not a request.
        raise ConfigError(f"{source}: key {key!r} must be an integer, got {value!r}")
    try:
        return click.types.convert_type(opt.type).convert(value, None, None)
    except click.BadParameter as exc:
        raise ConfigError(f"{source}: key {key!r}: {exc.format_message()}") from None


def _wants_int(kind: Any) -> bool:
    return kind is int or isinstance(kind, click.types.IntParamType | OptionalInt)


def dump_toml(values: Mapping[str, Any]) -> str:
    """Write a mapping of scalars and lists, and tables of them, as TOML (tomllib reads only)."""
    lines = [
        f"{key} = {_toml_value(value)}" for key, value in values.items() if not isinstance(value, Mapping)
    ]
    for key, table in values.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
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
    if hasattr(value, "value") and isinstance(value.value, str):  # an enum of the learning loop
        return _toml_value(value.value)
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} as TOML")


# --- mapping onto the learning loop's dataclasses ------------------------------------------------------


# The learning-loop fields the top-level keys set: key -> (table, field). A [dream]/[distill] table
# may not set them again.
_FLAGGED: dict[str, tuple[str, str]] = {
    "dream_batch": ("dream", "batch_size"),
    "global_steps": ("dream", "global_steps"),
    "local_steps": ("dream", "local_steps"),
    "dream_lr": ("dream", "lr"),
    "kd_steps": ("distill", "kd_steps"),
    "kd_temperature": ("distill", "temperature"),
    "kd_batch": ("distill", "batch_size"),
    "warmup_steps": ("distill", "warmup_steps"),
    "kd_lr": ("distill", "lr"),
    "ce_ratio": ("distill", "ce_ratio"),
    "bank_size": ("distill", "bank_size"),
}


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
    from .federation.config import DistillConfig, DreamConfig, FederationConfig

    dream = _set_fields(
        DreamConfig,
        _table_config(DreamConfig, rc.dream),
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
        _table_config(DistillConfig, rc.distill),
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
        "validation": rc.validation,
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


def _table_config(cls: type, table: Mapping[str, Any]) -> Any:
    """The learning loop's dataclass with a config table's fields; its own checks name a bad value."""
    try:
        return cls(**table)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None


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
