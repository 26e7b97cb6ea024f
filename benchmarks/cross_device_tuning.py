#!/usr/bin/env python
"""Cross-device CoDream against local-only training on Fashion-MNIST, tuned on a validation split.

\b
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_device_tuning.py \\
        --run bank=0 --run bank=full --records runs.jsonl --out benchmarks/results/tradeoff-tuning.md

Nothing here looks at the test set: the last `--val` training images are the validation set, no client
holds them (the partition draws only from the images before them), and every accuracy is on them.

Each `--run` is one federation, given as comma-separated overrides of the base setting:
``bank`` (dreams in the server's bank; ``full`` = rounds x dream batch), ``gs`` (dream steps per round),
``batch`` (dreams per round), ``warmup`` (warm-up CE steps), ``kd`` (KD steps per round), ``rounds``,
``alpha`` (``iid`` or a Dirichlet concentration). Local-only training gets the same partitions, models and
SGD steps the trade-off benchmark gives it (CE steps per round + ceil(warm-up / rounds), each round),
on the clients CoDream is measured on (the last cohort), once per (partition, clients, steps, rounds).
Every run is appended to `--records` (JSON lines), and the markdown table is rewritten from all records
after every run, so runs can be added in batches.
"""

from __future__ import annotations

import datetime
import json
import math
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from codream.aggregation import create_aggregator
from codream.baselines import BaselineConfig, run_local_only
from codream.bench.tradeoff import hardware as tradeoff_hardware
from codream.build import build_federation
from codream.data import Dataset, hold_out, load_dataset, partition
from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, FederationConfig

BASE = dict(alpha="iid", bank=0, gs=4, batch=8, warmup=6, kd=5, rounds=4)
INTS = ("gs", "batch", "warmup", "kd", "rounds")


def parse_run(text: str) -> dict:
    """`bank=full,gs=10` -> the base setting with those overrides."""
    run = dict(BASE)
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in BASE:
            raise click.BadParameter(f"{item!r}: expected key=value with key in {sorted(BASE)}")
        if key in INTS:
            run[key] = int(value)
        elif key == "bank":
            run[key] = value if value == "full" else int(value)
        else:
            run[key] = value
    if run["bank"] == "full":
        run["bank"] = run["rounds"] * run["batch"]
    return run


def alpha_of(label: str) -> float | None:
    return None if label.lower() in ("iid", "inf", "none") else float(label)


def validation_split(val: int) -> Dataset:
    """Fashion-MNIST whose 'test' set is the last `val` training images, which the clients never see."""
    return hold_out(load_dataset("fashion-mnist", limit_train=None, seed=0), val)


def federation_config(
    run: dict, *, population: int, cohort: int, samples: int, seed: int
) -> FederationConfig:
    models = tuple(("mlp", "cnn")[i % 2] for i in range(population))
    batch_size = 32  # the trade-off benchmark's KD / CE minibatch
    return FederationConfig(
        dataset="fashion-mnist",
        num_clients=population,
        clients_per_round=cohort,
        alpha=alpha_of(run["alpha"]),
        samples_per_client=samples,
        models=models,
        norm="batch",
        rounds=run["rounds"],
        seed=seed,
        dream=DreamConfig(batch_size=run["batch"], global_steps=run["gs"]),
        distill=DistillConfig(
            kd_steps=run["kd"],
            warmup_steps=run["warmup"],
            batch_size=batch_size,
            ce_batch_size=batch_size,
            buffer_size=max(256, run["bank"]),
            bank_size=run["bank"],
        ),
    )


class LocalOnlyCache:
    """Local-only training of given clients, once per (partition, clients, steps per round, rounds).

    Only the clients CoDream is measured on (the last cohort) are trained: evaluating all of a
    population's models every round would cost several times the federation itself. Each client keeps
    its partition and architecture; its initialisation seed is its position in the list.
    """

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self._done: dict[tuple, tuple[np.ndarray, float, int]] = {}

    def __call__(self, config: FederationConfig, clients: list[int]) -> tuple[np.ndarray, float, int]:
        dc = config.distill
        steps = dc.ce_steps_per_round + math.ceil(dc.warmup_steps / config.rounds)
        key = (config.alpha, config.samples_per_client, config.seed, tuple(clients), steps, config.rounds)
        if key not in self._done:
            parts = partition(
                self.data.y_train,
                config.num_clients,
                alpha=config.alpha,
                samples_per_client=config.samples_per_client,
                seed=config.seed,
            )
            models = config.client_models()
            cfg = BaselineConfig(
                rounds=config.rounds,
                local_steps=max(1, steps),
                batch_size=dc.batch_size,
                seed=config.seed,
                eval_batch_size=256,
            )
            t0 = time.perf_counter()
            res = run_local_only(
                self.data, [parts[c] for c in clients], [models[c] for c in clients], cfg, device="cpu"
            )
            self._done[key] = (np.asarray(res.final_accuracy), time.perf_counter() - t0, steps)
        return self._done[key]


def one_run(run: dict, data: Dataset, local: LocalOnlyCache, **setting) -> dict:
    config = federation_config(run, **setting)
    t0 = time.perf_counter()
    fed = build_federation(config, aggregator=create_aggregator("plain"), dataset=data)
    history = fed.run(config.rounds)
    seconds = time.perf_counter() - t0
    last = history[-1]
    cohort = list(last.participants)
    local_acc, local_seconds, local_steps = local(config, cohort)
    diff = np.asarray(last.accuracies) - local_acc
    return {
        "run": run,
        "codream": float(last.mean_accuracy),
        "local": float(local_acc.mean()),
        "gain": float(diff.mean()),
        "gain_std": float(diff.std()),
        "clients_seen": len(fed.transport.warmed),
        "buffer_last_cohort": float(np.mean([len(fed.clients[c].buffer) for c in cohort])),
        "label_confidence": float(np.mean([m.label_confidence for m in history])),
        "seconds": seconds,
        "local_seconds": local_seconds,
        "local_steps_per_round": local_steps,
        **setting,
    }


