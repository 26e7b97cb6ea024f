"""`codream privacy` plan / epsilon / report, driven through click's runner on the group itself."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from codream.cli.privacy import privacy
from codream.privacy import PrivacyEvent, epsilon_for
from codream.privacy.ledger import PrivacyLedger
from codream.privacy.report import load_budget_report


@pytest.fixture
def run_dir(tmp_path):
    ledger = PrivacyLedger(delta=1e-5, target_epsilon=1.0, path=tmp_path / "privacy_ledger.json")
    for r in range(4):
        ledger.record_round(
            round_index=r,
            events=[PrivacyEvent(noise_multiplier=2.0, sample_rate=0.1)],
            details={"dp_clipped": 3.0, "dp_noise_std/dream/0": 9.0, "dp_noise_std/soft_labels": 4.5},
        )
    return tmp_path


def _invoke(*args: str):
    return CliRunner().invoke(privacy, list(args))


def test_epsilon_reports_both_accountants_for_the_reference_point():
    res = _invoke(
        "epsilon", "--noise-multiplier", "1.0", "--sample-rate", str(100 / 3400), "--rounds", "1500", "--json"
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["epsilon"]["rdp"] == pytest.approx(8.16, abs=0.01)
    assert out["epsilon"]["prv"] == pytest.approx(7.46, abs=0.02)


def test_epsilon_composes_the_releases_of_a_round_into_one_event():
    res = _invoke(
        "epsilon",
        "--release-noise-multiplier",
        "2.0",
        "--sample-rate",
        "0.1",
        "--rounds",
        "50",
        "--releases-per-round",
        "4",
        "--json",
    )
    out = json.loads(res.output)
    assert out["effective_noise_multiplier"] == pytest.approx(1.0)
    assert out["epsilon"]["rdp"] == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=1e-5)
    )


def test_plan_round_trips_through_epsilon():
    res = _invoke(
        "plan",
        "--epsilon",
        "4",
        "--rounds",
        "60",
        "--cohort",
        "10",
        "--population",
        "200",
        "--releases-per-round",
        "9",
        "--json",
    )
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)["plans"][0]
    assert plan["sample_rate"] == pytest.approx(0.05)
    back = _invoke(
        "epsilon",
        "--release-noise-multiplier",
        str(plan["per_release_noise_multiplier"]),
        "--sample-rate",
        "0.05",
        "--rounds",
        "60",
        "--releases-per-round",
        "9",
        "--json",
    )
    assert json.loads(back.output)["epsilon"]["rdp"] == pytest.approx(plan["epsilon"], rel=1e-9)
    assert plan["epsilon"] <= 4.0


def test_plan_for_example_level_reads_the_training_schedule():
    res = _invoke(
        "plan",
        "--epsilon",
        "8",
        "--granularity",
        "example",
        "--epochs",
        "5",
        "--batch-size",
        "50",
        "--data-size",
        "1000",
    )
    assert res.exit_code == 0, res.output
    assert "100 events (DP-SGD steps) at sample rate 0.05" in res.output
    assert "rdp: noise multiplier" in res.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["plan", "--epsilon", "0", "--rounds", "3", "--sample-rate", "0.1"], "--epsilon"),
        (["plan", "--epsilon", "1", "--sample-rate", "0.1"], "needs --rounds"),
        (["plan", "--epsilon", "1", "--rounds", "3"], "--cohort and --population"),
        (
            ["plan", "--epsilon", "1", "--rounds", "3", "--cohort", "30", "--population", "20"],
            "exceeds population",
        ),
        (["plan", "--epsilon", "1", "--granularity", "example", "--batch-size", "10"], "--data-size"),
        (
            [
                "plan",
                "--epsilon",
                "1",
                "--granularity",
                "example",
                "--local-steps",
                "5",
                "--batch-size",
                "100",
                "--data-size",
                "10",
            ],
            "batch_size <= data_size",
        ),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "1.5", "--rounds", "3"], "--sample-rate"),
        (["epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1"], "--rounds"),
        (["report", "does/not/exist"], "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_error_and_a_nonzero_exit_without_a_traceback(args, fragment):
    res = _invoke(*args)
    assert res.exit_code == 2
    assert fragment in res.output
    assert "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)  # click's clean exit, not an unhandled exception


def test_report_prints_the_table_totals_accountant_and_granularity_and_writes_the_plot(run_dir):
    res = _invoke("report", str(run_dir))
    assert res.exit_code == 0, res.output
    assert "client-level DP" in res.output and "accountant: rdp" in res.output
    assert res.output.count("\n    3  ") == 1  # one table line per round, round 3 among them
    assert "total: epsilon" in res.output and "clipped contributions: 12" in res.output
    png = run_dir / "plots" / "privacy_budget.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_json_matches_the_ledger_and_reads_a_run_summary_that_nests_it(run_dir, tmp_path_factory):
    res = _invoke("report", str(run_dir), "--json", "--no-plot")
    out = json.loads(res.output)
    ledger = json.loads((run_dir / "privacy_ledger.json").read_text())
    assert out["epsilon"] == pytest.approx(ledger["epsilon"])
    assert out["rounds"] == 4 and out["accounted_events"] == 4 and out["clipped"] == 12
    assert [r["noise_std"] for r in out["per_round"]] == [4.5] * 4
    assert out["remaining"] == pytest.approx(1.0 - ledger["epsilon"])
    other = tmp_path_factory.mktemp("summary")
    (other / "privacy_ledger.json").write_text(json.dumps({"granularity": "client", "ledger": ledger}))
    assert load_budget_report(other).epsilon == pytest.approx(ledger["epsilon"])


def test_report_of_a_directory_without_a_ledger_is_a_usage_error(tmp_path):
    res = _invoke("report", str(tmp_path))
    assert res.exit_code == 2 and "no privacy ledger" in res.output


def test_every_command_has_help():
    for cmd in ("plan", "epsilon", "report"):
        res = _invoke(cmd, "--help")
        assert res.exit_code == 0 and "--json" in res.output
