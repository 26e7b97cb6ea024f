"""Does a smaller KD learning rate keep DP-SGD clients from collapsing? A validation-split check.

At the trade-off benchmark's `full` cross-silo size (resnet8, cnn, vgg, mlp with GroupNorm, 3000
examples each), example-level DP at epsilon 8 left the vgg client a constant predictor (10% on the test
set) at most epsilons: its DP-SGD steps alone train it (about 44% after the run's 164 steps), but the KD
steps on dreams, at the DP-SGD learning rate 0.05 with momentum 0.9, drive it there in the first round.
This runs the same federation with the clients' KD learning rate at 0.05 and 0.01 and reports accuracy on
a validation split (the last 2000 training images, held by no client), never the test set:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_kd_lr.py iid 0.01 >> runs.jsonl

Each call prints one JSON line (partition, KD lr, per-client validation accuracy, mean, seconds).
"""

from __future__ import annotations

import dataclasses
import json
import time

import click
import torch

from codream.aggregation import create_aggregator
from codream.bench import tradeoff as T
from codream.build import build_federation
from codream.data import hold_out
from codream.privacy.calibration import ExampleLevelSchedule
from codream.privacy.example_level import dp_trainer_factory


@click.command()
@click.argument("partition", type=click.Choice(["iid", "0.1"]))
@click.argument("kd_lr", type=float)
@click.option("--seed", default=99, show_default=True, help="Partition, initialisation and noise seed.")
@click.option("--epsilon", default=8.0, show_default=True, help="Example-level target epsilon.")
def main(partition: str, kd_lr: float, seed: int, epsilon: float) -> None:
    """Run one DP-SGD cross-silo federation of the full size and print its validation accuracy."""
    torch.set_num_threads(1)
    alpha = None if partition == "iid" else float(partition)
    runner = T.Runner(T.FULL, torch.device("cpu"), print)
    val = hold_out(runner.dataset, 2000)
    cfg = dataclasses.replace(runner.silo_config(alpha, seed, norm="group"), limit_test=None)
    size = T.FULL
    steps = cfg.distill.warmup_steps + cfg.rounds * cfg.distill.ce_steps_per_round
    schedule = ExampleLevelSchedule(
        local_steps=steps, batch_size=size.batch_size, data_size=size.silo_samples
    )
    plan = T.plan_noise_cached(schedule, epsilon, T.delta_for(size.silo_samples), size.silo_accountant)
    factory = dp_trainer_factory(
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=size.dp_clip,
        batch_size=size.batch_size,
        lr=cfg.distill.lr,
        momentum=cfg.distill.momentum,
        kd_lr=kd_lr,
        accountant=size.silo_accountant,
        delta=T.delta_for(size.silo_samples),
        noise_seed=seed,
    )
    fed = build_federation(cfg, aggregator=create_aggregator("plain"), trainer_factory=factory, dataset=val)
    t0 = time.time()
    accs = fed.run()[-1].accuracies
    line = {
        "partition": partition,
        "seed": seed,
        "epsilon": epsilon,
        "kd_lr": kd_lr,
        "models": list(size.silo_models),
        "val_accuracies": [round(a, 4) for a in accs],
        "mean": round(sum(accs) / len(accs), 4),
        "seconds": round(time.time() - t0),
    }
    click.echo(json.dumps(line))


if __name__ == "__main__":
    main()
