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
        "Cost of secure aggregation: time and bytes by clients, vector size, dropout.",
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
        if cmd is None and cmd_name == "federation" and hasattr(module, "run_benchmark"):
            cmd = _federation_command(module)
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


def _federation_command(module: Any) -> click.Command:
    """`codream bench federation` over `codream.bench.federation.run_benchmark`, as the script has it."""

    def _alpha(text: str) -> float | None:
        return None if text.strip().lower() in ("iid", "inf", "none") else float(text)

    def _names(text: str) -> list[str]:
        return [m.strip() for m in text.split(",") if m.strip()]

    @click.command("federation", help=BENCHMARKS["federation"][2])
    @click.option("--size", type=click.Choice(sorted(module.SIZES)), default="cpu", show_default=True)
    @click.option("--full", is_flag=True, help="Same as --size full (for a GPU).")
    @click.option("--dataset", default="fashion-mnist", show_default=True)
    @click.option("--data-dir", default=None, help="Folder of IDX files (default: the dataset's).")
    @click.option("--models", default="resnet8,cnn,vgg,mlp", show_default=True, help="One per client.")
    @click.option("--fedavg-model", default="cnn", show_default=True)
    @click.option("--alphas", default="0.1,iid", show_default=True, help="Dirichlet alphas; 'iid' for IID.")
    @click.option("--seeds", default=None, help="Comma-separated seeds (default: the size's).")
    @click.option("--methods", default=",".join(module.METHODS), show_default=True)
    @click.option("--rounds", type=int, default=None, help="Override the size's rounds.")
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--threads", type=int, default=1, show_default=True, help="torch CPU threads.")
    @click.option("--jobs", type=int, default=1, show_default=True, help="Worker processes.")
    @click.option("--out", default=None, help="Also write the markdown table here.")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
    def federation(size, full, dataset, data_dir, models, fedavg_model, alphas, seeds, methods, rounds,
                   device,
                   threads, jobs, out, as_json):  # fmt: skip
        import json
        import shlex
        import sys

        import torch

        from ..rundir import to_jsonable

        torch.set_num_threads(threads)
        results = module.run_benchmark(
            size="full" if full else size,
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
        command = "codream bench federation " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        text = module.write_markdown(results, out, command)
        click.echo(json.dumps(to_jsonable(results.to_dict()), indent=1) if as_json else text)

    return federation


@click.group("bench", cls=BenchGroup)
def bench_group() -> None:
    """Benchmarks: secure-aggregation cost, CoDream vs baselines, privacy/accuracy trade-off.

    Each prints a table, or JSON with --json; see benchmarks/results/ for recorded runs.
    """
