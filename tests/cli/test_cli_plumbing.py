"""The CLI's own machinery, with a small deterministic stand-in for the learning loop (conftest.py).

The stand-in keeps state (a generator and a counter) that `--resume` must carry across, so these tests
pin down the run directory, the checkpoint order, config resolution and the reports without paying for
real training; tests/cli/test_cli_run.py drives the real federation.
"""

from __future__ import annotations

import json
import re
import tomllib

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from codream import plots, report
from codream.cli import main
from codream.cli import run as run_module
from codream.cli.config import RunConfig, dump_toml, load_toml
from codream.exceptions import ConfigError
from codream.rundir import RunDir


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_a_run_writes_config_metrics_checkpoint_summary_and_plots(tmp_path, fake_engine):
    out = tmp_path / "run"
    result = invoke(["run", "--rounds", "3", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for name in (
        "config.toml",
        "metrics.jsonl",
        "checkpoint.pt",
        "dreams.pt",
        "summary.json",
        "summary.md",
        "metrics.csv",
        "run.log",
        "plots/accuracy.png",
        "plots/dreams.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "plots" / "epsilon.png").exists()  # no DP: no budget to plot
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    assert "report:" in result.output and str(out / "summary.md") in result.output
    assert "round 3/3" in result.output


def test_the_saved_config_reads_back_as_the_same_run_config(tmp_path, fake_engine):
    out = tmp_path / "run"
    invoke(["run", "--rounds", "2", "--clients", "3", "--models", "mlp", "--out", str(out), "--no-progress"])
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["clients"] == 3 and saved["models"] == ["mlp"] and saved["rounds"] == 2
    assert "out" not in saved  # so that --config RUN_DIR/config.toml runs anew instead of being refused


def test_resume_after_a_stop_gives_the_same_metrics_as_an_unbroken_run(tmp_path, fake_engine):
    full, part = tmp_path / "full", tmp_path / "part"
    invoke(["run", "--rounds", "4", "--out", str(full), "--no-progress"])
    invoke(["run", "--rounds", "2", "--out", str(part), "--no-progress"])
    result = invoke(["run", "--resume", str(part), "--rounds", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    a = [json.loads(x)["accuracy"] for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["accuracy"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert a == b and len(a) == 4


def test_resume_drops_metrics_written_after_the_last_checkpoint(tmp_path, fake_engine):
    out = tmp_path / "run"
    invoke(["run", "--rounds", "2", "--out", str(out), "--no-progress"])
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"round": 3, "accuracy": [0.0]}) + "\n")
    invoke(["run", "--resume", str(out), "--rounds", "3", "--no-progress"])
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]


def test_resume_refuses_to_change_a_setting_the_finished_rounds_used(tmp_path, fake_engine):
    out = tmp_path / "run"
    invoke(["run", "--rounds", "1", "--out", str(out), "--no-progress"])
    result = CliRunner().invoke(main, ["run", "--resume", str(out), "--seed", "7"])
    assert result.exit_code == 2
    assert "--resume cannot change --seed" in result.output


def test_an_existing_run_directory_is_not_overwritten(tmp_path, fake_engine):
    out = tmp_path / "run"
    invoke(["run", "--rounds", "1", "--out", str(out), "--no-progress"])
    result = CliRunner().invoke(main, ["run", "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 2 and "already holds a run" in result.output and "--resume" in result.output


def test_json_output_is_the_summary_on_stdout(tmp_path, fake_engine):
    result = CliRunner().invoke(main, ["run", "--rounds", "2", "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["rounds_completed"] == 2 and len(summary["final_accuracy"]) == 4


def test_flags_override_the_config_file_which_overrides_defaults(tmp_path, fake_engine):
    cfg = tmp_path / "c.toml"
    cfg.write_text('clients = 3\nrounds = 2\nmodels = ["mlp", "cnn"]\npartition = "dirichlet"\n')
    out = tmp_path / "r"
    result = invoke(["run", "--config", str(cfg), "--rounds", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["clients"] == 3 and saved["rounds"] == 1 and saved["models"] == ["mlp", "cnn"]
    assert saved["partition"] == "dirichlet" and saved["seed"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("rounds = 2\nbogus = 1\n", "unknown key(s) 'bogus'"),
        ("rounds = [\n", "is not valid TOML"),
        ('rounds = "many"\n', "key 'rounds'"),
        ('aggregation = "magic"\n', "key 'aggregation'"),
        ("clients = true\n", "key 'clients' must not be true/false"),
        ("clients = 2.5\n", "key 'clients' must be an integer, got 2.5"),
        ("samples_per_client = 10.5\n", "key 'samples_per_client' must be an integer, got 10.5"),
        ("seed = -5\n", "key 'seed'"),
    ],
    ids=["unknown key", "malformed file", "wrong type", "bad choice", "boolean for a number",
         "float for a count", "float for an optional count", "negative seed"],
)  # fmt: skip
def test_a_bad_config_file_gives_one_line_and_exit_code_2(tmp_path, fake_engine, content, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_a_missing_config_file_is_named():
    result = CliRunner().invoke(main, ["run", "--config", "/no/such/file.toml"])
    assert result.exit_code == 2 and "/no/such/file.toml does not exist" in result.output


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 9, "aggregation": "secure"}, "above the number of clients (4)"),
        ({"models": ("cnn",) * 5}, "5 models for 4 clients"),
        ({"epsilon": 1.0}, "need --aggregation secure+dp"),
        ({"dropout": 0.3}, "add --aggregation secure"),
        ({"aggregation": "secure+dp", "epsilon": 1.0, "noise_multiplier": 1.0}, "not both"),
        ({"clients_per_round": 5}, "between 1 and --clients (4)"),
    ],
)
def test_contradicting_settings_are_refused_with_what_would_be_right(changes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig(**changes)


def test_cohorts_and_the_dream_bank_reach_the_learning_loop_and_the_accountant():
    from codream.cli.config import federation_config

    rc = RunConfig(clients=10, clients_per_round=4, bank_size=300, aggregation="secure+dp")
    cfg = federation_config(rc)
    assert cfg.clients_per_round == 4
    assert cfg.distill.bank_size == 300 and cfg.distill.buffer_size >= 300
    assert run_module.PrivacyPlan(rc, cfg).sample_rate == pytest.approx(0.4)
    assert (
        run_module.PrivacyPlan(RunConfig(aggregation="secure+dp"), federation_config(RunConfig())).sample_rate
        == 1
    )


def test_a_short_model_list_repeats_in_turn_over_the_clients():
    assert RunConfig(clients=5, models=("cnn", "mlp")).client_models == ("cnn", "mlp", "cnn", "mlp", "cnn")


def test_dump_toml_round_trips_through_tomllib(tmp_path):
    values = {"a": 1, "b": 0.5, "c": 'x"y', "d": [1, 2], "e": True, "f": ["p", "q"], "g": 1e-05}
    (tmp_path / "x.toml").write_text(dump_toml(values))
    assert load_toml(tmp_path / "x.toml") == values


def test_metrics_are_appended_and_a_torn_last_line_is_skipped(tmp_path):
    rd = RunDir.create(tmp_path / "r")
    rd.append_metrics({"round": 1, "x": np.float32(0.5), "y": np.arange(2)})
    with rd.metrics_path.open("a") as fh:
        fh.write('{"round": 2, "x"')
    assert rd.read_metrics() == [{"round": 1, "x": 0.5, "y": [0, 1]}]


def test_report_summarises_final_and_labels_the_best_round():
    records = [
        {
            "round": 1,
            "accuracy": [0.5, 0.7],
            "accuracy_mean": 0.6,
            "accuracy_std": 0.1,
            "seconds": 1.0,
            "survivors": 2,
            "participants": 2,
            "bytes_sent_per_client": 100.0,
        },
        {
            "round": 2,
            "accuracy": [0.4, 0.6],
            "accuracy_mean": 0.5,
            "accuracy_std": 0.1,
            "seconds": 3.0,
            "survivors": 1,
            "participants": 2,
            "bytes_sent_per_client": 300.0,
        },
    ]
    s = report.summarise({"dataset": "digits", "clients": 2, "rounds": 2, "aggregation": "plain"}, records)
    assert s["final_accuracy"] == [0.4, 0.6] and s["final_accuracy_mean"] == pytest.approx(0.5)
    assert s["best_round"] == 1 and "selected on the test set" in s["best_round_note"]
    assert s["min_survivors"] == 1 and s["seconds_per_round"] == 2.0
    md = report.summary_markdown(s, records)
    assert "| 2 | 50.00% | 10.00 | - | 1/2 | - | 3.0 |" in md  # no validation split


def test_the_dream_grid_puts_each_dream_in_the_row_of_its_soft_label(tmp_path):
    x = torch.randn(6, 3, 8, 8)
    y = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    path = plots.plot_dreams(x, y, tmp_path / "d.png", per_class=2)
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        plots.plot_dreams(torch.randn(6, 8, 8), y, tmp_path / "e.png")


def test_help_of_every_command_exits_zero():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "run" in result.output
    for args in (["run", "--help"], ["bench", "--help"], ["--version"]):
        r = runner.invoke(main, args)
        assert r.exit_code == 0, (args, r.output)
    assert isinstance(main, click.Group)


def test_a_benchmark_whose_module_is_missing_says_so_in_one_line(monkeypatch):
    from codream.cli import bench

    monkeypatch.setitem(bench.BENCHMARKS, "tradeoff", ("codream.bench.no_such_module", "cli", "Trade-off."))
    result = CliRunner().invoke(main, ["bench", "tradeoff", "--json"])
    assert result.exit_code == 2
    assert "codream bench tradeoff is not available" in result.output and "module not found" in result.output


def test_resuming_a_run_written_before_the_validation_split_keeps_all_its_training_data(
    tmp_path, fake_engine
):
    out = tmp_path / "old"
    first = CliRunner().invoke(main, ["run", "--rounds", "1", "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    config = out / "config.toml"
    config.write_text(
        "".join(ln for ln in config.read_text().splitlines(True) if not ln.startswith("validation"))
    )
    again = CliRunner().invoke(main, ["run", "--resume", str(out), "--rounds", "2", "--baselines", "none"])
    assert again.exit_code == 0, again.output
    assert RunConfig.from_toml(config).validation == 0.0
