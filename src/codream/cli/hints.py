"""What `codream run` tells a user to do next when a run stops early: always a command that works.

A hint names one command in backticks, built from the run's own configuration and the state of its run
directory, so that it is accepted as written: ``--resume`` only where a run directory exists to
resume and the engine can resume, a fresh ``--out`` where the old one would be refused, and only
options `codream run` has.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from ..exceptions import AbortReason, CodreamError, PrivacyBudgetExceeded, ProtocolAbort
from ..runconfig import RUN_OPTIONS, CommaList, OptionalInt, RunConfig
from ..rundir import CONFIG, METRICS, RunDir, RunDirError

__all__ = [
    "again_command",
    "attach",
    "budget_message",
    "command_line",
    "failure_hint",
    "fresh_out",
    "interrupted_message",
]

_DEFAULTS = RunConfig()


def command_line(rc: RunConfig) -> str:
    """The `codream run` command that runs `rc` from the start: every setting that is not the default."""
    words = ["codream", "run"]
    for opt in RUN_OPTIONS:
        value = getattr(rc, opt.key)
        if value == getattr(_DEFAULTS, opt.key):
            continue
        if opt.is_flag:
            if value:
                words.append(opt.flag_name)
            continue
        if value is None:
            if not isinstance(opt.type, OptionalInt):
                continue  # only a library caller leaves these unset; the run's default applies
            value = "none"
        elif isinstance(opt.type, CommaList):
            value = ",".join(value) or "none"  # an empty list: no baselines
        words += [opt.flag_name, str(value)]
    return shlex.join(words)


def fresh_out(out: str | Path) -> Path:
    """A sibling of `out` that holds nothing yet: OUT-2, OUT-3, ..."""
    base = Path(out)
    n = 2
    while (candidate := base.with_name(f"{base.name}-{n}")).exists():
        n += 1
    return candidate


def _holds_run(out: Path) -> bool:
    return (out / CONFIG).is_file() or (out / METRICS).is_file()


def _finished_rounds(out: Path) -> int:
    try:
        return len(RunDir(out).read_metrics())
    except (OSError, ValueError):
        return 0


def again_command(rc: RunConfig) -> str:
    """How to run `rc` from the start: resume its run directory, or a new one beside it."""
    out = Path(rc.out) if rc.out is not None else None
    if out is None or not _holds_run(out):
        return command_line(rc)
    resumable = (out / "flower" / "server_state.pt").is_file() if rc.engine == "flower" else True
    if resumable and (out / CONFIG).is_file():
        return shlex.join(["codream", "run", "--resume", str(out)])
    return shlex.join(["codream", "run", "--config", str(out / CONFIG), "--out", str(fresh_out(out))])


def interrupted_message(rc: RunConfig) -> str:
    """The line printed when Ctrl-C, SIGTERM or SIGHUP stopped the run."""
    out = Path(rc.out) if rc.out is not None else None
    if out is None or not _holds_run(out):
        return (
            f"interrupted before the run started (nothing was written); run it again with "
            f"`{command_line(rc)}`"
        )
    if rc.engine == "flower" and not (out / "flower" / "server_state.pt").is_file():
        return (
            f"interrupted before the deployment finished a round, so there is nothing to resume: start it "
            f"again with `{again_command(rc)}`"
        )
    return f"interrupted; continue with `{again_command(rc)}`"


def failure_hint(exc: CodreamError, rc: RunConfig) -> str | None:
    """What to do after `exc` stopped the run `rc`, or None to keep the error's own hint."""
    out = Path(rc.out) if rc.out is not None else None
    if out is None or not _holds_run(out):
        return None
    done = _finished_rounds(out)
    saved = _saved(done, out)
    if isinstance(exc, ProtocolAbort) and exc.reason is AbortReason.TOO_FEW_PEERS:
        parts = [f"too few clients survived round {done + 1}; {saved}"]
        if rc.engine == "simulation" and rc.dropout > 0:
            parts.append(
                "the simulated dropouts are seeded, so a resumed round loses the same clients: continue "
                f"with fewer, e.g. `codream run --resume {out} --dropout 0`, or start anew with a lower "
                "--threshold or more --clients"
            )
        else:
            parts.append(f"start anew with a lower --threshold or more --clients: `{_anew(rc, out)}`")
        return "; ".join(parts)
    if isinstance(exc, PrivacyBudgetExceeded):
        return (
            f"{saved}; a resumed run keeps the budget and noise it was planned with, so plan the rounds "
            f"from the start: `{_anew(rc, out)}`"
        )
    if isinstance(exc, RunDirError):
        return f"{saved}; make room or fix the folder, then continue with `{again_command(rc)}`"
    return None


def _saved(done: int, out: Path) -> str:
    if done == 0:
        return "no round finished"
    return f"round 1 is saved in {out}" if done == 1 else f"rounds 1-{done} are saved in {out}"


def _anew(rc: RunConfig, out: Path) -> str:
    words = ["codream", "run", "--config", str(out / CONFIG), "--rounds", str(rc.rounds)]
    return shlex.join([*words, "--out", str(fresh_out(out))])


def budget_message(exc: PrivacyBudgetExceeded, round_number: int) -> str:
    """The refusal, its round counted from 1 as the run's lines count, without its advice.

    The ledger (the run's, or a client's own, whose refusal names the client) names a round by the
    0-based index the loop gave it and may end with advice for library callers (an overspending
    switch the CLI does not have); `failure_hint` says what the CLI offers.
    """
    text = re.sub(r"^(client \d+: )?round \d+ ", rf"\g<1>round {round_number} ", str(exc))
    cut = text.find(" Stop here")
    return text[:cut] if cut >= 0 else text


def attach(exc: CodreamError, hint: str | None) -> Any:
    """Give `exc` the hint the CLI prints after its message (see codream.cli._hint)."""
    if hint is not None:
        exc.hint = hint  # type: ignore[attr-defined]
    return exc
