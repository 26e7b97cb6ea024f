"""Every path of `codream run` ends in one clear line, and every hint it prints is a command that works.

Each test that stops a run takes the command from the hint (between backticks) and runs it as written.
Most use the stand-in engine of conftest.py; the ones whose point is the real protocol or accountant
(an abort after a finished round, a budget refusal) run a tiny real federation.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shlex
import signal
import sys
import tomllib
import warnings

import pytest
from click.testing import CliRunner
from stand_in import FakeFederation

from codream import plots
from codream.cli import main
from codream.cli import run as run_module

TINY = [
    "--clients", "4", "--models", "mlp", "--dream-batch", "8", "--global-steps", "2", "--kd-steps", "2",
    "--warmup-steps", "3", "--limit-test", "60", "--no-progress",
]  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


EXECUTE_RUN = run_module.execute_run  # as imported, before any test patches it


def use_engine(monkeypatch, factory) -> None:
    """Let `codream run` build its federation with `factory` (as the fake_engine fixture does)."""
    monkeypatch.setattr(
        run_module, "execute_run", lambda rc, **kw: EXECUTE_RUN(rc, **{**kw, "federation_factory": factory})
    )


def hinted_commands(output: str) -> list[str]:
    commands = re.findall(r"`(codream [^`]+)`", output)
    assert commands, f"no command in the hint: {output}"
    return commands


def run_hint(command: str):
    """Run a hinted command as a user would type it."""
    words = shlex.split(command)
    assert words[0] == "codream"
    return CliRunner().invoke(main, words[1:])


def rounds_of(out) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_error_line(result) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# --- stops and their hints -----------------------------------------------------------------------------


def test_an_abort_after_a_finished_round_exits_5_keeps_that_round_and_its_hint_resumes(tmp_path):
    # Seed 7 keeps three of four clients in round 1 and drops two in round 2's key sharing (threshold 3);
    # the dropout schedule is seeded by (seed, round).
    out = tmp_path / "aborted"
    result = invoke("run", *TINY, "--aggregation", "secure", "--dropout", "0.3", "--seed", "7",
                    "--rounds", "2", "--out", str(out))  # fmt: skip
    assert result.exit_code == 5, result.output
    line = one_error_line(result)
    assert "too_few_peers" in line and "too few clients survived round 2" in line
    assert f"round 1 is saved in {out}" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 1 and summary["files"]["dreams_plot"] == "plots/dreams.png"
    for name in ("summary.md", "dreams.pt", "plots/accuracy.png", "plots/dreams.png", "metrics.csv"):
        assert (out / name).is_file(), name
    assert "Error: too_few_peers" in (out / "run.log").read_text()

    (command,) = hinted_commands(line)
    assert command == f"codream run --resume {out} --dropout 0"
    resumed = run_hint(command)
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming {out} after round 1 of 2" in resumed.output
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert [r["dropout"] for r in records] == [0.3, 0.0]  # each round records what it ran with


def test_a_budget_refusal_counts_rounds_from_1_and_suggests_a_run_that_plans_for_them(tmp_path):
    # Calibrated to spend epsilon 8 in one round, the run has nothing left for a second.
    out = tmp_path / "spent"
    first = invoke("run", *TINY, "--aggregation", "secure+dp", "--rounds", "1", "--out", str(out))
    assert first.exit_code == 0, first.output
    result = invoke("run", "--resume", str(out), "--rounds", "2", "--no-progress")
    assert result.exit_code == 4, result.output
    line = one_error_line(result)
    # Each client refuses the round its own budget cannot afford, and says so.
    assert line.startswith("Error: client 0: round 2 would spend epsilon") and "over its target 8" in line
    assert "overspend" not in line  # the CLI has no such switch
    assert f"round 1 is saved in {out}" in line
    (command,) = hinted_commands(line)
    again = run_hint(command)
    assert again.exit_code == 0, again.output
    assert "round 2/2" in again.output and ", epsilon 8.00" in again.output


def test_sigterm_stops_a_run_like_ctrl_c_and_its_hint_resumes_it(tmp_path, monkeypatch):
    class TerminatedInRoundTwo(FakeFederation):
        def run_round(self, progress=None):
            if self.round == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().run_round(progress)

    leaked = []  # on code that does not handle SIGTERM this test's handler sees it instead

    def ours(signum, frame):
        leaked.append(signum)

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        use_engine(monkeypatch, TerminatedInRoundTwo)
        out = tmp_path / "run"
        result = invoke("run", "--rounds", "3", "--out", str(out), "--no-progress")
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert leaked == [] and result.exit_code == 128 + signal.SIGTERM, result.output
    assert handler_after is ours  # the command put back the handler it found
    assert f"interrupted; continue with `codream run --resume {out}`" in result.output
    assert rounds_of(out) == [1]

    use_engine(monkeypatch, FakeFederation)
    (command,) = hinted_commands(result.output)
    resumed = run_hint(command)
    assert resumed.exit_code == 0, resumed.output
    assert rounds_of(out) == [1, 2, 3]


def test_ctrl_c_while_the_data_loads_suggests_running_again_not_a_resume_that_fails(tmp_path, monkeypatch):
    def loading_interrupted(config, aggregator):
        raise KeyboardInterrupt

    use_engine(monkeypatch, loading_interrupted)
    out = tmp_path / "run"
    result = invoke("run", "--rounds", "2", "--clients", "3", "--out", str(out), "--no-progress")
    assert result.exit_code == 130, result.output
    assert "interrupted before the run started (nothing was written)" in result.output
    assert not out.exists()

    use_engine(monkeypatch, FakeFederation)
    (command,) = hinted_commands(result.output)
    again = run_hint(command)
    assert again.exit_code == 0, again.output
    assert rounds_of(out) == [1, 2]
    assert tomllib.loads((out / "config.toml").read_text())["clients"] == 3


def test_ctrl_c_on_flower_suggests_a_fresh_run_directory_that_is_accepted(tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    from codream.federation.flower import local

    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    def finished(config, **kwargs):
        ids = list(range(config.num_clients))
        rnd = {"round": 0, "accuracies": [0.5] * len(ids), "participants": ids, "survivors": ids}
        return {"rounds": [{**rnd, "aggregation": {"clipped": 0, "overflowed": 0}}]}

    monkeypatch.setattr(local, "run_flower", interrupted)
    out = tmp_path / "flower"
    result = invoke("run", *TINY, "--engine", "flower", "--rounds", "1", "--out", str(out))
    assert result.exit_code == 130, result.output
    assert "before the deployment finished a round, so there is nothing to resume" in result.output
    (command,) = hinted_commands(result.output)
    assert command == f"codream run --config {out}/config.toml --out {out}-2"

    monkeypatch.setattr(local, "run_flower", finished)
    again = run_hint(command)
    assert again.exit_code == 0, again.output
    assert rounds_of(tmp_path / "flower-2") == [1]


def test_flower_secure_dp_metrics_hold_no_client_accuracy_and_the_nodes_files_go_to_client_private(
    tmp_path, monkeypatch
):
    """The deployment's server never had the accuracies (its nodes kept them in their state-dirs);
    the operator of the local deployment holds those files, so client_private.jsonl and the summary
    have them, and metrics.jsonl, as in-process, does not."""
    pytest.importorskip("flwr")
    from codream.federation.flower import local
    from codream.federation.flower.engine import append_node_metrics

    def deployed(config, *, out_dir, **kwargs):
        ids = list(range(config.num_clients))
        rounds = []
        for r in range(2):
            for c in ids:
                record = {"round": r, "client": c, "accuracy": 0.25 * (r + 1), "kd_loss": 1.5}
                append_node_metrics(out_dir / "node_state", record)
            agg = {"clipped": None, "overflowed": None, "participants": ids, "survivors": ids}
            rounds.append({"round": r, "accuracies": [], "kd_loss": None, "participants": ids,
                           "survivors": ids, "evaluated": ids, "aggregation": agg})  # fmt: skip
        return {"rounds": rounds}

    monkeypatch.setattr(local, "run_flower", deployed)
    out = tmp_path / "dp"
    result = invoke("run", *TINY, "--engine", "flower", "--aggregation", "secure+dp", "--epsilon", "50",
                    "--rounds", "2", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    released = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    private = [json.loads(x) for x in (out / "client_private.jsonl").read_text().splitlines()]
    assert all("accuracy" not in r and "kd_loss" not in r["federation"] for r in released)
    assert [p["federation"]["mean_accuracy"] for p in private] == [0.25, 0.5]
    assert [p["federation"]["kd_loss"] for p in private] == [1.5, 1.5]
    assert [p["accuracy"] for p in private] == [[0.25] * 4, [0.5] * 4]


def test_flower_carries_example_level_dp_in_each_nodes_own_config_and_reads_their_epsilons(
    tmp_path, monkeypatch
):
    """Each SuperNode gets the DP-SGD noise the in-process run would give the same client (calibrated
    to its data size, with the label histogram of the conditional method); the run's ledger is the
    epsilons the nodes recorded, and no node's cross-entropy loss reaches metrics.jsonl."""
    pytest.importorskip("flwr")
    from codream.build import PrivacyPlan
    from codream.cli.config import RunConfig
    from codream.federation.flower import local
    from codream.federation.flower.engine import ExampleDP, append_node_metrics
    from codream.runconfig import federation_config

    asked = {}

    def deployed(config, *, out_dir, node_options, **kwargs):
        asked.update(node_options=node_options, config=config, aggregation=kwargs["aggregation"])
        ids = list(range(config.num_clients))
        rounds = []
        for r in range(2):
            for c in ids:
                record = {"round": r, "client": c, "ce_loss": 2.0, "epsilon": 0.5 * (r + 1) + 0.1 * c}
                append_node_metrics(out_dir / "node_state", record)
            agg = {"clipped": 0, "overflowed": 0, "participants": ids, "survivors": ids}
            rounds.append({"round": r, "accuracies": [0.5] * len(ids), "kd_loss": 1.0, "ce_loss": None,
                           "participants": ids, "survivors": ids, "evaluated": ids,
                           "aggregation": agg})  # fmt: skip
        return {"rounds": rounds}

    monkeypatch.setattr(local, "run_flower", deployed)
    out = tmp_path / "example"
    args = [*TINY, "--privacy-unit", "example", "--noise-multiplier", "1.1", "--aggregation", "secure",
            "--rounds", "2", "--baselines", "none"]  # fmt: skip
    result = invoke("run", *args, "--engine", "flower", "--out", str(out))
    assert result.exit_code == 0, result.output
    rc = RunConfig(clients=4, models=("mlp",), dream_batch=8, global_steps=2, kd_steps=2, warmup_steps=3,
                   limit_test=60, privacy_unit="example", noise_multiplier=1.1, aggregation="secure",
                   rounds=2, validation=0.0)  # fmt: skip
    plan = PrivacyPlan(rc, federation_config(rc))
    assert asked["aggregation"] == "secure" and asked["config"].norm == "group"
    assert asked["config"].dream.w_bn == 0.0 and sorted(asked["node_options"]) == [0, 1, 2, 3]
    for own in asked["node_options"].values():
        dp = ExampleDP.from_node_config(own, asked["config"])
        assert dp.noise_multiplier == plan.example_noise_multiplier(100) == 1.1
        assert dp.label_noise_multiplier == plan.label_noise_multiplier == 20.0
        assert dp.target_epsilon is None
    released = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epsilon"] for r in released] == pytest.approx([0.8, 1.3])
    assert all("ce_loss" not in r["federation"] for r in released)
    ledger = json.loads((out / "privacy_ledger.json").read_text())
    assert ledger["granularity"] == "example"


