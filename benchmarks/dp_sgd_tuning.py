#!/usr/bin/env python
"""Which change lifts example-level DP-SGD in the cross-silo federation, tuned on a validation split.

\b
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_sgd_tuning.py \\
        --records /tmp/dpt/runs.jsonl --out benchmarks/results/dp_sgd_tuning.md

The federation is the trade-off benchmark's cross-silo one at its `cpu` size (`codream.bench.tradeoff.CPU`:
GroupNorm models, no BatchNorm term in the dream loss, DP-SGD for every cross-entropy step, the noise
multiplier calibrated with the PRV accountant from the target epsilon over the run's DP-SGD steps).
Nothing here looks at the test set: the last `--val` training images are the validation set, no client
holds them, and every accuracy is on them.

Variants (`--variant`, repeatable; default all): the benchmark's setting (DP learning rate 0.05, clip 1)
at epsilon 1, 8 and 16 (flat accuracy across epsilon points at clipping rather than noise); at epsilon 8
a DP learning rate 4x and 10x larger, and 2x and 4x smaller (the KD learning rate unchanged); adaptive
clipping to the median norm with the benchmark's learning rate, 4x and 1/4 of it; and the same
federation without DP. A run whose model diverges is recorded as diverged. Every run is
appended to `--records` (JSON lines; a run already there is skipped), and the markdown is rewritten from
all records after every run, keeping the results file's existing "## Conclusion" section.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from codream.aggregation import create_aggregator
from codream.bench.tradeoff import CPU, INF, Runner, delta_for, hardware, plan_noise_cached
from codream.data import Dataset, hold_out, load_dataset
from codream.exceptions import ConfigError
from codream.privacy.calibration import ExampleLevelSchedule
from codream.privacy.example_level import AdaptiveClipping, dp_trainer_factory


@dataclasses.dataclass(frozen=True, slots=True)
class Variant:
    """One DP-SGD setting: what it changes against the benchmark's (lr 0.05, clip 1, fixed bound)."""

    name: str
    epsilon: float
    lr_factor: float = 1.0
    adaptive: AdaptiveClipping | None = None
    description: str = ""


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline-eps1", 1.0, description="the benchmark's setting"),
        Variant("baseline-eps8", 8.0, description="the benchmark's setting"),
        Variant("baseline-eps16", 16.0, description="the benchmark's setting"),
        Variant("lr-x0.25", 8.0, lr_factor=0.25, description="DP-SGD lr / 4, KD lr unchanged"),
        Variant("lr-x0.5", 8.0, lr_factor=0.5, description="DP-SGD lr / 2, KD lr unchanged"),
        Variant("lr-x4", 8.0, lr_factor=4.0, description="DP-SGD lr x4, KD lr unchanged"),
        Variant("lr-x10", 8.0, lr_factor=10.0, description="DP-SGD lr x10, KD lr unchanged"),
        Variant("adaptive", 8.0, adaptive=AdaptiveClipping(), description="median-tracking clip bound"),
        Variant(
            "adaptive-lr-x0.25",
            8.0,
            lr_factor=0.25,
            adaptive=AdaptiveClipping(),
            description="median-tracking clip bound, DP-SGD lr / 4",
        ),
        Variant(
            "adaptive-lr-x4",
            8.0,
            lr_factor=4.0,
            adaptive=AdaptiveClipping(),
            description="median-tracking clip bound, DP-SGD lr x4",
        ),
        Variant("no-dp", INF, description="the same GroupNorm federation with plain SGD"),
    )
}
PARTITIONS = {"dir0.1": 0.1, "iid": None}


def validation_split(name: str, val: int) -> Dataset:
    """The data set whose 'test' set is its last `val` training images, which no client then holds."""
    return hold_out(load_dataset(name, limit_train=None, seed=0), val)


