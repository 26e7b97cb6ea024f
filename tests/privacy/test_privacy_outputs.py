"""Every value a round reports is classified: covered by the DP guarantee, or kept apart as outside it."""

from __future__ import annotations

import dataclasses

import pytest

from codream.exceptions import ConfigError
from codream.federation.simulation import RoundMetrics
from codream.privacy.outputs import (
    COVERED_ENGINE_KEYS,
    OUTSIDE_GUARANTEE,
    describe_outside,
    merge_record,
    split_record,
)


def test_every_round_metric_of_the_engine_is_classified_for_client_level_dp():
    # A new metric must be placed on one side or the other before it can be written in a DP run.
    fields = {f.name for f in dataclasses.fields(RoundMetrics)}
    _, outside = OUTSIDE_GUARANTEE["client"]
    assert fields == set(COVERED_ENGINE_KEYS) | set(outside)
    assert not set(COVERED_ENGINE_KEYS) & set(outside)


def test_example_level_keeps_only_the_losses_of_private_batches_apart():
    top, engine = OUTSIDE_GUARANTEE["example"]
    assert top == () and set(engine) == {"ce_loss", "warmup_loss"}
    assert set(engine) <= set(OUTSIDE_GUARANTEE["client"][1])


def test_a_record_splits_into_two_halves_that_merge_back():
    record = {
        "round": 3,
        "accuracy": [0.5, 0.6],
        "accuracy_mean": 0.55,
        "epsilon": 1.2,
        "federation": {"ce_loss": 0.3, "kd_loss": 0.2, "class_coverage": 7},
    }
    covered, private = split_record(record, "client")
    assert covered == {"round": 3, "epsilon": 1.2, "federation": {"class_coverage": 7}}
    assert private == {
        "round": 3,
        "accuracy": [0.5, 0.6],
        "accuracy_mean": 0.55,
        "federation": {"ce_loss": 0.3, "kd_loss": 0.2},
    }
    assert merge_record(covered, private) == record
    covered, private = split_record(record, "example")
    assert covered["accuracy"] == [0.5, 0.6] and private == {"round": 3, "federation": {"ce_loss": 0.3}}
    assert "federation.ce_loss" in describe_outside("example")
    with pytest.raises(ConfigError, match="granularity"):
        split_record(record, "server")


def test_a_run_directory_keeps_both_halves_in_step_through_a_resume(tmp_path):
    from codream.rundir import RunDir

    rd = RunDir.create(tmp_path / "run")
    rd.withhold("client")
    for r in (1, 2, 3):
        rd.append_metrics(
            {"round": r, "accuracy": [0.1 * r], "epsilon": float(r), "federation": {"ce_loss": r}}
        )
    assert "outside the privacy guarantee" in (rd.path / "README.md").read_text()
    assert rd.truncate_metrics(2) == 1  # the checkpoint holds two rounds
    again = RunDir(rd.path)  # a resume, before it withholds anything
    assert [m["accuracy"] for m in again.read_metrics()] == [[0.1], [0.2]]
    lines = (rd.path / "client_private.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "accuracy" not in (rd.path / "metrics.jsonl").read_text()


def test_a_node_withholds_exactly_the_learned_values_outside_its_guarantee():
    from codream.privacy.outputs import learned_outside

    assert learned_outside("client") == {"accuracy", "kd_loss", "ce_loss", "val_accuracy"}
    assert learned_outside("example") == {"ce_loss"}  # the DP model's accuracy is post-processing
    assert learned_outside(None) == frozenset()
    with pytest.raises(ConfigError):
        learned_outside("group")