def test_a_full_disk_while_writing_the_checkpoint_is_one_line_and_its_hint_resumes(
    tmp_path, monkeypatch, fake_engine
):
    import tempfile

    real_mkstemp = tempfile.mkstemp
    checkpoints = []

    def full_on_the_second_checkpoint(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if os.path.basename(name).startswith(".checkpoint.pt."):
            checkpoints.append(name)
            if len(checkpoints) == 2:  # /dev/full refuses every write with ENOSPC, as a full disk does
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", full_on_the_second_checkpoint)
    out = tmp_path / "run"
    result = invoke("run", "--rounds", "3", "--out", str(out), "--no-progress")
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert f"cannot write {out / 'checkpoint.pt'}: No space left on device" in line
    assert f"round 1 is saved in {out}" in line
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 1

    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    assert not list(out.glob(".checkpoint.pt.*"))  # the torn temporary file is gone
    (command,) = hinted_commands(line)
    assert command == f"codream run --resume {out}"
    resumed = run_hint(command)
    assert resumed.exit_code == 0, resumed.output
    assert rounds_of(out) == [1, 2, 3]


@pytest.mark.parametrize("seed", ["-5", "99999999999999999999", "4294967296"])
def test_a_seed_outside_what_the_seeded_parts_accept_is_one_line(tmp_path, seed):
    out = tmp_path / "run"
    result = invoke("run", *TINY, "--seed", seed, "--out", str(out))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--seed'" in one_error_line(result) and "0<=x<=4294967295" in result.output
    assert not out.exists()


def test_the_largest_seed_runs(tmp_path):
    # The digits split (scikit-learn), numpy and torch all take it.
    result = invoke("run", *TINY, "--seed", "4294967295", "--rounds", "1", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output


def test_the_privacy_report_of_a_run_directory_it_cannot_write_to_is_one_line(tmp_path, monkeypatch):
    from codream.privacy import PrivacyEvent
    from codream.privacy import report as privacy_report
    from codream.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(delta=1e-5, target_epsilon=8.0, path=tmp_path / "privacy_ledger.json")
    ledger.record_round(round_index=0, events=[PrivacyEvent(noise_multiplier=2.0, sample_rate=1.0)])

    def read_only(report, path):  # what savefig raises in a folder the user may not write to
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(privacy_report, "plot_budget", read_only)
    result = invoke("privacy", "report", str(tmp_path))
    assert result.exit_code == 1, result.output
    line = one_error_line(result)
    assert f"cannot write the plot {tmp_path / 'plots' / 'privacy_budget.png'}: Permission denied" in line
    (command,) = hinted_commands(line)
    again = run_hint(command)
    assert again.exit_code == 0, again.output
    assert "total: epsilon" in again.output


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["--aggregation", "secure", "--dropout", "0.2"], "--dropout 0.2"),
        (["--aggregation", "secure+dp", "--dropout", "0.1"], "--dropout 0.1"),
    ],
    ids=["secure", "secure+dp"],
)
def test_flower_refuses_what_it_does_not_carry_before_the_run_directory_exists(
    tmp_path, monkeypatch, args, refused
):
    pytest.importorskip("flwr")
    from codream.federation.flower import local

    def must_not_start(config, **kwargs):
        raise AssertionError("the Flower deployment started for a run it does not carry")

    monkeypatch.setattr(local, "run_flower", must_not_start)
    out = tmp_path / "flower"
    result = invoke("run", *TINY, "--engine", "flower", *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert f"{refused}: carried by --engine simulation only" in line
    assert not out.exists()  # so the corrected command may use the same --out


# --- resuming and repeating ----------------------------------------------------------------------------


def test_resume_refuses_fewer_rounds_than_finished_and_changes_nothing_when_nothing_runs(
    tmp_path, fake_engine
):
    out = tmp_path / "run"
    assert invoke("run", "--rounds", "3", "--out", str(out), "--no-progress").exit_code == 0
    config = (out / "config.toml").read_bytes()
    fewer = invoke("run", "--resume", str(out), "--rounds", "2", "--no-progress")
    assert fewer.exit_code == 2, fewer.output
    assert "finished 3 rounds; --rounds 2 would undo some of them: give --rounds 3 or more" in fewer.output
    same = invoke("run", "--resume", str(out), "--rounds", "3", "--device", "cpu", "--no-progress")
    assert same.exit_code == 0, same.output
    assert (out / "config.toml").read_bytes() == config
    assert rounds_of(out) == [1, 2, 3]


def test_the_saved_config_repeats_the_run_as_the_readme_says(tmp_path, monkeypatch, fake_engine):
    monkeypatch.chdir(tmp_path)
    first = invoke("run", "--clients", "3", "--rounds", "2", "--out", "runs/demo", "--no-progress")
    assert first.exit_code == 0, first.output
    again = invoke("run", "--config", "runs/demo/config.toml", "--no-progress")
    assert again.exit_code == 0, again.output
    (new,) = [p for p in (tmp_path / "runs").iterdir() if p.name != "demo"]
    assert (new / "config.toml").read_text() == (tmp_path / "runs/demo/config.toml").read_text()
    assert rounds_of(new) == [1, 2]


# --- the run directory, the help, the console ----------------------------------------------------------


def test_a_run_logs_what_it_printed_and_writes_its_metrics_as_csv(tmp_path, fake_engine):
    out = tmp_path / "run"
    result = invoke("run", "--rounds", "2", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    log = (out / "run.log").read_text()
    for line in result.output.splitlines():
        if line.startswith("round "):
            assert line in log
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for row, record in zip(rows, records, strict=True):
        assert float(row["accuracy_mean"]) == pytest.approx(record["accuracy_mean"])
        assert [float(row[f"accuracy_{k}"]) for k in range(4)] == pytest.approx(record["accuracy"])
        assert row["epsilon"] == ""  # no DP: an empty cell, not "None"


def test_help_shows_the_values_a_run_uses_and_calls_the_default_run_plain():
    top = invoke("--help")
    assert "secure federation" not in top.output and "plain aggregation" in top.output
    run_help = invoke("run", "--help").output
    assert "learning-loop default" not in run_help
    flat = " ".join(run_help.split())
    for flag, value in (("--dream-batch", "64"), ("--kd-lr", "0.05"), ("--method", "conditional")):
        assert re.search(rf"{flag} .*?\[default: {value}\]", flat), flag


def test_opacus_warnings_stay_out_of_the_output():
    # q = 1 makes opacus's PRV accountant divide by zero inside numpy, on purpose.
    def to_stderr(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = to_stderr  # what Python does outside pytest, which records warnings
        result = invoke(
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "0.3",
            "--sample-rate",
            "1",
            "--rounds",
            "2",
            "--noise",
            "gaussian",  # PRV applies to Gaussian noise only
        )
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "opacus" not in result.output
    assert "prv: epsilon" in result.output


def test_plots_are_drawn_with_text_of_at_least_seven_points_at_150_dpi(tmp_path, monkeypatch):
    import matplotlib.figure
    import matplotlib.text
    import torch

    seen = []
    save = matplotlib.figure.Figure.savefig

    def inspect(fig, *args, **kwargs):
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
        seen.append((fig.dpi, min(sizes)))
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", inspect)
    records = [{"round": 1, "accuracy": [0.5, 0.6], "epsilon": 1.0}, {"round": 2, "accuracy": [0.6, 0.7]}]
    plots.plot_accuracy(records, tmp_path / "a.png", models=["cnn", "mlp"])
    plots.plot_epsilon(records, tmp_path / "e.png", delta=1e-5, target=8.0)
    names = ("T-shirt/top", "Trouser", "Pullover")
    plots.plot_dreams(torch.randn(6, 1, 8, 8), torch.eye(3)[[0, 1, 2, 0, 1, 2]], tmp_path / "d.png",
                      class_names=names)  # fmt: skip
    assert len(seen) == 3
    assert all(dpi >= 150 and smallest >= 7 for dpi, smallest in seen), seen


def test_benchmarks_write_a_fresh_folder_unless_told_to_publish(tmp_path, monkeypatch):
    from codream.bench import tradeoff

    monkeypatch.chdir(tmp_path)
    tiny = tradeoff.dataclasses.replace(tradeoff.QUICK, name="quick", limit_test=50, remedies=())
    results = tradeoff.run_tradeoff(tiny, device="cpu", settings=("cross-silo",), budget_s=1e-9)
    saved = tradeoff.write_json(results, tmp_path / "saved.json")

    trial = invoke("bench", "tradeoff", "--quick", "--from-json", str(saved))
    assert trial.exit_code == 0, trial.output
    assert not (tmp_path / "benchmarks").exists()
    (written,) = (tmp_path / "runs" / "bench").glob("*/tradeoff_quick.md")
    assert written.with_suffix(".json").is_file()

    published = invoke("bench", "tradeoff", "--quick", "--from-json", str(saved), "--publish")
    assert published.exit_code == 0, published.output
    assert (tmp_path / "benchmarks" / "results" / "tradeoff_quick.md").is_file()

    both = invoke("bench", "tradeoff", "--quick", "--from-json", str(saved), "--publish", "--out", "x.md")
    assert both.exit_code == 2 and "not both" in both.output


def test_a_flower_run_resumes_from_its_last_finished_round(tmp_path, monkeypatch):
    """`--resume` on a Flower run directory asks the deployment to continue from its own state and
    records every finished round once, numbered over the whole run."""
    pytest.importorskip("flwr")
    from codream.federation.flower import local

    calls = []

    def deployment(config, **kwargs):
        calls.append(kwargs["resume"])
        ids = list(range(config.num_clients))
        done = 1 if not kwargs["resume"] else kwargs["rounds"]
        flower = kwargs["out_dir"]
        flower.mkdir(parents=True, exist_ok=True)
        (flower / "server_state.pt").write_bytes(b"state")  # what the server writes after a round
        base = {"accuracies": [0.5] * len(ids), "participants": ids, "survivors": ids}
        rounds = [{**base, "round": r, "aggregation": {"clipped": 0, "overflowed": 0}} for r in range(done)]
        if not kwargs["resume"]:
            raise KeyboardInterrupt  # stopped after its first round
        return {"rounds": rounds}

    monkeypatch.setattr(local, "run_flower", deployment)
    out = tmp_path / "flower"
    first = invoke("run", *TINY, "--engine", "flower", "--rounds", "3", "--out", str(out))
    assert first.exit_code == 130, first.output
    (command,) = hinted_commands(first.output)
    assert command == f"codream run --resume {out}"
    again = run_hint(command)
    assert again.exit_code == 0, again.output
    assert calls == [False, True]
    assert rounds_of(out) == [1, 2, 3]
