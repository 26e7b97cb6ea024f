"""`codream run --secagg-mode malicious`: the threat model is chosen, checked and recorded."""

from __future__ import annotations

import json
import tomllib

import pytest
from click.testing import CliRunner

from codream.cli import main
from codream.cli.config import RunConfig, aggregator_options

TINY = [
    "--clients", "3", "--models", "mlp", "--dream-batch", "8", "--global-steps", "2", "--kd-steps", "2",
    "--warmup-steps", "3", "--limit-test", "60", "--no-progress", "--rounds", "1",
]  # fmt: skip


def test_a_malicious_mode_run_finishes_records_the_mode_and_matches_the_semi_honest_run(tmp_path):
    outs = {}
    for mode in ("semi-honest", "malicious"):
        out = tmp_path / mode
        result = CliRunner().invoke(
            main,
            ["run", *TINY, "--aggregation", "secure", "--secagg-mode", mode, "--corrupt-fraction", "0.2",
             "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        config = tomllib.loads((out / "config.toml").read_text())
        assert config["secagg_mode"] == mode and config["corrupt_fraction"] == 0.2
        outs[mode] = [
            json.loads(line)["accuracy"] for line in (out / "metrics.jsonl").read_text().splitlines()
        ]
    # Same seed, same sums: the mode changes who can learn what, not the result.
    assert outs["semi-honest"] == outs["malicious"]


def test_the_mode_reaches_the_aggregator_and_is_refused_where_it_means_nothing():
    opts = aggregator_options(RunConfig(aggregation="secure", secagg_mode="malicious", corrupt_fraction=0.25))
    assert opts["malicious"] is True and opts["corrupt_fraction"] == 0.25
    assert aggregator_options(RunConfig(aggregation="secure"))["malicious"] is False
    result = CliRunner().invoke(main, ["run", *TINY, "--secagg-mode", "malicious"])
    assert result.exit_code != 0
    assert "--secagg-mode and --corrupt-fraction apply to secure aggregation" in result.output
    result = CliRunner().invoke(main, ["run", *TINY, "--aggregation", "secure", "--secagg-mode", "evil"])
    assert result.exit_code != 0 and "semi-honest" in result.output and "malicious" in result.output


def test_the_corrupt_fraction_reaches_the_flower_deployment(tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    from codream.federation.flower import local

    asked = {}

    def deployed(config, **kwargs):
        asked.update(kwargs)
        return {"rounds": []}

    monkeypatch.setattr(local, "run_flower", deployed)
    args = ["run", *TINY, "--aggregation", "secure", "--corrupt-fraction", "0.3", "--engine", "flower"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert asked["corrupt_fraction"] == 0.3


def test_help_says_what_each_mode_protects_against():
    # click wraps at hyphens too; undo the wrapping before reading the text
    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split()).replace("- ", "-")
    assert "--secagg-mode [semi-honest|malicious]" in text
    assert "honest-but-curious" in text and "colluding with up to --corrupt-fraction" in text
