"""`codream privacy` plan / epsilon / report, driven through click's runner on the group itself."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from codream.cli.privacy import privacy
from codream.privacy import PrivacyEvent, epsilon_for
from codream.privacy.client_ledger import ClientLedger, client_ledger_path, client_round_event
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
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        str(100 / 3400),
        "--rounds",
        "1500",
        "--noise",
        "gaussian",
        "--json",
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
        "--noise",
        "gaussian",
        "--json",
    )
    out = json.loads(res.output)
    assert out["effective_noise_multiplier"] == pytest.approx(1.0)
    assert out["epsilon"]["rdp"] == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=50, delta=1e-5)
    )


def test_plan_round_trips_through_epsilon_over_one_clients_participations_unamplified():
    res = _invoke(
        "plan",
        "--epsilon",
        "4",
        "--rounds",
        "60",
        "--participations",
        "12",
        "--releases-per-round",
        "9",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    plan = out["plans"][0]
    assert out["sample_rate"] == 1.0 and out["steps"] == 12 and out["mechanism"] == "integer"
    back = _invoke(
        "epsilon",
        "--release-noise-multiplier",
        str(plan["per_release_noise_multiplier"]),
        "--rounds",
        "12",
        "--releases-per-round",
        "9",
        "--json",
    )
    assert json.loads(back.output)["epsilon"]["rdp"] == pytest.approx(plan["epsilon"], rel=1e-9)
    assert plan["epsilon"] <= 4.0
    # Planning over every round a client could take part in needs more noise.
    every = json.loads(_invoke("plan", "--epsilon", "4", "--rounds", "60", "--json").output)["plans"][0]
    assert every["noise_multiplier"] > 2 * plan["noise_multiplier"]


def test_cohort_sampling_is_refused_for_planning_because_the_server_knows_the_cohorts():
    res = _invoke("plan", "--epsilon", "8", "--rounds", "100", "--cohort", "100", "--population", "1000")
    assert res.exit_code == 2
    assert "no amplification by sampling" in res.output and "--participations" in res.output


def test_integer_noise_gets_the_general_bound_under_sampling_and_no_prv():
    args = ["epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.1", "--rounds", "100", "--json"]
    integer = json.loads(_invoke(*args).output)
    gaussian = json.loads(_invoke(*args, "--noise", "gaussian").output)
    assert integer["epsilon"]["prv"] is None and "PRV" in integer["refused"]["prv"]
    assert integer["epsilon"]["rdp"] > 1.2 * gaussian["epsilon"]["rdp"]
    assert integer["epsilon"]["rdp"] == pytest.approx(
        epsilon_for(noise_multiplier=1.0, sample_rate=0.1, steps=100, delta=1e-5, mechanism="integer")
    )
    res = _invoke("plan", "--epsilon", "4", "--rounds", "10", "--accountant", "prv")
    assert res.exit_code == 2 and "PRV accountant cannot account integer noise" in res.output
    both = _invoke("plan", "--epsilon", "4", "--rounds", "10", "--accountant", "both")
    assert both.exit_code == 0 and "prv: not applicable to integer noise" in both.output


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
        (["plan", "--epsilon", "0", "--rounds", "3"], "--epsilon"),
        (["plan", "--epsilon", "1"], "needs --rounds"),
        (["plan", "--epsilon", "1", "--rounds", "3", "--sample-rate", "0.1"], "no amplification"),
        (["plan", "--epsilon", "1", "--rounds", "3", "--participations", "5"], "exceeds the 3 rounds"),
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
        (["epsilon", "--noise-multiplier", "1", "--rounds", "3", "--noise", "laplace"], "--noise"),
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


@pytest.fixture
def client_run_dir(tmp_path):
    """Four clients' own ledgers: client c took part in rounds 0..c (cohorts the server knows)."""
    event = client_round_event(2.0)
    for c in range(4):
        ledger = ClientLedger(
            client_id=c, delta=1e-5, target_epsilon=10.0, path=client_ledger_path(tmp_path, c)
        )
        for r in range(c + 1):
            ledger.charge(r, event, session=f"s{r}")
    return tmp_path


def test_report_prints_every_clients_epsilon_the_max_the_mean_and_the_zero_out_relation(client_run_dir):
    res = _invoke("report", str(client_run_dir), "--json", "--no-plot")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    own = [epsilon_for(noise_multiplier=2.0, sample_rate=1.0, steps=k, delta=1e-5) for k in range(1, 5)]
    clients = out["clients"]
    assert clients["relation"] == out["relation"] == "zero-out"
    assert [clients["client_epsilons"][str(c)] for c in range(4)] == pytest.approx(own)
    assert clients["max_epsilon"] == pytest.approx(own[3]) and clients["max_client"] == 3
    assert clients["mean_epsilon"] == pytest.approx(sum(own) / 4)
    assert out["epsilon"] == pytest.approx(own[3]) and out["remaining"] == pytest.approx(10.0 - own[3])
    assert [r["charged"] for r in clients["per_round"]] == [4, 3, 2, 1]
    text = _invoke("report", str(client_run_dir)).output
    assert "client-level DP against the server (zero-out" in text and "whether it took part is public" in text
    assert f"max {own[3]:.4f} (client 3, 4 rounds)" in text and f"mean {sum(own) / 4:.4f}" in text
    assert (client_run_dir / "plots" / "privacy_budget.png").exists()


def test_report_flags_an_amplified_run_ledger_as_no_guarantee_against_the_server(run_dir):
    out = json.loads(_invoke("report", str(run_dir), "--json", "--no-plot").output)
    assert any("NOT a guarantee against the server" in w for w in out["warnings"])
    assert "WARNING: the run ledger amplifies by sampling (q = 0.1)" in _invoke("report", str(run_dir)).output


def test_report_says_first_that_a_run_with_a_seeded_test_option_is_not_private(client_run_dir):
    ClientLedger(
        client_id=1,
        delta=1e-5,
        target_epsilon=10.0,
        path=client_ledger_path(client_run_dir, 1),
        not_private=["noise from a seeded generator (test option)"],
    )
    res = _invoke("report", str(client_run_dir), "--no-plot")
    assert res.output.startswith("NOT PRIVATE: noise from a seeded generator (test option)")
    out = json.loads(_invoke("report", str(client_run_dir), "--json", "--no-plot").output)
    assert out["private"] is False and out["clients"]["not_private"] == {
        "1": ["noise from a seeded generator (test option)"]
    }


def test_report_of_the_seams_run_ledger_shows_each_rounds_largest_and_mean_client_epsilon(tmp_path):
    ledger = PrivacyLedger(delta=1e-5, target_epsilon=8.0, path=tmp_path / "privacy_ledger.json")
    for r, eps in enumerate(({0: 1.0, 1: 0.0, 2: 1.0}, {0: 1.5, 1: 1.0, 2: 1.0}, {0: 2.0, 1: 1.0, 2: 1.5})):
        ledger.record_client_epsilons(round_index=r, client_epsilons=eps, details={"charged_clients": 2.0})
    out = json.loads(_invoke("report", str(tmp_path), "--json", "--no-plot").output)
    assert out["epsilon"] == 2.0 and out["mean_client_epsilon"] == pytest.approx(1.5)
    assert [r["mean_client"] for r in out["per_round"]] == pytest.approx([2 / 3, 3.5 / 3, 1.5])
    text = _invoke("report", str(tmp_path), "--no-plot").output
    assert "max eps" in text and "mean eps" in text and "charged" in text
    assert "per-client epsilon: 0: 2.000, 1: 1.000, 2: 1.500; maximum 2.0000, mean 1.5000" in text
