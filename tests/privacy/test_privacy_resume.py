"""The ledger never shrinks: a resume keeps every charged round, and a recorded budget cannot change."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from codream.cli import main
from codream.exceptions import ConfigError
from codream.models import build_model
from codream.privacy import PrivacyEvent
from codream.privacy.example_level import (
    DPSGDTrainer,
    _extends,
    record_example_round,
    restore_example_accountants,
)
from codream.privacy.ledger import PrivacyLedger

DELTA = 1e-5
EVENT = PrivacyEvent(noise_multiplier=2.0, sample_rate=1.0)
TINY = [
    "--clients", "3", "--models", "mlp", "--dream-batch", "8", "--global-steps", "2", "--kd-steps", "2",
    "--warmup-steps", "3", "--limit-test", "60", "--no-progress", "--aggregation", "secure+dp",
]  # fmt: skip


def _rounds(path) -> list[int]:
    return [r["round"] for r in json.loads((path / "privacy_ledger.json").read_text())["rounds"]]


def _run(*args: str):
    return CliRunner().invoke(main, ["run", *args])


def test_a_resume_after_a_release_past_the_checkpoint_keeps_that_round_charged(tmp_path):
    out = tmp_path / "run"
    assert _run(*TINY, "--noise-multiplier", "2", "--rounds", "1", "--out", str(out)).exit_code == 0
    shutil.copy(out / "checkpoint.pt", tmp_path / "after-round-1.pt")
    res = _run("--resume", str(out), "--rounds", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    assert _rounds(out) == [0, 1]
    # A crash after round 2's release was charged but before its checkpoint: the older checkpoint is
    # what a resume finds, the ledger file still holds round 2.
    shutil.copy(tmp_path / "after-round-1.pt", out / "checkpoint.pt")
    res = _run("--resume", str(out), "--rounds", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    assert _rounds(out) == [0, 1, 1]  # round 2 reached the server twice, with fresh noise each time
    ledger = json.loads((out / "privacy_ledger.json").read_text())
    first, second = ledger["rounds"][1], ledger["rounds"][2]
    assert first["client_epsilons"] and second["client_epsilons"]  # both releases stay on the record


def test_a_resume_with_an_edited_target_epsilon_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _run(*TINY, "--epsilon", "8", "--rounds", "1", "--out", str(out)).exit_code == 0
    config = out / "config.toml"
    config.write_text(config.read_text().replace("epsilon = 8.0", "epsilon = 16.0"))
    assert "epsilon = 16.0" in config.read_text()
    before = (out / "privacy_ledger.json").read_text()
    res = _run("--resume", str(out), "--rounds", "2", "--no-progress")
    assert res.exit_code == 2
    assert "recorded with target epsilon 8.0" in res.output and "cannot change" in res.output
    assert (out / "privacy_ledger.json").read_text() == before


def test_merging_the_file_keeps_rounds_past_the_checkpoint_and_refuses_a_disagreement(tmp_path):
    path = tmp_path / "privacy_ledger.json"
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=20.0, path=path)
    ledger.record_round(round_index=0, events=[EVENT])
    checkpoint = ledger.state_dict()
    ledger.record_round(round_index=1, events=[EVENT])
    resumed = PrivacyLedger(delta=DELTA, target_epsilon=20.0)
    resumed.load_state_dict(checkpoint)
    assert resumed.merge_file(path) == 1
    assert [r.round_index for r in resumed.rounds] == [0, 1] and resumed.history == (
        PrivacyEvent(2.0, 1.0, 2),
    )
    assert resumed.merge_file(tmp_path / "absent.json") == 0
    other = PrivacyLedger(delta=DELTA, target_epsilon=20.0)
    other.record_round(round_index=0, events=[PrivacyEvent(noise_multiplier=3.0, sample_rate=1.0)])
    with pytest.raises(ConfigError, match="disagree on round 0"):
        other.merge_file(path)
    with pytest.raises(ConfigError, match="target epsilon 20.0.*cannot change"):
        PrivacyLedger(delta=DELTA, target_epsilon=30.0).merge_file(path)
    with pytest.raises(ConfigError, match="target epsilon 20.0.*cannot change"):
        PrivacyLedger(delta=DELTA, target_epsilon=None).load_state_dict(checkpoint)
    with pytest.raises(ConfigError, match="delta"):
        PrivacyLedger(delta=1e-6, target_epsilon=20.0).merge_file(path)


def _trainer(seed: int = 0, noise_multiplier: float = 1.1) -> DPSGDTrainer:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 1, 8, 8, generator=g), torch.randint(0, 10, (100,), generator=g)
    model = build_model("mlp", (1, 8, 8), 10, seed=seed)
    return DPSGDTrainer(
        model, x, y, torch.Generator(), noise_multiplier=noise_multiplier, batch_size=10, accountant="rdp"
    )


def test_a_resumed_example_level_trainer_keeps_the_steps_recorded_after_its_checkpoint():
    ledger = PrivacyLedger(delta=DELTA, granularity="example", accountant="rdp")
    trainer = _trainer(seed=0)
    trainer.ce_step()
    record_example_round(ledger, {0: trainer}, round_index=0)
    checkpoint = trainer.state_dict()
    for _ in range(3):
        trainer.ce_step()
    record_example_round(ledger, {0: trainer}, round_index=1)  # on disk, then a crash
    resumed = _trainer(seed=0)
    resumed.load_state_dict(checkpoint)
    assert len(resumed.accountant) == 1
    assert restore_example_accountants(ledger, {0: resumed}) == [0]
    assert len(resumed.accountant) == 4 and resumed.epsilon() == pytest.approx(trainer.epsilon())
    assert restore_example_accountants(ledger, {0: resumed}) == []  # already as long: nothing to do
    assert _extends((PrivacyEvent(1.0, 0.1, 5),), (PrivacyEvent(1.0, 0.1, 3),))
    assert not _extends((PrivacyEvent(1.0, 0.1, 2),), (PrivacyEvent(1.0, 0.1, 3),))
    stranger = _trainer(seed=1, noise_multiplier=0.7)
    stranger.ce_step()
    with pytest.raises(ConfigError, match="disagree"):
        restore_example_accountants(ledger, {0: stranger})