def one_run(runner: Runner, variant: Variant, partition: str, seed: int) -> dict[str, Any]:
    """One federation of `variant`, as `Runner.example_dp` builds it but with the variant's DP-SGD."""
    s = runner.size
    config = runner.silo_config(PARTITIONS[partition], seed, norm="group")
    base = dict(setting="cross-silo", partition_label=partition, cohort=None)
    steps = config.distill.warmup_steps + config.rounds * config.distill.ce_steps_per_round
    lr = config.distill.lr * variant.lr_factor
    row: dict[str, Any] = dict(
        variant=variant.name,
        partition=partition,
        epsilon=variant.epsilon,
        seed=seed,
        dp_lr=lr if math.isfinite(variant.epsilon) else None,
        kd_lr=config.distill.lr,
        adaptive=dataclasses.asdict(variant.adaptive) if variant.adaptive else None,
        dp_sgd_steps=steps,
        batch=s.batch_size,
    )
    factory = None
    if math.isfinite(variant.epsilon):
        delta = delta_for(s.silo_samples)
        plan = plan_noise_cached(
            ExampleLevelSchedule(local_steps=steps, batch_size=s.batch_size, data_size=s.silo_samples),
            variant.epsilon,
            delta,
            s.silo_accountant,
        )
        z = plan.noise_multiplier
        factory = dp_trainer_factory(
            noise_multiplier=z,
            max_grad_norm=s.dp_clip,
            batch_size=s.batch_size,
            lr=lr,
            momentum=config.distill.momentum,
            kd_lr=config.distill.lr,
            kd_momentum=config.distill.momentum,
            accountant=s.silo_accountant,
            delta=delta,
            noise_seed=seed,
            adaptive_clipping=variant.adaptive,
        )
        z_grad = variant.adaptive.gradient_noise_multiplier(z, s.batch_size) if variant.adaptive else z
        row.update(noise_multiplier=z, gradient_noise_multiplier=z_grad, delta=delta)
    start = time.perf_counter()
    try:
        rec, fed = runner.federation(
            config,
            create_aggregator("plain"),
            mode="example-dp",
            epsilon=variant.epsilon,
            trainer_factory=factory,
            **base,
        )
    except ConfigError as err:
        if "not finite" not in str(err):
            raise
        # A diverged model is a result of the variant, not a fault of the run.
        row.update(accuracy=None, diverged=str(err), seconds=time.perf_counter() - start)
        return row
    if factory is not None:
        trainers = [c.trainer for c in fed.clients]
        row.update(
            epsilon_spent=max(t.epsilon() for t in trainers),
            final_clip_bounds=[t.clip_bound for t in trainers],
        )
    row.update(
        accuracy=rec.mean_accuracy,
        accuracy_std=rec.std_accuracy,
        client_accuracies=list(rec.final_accuracies),
        seconds=time.perf_counter() - start,
    )
    return row


def _key(r: dict[str, Any]) -> tuple[str, str, int]:
    return r["variant"], r["partition"], r["seed"]


def _accuracy(r: dict[str, Any]) -> str:
    if r["accuracy"] is None:
        return f"diverged ({r['diverged']})"
    return f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}"


def _eps(e: float) -> str:
    return "inf" if math.isinf(e) else f"{e:g}"


def write_markdown(path: Path, records: list[dict[str, Any]], commands: list[str], device: str) -> None:
    """Rewrite the results file from every record, keeping an existing '## Conclusion' section."""
    conclusion = "## Conclusion\n\n(pending)\n"
    if path.exists():
        text = path.read_text()
        if "## Conclusion" in text:
            conclusion = text[text.index("## Conclusion") :].rstrip() + "\n"
    order = list(VARIANTS)
    rows = [
        "| partition | variant | seed | epsilon | z (accounted) | z_grad | DP lr | KD lr "
        "| clip bound at the end (per client) | validation % ± std over clients | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in sorted(
        records, key=lambda r: (list(PARTITIONS).index(r["partition"]), order.index(r["variant"]), -r["seed"])
    ):
        part = "Dir(0.1)" if r["partition"] == "dir0.1" else "IID"
        if r.get("noise_multiplier") is not None:
            clip = ", ".join(f"{c:.2g}" for c in r.get("final_clip_bounds", ()))
            dp = f"{r['noise_multiplier']:.3f} | {r['gradient_noise_multiplier']:.3f} | {r['dp_lr']:g}"
        else:
            clip, dp = "-", "- | - | -"
        rows.append(
            f"| {part} | {r['variant']} | {r['seed']} | {_eps(r['epsilon'])} | {dp} | {r['kd_lr']:g} "
            f"| {clip} | {_accuracy(r)} | {r['seconds']:.0f} |"
        )
    s = CPU
    first = records[0] if records else {}
    seeds = sorted({r["seed"] for r in records})
    body = [
        "# Example-level DP-SGD: clipping, learning rate and adaptive clipping on a validation split",
        "",
        "Commands (each appends its runs to the records and rewrites this file from all of them):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Hardware: {device}  ",
        f"Setting: the trade-off benchmark's cross-silo federation at size `cpu`: {s.dataset}, "
        f"{s.silo_clients} clients ({', '.join(s.silo_models)}, GroupNorm, w_bn = 0) of {s.silo_samples} "
        f"training examples each, {s.rounds} rounds of {s.global_steps} dream steps on {s.dream_batch} "
        f"dreams, {s.kd_steps} KD steps per round, {first.get('dp_sgd_steps')} DP-SGD steps in all "
        f"(warm-up included) at expected batch {s.batch_size} (Poisson), momentum 0.9, initial clip bound "
        f"{s.dp_clip:g}, noise multiplier z calibrated (PRV accountant, delta {first.get('delta', 'n/a')}) "
        f"from epsilon over those steps, plain aggregation, seed {', '.join(map(str, seeds))}. Adaptive "
        "clipping: target quantile 0.5, learning rate 0.2, count noise std = batch / 20, the gradient "
        "noise raised to z_grad so that gradient and count together are accounted as z. Accuracy: mean "
        "over clients after the last round on the validation set (the last 2000 Fashion-MNIST training "
        "images, held by no client; the partition draws from the rest). Seconds: the whole federation, "
        "evaluation included.",
        "",
        *rows,
        "",
        conclusion,
    ]
    path.write_text("\n".join(body))


