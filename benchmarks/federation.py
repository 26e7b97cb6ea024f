#!/usr/bin/env python
"""CoDream (default and paper variants) vs local-only, FedAvg and centralized on Fashion-MNIST.

    python benchmarks/federation.py --jobs 2     # CPU size: within an hour on 2 idle cores
    python benchmarks/federation.py --full --device cuda
    python benchmarks/federation.py --size tiny  # a minute: shows that everything runs

Writes benchmarks/results/federation.md (or --out) with the table and the exact command.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import click
import torch

from codream.bench.federation import METHODS, SIZES, override_size, run_benchmark, write_markdown


def _alpha(text: str) -> float | None:
    return None if text.lower() in ("iid", "inf", "none") else float(text)


@click.command()
@click.option("--size", type=click.Choice(sorted(SIZES)), default="cpu", show_default=True)
@click.option("--full", is_flag=True, help="Same as --size full (for a GPU).")
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--data-dir", default=None, help="Folder of IDX files (default: the dataset's).")
@click.option("--models", default="resnet8,cnn,vgg,mlp", show_default=True, help="One per client.")
@click.option("--fedavg-model", default="cnn", show_default=True)
@click.option("--alphas", default="0.1,iid", show_default=True, help="Dirichlet alphas; 'iid' for IID.")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the size's).")
@click.option("--methods", default=",".join(METHODS), show_default=True)
@click.option("--rounds", type=int, default=None, help="Override the size's rounds.")
@click.option("--device", default="cpu", show_default=True)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="torch CPU threads; small models run fastest on 1, especially on a shared machine.",
)
@click.option(
    "--jobs",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes, one (seed, partition) each; use one per core with --threads 1.",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    help="Override a size setting, e.g. --set dream.global_steps=60 --set samples_per_client=500.",
)
@click.option("--out", default="benchmarks/results/federation.md", show_default=True)
def main(
    size,
    full,
    dataset,
    data_dir,
    models,
    fedavg_model,
    alphas,
    seeds,
    methods,
    rounds,
    device,
    threads,
    jobs,
    settings,
    out,
):
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(threads)
    results = run_benchmark(
        size=override_size(SIZES["full" if full else size], settings),
        dataset=dataset,
        data_dir=data_dir,
        models=[m.strip() for m in models.split(",") if m.strip()],
        fedavg_model=fedavg_model,
        alphas=[_alpha(a) for a in alphas.split(",")],
        seeds=None if seeds is None else [int(s) for s in seeds.split(",")],
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        device=device,
        rounds=rounds,
        jobs=jobs,
        progress=lambda line: click.echo(line, err=True),
    )
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    text = write_markdown(results, out, command)
    Path(out).with_suffix(".json").write_text(json.dumps(results.to_dict(), indent=1, default=str))
    click.echo(text)


if __name__ == "__main__":
    main()
