"""The privacy/accuracy trade-off benchmark: a tiny run end to end, its tables and plots, and its remedy."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from codream.bench import tradeoff
from codream.bench.tradeoff import (
    QUICK,
    RunRecord,
    run_tradeoff,
    summarise,
    write_json,
    write_markdown,
    write_plots,
)
from codream.exceptions import ConfigError
from codream.federation.config import FederationConfig
from codream.privacy.projection import BlockMeans, LowFrequency

TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    limit_test=100,
    epsilons=(8.0, math.inf),
    silo_samples=40,
    remedies=(),
)


@pytest.fixture(scope="module")
def results():
    return run_tradeoff(TINY, device="cpu", settings=("cross-silo",), strict=True)


def _runs(results, **match):
    return [r for r in results.runs if all(getattr(r, k) == v for k, v in match.items())]


def test_the_cross_silo_run_covers_every_mode_and_baseline(results):
    modes = {(r.mode, r.epsilon) for r in results.runs}
    assert modes == {
        ("plain", None),
        ("secure", None),
        ("secure+dp", 8.0),
        ("example-dp", 8.0),
        ("example-dp", math.inf),
        ("local-dp-sgd", 8.0),
        ("dp-fedavg", 8.0),
        ("dp-fedavg", math.inf),
        ("local", None),
        ("fedavg", None),
        ("centralized", None),
    }
    assert all(r.setting == "cross-silo" and r.partition == "dir0.1" for r in results.runs)


def test_the_private_baselines_spend_no_more_than_codream_at_the_same_target(results):
    (ours,) = _runs(results, mode="example-dp", epsilon=8.0, remedy=None)
    (local,) = _runs(results, mode="local-dp-sgd", epsilon=8.0)
    (fedavg,) = _runs(results, mode="dp-fedavg", epsilon=8.0)
    assert 0 < local.epsilon_spent <= 8.0 and 0 < fedavg.epsilon_spent <= 8.0
    # The same DP-SGD schedule as CoDream's clients, which also pay for their label histogram.
    assert local.extra["dp_sgd_steps"] == ours.extra["dp_sgd_steps"]
    assert local.noise_multiplier <= ours.noise_multiplier
    # DP-FedAvg releases one vector per round (its update) through the same seam, every client each round.
    assert fedavg.releases_per_round == 1 and fedavg.released_dimension > 0
    (free,) = _runs(results, mode="dp-fedavg", epsilon=math.inf)
    assert free.epsilon_spent is None and free.noise_multiplier is None


def test_the_results_say_where_codream_wins_and_loses_against_the_private_baselines(results, tmp_path):
    text = write_markdown(results, tmp_path / "t.md").read_text()
    assert "## CoDream under DP against the private baselines, at equal ε" in text
    assert "| ε | CoDream (example-dp) | local DP-SGD (example) | DP-FedAvg (client) | best |" in text
    assert "CoDream wins at" in text and "It loses at" in text
    assert "q = cohort / population" not in text  # no amplification is claimed


def test_accuracies_are_the_final_round_means_over_the_clients(results):
    for r in results.runs:
        assert len(r.final_accuracies) == TINY.silo_clients
        assert all(0.0 <= a <= 1.0 for a in r.final_accuracies)
        assert r.mean_accuracy == pytest.approx(np.mean(r.final_accuracies))
        assert r.std_accuracy == pytest.approx(np.std(r.final_accuracies))


def test_example_level_dp_spends_no_more_than_its_target(results):
    (dp,) = _runs(results, mode="example-dp", epsilon=8.0, remedy=None)
    assert 0 < dp.epsilon_spent <= 8.0 * 1.01
    assert dp.noise_multiplier > 0
    assert dp.nsr == 0.0  # releases are post-processing of a DP model


def test_the_larger_dp_batch_remedy_takes_fewer_larger_steps_within_the_same_budget(results):
    (dp,) = _runs(results, mode="example-dp", epsilon=8.0, remedy=None)
    (big,) = _runs(results, mode="example-dp", epsilon=8.0, remedy="dp-large-batch")
    assert big.extra["dp_sgd_batch"] == 2 * dp.extra["dp_sgd_batch"]
    assert big.extra["dp_sgd_steps"] < dp.extra["dp_sgd_steps"]
    assert 0 < big.epsilon_spent <= 8.0 * 1.01


def test_cost_per_round_is_measured_for_each_aggregation_mode(results):
    (plain,) = _runs(results, mode="plain")
    (secure,) = _runs(results, mode="secure")
    (secure_dp,) = _runs(results, mode="secure+dp")
    for r in (plain, secure, secure_dp):
        assert r.seconds_per_round > 0
        assert r.bytes_per_client_per_round > 0
        assert r.releases_per_round == 2 + TINY.global_steps  # class weights, dream steps, soft labels
    # plain sends float64 coordinates, secure 32-bit masked words plus key material
    assert secure.bytes_per_client_per_round != plain.bytes_per_client_per_round
    # client-level DP with every silo in every round: q = 1, and the noise of one release is reported
    assert secure_dp.extra["sample_rate"] == 1.0
    assert 0 < secure_dp.epsilon_spent <= 8.0
    assert secure_dp.nsr > 0 and secure_dp.nsr_cohort == pytest.approx(secure_dp.nsr / TINY.silo_clients)


def test_the_missing_cross_device_part_is_recorded_not_silently_dropped(monkeypatch, results):
    monkeypatch.setattr(tradeoff, "cohort_sampling_supported", lambda: False)
    r = run_tradeoff(dataclasses.replace(TINY, epsilons=(8.0,)), device="cpu", settings=("cross-device",))
    assert r.runs == []
    assert any("cross-device part skipped" in n for n in r.notes)


def _cohort_config() -> type:
    """A configuration that carries a cohort size, for a learning loop that cannot sample cohorts yet
    (every client then takes part, which still exercises the whole cross-device path)."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class CohortConfig(FederationConfig):
        clients_per_round: int | None = None

    return CohortConfig


