"""`codream run` end to end on the real learning loop and aggregators, with tiny federations.

Each aggregation mode runs once per module (fixtures below) and several tests read its run directory.
"""

from __future__ import annotations

import csv
import json
import re
import tomllib

import pytest
import torch
from click.testing import CliRunner

from codream.cli import main
from codream.rundir import RunDir
from codream.secagg.encoding import FixedPointCodec

TINY = [
    "--clients", "3", "--models", "mlp", "--dream-batch", "8", "--global-steps", "2", "--kd-steps", "2",
    "--warmup-steps", "3", "--limit-test", "60", "--no-progress",
]  # fmt: skip
EVERY_FILE = (
    "config.toml", "federation.json", "metrics.jsonl", "metrics.csv", "run.log", "checkpoint.pt",
    "dreams.pt", "summary.json", "summary.md", "plots/accuracy.png", "plots/dreams.png",
)  # fmt: skip


def run_cli(*args: str):
    return CliRunner().invoke(main, ["run", *TINY, *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-round run per aggregation mode, same seed and data."""
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for mode in ("plain", "secure", "secure+dp"):
        path = base / mode.replace("+", "_")
        result = run_cli("--rounds", "2", "--aggregation", mode, "--out", str(path))
        assert result.exit_code == 0, result.output
        out[mode] = (path, result)
    return out


def metrics(path):
    """Every round's record as the operator sees it: metrics.jsonl with client_private.jsonl merged in."""
    return RunDir(path).read_metrics()


def released(path, name="metrics.jsonl"):
    return [json.loads(line) for line in (path / name).read_text().splitlines()]


@pytest.mark.parametrize("mode", ["plain", "secure", "secure+dp"])
def test_a_short_run_in_each_mode_writes_every_file(runs, mode):
    path, result = runs[mode]
    for name in EVERY_FILE:
        assert (path / name).is_file(), name
    assert [m["round"] for m in metrics(path)] == [1, 2]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["aggregation"] == mode and summary["rounds_completed"] == 2
    assert len(summary["final_accuracy"]) == 3
    assert f"report: {path / 'summary.md'}" in result.output
    assert "round 2/2: acc" in result.output
    # Only a run with DP has a budget to plot, and the printed plots are the ones written.
    assert (path / "plots" / "epsilon.png").is_file() == (mode == "secure+dp")
    plots_line = next(line for line in result.output.splitlines() if line.startswith("plots:"))
    assert ("epsilon.png" in plots_line) == (mode == "secure+dp")


CLIENT_PRIVATE = ("accuracy", "accuracy_mean", "accuracy_std", "warmup_accuracy")
ENGINE_PRIVATE = ("accuracies", "best_accuracies", "ce_loss", "warmup_loss", "kd_loss", "dream_loss_start")


def test_a_client_level_dp_run_keeps_what_its_models_measured_out_of_the_released_metrics(runs):
    path, _ = runs["secure+dp"]
    for record in released(path):
        assert not set(CLIENT_PRIVATE) & set(record), record.keys()
        assert not set(ENGINE_PRIVATE) & set(record["federation"])
        assert {"participants", "survivors", "epsilon", "seconds"} <= set(record)
        assert "class_coverage" in record["federation"]  # post-processing of released soft labels
    private = released(path, "client_private.jsonl")
    assert [p["round"] for p in private] == [1, 2]
    assert all(len(p["accuracy"]) == 3 and "ce_loss" in p["federation"] for p in private)
    rows = list(csv.DictReader((path / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 2 and all(v == "" for r in rows for k, v in r.items() if k.startswith("accuracy"))
    assert "outside the privacy guarantee" in (path / "README.md").read_text()
    summary = json.loads((path / "summary.json").read_text())
    assert summary["outside_guarantee"]["file"] == "client_private.jsonl"
    assert "accuracy" in summary["outside_guarantee"]["values"]
    assert "outside the privacy guarantee" in (path / "summary.md").read_text()
    # The operator's view merges both halves back.
    assert [len(m["accuracy"]) for m in metrics(path)] == [3, 3]


@pytest.mark.parametrize("mode", ["plain", "secure"])
def test_a_run_without_dp_writes_every_metric_in_one_file(runs, mode):
    path, _ = runs[mode]
    assert not (path / "client_private.jsonl").exists() and not (path / "README.md").exists()
    assert all("accuracy" in r and "ce_loss" in r["federation"] for r in released(path))
    assert "outside_guarantee" not in json.loads((path / "summary.json").read_text())


def test_secure_plus_dp_writes_the_ledger_and_reports_epsilon_within_its_target(runs):
    path, result = runs["secure+dp"]
    ledger = json.loads((path / "privacy_ledger.json").read_text())
    assert [r["round"] for r in ledger["rounds"]] == [0, 1]
    eps = [m["epsilon"] for m in metrics(path)]
    assert 0 < eps[0] < eps[1] <= 8.0
    assert ledger["epsilon"] == pytest.approx(eps[1])
    assert "eps " in result.output and "epsilon" in result.output


def test_plain_and_secure_runs_record_no_epsilon(runs):
    for mode in ("plain", "secure"):
        assert all(m["epsilon"] is None for m in metrics(runs[mode][0]))
        assert not (runs[mode][0] / "privacy_ledger.json").exists()


def test_secure_gives_the_dreams_and_accuracies_of_plain_up_to_quantisation(runs):
    """The secure sum differs from the plain one only by fixed-point rounding.

    The codec bounds that per coordinate of one sum (about 4e-9 here for 3 clients at clip norm 1,
    32 bits). Adam in data space then carries the difference through the global steps, so the dreams
    are compared at 1e-4 (observed: under 1e-6); the accuracies must agree exactly.
    """
    bound = FixedPointCodec(clip_norm=1.0, num_summands=3, bits=32).quantisation_bound(3)
    assert bound < 1e-8
    plain, secure = (torch.load(runs[m][0] / "dreams.pt") for m in ("plain", "secure"))
    assert torch.allclose(plain["x"], secure["x"], atol=1e-4, rtol=0)
    assert torch.allclose(plain["soft_labels"], secure["soft_labels"], atol=1e-4, rtol=0)
    assert [m["accuracy"] for m in metrics(runs["plain"][0])] == [
        m["accuracy"] for m in metrics(runs["secure"][0])
    ]


def test_resume_continues_to_the_same_result_as_an_unbroken_run(runs, tmp_path):
    out = tmp_path / "stopped"
    first = run_cli("--rounds", "1", "--out", str(out))
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(main, ["run", "--resume", str(out), "--rounds", "2", "--no-progress"])
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output and "after round 1 of 2" in second.output
    unbroken = runs["plain"][0]
    assert [m["accuracy"] for m in metrics(out)] == [m["accuracy"] for m in metrics(unbroken)]
    a, b = torch.load(out / "dreams.pt"), torch.load(unbroken / "dreams.pt")
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["soft_labels"], b["soft_labels"])
    assert tomllib.loads((out / "config.toml").read_text())["rounds"] == 2


def test_a_run_with_dropout_completes_and_reports_the_survivors(tmp_path):
    # Seed 4 drops one of four clients in the first round's key sharing (the schedule is seeded).
    out = tmp_path / "dropout"
    result = run_cli("--clients", "4", "--rounds", "1", "--aggregation", "secure", "--dropout", "0.3",
                     "--seed", "4", "--out", str(out), "--progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "dream" in result.stderr  # the progress bars, on stderr
    (record,) = metrics(out)
    assert record["participants"] == 4 and record["survivors"] < 4
    assert f"survivors {record['survivors']}/4" in result.output
    assert json.loads((out / "summary.json").read_text())["min_survivors"] == record["survivors"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--models", "transformer"], 2, "transformer"),
        (["--dataset", "imagenet"], 2, "imagenet"),
        (["--aggregation", "secure", "--threshold", "5"], 2, "--threshold 5 is above the number of clients"),
        (["--dataset", "fashion-mnist", "--data-dir", "/no/such/folder"], 3, "/no/such/folder"),
        (["--aggregation", "secure+dp", "--epsilon", "1e-9"], 2, "--epsilon 1e-09 cannot be met"),
        (["--device", "tpu"], 2, "'tpu' is not one of"),
        (["--privacy-unit", "example", "--aggregation", "secure+dp"], 2, "choose --aggregation plain"),
        (["--privacy-unit", "example", "--epsilon", "1e-9"], 2, "--epsilon 1e-09 cannot be met by"),
    ],
    ids=["unknown model", "unknown dataset", "threshold above clients", "missing data folder",
         "epsilon out of reach", "unknown device", "two privacy units", "example epsilon out of reach"],
)  # fmt: skip
def test_bad_input_gets_one_clear_line_and_a_non_zero_exit(tmp_path, args, code, message):
    out = tmp_path / "bad"
    result = run_cli(*args, "--out", str(out))
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_malformed_config_file_gets_one_clear_line(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text("clients = 3\nrounds = = 2\n")
    result = CliRunner().invoke(main, ["run", "--config", str(cfg)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["bench"],
        ["bench", "secagg"],
        ["bench", "federation"],
        ["bench", "tradeoff"],
        ["privacy"],
    ],
    ids=lambda a: " ".join(a) or "codream",
)
def test_help_of_every_command(args):
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_a_round_with_too_few_survivors_stops_with_exit_5_and_says_what_to_change(tmp_path):
    # Seed 0 drops two of four clients before key sharing in round 1, below the threshold of 3.
    out = tmp_path / "aborted"
    result = run_cli("--clients", "4", "--rounds", "1", "--aggregation", "secure", "--dropout", "0.3",
                     "--seed", "0", "--out", str(out))  # fmt: skip
    assert result.exit_code == 5, result.output
    assert "too_few_peers" in result.output and "no round finished" in result.output
    assert f"`codream run --resume {out} --dropout 0`" in result.output
    assert "Traceback" not in result.output
    # The hint works as written: the round the seeded dropouts aborted runs without them.
    resumed = CliRunner().invoke(main, ["run", "--resume", str(out), "--dropout", "0", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert [m["round"] for m in metrics(out)] == [1]


def test_the_privacy_report_reads_the_ledger_of_a_secure_dp_run(runs):
    path, _ = runs["secure+dp"]
    result = CliRunner().invoke(main, ["privacy", "report", str(path), "--json", "--no-plot"])
    assert result.exit_code == 0, result.output
    assert str(round(metrics(path)[-1]["epsilon"], 3))[:4] in result.output


def test_the_privacy_report_counts_rounds_from_1_as_the_run_does(runs):
    path, result = runs["secure+dp"]
    assert "round 1/2" in result.output and "round 2/2" in result.output
    report = CliRunner().invoke(main, ["privacy", "report", str(path), "--json", "--no-plot"])
    assert [row["round"] for row in json.loads(report.output)["per_round"]] == [1, 2]
    text = CliRunner().invoke(main, ["privacy", "report", str(path), "--no-plot"]).output
    # Both tables, each client's ledger and the run's, count from 1.
    assert [line.split()[0] for line in text.splitlines() if line[:5].strip().isdigit()] == ["1", "2"] * 2


def test_the_noise_multiplier_a_run_prints_gives_its_epsilon_back(runs):
    """`codream run` and `codream privacy epsilon` mean the same thing by "noise multiplier"."""
    path, result = runs["secure+dp"]
    m = re.search(
        r"noise multiplier (\S+) per round \(z_eff; each of its (\d+) releases (\S+)\)", result.output
    )
    assert m, result.output
    z_round, releases, z_release = m.group(1), m.group(2), m.group(3)
    spent = metrics(path)[-1]["epsilon"]
    common = ["privacy", "epsilon", "--sample-rate", "1", "--rounds", "2", "--json"]
    by_round = CliRunner().invoke(main, [*common, "--noise-multiplier", z_round])
    assert json.loads(by_round.output)["epsilon"]["rdp"] == pytest.approx(spent, rel=1e-3)
    per_release = ["--release-noise-multiplier", z_release, "--releases-per-round", releases]
    by_release = CliRunner().invoke(main, [*common, *per_release])
    assert json.loads(by_release.output)["epsilon"]["rdp"] == pytest.approx(spent, rel=1e-3)
    # The round's value with the round's releases would count the releases twice: refused, not wrong.
    mixed = CliRunner().invoke(
        main, [*common, "--noise-multiplier", z_round, "--releases-per-round", releases]
    )
    assert mixed.exit_code == 2 and "--release-noise-multiplier" in mixed.output


def test_a_resumed_secure_run_equals_the_unbroken_one(runs, tmp_path):
    # Secure rounds draw their stochastic-rounding coins from the run seed and round index.
    out = tmp_path / "stopped-secure"
    assert run_cli("--rounds", "1", "--aggregation", "secure", "--out", str(out)).exit_code == 0
    result = CliRunner().invoke(main, ["run", "--resume", str(out), "--rounds", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    unbroken = runs["secure"][0]
    assert [m["accuracy"] for m in metrics(out)] == [m["accuracy"] for m in metrics(unbroken)]
    assert torch.equal(torch.load(out / "dreams.pt")["x"], torch.load(unbroken / "dreams.pt")["x"])


def test_example_level_dp_trains_every_client_with_dp_sgd_and_stays_within_its_target(tmp_path):
    out = tmp_path / "example"
    args = ("--rounds", "2", "--kd-steps", "5", "--privacy-unit", "example", "--epsilon", "4")
    result = run_cli(*args, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "example-level DP: DP-SGD on every client" in result.output
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["granularity"] == "example" and privacy["noise_multiplier"] > 0
    eps = [m["epsilon"] for m in metrics(out)]
    assert 0 < eps[0] < eps[1] <= 4.0
    ledger = json.loads((out / "privacy_ledger.json").read_text())
    assert ledger["granularity"] == "example" and ledger["epsilon"] == pytest.approx(eps[1])
    # DP models: their test accuracies are post-processing and stay; the losses of private batches go.
    for record in released(out):
        assert len(record["accuracy"]) == 3 and "kd_loss" in record["federation"]
        assert not {"ce_loss", "warmup_loss"} & set(record["federation"])
    assert all("ce_loss" in p["federation"] for p in released(out, "client_private.jsonl"))
    # The conditional method's class weights come from one charged DP label histogram per client.
    for accountant in ledger["rounds"][-1]["client_accountants"].values():
        histograms = [e for e in accountant["history"] if e["sample_rate"] == 1.0]
        assert [e["noise_multiplier"] for e in histograms] == [20.0]
    federation = json.loads((out / "federation.json").read_text())
    assert federation["norm"] == "group" and federation["dream"]["w_bn"] == 0.0
