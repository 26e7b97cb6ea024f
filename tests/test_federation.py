"""The in-process federation: learning, bit-for-bit reproducibility, checkpoints, and the seam."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from fakes import RecordingAggregator


def small_config(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=3,
        models=("cnn", "mlp", "resnet8"),
        alpha=1.0,
        samples_per_client=200,
        limit_test=300,
        rounds=2,
        seed=3,
        dream=DreamConfig(batch_size=24, global_steps=6),
        distill=DistillConfig(kd_steps=12, warmup_steps=60, buffer_size=96),
    )
    base.update(overrides)
    return FederationConfig(**base)


def params(fed: Federation) -> list[torch.Tensor]:
    return [t.detach().clone() for c in fed.clients for t in c.model.state_dict().values()]


@pytest.fixture(scope="module")
def unbroken(digits):
    """Two rounds in one go, with every release recorded."""
    agg = RecordingAggregator()
    fed = Federation(small_config(), aggregator=agg, dataset=digits)
    metrics = fed.run(2)
    return fed, metrics, agg


def test_a_short_seeded_federation_on_digits_beats_chance_by_a_wide_margin(unbroken):
    fed, metrics, _ = unbroken
    last = metrics[-1]
    assert last.mean_accuracy > 0.5  # ten classes: chance is 0.1
    assert len(last.accuracies) == 3 and all(a > 0.3 for a in last.accuracies)
    assert 1 <= last.class_coverage <= 10 and 0.1 <= last.label_confidence <= 1.0
    assert last.survivors == (0, 1, 2)
    assert last.dream_steps_per_second > 0
    x, y = fed.last_dreams
    assert x.shape == (24, 1, 8, 8) and y.shape == (24, 10)
    assert torch.allclose(y.sum(1), torch.ones(24), atol=1e-5)


def test_dream_optimisation_lowers_the_clients_dream_loss_within_a_round(unbroken):
    _, metrics, _ = unbroken
    assert all(m.dream_loss_end < m.dream_loss_start for m in metrics)


def test_every_release_goes_through_the_seam_exactly_as_planned(unbroken):
    fed, _, agg = unbroken
    cfg = fed.config
    later = [s.name for s in fed.server.specs()]  # the class weights were released in round 0
    planned = ["class_weights", *later]
    assert len(planned) == cfg.releases_per_round == cfg.dream.global_steps + 2
    assert later[0] == "dream/0" and later[-1] == "soft_labels"
    assert agg.plans == [(0, planned), (1, later)]
    seen = [(r, name) for r, name, *_ in agg.sums]
    assert seen == [(0, name) for name in planned] + [(1, name) for name in later]
    lengths = {s.name: s.length for s in fed.server.specs()} | {"class_weights": fed.server.num_classes}
    for _, name, contributors, length in agg.sums:
        assert contributors == (0, 1, 2)
        assert length == lengths[name]


def test_dream_gradients_are_normalised_so_no_architecture_dominates(digits):
    fed = Federation(small_config(rounds=1), dataset=digits)
    x = fed.server.begin_round(0)
    res = fed.aggregator.open_round(round_index=0, participants=fed.client_ids, specs=fed.server.specs())
    fed.server.receive_class_weights(
        res.sum(res.next_spec, {c.client_id: c.class_weights() for c in fed.clients})
    )
    targets = fed.server.assign_targets()
    norms = []
    for c in fed.clients:
        c.begin_round(0, targets=targets)
        norms.append(float(np.linalg.norm(c.dream_gradient(x))))
    assert norms == pytest.approx([fed.config.dream.clip_norm] * 3, rel=1e-5)
    assert all(n <= fed.config.dream.clip_norm for n in norms)  # never trips the seam's clipping


def test_the_same_seed_gives_the_same_numbers_bit_for_bit(digits, unbroken):
    _, metrics, _ = unbroken
    again = Federation(small_config(), dataset=digits)
    first = again.run_round()
    assert first.accuracies == metrics[0].accuracies
    assert first.label_confidence == metrics[0].label_confidence
    assert first.dream_loss_end == metrics[0].dream_loss_end


def test_state_dict_continuation_equals_an_unbroken_run(digits, unbroken):
    fed, metrics, _ = unbroken
    first = Federation(small_config(), dataset=digits)
    first.run_round()
    state = first.state_dict()
    resumed = Federation(small_config(), dataset=digits)
    resumed.load_state_dict(state)
    second = resumed.run_round()
    assert second.round == 1
    assert second.accuracies == metrics[1].accuracies
    assert second.best_mean_accuracy == metrics[1].best_mean_accuracy
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(fed), strict=True))
    assert torch.equal(resumed.last_dreams[0], fed.last_dreams[0])


def test_round_metrics_serialise_to_json(unbroken):
    _, metrics, _ = unbroken
    d = json.loads(json.dumps(metrics[-1].to_dict()))
    assert d["round"] == 1 and len(d["accuracies"]) == 3
    assert d["aggregation"]["vectors"] == 7 and d["bytes_sent_per_client"]["0"] > 0  # no class weights


@pytest.mark.parametrize(
    "overrides",
    [
        dict(method="paper"),
        dict(
            method="paper",
            distill=DistillConfig(
                kd_steps=4, warmup_steps=5, soft_labels="logits", temperature=4.0, student="mlp"
            ),
            dream=DreamConfig(
                batch_size=12, global_steps=3, w_adv=1.0, adv_start_round=0, adaptive_lambda=0.1
            ),
        ),
        dict(
            dream=DreamConfig(
                batch_size=12, global_steps=3, local_steps=2, optimizer="sgd", contribution="clip"
            )
        ),
    ],
    ids=["paper", "paper-logits-student-adversarial-adaptive", "conditional-local-steps-sgd-clip"],
)
def test_every_variant_runs_a_round_through_the_seam(digits, overrides):
    base = dict(
        num_clients=2,
        models=("cnn", "resnet8"),
        dream=DreamConfig(batch_size=12, global_steps=3),
        distill=DistillConfig(kd_steps=4, warmup_steps=5),
    )
    base.update(overrides)
    agg = RecordingAggregator()
    fed = Federation(small_config(**base), aggregator=agg, dataset=digits)
    m = fed.run_round()
    assert len(agg.sums) == fed.config.releases_per_round
    assert all(math.isfinite(a) for a in m.accuracies) and math.isfinite(m.kd_loss)
    if fed.server.student is not None:
        assert m.student_accuracy is not None


def test_federation_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="models"):
        FederationConfig(num_clients=3, models=("cnn", "mlp"))
    with pytest.raises(ConfigError, match="student"):
        FederationConfig(dream=DreamConfig(w_adv=1.0))
    with pytest.raises(ConfigError, match="method"):
        FederationConfig(method="telepathy")
    with pytest.raises(ConfigError, match="alpha"):
        FederationConfig(alpha=0.0)
    assert FederationConfig(models="cnn,mlp,vgg,resnet8").models == ("cnn", "mlp", "vgg", "resnet8")


def test_a_checkpoint_for_a_different_federation_is_refused(digits):
    small = Federation(small_config(num_clients=2, models=("mlp",)), dataset=digits)
    other = Federation(small_config(num_clients=3, models=("mlp",)), dataset=digits)
    with pytest.raises(ConfigError, match="clients"):
        other.load_state_dict(small.state_dict())


def test_the_benchmark_table_reports_mean_and_std_over_clients_and_seeds(tmp_path):
    from codream.bench.federation import BenchmarkResults, MethodRun, summarise, write_markdown

    def run(method, seed, accs):
        return MethodRun(
            method, 0.1, seed, ("cnn", "mlp"), accs, accs, 10.0, 2.0, 5.0 if "codream" in method else None
        )

    results = BenchmarkResults(
        size="tiny",
        dataset="digits",
        num_clients=2,
        models=("cnn", "mlp"),
        fedavg_model="cnn",
        alphas=(0.1,),
        seeds=(0, 1),
        config={"samples_per_client": 10, "rounds": 1, "dream": {}, "distill": {}},
        runs=[run("codream", 0, (0.6, 0.8)), run("codream", 1, (0.7, 0.9)), run("local", 0, (0.5, 0.5))],
    )
    rows = {s.method: s for s in summarise(results)}
    assert rows["codream"].mean == pytest.approx(0.75)
    assert rows["codream"].std == pytest.approx(float(np.std([0.6, 0.8, 0.7, 0.9])))
    assert rows["codream"].seed_means == pytest.approx((0.7, 0.8))
    text = write_markdown(results, tmp_path / "r.md", "python benchmarks/federation.py --size tiny")
    assert (tmp_path / "r.md").read_text() == text
    assert "| codream | 75.0 ± 11.2 | [70.0, 80.0] |" in text
    assert "CoDream − local-only: +25.0 points" in text
    assert "python benchmarks/federation.py --size tiny" in text


def test_the_benchmark_selects_the_round_on_validation_and_reports_its_test_accuracy(tmp_path):
    from codream.bench.federation import BenchmarkResults, MethodRun, summarise, write_markdown

    run = MethodRun(
        "codream", 0.1, 0, ("cnn", "mlp"), (0.5, 0.6), (0.7, 0.8), 10.0, 2.0,
        history=((0.7, 0.8), (0.6, 0.6), (0.5, 0.6)),
        val_history=((0.2, 0.2), (0.5, 0.4), (0.3, 0.3)),
        ensemble_accuracy=0.9, ensemble_val_accuracy=0.85,
        val_held_accuracy=(0.6, 0.5), val_lacked_accuracy=(0.1, float("nan")),
    )  # fmt: skip
    assert run.val_accuracy == (0.3, 0.3)
    assert run.selected_accuracy == (0.6, 0.6)  # round 2 is best on validation, not round 1 on test
    results = BenchmarkResults(
        size="tiny", dataset="digits", num_clients=2, models=("cnn", "mlp"), fedavg_model="cnn",
        alphas=(0.1,), seeds=(0,), config={"samples_per_client": 10, "rounds": 3, "validation": 0.05,
        "dream": {}, "distill": {}}, runs=[run],
    )  # fmt: skip
    rows = {s.method: s for s in summarise(results)}
    assert rows["codream"].val_mean == pytest.approx(0.3)
    assert rows["codream"].selected_mean == pytest.approx(0.6)
    assert rows["codream: teacher ensemble"].val_mean == pytest.approx(0.85)
    text = write_markdown(results, tmp_path / "r.md", "cmd")
    assert "| codream | 55.0 ± 5.0 | [55.0] | 30.0 | 60.0 | 75.0 |" in text
    assert "- codream: 55.0 / 10.0" in text  # a client that lacks no class has no figure for it


def test_the_benchmark_carves_one_validation_split_that_every_method_reports():
    from codream.bench.federation import SIZES, override_size, run_benchmark

    size = override_size(
        SIZES["tiny"],
        [
            "samples_per_client=60", "rounds=2", "validation=0.1", "dream.batch_size=8",
            "dream.global_steps=2", "distill.kd_steps=3", "distill.warmup_steps=4",
        ],
    )  # fmt: skip
    assert size.validation == 0.1
    with pytest.raises(ConfigError, match="validation"):
        override_size(SIZES["tiny"], ["validatoin=0.1"])
    results = run_benchmark(
        size=size,
        dataset="digits",
        models=("cnn", "mlp"),
        alphas=(0.1,),
        seeds=(0,),
        methods=("codream", "local"),
    )
    assert results.config["validation"] == 0.1
    for run in results.runs:
        assert len(run.val_history) == 2 and all(0 <= a <= 1 for v in run.val_history for a in v)
        assert len(run.selected_accuracy) == 2
    (codream,) = [r for r in results.runs if r.method == "codream"]
    assert codream.ensemble_val_accuracy is not None
    assert len(codream.val_held_accuracy) == len(codream.val_lacked_accuracy) == 2
    assert all(0 <= a <= 1 for a in codream.val_held_accuracy)


@pytest.mark.parametrize(
    ("kd", "ratio", "ce"), [(40, 0.4, 16), (5, 0.4, 2), (10, 0.0, 0), (3, 0.5, 1), (25, 0.4, 10)]
)
def test_the_cross_entropy_steps_per_round_are_those_the_loop_interleaves(kd, ratio, ce):
    assert DistillConfig(kd_steps=kd, ce_ratio=ratio).ce_steps_per_round == ce
    owed, taken = 0.0, 0
    for _ in range(kd):  # the client's own accumulation (`Client.distill`)
        owed += ratio
        while owed >= 1.0:
            taken, owed = taken + 1, owed - 1.0
    assert taken <= ce


def test_the_ablation_rows_change_one_piece_each_and_run_as_named(monkeypatch):
    import codream.bench.federation as bench

    monkeypatch.setattr(
        bench,
        "ABLATION",
        (("no KD", ("distill.kd_steps=0",)), ("plain labels", ("distill.label_temperature=1",))),
    )
    size = bench.override_size(
        bench.SIZES["tiny"],
        [
            "samples_per_client=40", "rounds=1", "dream.batch_size=8", "dream.global_steps=2",
            "distill.kd_steps=3", "distill.warmup_steps=2", "distill.label_temperature=2",
        ],
    )  # fmt: skip
    rows = bench.ablation_sizes(size)
    assert [label for label, _ in rows] == ["no KD", "plain labels"]
    assert rows[0][1].distill.kd_steps == 0 and rows[0][1].distill.label_temperature == 2
    assert rows[1][1].distill.kd_steps == 3 and rows[1][1].distill.label_temperature == 1
    results = bench.run_benchmark(
        size=size,
        dataset="digits",
        models=("mlp",),
        alphas=(0.1,),
        seeds=(0,),
        methods=("codream", "ablation"),
    )
    runs = {r.method: r for r in results.runs}
    assert list(runs) == ["codream", "no KD", "plain labels"]
    assert runs["codream"].kd_step_seconds is not None and runs["plain labels"].kd_step_seconds is not None
    assert runs["no KD"].kd_step_seconds is None


def test_every_ablation_row_of_the_cpu_size_keeps_its_cross_entropy_budget():
    from codream.bench.federation import SIZES, ablation_sizes

    cpu = SIZES["cpu"]
    rows = ablation_sizes(cpu)
    assert len(rows) == 8
    for label, size in rows:
        assert size.distill.ce_steps_per_round == cpu.distill.ce_steps_per_round, label
        assert size.dream.global_steps == cpu.dream.global_steps and size.rounds == cpu.rounds, label


def test_the_server_student_leaves_every_client_as_it_would_be_without_it(digits):
    """Without an adversarial or adaptive term the student is post-processing: clients are unchanged."""
    distill = DistillConfig(kd_steps=6, warmup_steps=10, buffer_size=48)
    cfg = small_config(models=("cnn", "mlp"), num_clients=2, rounds=1, distill=distill)
    plain = Federation(cfg, dataset=digits)
    with_student = Federation(replace(cfg, distill=replace(distill, student="cnn")), dataset=digits)
    a, b = plain.run_round(), with_student.run_round()
    assert a.accuracies == b.accuracies and b.student_accuracy is not None
    for c, d in zip(plain.clients, with_student.clients, strict=True):
        for p, q in zip(c.model.state_dict().values(), d.model.state_dict().values(), strict=True):
            assert torch.equal(p, q)