def test_the_cross_device_part_runs_secure_dp_and_its_remedies_once_cohorts_exist(monkeypatch):
    native = tradeoff.cohort_sampling_supported()
    if not native:
        monkeypatch.setattr(tradeoff, "FederationConfig", _cohort_config())
    assert tradeoff.cohort_sampling_supported()
    size = dataclasses.replace(
        TINY,
        population=6,
        cohorts=(3,),
        device_samples=8,
        device_limit_test=50,
        epsilons=(8.0, math.inf),
        remedies=(
            tradeoff.Remedy("low-resolution", "2x2 block means", projection="blocks:2"),
            tradeoff.Remedy("dct", "4x4 lowest frequencies", projection="dct:4", renormalize=True),
        ),
    )
    r = run_tradeoff(size, device="cpu", settings=("cross-device",), strict=True)
    assert r.notes == []
    by_mode = {(x.mode, x.epsilon, x.remedy): x for x in r.runs}
    assert set(by_mode) >= {("plain", None, None), ("secure", None, None), ("secure+dp", 8.0, None)}
    dp = by_mode[("secure+dp", 8.0, None)]
    assert 0 < dp.epsilon_spent <= 8.0
    # the noise of one release, against one client's clip norm, at the released dimension
    assert dp.nsr == pytest.approx(dp.release_noise_multiplier * math.sqrt(dp.released_dimension), rel=0.05)
    lowres = by_mode[("secure+dp", 8.0, "low-resolution")]
    assert lowres.released_dimension == dp.released_dimension // 4
    assert lowres.nsr < dp.nsr
    assert 0 < lowres.extra["projection_signal_fraction"] <= 1
    dct = by_mode[("secure+dp", 8.0, "dct")]
    assert dct.released_dimension == dp.released_dimension // 49  # 4x4 of 28x28 per dream
    assert (
        by_mode[("secure+dp", math.inf, None)].final_accuracies
        == by_mode[("secure", None, None)].final_accuracies
    )
    if native:
        # only the sampled cohort releases and is evaluated, and the noise is shared by it
        assert all(len(x.final_accuracies) == 3 for x in r.runs if x.cohort == 3 and x.mode != "dp-fedavg")
        assert dp.nsr_cohort == pytest.approx(dp.nsr / 3)
    # DP-FedAvg with the same cohorts, calibrated like CoDream's secure+dp: a client in every round
    fedavg = by_mode[("dp-fedavg", 8.0, None)]
    assert fedavg.cohort == 3 and 0 < fedavg.epsilon_spent <= 8.0
    assert fedavg.noise_multiplier == pytest.approx(dp.noise_multiplier)  # one release: z = z_eff
    assert fedavg.nsr_cohort == pytest.approx(fedavg.nsr / 3)
    assert ("dp-fedavg", math.inf, None) in by_mode


