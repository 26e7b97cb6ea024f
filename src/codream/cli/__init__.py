"""The `codream` command: `run` a federation, `bench` the parts, `privacy` plans and reports.

Errors that come from bad input (codream's own exceptions) stop the command with one line on stderr
that says what is wrong and what would be right, and a non-zero exit status, never a traceback:

    2  invalid configuration (ConfigError), as for a click usage error
    3  missing or malformed data (DataError)
    4  privacy budget would be exceeded (PrivacyBudgetExceeded)
    5  the secure protocol aborted (ProtocolAbort)
    1  any other codream error

Subcommands import their heavy dependencies (torch, the protocol, Flower) only when they run, and a
subcommand whose module cannot be imported is left out of ``--help`` with a warning in the log instead
of breaking the whole command.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

import click

from .. import __version__
from ..exceptions import (
    AbortReason,
    CodreamError,
    ConfigError,
    DataError,
    PrivacyBudgetExceeded,
    ProtocolAbort,
)

__all__ = ["CodreamGroup", "exit_code_for", "main"]

log = logging.getLogger("codream.cli")

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (DataError, 3),
    (PrivacyBudgetExceeded, 4),
    (ProtocolAbort, 5),
    (CodreamError, 1),
)

# name -> (module, attribute); loaded on first use so `codream --help` never pays for torch.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("codream.cli.run", "run_command"),
    "bench": ("codream.cli.bench", "bench_group"),
    "privacy": ("codream.cli.privacy", "privacy"),
}


def exit_code_for(exc: BaseException) -> int:
    """The exit status of the CLI for a codream exception (see the module docstring)."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


class CodreamClickException(click.ClickException):
    """A codream error shown as one line, with the exit status of its kind."""

    def __init__(self, exc: CodreamError) -> None:
        super().__init__(str(exc) + _hint(exc))
        self.exit_code = exit_code_for(exc)


def _hint(exc: CodreamError) -> str:
    """What would be right, for errors whose own message states only what went wrong.

    A command that knows more (`codream run` knows its run directory) attaches its own as ``exc.hint``.
    """
    own = getattr(exc, "hint", None)
    if own:
        return f" ({own})"
    if isinstance(exc, ProtocolAbort) and exc.reason is AbortReason.TOO_FEW_PEERS:
        return " (too few clients survived the round; lower --dropout or --threshold, or add --clients)"
    if isinstance(exc, ProtocolAbort):
        return " (the secure-aggregation protocol aborted; see protocols/secagg.md for the abort reasons)"
    return ""


class CodreamGroup(click.Group):
    """A click group that loads subcommands lazily and turns codream errors into one-line exits."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n in self.lazy if self._load(n) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy:
            cmd = self._load(cmd_name)
        return cmd

    def _load(self, name: str) -> click.Command | None:
        module_name, attr = self.lazy[name]
        try:
            module = importlib.import_module(module_name)
            cmd = getattr(module, attr)
        except Exception as exc:  # noqa: BLE001 - one broken subcommand must not break the others
            log.warning("codream %s is unavailable: %s: %s", name, type(exc).__name__, exc)
            return None
        if not isinstance(cmd, click.Command):
            log.warning("codream %s is unavailable: %s.%s is not a click command", name, module_name, attr)
            return None
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CodreamError as exc:
            raise CodreamClickException(exc) from None


# Libraries whose warnings are about their internals (opacus's accountants divide by zero on purpose at
# sample rate 1): they go to the log at INFO, so to a run's run.log and to the console with -v only.
QUIET_LIBRARIES = ("opacus",)


def _route_library_warnings() -> None:
    """Send warnings raised inside `QUIET_LIBRARIES` to the log instead of stderr (once per process)."""
    current = warnings.showwarning
    if getattr(current, "_codream", False):
        return

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        parts = Path(str(filename)).parts
        if any(lib in parts for lib in QUIET_LIBRARIES):
            logging.getLogger("codream.warnings").info(
                "%s:%s: %s: %s", filename, lineno, category.__name__, message
            )
            return
        current(message, category, filename, lineno, file, line)

    showwarning._codream = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "_codream", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler._codream = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # The console shows `level`; a run's log file may take more (see RunDir.logging_to).
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    _route_library_warnings()


@click.group(
    "codream", cls=CodreamGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, "--version", prog_name="codream")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug), on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors in the log.")
def main(verbose: int, quiet: bool) -> None:
    """codream: federated learning by co-optimised dreams, under secure aggregation and DP.

    Clients with different model architectures jointly optimise synthetic inputs ("dreams"), agree on
    soft labels for them and distil that knowledge into their own models. Every client vector is summed
    through plain, secure (secure aggregation) or secure+dp (plus distributed DP noise) aggregation.

    Start with `codream run` (a small federation, plain aggregation, on the embedded digits data).
    """
    _setup_logging(verbose, quiet)