def hardware() -> str:
    hw = tradeoff_hardware("cpu")
    return f"{hw['cpu']}, torch threads = {hw['torch_threads']}; torch {hw['torch']}, Python {hw['python']}"


def label(run: dict) -> str:
    return f"bank={run['bank']} gs={run['gs']} batch={run['batch']} warmup={run['warmup']} kd={run['kd']}"


def write_markdown(path: Path, records: list[dict], commands: list[str], notes: str) -> None:
    rows = [
        "| # | partition | rounds | bank | dream steps | dreams/round | warm-up | KD (CE) steps | "
        "CoDream % | local-only % | gain (pp) ± std over clients | CoDream s | local-only s |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|",
    ]
    for i, r in enumerate(records, 1):
        run = r["run"]
        ce = DistillConfig(kd_steps=run["kd"]).ce_steps_per_round
        rows.append(
            f"| {i} | {'IID' if alpha_of(run['alpha']) is None else 'Dir(' + run['alpha'] + ')'} "
            f"| {run['rounds']} | {run['bank']} | {run['gs']} | {run['batch']} | {run['warmup']} "
            f"| {run['kd']} ({ce}) | {100 * r['codream']:.1f} | {100 * r['local']:.1f} "
            f"| {100 * r['gain']:+.1f} ± {100 * r['gain_std']:.1f} "
            f"| {r['seconds']:.0f} | {r['local_seconds']:.0f} |"
        )
    first = records[0] if records else {}
    body = [
        "# Cross-device CoDream against local-only: tuning on a validation split",
        "",
        "Commands (each appends its runs to the records and rewrites this table from all of them):",
        "",
        *[f"    {c}" for c in commands],
        "",
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Hardware: {hardware()}, one process on one core of a shared 2-core machine  ",
        f"Setting: Fashion-MNIST, population {first.get('population')} (mlp, cnn alternating, BatchNorm), "
        f"{first.get('samples')} training examples per client, cohort {first.get('cohort')} sampled per "
        f"round, plain aggregation, seed {first.get('seed')}, KD and CE minibatch 32, client buffer "
        "max(256, bank). Accuracy: on the validation set (the last 2000 Fashion-MNIST training images, "
        "held by no client; the partition draws from the first 58000), after the last round. CoDream: "
        "mean over the last round's cohort (the trade-off benchmark's measure); local-only: the same "
        "clients, each trained alone on its own data with its architecture (paired: the gain is the mean "
        "of the per-client differences). Local-only takes CE steps per round + ceil(warm-up / rounds) SGD "
        "steps in every round, as in the trade-off benchmark; a cohort client of CoDream takes its "
        "warm-up plus, per round it takes part in, the KD steps and their interleaved CE steps. Seconds "
        "include the per-round evaluation on the validation set.",
        "",
        *rows,
        "",
        notes,
        "",
    ]
    path.write_text("\n".join(body))


@click.command(help=__doc__)
@click.option("--run", "runs", multiple=True, help="Overrides of the base setting, e.g. bank=full,gs=10.")
@click.option("--population", type=int, default=200, show_default=True)
@click.option("--cohort", type=int, default=20, show_default=True)
@click.option("--samples", type=int, default=40, show_default=True, help="Training examples per client.")
@click.option("--seed", type=int, default=99, show_default=True, help="Tuning seed (the benchmark uses 0-2).")
@click.option("--val", type=int, default=2000, show_default=True, help="Validation images (end of train).")
@click.option("--records", type=click.Path(path_type=Path), required=True, help="JSON-lines file of runs.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Markdown table to rewrite.")
@click.option("--notes", type=click.Path(path_type=Path), default=None, help="Markdown appended below.")
@click.option("--threads", type=int, default=1, show_default=True)
def main(runs, population, cohort, samples, seed, val, records, out, notes, threads) -> None:
    torch.set_num_threads(threads)
    setting = dict(population=population, cohort=cohort, samples=samples, seed=seed)
    try:
        parsed = [parse_run(r) for r in runs]
        for run in parsed:
            federation_config(run, **setting)  # refuse a bad run before any run starts
        data = validation_split(val) if parsed else None
    except (ConfigError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    argv = ["benchmarks/cross_device_tuning.py", *sys.argv[1:]]
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(argv)
    local = LocalOnlyCache(data) if data is not None else None
    for run in parsed:
        click.echo(f"start {run['alpha']} {label(run)} rounds={run['rounds']}", err=True)
        rec = one_run(run, data, local, **setting)
        rec["command"] = command
        with records.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        click.echo(
            f"done  {run['alpha']} {label(run)} rounds={run['rounds']}: CoDream {100 * rec['codream']:.1f}% "
            f"vs local {100 * rec['local']:.1f}% (gain {100 * rec['gain']:+.1f}), "
            f"{rec['seconds']:.0f}+{rec['local_seconds']:.0f} s",
            err=True,
        )
        if out is not None:
            render(records, out, notes)
    if not parsed and out is not None:
        render(records, out, notes)  # no runs: only rewrite the table (e.g. with new notes)


def render(records: Path, out: Path, notes: Path | None) -> None:
    every = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    commands = list(dict.fromkeys(r["command"] for r in every))
    write_markdown(out, every, commands, notes.read_text() if notes else "")


if __name__ == "__main__":
    main()