def test_a_failing_block_is_recorded_and_the_runs_before_it_are_kept(monkeypatch, tmp_path):
    calls = []

    def cross_silo(self, alpha, seed, out):
        calls.append(seed)
        if seed == 1:
            raise RuntimeError("diverged")
        out.append(
            RunRecord(
                setting="cross-silo",
                partition="dir0.1",
                cohort=None,
                mode="plain",
                epsilon=None,
                seed=seed,
                remedy=None,
                final_accuracies=(0.5,),
                mean_accuracy=0.5,
                std_accuracy=0.0,
                best_mean_accuracy=0.5,
            )
        )

    monkeypatch.setattr(tradeoff.Runner, "cross_silo", cross_silo)
    checkpoint = tmp_path / "partial.json"
    size = dataclasses.replace(TINY, seeds=(0, 1, 2))
    r = run_tradeoff(size, device="cpu", settings=("cross-silo",), checkpoint=checkpoint)
    assert calls == [0, 1, 2]
    assert [x.seed for x in r.runs] == [0, 2]
    assert any("seed 1 failed" in n and "diverged" in n for n in r.notes)
    assert len(json.loads(checkpoint.read_text())["runs"]) == 2
    with pytest.raises(RuntimeError, match="diverged"):
        run_tradeoff(size, device="cpu", settings=("cross-silo",), strict=True)


def test_the_results_file_and_plots_come_from_the_runs(results, tmp_path):
    results.command = "python benchmarks/tradeoff.py --quick"
    plots = write_plots(results, tmp_path / "tradeoff")
    md = write_markdown(results, tmp_path / "tradeoff.md", plots=plots).read_text()
    js = json.loads(write_json(results, tmp_path / "tradeoff.json").read_text())
    for p in plots:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (plain,) = _runs(results, mode="plain")
    assert f"{100 * plain.mean_accuracy:.1f} ± {100 * plain.std_accuracy:.1f} ± 0.0" in md
    assert "python benchmarks/tradeoff.py --quick" in md
    assert results.hardware["nproc"] in md
    assert "## Targets" in md and "ε = 8" in md
    assert len(js["runs"]) == len(results.runs)
    assert {row["mode"] for row in js["summary"]} >= {"plain", "secure", "example-dp"}


def test_summaries_give_the_spread_over_clients_and_over_seeds():
    def run(seed, accs):
        return RunRecord(
            setting="cross-silo",
            partition="iid",
            cohort=None,
            mode="plain",
            epsilon=None,
            seed=seed,
            remedy=None,
            final_accuracies=tuple(accs),
            mean_accuracy=float(np.mean(accs)),
            std_accuracy=float(np.std(accs)),
            best_mean_accuracy=float(np.mean(accs)),
        )

    (row,) = summarise([run(0, [0.5, 0.7]), run(1, [0.7, 0.9])])
    assert row.seeds == 2
    assert row.mean == pytest.approx(0.7)
    assert row.std_clients == pytest.approx(0.1)
    assert row.std_seeds == pytest.approx(0.1)


def test_projections_are_named_by_kind_and_size():
    assert isinstance(tradeoff.parse_projection("blocks:2"), BlockMeans)
    assert isinstance(tradeoff.parse_projection("dct:7"), LowFrequency)
    for bad in ("blocks", "dct:x", "wavelet:3"):
        with pytest.raises(ConfigError, match="projection"):
            tradeoff.parse_projection(bad)


