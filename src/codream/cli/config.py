"""`codream run`'s flags: one click option per entry of the library's run-option table.

The table, the `RunConfig` and the TOML format live in `codream.runconfig`, so that a config file, the
command line and `codream.build_run(**settings)` accept the same keys with the same checks. Values come,
in rising priority, from the defaults, the file, then the command line. The resolved `RunConfig` is
written to the run directory as TOML, so ``codream run --config RUN_DIR/config.toml`` repeats a run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click
from click.core import ParameterSource

from ..runconfig import (
    _BY_KEY,
    AGGREGATIONS,
    MAX_SEED,
    RUN_OPTIONS,
    SECAGG_MODES,
    RunConfig,
    RunOption,
    aggregator_options,
    coerce_settings,
    dump_toml,
    federation_config,
    load_toml,
)

__all__ = [
    "AGGREGATIONS",
    "MAX_SEED",
    "RUN_OPTIONS",
    "SECAGG_MODES",
    "RunConfig",
    "RunOption",
    "aggregator_options",
    "dump_toml",
    "federation_config",
    "load_toml",
    "resolve_run_config",
    "run_options",
]

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
    for key, value in coerce_settings(file_values or {}, source=file_label).items():
        pname = "as_json" if key == "json" else key
        if key in _BY_KEY and ctx.get_parameter_source(pname) is ParameterSource.COMMANDLINE:
            continue  # the flag wins over the file
        values[key] = value
    return RunConfig(**values)
