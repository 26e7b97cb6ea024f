"""`codream bench`: the benchmarks, runnable from the command line, each with --json.

Each benchmark's logic lives in an importable module (`codream.bench.secagg`, `.federation`,
`.tradeoff`); the scripts under benchmarks/ and these commands both call it. A benchmark whose module
is not installed still shows in ``--help`` and says so in one line when run.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from ..exceptions import ConfigError

__all__ = ["BENCHMARKS", "bench_group"]

log = logging.getLogger(__name__)

# subcommand -> (module, click command attribute, one-line description)
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "secagg": (
        "codream.bench.secagg",
        "cli",
        "Cost of secure aggregation: time and bytes by clients, vector size, dropout; --scale: growth in n.",
    ),
    "federation": (
        "codream.bench.federation",
        "cli",
        "CoDream against its baselines: accuracy per partition and model mix.",
    ),
    "tradeoff": (
        "codream.bench.tradeoff",
        "cli",
        "What privacy costs: accuracy and time per round against epsilon.",
    ),
}


def _missing_command(name: str, module: str, help_text: str, reason: str) -> click.Command:
    @click.command(
        name,
        help=f"{help_text} (unavailable here: {reason})",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.option("--json", "as_json", is_flag=True, help="Results as JSON.")
    def missing(as_json: bool) -> None:
        raise ConfigError(f"codream bench {name} is not available in this installation ({module}: {reason})")

    return missing


class BenchGroup(click.Group):
    """Mounts each benchmark's own click command on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(BENCHMARKS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in BENCHMARKS:
            return None
        module_name, attr, help_text = BENCHMARKS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _missing_command(cmd_name, module_name, help_text, "module not found")
            return _missing_command(cmd_name, module_name, help_text, f"needs {exc.name}")
        except Exception as exc:  # noqa: BLE001 - a broken benchmark must not break the group
            return _missing_command(cmd_name, module_name, help_text, f"{type(exc).__name__}: {exc}")
        cmd: Any = next(
            (
                c
                for a in (attr, "command", "main", cmd_name)
                if isinstance(c := getattr(module, a, None), click.Command)
            ),
            None,
        )
        if cmd is None and cmd_name == "federation" and hasattr(module, "federation_command"):
            cmd = module.federation_command("federation", default_out=None, prog="codream bench federation")
        if not isinstance(cmd, click.Command):
            return _missing_command(cmd_name, module_name, help_text, f"it has no click command {attr!r}")
        if cmd.name != cmd_name:
            cmd = _renamed(cmd, cmd_name)
        return cmd


def _renamed(cmd: click.Command, name: str) -> click.Command:
    import copy

    clone = copy.copy(cmd)
    clone.name = name
    return clone


@click.group("bench", cls=BenchGroup)
def bench_group() -> None:
    """Benchmarks: secure-aggregation cost, CoDream vs baselines, privacy/accuracy trade-off.

    Each prints a table, or JSON with --json; see benchmarks/results/ for recorded runs.
    """