def test_results_that_named_block_means_downsample_still_read_back(results, tmp_path):
    path = write_json(results, tmp_path / "old.json")
    data = json.loads(path.read_text())
    data["size"]["remedies"] = [{"name": "low-resolution", "description": "2x2", "downsample": 2}]
    path.write_text(json.dumps(data))
    (remedy,) = tradeoff.read_json(path).size.remedies
    assert remedy.projection == "blocks:2" and not remedy.renormalize


def test_a_spent_budget_starts_no_run_and_says_what_did_not_run():
    r = run_tradeoff(TINY, device="cpu", settings=("cross-silo",), budget_s=1e-9)
    assert r.runs == []
    assert any("time budget ran out" in n and "cross-silo dir0.1 seed 0" in n for n in r.notes)


def test_the_budget_stops_between_runs_and_keeps_the_finished_ones(monkeypatch):
    runner = tradeoff.Runner(TINY, tradeoff.resolve_device("cpu"), lambda line: None, deadline=None)
    out: list[RunRecord] = []
    notes: list[str] = []
    real = tradeoff.Runner.federation

    def federation(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        self.deadline = 0.0  # the budget runs out while the first run is under way
        return result

    monkeypatch.setattr(tradeoff.Runner, "federation", federation)
    tradeoff._run_unit(runner, tradeoff._Unit("cross-silo", 0.1, 0), out, notes, strict=True)
    assert [r.mode for r in out] == ["plain"]  # the started run finished, the next did not start
    assert len(notes) == 1 and "secure" in notes[0] and "did not run" in notes[0]


def test_worker_processes_give_the_same_numbers_as_one_process(results):
    parallel = run_tradeoff(TINY, device="cpu", settings=("cross-silo",), jobs=2, threads=1)
    assert parallel.hardware["jobs"] == "2"
    # Modes with no randomness from the OS are reproducible to the bit, in whatever process they run.
    key = ("plain", "secure", "example-dp", "local", "fedavg", "centralized")
    seq = [(r.mode, r.epsilon, r.final_accuracies) for r in results.runs if r.mode in key]
    par = [(r.mode, r.epsilon, r.final_accuracies) for r in parallel.runs if r.mode in key]
    assert par == seq


def test_jobs_and_budget_are_checked():
    with pytest.raises(ConfigError, match="jobs"):
        run_tradeoff(TINY, device="cpu", jobs=0)
    with pytest.raises(ConfigError, match="budget"):
        run_tradeoff(TINY, device="cpu", budget_s=0)


def test_results_read_back_from_json_render_the_same_file(results, tmp_path):
    results.command = "python benchmarks/tradeoff.py --quick"
    back = tradeoff.read_json(write_json(results, tmp_path / "a.json"))
    assert back.runs == results.runs and back.size == results.size and back.notes == results.notes
    assert write_markdown(back, tmp_path / "b.md").read_text() == write_markdown(
        results, tmp_path / "a.md"
    ).read_text().replace("a.md", "b.md")


def test_split_units_cover_every_run_once_and_the_targets_come_first():
    size = dataclasses.replace(QUICK, seeds=(0, 1), cohorts=(4, 8))
    whole = tradeoff._units(size, ("cross-silo", "cross-device"))
    split = tradeoff._units(size, ("cross-silo", "cross-device"), split=True)
    assert all(u.key is None for u in whole)
    assert len(split) == sum(len(tradeoff._run_keys(size, u)) for u in whole)
    assert len(set(split)) == len(split)
    ordered = sorted(split, key=lambda u: tradeoff._priority(size, u))
    keys = [u.key for u in ordered]
    assert keys[: keys.count("baselines")] == ["baselines"] * keys.count("baselines")
    first_other_eps = min(i for i, k in enumerate(keys) if k.startswith("eps:") and k != "eps:8")
    assert max(i for i, k in enumerate(keys) if k == "eps:8") < first_other_eps
    # Within a rank, the larger cohort starts first.
    plain = [u for u in ordered if u.key == "plain" and u.kind == "cross-device"]
    assert [u.cohort for u in plain] == sorted((u.cohort for u in plain), reverse=True)


def test_a_resumed_run_runs_only_what_is_missing_and_keeps_the_rest(results, monkeypatch):
    cut = dataclasses.replace(
        results,
        runs=[r for r in results.runs if r.mode not in ("secure", "fedavg")],
        notes=["cross-silo dir0.1 seed 0 [secure]: the time budget ran out before `x`; it did not run."],
    )
    started = []
    real = tradeoff.Runner.federation

    def federation(self, config, aggregator, **kwargs):
        started.append(kwargs["mode"])
        return real(self, config, aggregator, **kwargs)

    monkeypatch.setattr(tradeoff.Runner, "federation", federation)
    resumed = run_tradeoff(TINY, device="cpu", settings=("cross-silo",), resume=cut, command="again")
    assert started == ["secure"]  # the baselines unit reruns too, but no other federation
    assert sorted(r.mode for r in resumed.runs) == sorted(r.mode for r in results.runs)
    assert resumed.notes == [] and resumed.complete and resumed.command.endswith("resumed with: again")
    with pytest.raises(ConfigError, match="resume"):
        run_tradeoff(QUICK, device="cpu", resume=cut)


def test_a_resumed_run_may_add_a_remedy_but_not_change_the_size(results):
    extra = tradeoff.Remedy("dp-double-batch", "twice the batch", dp_batch_factor=2)
    more = dataclasses.replace(TINY, silo_remedies=(*TINY.silo_remedies, extra))
    resumed = run_tradeoff(more, device="cpu", settings=("cross-silo",), resume=results)
    added = resumed.runs[len(results.runs) :]
    assert [r.remedy for r in added] == ["dp-double-batch"]
    with pytest.raises(ConfigError, match="only the remedies may differ"):
        run_tradeoff(dataclasses.replace(TINY, rounds=2), device="cpu", resume=results)


def test_the_cross_silo_table_per_client_names_each_architecture(results, tmp_path):
    md = write_markdown(results, tmp_path / "t.md").read_text()
    assert "| partition | mode | ε | 0: mlp | 1: cnn |" in md
    (plain,) = _runs(results, mode="plain")
    cells = " | ".join(f"{100 * a:.1f}" for a in plain.final_accuracies)
    assert f"| dir0.1 | plain | - | {cells} |" in md


def test_runs_resumed_on_another_machine_are_named_and_keep_the_first_machines_run_time(results):
    gpu = dataclasses.replace(
        results, device="cuda", hardware={**results.hardware, "gpu": "Some GPU"}, seconds=123.0
    )
    extra = tradeoff.Remedy("dp-kd-lr-test", "KD at a smaller lr", dp_kd_lr=0.01)
    more = dataclasses.replace(TINY, silo_remedies=(*TINY.silo_remedies, extra))
    resumed = run_tradeoff(more, device="cpu", settings=("cross-silo",), resume=gpu)
    assert resumed.device == "cuda" and resumed.hardware["gpu"] == "Some GPU"
    assert resumed.seconds == 123.0
    (note,) = [n for n in resumed.notes if n.startswith("The 1 runs this resumed call added ran on `cpu`")]
    assert "the others on `cuda` (GPU Some GPU" in note and "min there." in note


def test_a_smaller_grid_from_the_command_line_is_named_in_the_notes():
    size, note = tradeoff._shrunk_size(tradeoff.CPU, epsilons="1,8,inf", cohorts="20", no_remedies=True)
    assert size.epsilons == (1.0, 8.0, math.inf) and size.cohorts == (20,)
    assert size.remedies == () and size.silo_remedies == ()
    assert "instead of 1, 2, 4, 8, 16, ∞" in note and "cohorts 20 instead of 20, 100" in note
    assert "no remedies" in note
    assert tradeoff._shrunk_size(tradeoff.CPU, epsilons=None, cohorts=None, no_remedies=False) == (
        tradeoff.CPU,
        "",
    )
