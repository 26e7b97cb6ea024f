"""Deployed speed: the README federation on a Flower loopback deployment against the same federation
in process, round by round.

Both engines run the same round script (`codream.federation.round.RoundLoop`) on the same
`RunConfig`; the Flower engine also reports how many server-to-nodes exchanges a round took and the
seconds per exchange. Wall time, not CPU: what a deployment waits for is Flower's message delivery
(polling) and one fresh ClientApp process per message, not computation.

    python benchmarks/flower_speed.py --rounds 2 --output benchmarks/results/flower_speed.md

`FLWR_SUPEREXEC_TASK_POLL_INTERVAL` (Flower's SuperExec task polling, default 1 s) is passed on to
every Flower process when set.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click


def _in_process(rc, rounds: int) -> list[dict]:
    from codream.build import build_run

    run = build_run(rc)
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        record = run.run_round()
        out.append({"round": record["round"], "seconds": time.perf_counter() - t0})
    return out


def _flower(rc, rounds: int, step_timeout: float, workdir: Path) -> list[dict]:
    from codream.federation.flower.local import run_flower
    from codream.runconfig import federation_config

    results = run_flower(
        federation_config(rc, device="cpu"),
        aggregation=rc.aggregation,
        out_dir=workdir,
        rounds=rounds,
        graph=rc.graph,
        step_timeout=step_timeout,
        keep_logs=False,
    )
    if results.get("status") != "completed":
        raise click.ClickException(f"the Flower run did not complete: {results.get('status')!r}")
    out = []
    for raw in results["rounds"]:
        out.append(
            {
                "round": int(raw["round"]) + 1,
                "seconds": float(raw["seconds"]),
                "exchanges": raw.get("exchanges"),
                "seconds_per_exchange": raw.get("seconds_per_exchange"),
            }
        )
    return out


def _markdown(result: dict, command: str) -> str:
    sim, fl = result["in_process"], result["flower"]
    lines = [
        "# Deployed speed: Flower loopback against in process",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {result['machine']}; 1-minute load average at start {result['load']:.1f}. "
        f"Federation: the README's default run (`codream run --aggregation {result['aggregation']}`: "
        f"{result['clients']} clients, {result['releases']} releases per round), {len(sim)} rounds, "
        f"Flower {result['flwr']}, step timeout {result['step_timeout']:g} s, "
        f"FLWR_SUPEREXEC_TASK_POLL_INTERVAL={result['superexec_poll'] or 'unset (1 s)'}.",
        "",
        "| round | in process (s) | Flower (s) | Flower / in process | exchanges | s / exchange |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(sim, fl, strict=True):
        lines.append(
            f"| {a['round']} | {a['seconds']:.1f} | {b['seconds']:.1f} | "
            f"{b['seconds'] / a['seconds']:.0f}x | {b['exchanges']} | {b['seconds_per_exchange']:.2f} |"
        )
    lines += [
        "",
        f"Median ratio: {result['median_ratio']:.0f}x.",
        "",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1))
@click.option("--aggregation", default="secure", show_default=True)
@click.option(
    "--step-timeout", default=120.0, show_default=True, help="Seconds a Flower step waits per client."
)
@click.option("--output", type=click.Path(dir_okay=False), help="Also write the Markdown report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def main(rounds: int, aggregation: str, step_timeout: float, output: str | None, as_json: bool) -> None:
    """Round time of the README federation on Flower (loopback) against in process."""
    import flwr

    from codream.cli.signals import stop_signals
    from codream.runconfig import RunConfig

    rc = RunConfig(aggregation=aggregation, rounds=rounds, threads=1)
    load = os.getloadavg()[0]
    sim = _in_process(rc, rounds)
    # SIGTERM stops the deployment the way Ctrl-C does: every Flower process is cleaned up.
    with stop_signals(), tempfile.TemporaryDirectory(prefix="codream-flower-speed-") as tmp:
        fl = _flower(rc, rounds, step_timeout, Path(tmp))
    ratios = [b["seconds"] / a["seconds"] for a, b in zip(sim, fl, strict=True)]
    result = {
        "aggregation": aggregation,
        "clients": rc.clients,
        "releases": 2 + rc.global_steps,
        "step_timeout": step_timeout,
        "superexec_poll": os.environ.get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL"),
        "flwr": flwr.__version__,
        "machine": (
            f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
            f"python {platform.python_version()}"
        ),
        "load": load,
        "in_process": sim,
        "flower": fl,
        "median_ratio": statistics.median(ratios),
    }
    command = "python " + " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
    if output:
        Path(output).write_text(_markdown(result, command))
    click.echo(json.dumps(result, indent=2) if as_json else _markdown(result, command))


if __name__ == "__main__":
    main()