@click.command(help=__doc__)
@click.option(
    "--variant",
    "variants",
    multiple=True,
    type=click.Choice(list(VARIANTS)),
    help="Variant to run (repeatable; default: all).",
)
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    type=click.Choice(list(PARTITIONS)),
    help="Partition (repeatable; default: both).",
)
@click.option(
    "--seed", type=int, default=99, show_default=True, help="Tuning seed (the benchmark uses 0, 1)."
)
@click.option("--val", type=int, default=2000, show_default=True, help="Validation images (end of train).")
@click.option("--records", type=click.Path(path_type=Path), required=True, help="JSON-lines file of runs.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Markdown file to rewrite.")
@click.option("--threads", type=int, default=1, show_default=True)
def main(
    variants: tuple[str, ...],
    partitions: tuple[str, ...],
    seed: int,
    val: int,
    records: Path,
    out: Path | None,
    threads: int,
) -> None:
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    info = hardware(device)
    line = (
        f"{info['cpu']}, torch threads = {info['torch_threads']}; torch {info['torch']}, Python "
        f"{info['python']}, one process on one core of a shared {info['nproc']}-core machine"
    )
    done = {_key(r) for r in _read(records)}
    todo = [
        (VARIANTS[v], p)
        for p in partitions or tuple(PARTITIONS)
        for v in variants or tuple(VARIANTS)
        if (v, p, seed) not in done
    ]
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(
        ["benchmarks/dp_sgd_tuning.py", *sys.argv[1:]]
    )
    runner = Runner(CPU, device, lambda msg: click.echo(msg, err=True))
    try:
        runner.dataset = validation_split(CPU.dataset, val)  # the runner then never loads the test set
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    records.parent.mkdir(parents=True, exist_ok=True)
    for variant, partition in todo:
        row = one_run(runner, variant, partition, seed)
        row.update(command=command, hardware=line)
        with records.open("a") as f:
            f.write(json.dumps(row) + "\n")
        click.echo(
            f"{variant.name} {partition}: {_accuracy(row)} % on validation, {row['seconds']:.0f} s"
            + (
                f", clip bounds {np.round(row['final_clip_bounds'], 2).tolist()}"
                if "final_clip_bounds" in row
                else ""
            ),
            err=True,
        )
        if out is not None:
            _render(records, out)
    if not todo and out is not None:
        _render(records, out)


def _read(records: Path) -> list[dict[str, Any]]:
    if not records.exists():
        return []
    rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    for r in rows:
        r["epsilon"] = float(r["epsilon"])  # json writes inf as Infinity, which float() reads back
    return rows


def _render(records: Path, out: Path) -> None:
    every = _read(records)
    commands = list(dict.fromkeys(r["command"] for r in every))
    write_markdown(out, every, commands, every[-1]["hardware"])


if __name__ == "__main__":
    main()
