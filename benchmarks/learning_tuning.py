#!/usr/bin/env python
"""How much of the teachers' knowledge reaches CoDream's students? Settings tried on a validation split.

\b
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/learning_tuning.py --name acq --rounds 2 \\
        --set dream.batch_size=256 --set distill.kd_steps=400 --records runs.jsonl

Nothing here looks at the test set: the last `--val` training images of Fashion-MNIST are the
evaluation set, no client holds them (`codream.data.hold_out`), and every accuracy is on them. The
federation is the federation benchmark's size (`--size`, default cpu) with `--set` overrides, as in
`benchmarks/federation.py`. After every round it records the clients' mean accuracy, the class-weighted
teacher ensemble of the clients' models (p(c) = sum_k w_k(c) p_k(c) / sum_k w_k(c)), the server student
if there is one, and the time of one dream step and one KD step. `--baselines` adds local-only and
FedAvg (one shared cnn) on the same partition, at the benchmark's matched CE budget.

Each run is one JSON line, appended to `--records` and printed.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import click
import numpy as np
import torch

from codream.bench.federation import SIZES, _run_baseline, ensemble_accuracy, override_size
from codream.build import build_federation
from codream.data import hold_out, load_dataset, partition
from codream.federation import Federation, FederationConfig

MODELS = ("resnet8", "cnn", "vgg", "mlp")


def real_image_student(fed: Federation, data, seed: int) -> float:
    """Validation accuracy of the student's architecture trained like the student, on real images.

    As many training images as the student's buffer holds dreams, drawn at random from the whole
    training split, with the final class-weighted teacher ensemble's probabilities as KD targets; the
    same optimiser, steps, minibatch size and temperature as the student. The gap to the student is
    what the dreams lose against real inputs.
    """
    from codream.distill import class_weighted_ensemble, kd_loss
    from codream.evaluation import accuracy
    from codream.models import build_model

    dc = fed.config.distill
    n = len(fed.server.student.buffer)
    g = torch.Generator().manual_seed(seed)
    x = data.x_train[torch.randperm(len(data.y_train), generator=g)[:n]]
    weights = torch.as_tensor(np.stack([c.class_weights() for c in fed.clients]), dtype=torch.float32)
    target = class_weighted_ensemble([c.model for c in fed.clients], weights, x).clamp_min(1e-12).log()
    model = build_model(dc.student, data.input_shape, data.num_classes, seed=seed * 1009 + 997)
    opt = torch.optim.SGD(
        model.parameters(), lr=dc.student_lr, momentum=dc.momentum, weight_decay=dc.weight_decay
    )
    steps = fed.config.rounds * (dc.kd_steps if dc.student_kd_steps is None else dc.student_kd_steps)
    temperature = dc.temperature if dc.student_temperature is None else dc.student_temperature
    model.train()
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: dc.batch_size]
        opt.zero_grad(set_to_none=True)
        kd_loss(model(x[idx]), target[idx], temperature).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    return float(accuracy(model, fed.x_test, fed.y_test))


@click.command()
@click.option("--name", required=True, help="A label for the run.")
@click.option("--size", type=click.Choice(sorted(SIZES)), default="cpu", show_default=True)
@click.option("--dataset", default="fashion-mnist", show_default=True)
@click.option("--alpha", default="0.1", show_default=True, help="Dirichlet alpha or 'iid'.")
@click.option("--seed", type=int, default=99, show_default=True)
@click.option("--rounds", type=int, default=None, help="Override the size's rounds.")
@click.option("--val", type=int, default=2000, show_default=True, help="Validation images held out.")
@click.option("--method", default="conditional", show_default=True)
@click.option("--set", "settings", multiple=True, help="As in benchmarks/federation.py.")
@click.option("--baselines", is_flag=True, help="Also run local-only and FedAvg (cnn).")
@click.option(
    "--real-student",
    is_flag=True,
    help="Also train the student's architecture, as the student is trained, on as many real training "
    "images as the student saw dreams, labelled by the final teacher ensemble: is it the dreams?",
)
@click.option("--records", default=None, help="Append the JSON line to this file.")
def main(name, size, dataset, alpha, seed, rounds, val, method, settings, baselines, real_student, records):
    torch.set_num_threads(1)
    sz = override_size(SIZES[size], settings)
    if rounds is not None:
        sz = replace(sz, rounds=rounds)
    a = None if alpha.lower() in ("iid", "inf", "none") else float(alpha)
    data = hold_out(load_dataset(dataset, seed=seed), val)
    cfg = FederationConfig(
        dataset=dataset,
        num_clients=len(MODELS),
        alpha=a,
        samples_per_client=sz.samples_per_client,
        models=MODELS,
        rounds=sz.rounds,
        seed=seed,
        method=method,
        dream=sz.dream,
        distill=sz.distill,
    )
    t0 = time.perf_counter()
    fed = build_federation(cfg, dataset=data)
    rounds_out = []
    for _ in range(cfg.rounds):
        m = fed.run_round()
        kd_steps = sum(c.last_distill.kd_steps for c in fed.clients)
        kd_seconds = sum(c.last_distill.seconds for c in fed.clients)
        rounds_out.append(
            {
                "mean": round(m.mean_accuracy, 4),
                "clients": [round(x, 4) for x in m.accuracies],
                "ensemble": round(ensemble_accuracy(fed, fed.x_test, fed.y_test), 4),
                "student": None if m.student_accuracy is None else round(m.student_accuracy, 4),
                "coverage": m.class_coverage,
                "confidence": round(m.label_confidence, 3),
                "dream_step_s": round(m.dream_seconds / cfg.dream.global_steps, 4),
                "kd_step_s": round(kd_seconds / max(kd_steps, 1), 4),
                "round_s": round(m.seconds, 1),
            }
        )
        click.echo(json.dumps({"name": name, "round": m.round, **rounds_out[-1]}), err=True)
    line = {
        "name": name,
        "alpha": alpha,
        "seed": seed,
        "settings": list(settings),
        "rounds": rounds_out,
        "final": rounds_out[-1]["mean"] if rounds_out else None,
        "seconds": round(time.perf_counter() - t0),
    }
    if baselines:
        parts = partition(
            data.y_train, cfg.num_clients, alpha=a, samples_per_client=cfg.samples_per_client, seed=seed
        )
        for b in ("local", "fedavg"):
            run = _run_baseline(b, cfg, data, parts, "cnn", "cpu")
            line[b] = round(float(np.mean(run.final_accuracy)), 4)
    if real_student and fed.server.student is not None:
        line["real_student"] = round(real_image_student(fed, data, seed), 4)
    text = json.dumps(line)
    if records:
        with open(records, "a") as f:
            f.write(text + "\n")
    click.echo(text)


if __name__ == "__main__":
    main()
