#!/usr/bin/env python
"""Does a lower-dimensional dream-gradient release make client-level DP useful in cross-device CoDream?

\b
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/low_dim_releases.py \\
        --records .devdata/low_dim_releases.jsonl --out benchmarks/results/low_dim_releases.md

The federation is the trade-off benchmark's `full` cross-device one (population 200, cohort 20, 16 dreams
of 1x28x28, 10 dream steps = releases per round, 4 rounds), with its `secure+dp` aggregator calibrated to
epsilon over the run. Each variant wraps that aggregator in `codream.privacy.projection.ProjectedReleases`
with one orthonormal projection (block means, low-frequency DCT), raw or renormalised to the client's
norm; the best projection on validation accuracy (mean over partitions) is then run once more with half
the dream steps per round (fewer releases, less noise per release). `plain` and local-only training of
the final cohort are the references.

Nothing here looks at the test set: the last `--val` training images are the validation set, no client
holds them (the partition draws only from the images before them), and every accuracy is on them.
Every run is appended to `--records` (JSON lines; runs already there are skipped), and the markdown is
rewritten from all records after each run.
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

from codream.aggregation import Aggregator, ProjectedReleases, ReleaseKind, create_aggregator
from codream.baselines import BaselineConfig, run_local_only
from codream.bench.tradeoff import FULL, Remedy, Runner, hardware
from codream.build import build_federation
from codream.data import Dataset, hold_out, load_dataset, partition
from codream.federation.config import FederationConfig
from codream.privacy.projection import BlockMeans, LowFrequency

# name -> (projection or None, renormalise); order is the table's.
PROJECTED = {
    "block2-raw": (BlockMeans(2), False),
    "block2": (BlockMeans(2), True),
    "block4": (BlockMeans(4), True),
    "dct7": (LowFrequency(7), True),
    "dct10": (LowFrequency(10), True),
}
VARIANTS = ("plain", "none", *PROJECTED)  # and plain-<projection>: the projection's cost without noise


def validation_split(name: str, val: int) -> Dataset:
    """The data set whose 'test' set is the last `val` training images, which no client can hold."""
    return hold_out(load_dataset(name, limit_train=None, seed=0), val)


def alpha_of(label: str) -> float | None:
    return None if label.lower() in ("iid", "inf", "none") else float(label)


def label_of(alpha: float | None) -> str:
    return "IID" if alpha is None else f"Dir({alpha:g})"


def _local_only(data: Dataset, config: FederationConfig, clients: list[int]) -> float:
    """Local-only accuracy of `clients` with the SGD steps the trade-off benchmark gives local training."""
    dc = config.distill
    steps = dc.ce_steps_per_round + math.ceil(dc.warmup_steps / config.rounds)
    parts = partition(
        data.y_train,
        config.num_clients,
        alpha=config.alpha,
        samples_per_client=config.samples_per_client,
        seed=config.seed,
    )
    models = config.client_models()
    cfg = BaselineConfig(
        rounds=config.rounds, local_steps=max(1, steps), batch_size=dc.batch_size, seed=config.seed
    )
    res = run_local_only(data, [parts[c] for c in clients], [models[c] for c in clients], cfg, device="cpu")
    return float(np.mean(res.final_accuracy))


def one_run(
    runner: Runner,
    data: Dataset,
    *,
    variant: str,
    alpha: float | None,
    seed: int,
    cohort: int,
    epsilon: float,
    global_steps: int | None,
) -> dict:
    """One federation; its validation accuracy, released dimension, NSR, kept signal and time."""
    base = variant.removesuffix("+gs")
    private = not (base == "plain" or base.startswith("plain-"))
    name = base.removeprefix("plain").removeprefix("-") if not private else ("" if base == "none" else base)
    remedy = Remedy(variant, "fewer releases", global_steps=global_steps) if global_steps else None
    config = runner.device_config(alpha, seed, cohort, remedy)
    agg: Aggregator
    if private:
        agg, _ = runner.secure_dp(config, cohort, epsilon, seed)
    else:
        agg = create_aggregator("plain")
    if name:
        projection, renormalize = PROJECTED[name]
        agg = ProjectedReleases(agg, projection, data.input_shape, renormalize=renormalize)
    t0 = time.perf_counter()
    fed = build_federation(config, aggregator=agg, dataset=data)
    history = fed.run(config.rounds)
    seconds = time.perf_counter() - t0
    last = history[-1]
    spec = next(s for s in fed.server.specs() if s.kind is ReleaseKind.DREAM_GRADIENT)
    released = agg.released_spec(spec) if isinstance(agg, ProjectedReleases) else spec
    dp = last.aggregation.dp
    std = None if dp is None else dp.noise_std.get(spec.name)
    n = len(last.aggregation.participants)
    kept = [
        m.aggregation.projection_signal_fraction
        for m in history
        if m.aggregation.projection_signal_fraction is not None
    ]
    inner = agg.inner if isinstance(agg, ProjectedReleases) else agg
    ledger = getattr(inner, "ledger", None)
    return {
        "variant": variant,
        "partition": label_of(alpha),
        "alpha": alpha,
        "seed": seed,
        "cohort": cohort,
        "epsilon": epsilon if private else None,
        "epsilon_spent": None if ledger is None else float(ledger.spent),
        "releases_per_round": config.releases_per_round,
        "dream_steps": config.dream.global_steps,
        "accuracy": float(last.mean_accuracy),
        "accuracy_std": float(last.std_accuracy),
        "full_dim": spec.length,
        "released_dim": released.length,
        "release_noise_multiplier": None if dp is None else dp.release_noise_multiplier,
        "nsr_cohort": None if std is None else float(std) * math.sqrt(released.length) / spec.clip_norm / n,
        "signal_kept": float(np.mean(kept)) if kept else None,
        "seconds": seconds,
        "last_cohort": [int(c) for c in last.participants],
        "config": config,
    }


def _fmt(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def write_markdown(path: Path, records: list[dict], commands: list[str], hw: str, best: str | None) -> None:
    order = {v: i for i, v in enumerate(VARIANTS)} | {f"plain-{p}": 0.5 for p in PROJECTED}
    rows = sorted(
        records,
        key=lambda r: (r["partition"] != "IID", r["partition"], order.get(r["variant"], 99), r["variant"]),
    )
    local = {r["partition"]: r.get("local") for r in records if r.get("local") is not None}
    none = {r["partition"]: r["accuracy"] for r in records if r["variant"] == "none"}
    plain = {r["partition"]: r["accuracy"] for r in records if r["variant"] == "plain"}
    lines = [
        "# Lower-dimensional dream-gradient releases under client-level DP (cross-device)",
        "",
        "Command" + ("s" if len(commands) > 1 else "") + ": " + "; ".join(f"`{c}`" for c in commands) + "  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC  ",
        f"Hardware: {hw}",
        "",
        "Setting: the trade-off benchmark's `full` cross-device federation on Fashion-MNIST "
        "(population 200 of 40 examples, cnn/mlp alternating, cohort 20, 4 rounds of 10 dream steps on "
        "16 dreams of 1x28x28, "
        "bank 64, 30 warm-up and 25 KD steps), seed 99, `secure+dp` calibrated to ε = 8 over the run (RDP, "
        "q = 20/200, δ = 1e-5). **Accuracy is on a validation split**: the last 2000 Fashion-MNIST training "
        "images, which no client holds; final round, mean ± std over the final cohort's 20 clients. "
        "Local-only: the same 20 clients trained alone with the trade-off benchmark's matched SGD steps.",
        "",
        "Variants wrap the aggregator in `codream.privacy.projection.ProjectedReleases`: `blockF` = F x F "
        "block means, `dctK` = the K x K lowest 2D DCT-II frequencies, each per dream image; `-raw` releases "
        "P g as is (||P g|| < clip norm), the others rescale P g to the client's norm (the clip norm). "
        "`+gs` = the same with 5 instead of 10 dream steps (releases) per round. "
        "NSR (cohort) = noise std × sqrt(released dim) / clip norm / cohort: the summed noise's L2 norm "
        "against the largest summed signal. Releases per round count the soft labels and class weights too. "
        "Signal kept = mean ||P g|| / ||g|| of the clients' releases. `plain-X`: projection X without any "
        "noise, its cost alone; 'vs no projection' compares it with `plain`, the DP variants with `none`.",
        "",
        "| partition | variant | ε spent | dream steps (releases) / round | released dim | z per release "
        "| NSR (cohort) | signal kept | val. accuracy % | vs no projection (pp) | vs local-only (pp) | s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        part = r["partition"]
        ref = (plain if r["variant"].startswith("plain-") else none).get(part)
        vs_none = (
            (r["accuracy"] - ref) * 100 if ref is not None and r["variant"] not in ("none", "plain") else None
        )
        vs_local = (r["accuracy"] - local[part]) * 100 if local.get(part) is not None else None
        lines.append(
            f"| {part} | {r['variant']} | {_fmt(r['epsilon_spent'], '{:.2f}')} "
            f"| {r['dream_steps']} ({r['releases_per_round']}) "
            f"| {r['released_dim']} | {_fmt(r['release_noise_multiplier'], '{:.3g}')} "
            f"| {_fmt(r['nsr_cohort'], '{:.2f}')} | {_fmt(r['signal_kept'], '{:.0%}')} "
            f"| {100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f} | {_fmt(vs_none, '{:+.1f}')} "
            f"| {_fmt(vs_local, '{:+.1f}')} | {r['seconds']:.0f} |"
        )
    for part, acc in sorted(local.items(), key=lambda kv: (kv[0] != "IID", kv[0])):
        lines.append(f"| {part} | local-only | - | - | - | - | - | - | {100 * acc:.1f} | - | - | - |")
    lines += ["", f"Best projection on validation accuracy (mean over partitions): `{best or '-'}`."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--partitions", default="iid,0.1", show_default=True, help="comma-separated: iid or a Dir alpha"
)
@click.option("--seed", default=99, show_default=True)
@click.option("--cohort", default=20, show_default=True)
@click.option("--epsilon", default=8.0, show_default=True)
@click.option("--val", default=2000, show_default=True, help="last training images held out as validation")
@click.option("--fewer-steps", default=5, show_default=True, help="dream steps per round of the `+gs` run")
@click.option(
    "--variants", default=",".join(VARIANTS), show_default=True, help="which to run (best+gs follows)"
)
@click.option(
    "--records",
    type=click.Path(path_type=Path),
    default=Path(".devdata/low_dim_releases.jsonl"),
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("benchmarks/results/low_dim_releases.md"),
    show_default=True,
)
@click.option("--threads", default=1, show_default=True, help="torch threads")
def cli(partitions, seed, cohort, epsilon, val, fewer_steps, variants, records, out, threads) -> None:
    """Cross-device CoDream under client-level DP with dream gradients released through projections."""
    torch.set_num_threads(threads)
    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = {v for v in chosen if v not in VARIANTS and v.removeprefix("plain-") not in PROJECTED}
    if unknown:
        raise click.BadParameter(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    alphas = [alpha_of(p.strip()) for p in partitions.split(",")]
    data = validation_split(FULL.dataset, val)
    runner = Runner(FULL, torch.device("cpu"), say=print)
    hw = hardware("cpu")
    hw_line = (
        f"CPU {hw['cpu']}, nproc = {hw['nproc']} shared with other work, "
        f"torch threads = {hw['torch_threads']}, one run at a time; torch {hw['torch']}, "
        f"Python {hw['python']} (no GPU)"
    )
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + shlex.join(
        ["benchmarks/low_dim_releases.py", *sys.argv[1:]]
    )
    records.parent.mkdir(parents=True, exist_ok=True)
    done = _read(records)
    commands = sorted({r["command"] for r in done} | {command})
    local_done = {r["partition"]: r["local"] for r in done if r.get("local") is not None}

    def best_projection() -> str | None:
        recs = _read(records)
        scores = {}
        for v in PROJECTED:
            accs = [r["accuracy"] for r in recs if r["variant"] == v]
            if len(accs) == len(alphas):
                scores[v] = float(np.mean(accs))
        return max(scores, key=scores.get) if scores else None

    def run(variant: str, alpha: float | None, gs: int | None) -> None:
        if any(r["variant"] == variant and r["partition"] == label_of(alpha) for r in _read(records)):
            return
        print(f"start {variant} {label_of(alpha)}", flush=True)
        rec = one_run(
            runner,
            data,
            variant=variant,
            alpha=alpha,
            seed=seed,
            cohort=cohort,
            epsilon=epsilon,
            global_steps=gs,
        )
        config = rec.pop("config")
        part = rec["partition"]
        if part not in local_done:
            t0 = time.perf_counter()
            local_done[part] = _local_only(data, config, rec["last_cohort"])
            rec["local_seconds"] = time.perf_counter() - t0
        rec["local"] = local_done[part]
        rec["command"] = command
        with records.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(
            f"done  {variant} {part}: acc {rec['accuracy']:.4f} nsr {rec['nsr_cohort']} "
            f"kept {rec['signal_kept']} ({rec['seconds']:.0f} s)",
            flush=True,
        )
        write_markdown(out, _read(records), commands, hw_line, best_projection())

    for variant in chosen:
        for alpha in alphas:
            run(variant, alpha, None)
    best = best_projection()
    if best is not None:
        for alpha in alphas:
            run(f"{best}+gs", alpha, fewer_steps)
    write_markdown(out, _read(records), commands, hw_line, best_projection())


if __name__ == "__main__":
    cli()
