"""The ledger: budget enforcement at the right round, a durable record after every round."""

from __future__ import annotations

import json

import pytest

from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.privacy import PrivacyEvent, epsilon_for
from codream.privacy.ledger import Granularity, PrivacyLedger

DELTA = 1e-5
EVENT = PrivacyEvent(noise_multiplier=2.0, sample_rate=0.1)


def _first_round_over(target: float) -> int:
    """The 0-based index of the first round whose completion would push epsilon over `target`."""
    k = 1
    while epsilon_for(noise_multiplier=2.0, sample_rate=0.1, steps=k, delta=DELTA) <= target:
        k += 1
    return k - 1


def test_budget_enforcement_stops_the_run_at_the_first_round_that_would_overspend(tmp_path):
    target = 1.0
    expected_stop = _first_round_over(target)
    assert expected_stop > 3  # the scenario is meaningful: several rounds fit
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=target, path=tmp_path / "privacy_ledger.json")
    stopped_at = None
    for r in range(100):
        try:
            ledger.check([EVENT], round_index=r)
        except PrivacyBudgetExceeded as exc:
            stopped_at = r
            message = str(exc)
            break
        ledger.record_round(round_index=r, events=[EVENT])
    assert stopped_at == expected_stop
    assert f"round {expected_stop}" in message and "target 1" in message and "allow overspending" in message
    assert ledger.spent <= target
    on_disk = json.loads((tmp_path / "privacy_ledger.json").read_text())
    assert len(on_disk["rounds"]) == expected_stop
    assert on_disk["granularity"] == "client" and on_disk["accountant"] == "rdp"


def test_the_override_flag_lets_the_run_continue_and_marks_the_overspent_rounds():
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=0.55, allow_overspend=True)
    for r in range(3):
        ledger.check([EVENT], round_index=r)
        ledger.record_round(round_index=r, events=[EVENT])
    assert ledger.spent > 0.55
    assert [r.overspent for r in ledger.rounds][-1] is True


def test_a_refused_round_leaves_the_ledger_unchanged():
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=0.2)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check([PrivacyEvent(noise_multiplier=0.5, sample_rate=1.0)])
    assert ledger.rounds == [] and ledger.history == () and ledger.spent == 0.0


def test_the_file_is_rewritten_after_every_round_and_a_crash_loses_nothing(tmp_path):
    path = tmp_path / "run" / "privacy_ledger.json"
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=10.0, path=path, accountant="rdp")
    for r in range(4):
        ledger.record_round(round_index=r, events=[EVENT], details={"clipped": r})
        assert len(json.loads(path.read_text())["rounds"]) == r + 1
    # A "crash": nothing but the file survives; reloading restores the history and the epsilon.
    restored = PrivacyLedger.load(path)
    assert restored.history == (PrivacyEvent(2.0, 0.1, 4),)
    assert restored.spent == pytest.approx(ledger.spent)
    assert restored.epsilon(delta=1e-6) > restored.spent
    assert restored.rounds[2].details == {"clipped": 2.0}
    assert not list(path.parent.glob(".ledger-*"))  # no temporary files left behind


def test_per_round_epsilon_increments_add_up_to_the_total():
    ledger = PrivacyLedger(delta=DELTA)
    for r in range(5):
        ledger.record_round(round_index=r, events=[EVENT])
    assert sum(r.epsilon_increment for r in ledger.rounds) == pytest.approx(ledger.spent)
    assert all(a.epsilon < b.epsilon for a, b in zip(ledger.rounds, ledger.rounds[1:], strict=False))


def test_example_level_ledger_records_each_clients_epsilon_and_the_maximum():
    ledger = PrivacyLedger(delta=DELTA, target_epsilon=4.0, granularity="example", accountant="prv")
    entry = ledger.record_client_epsilons(round_index=0, client_epsilons={0: 1.2, 1: 2.5, 2: 0.7})
    assert entry.epsilon == 2.5 and ledger.spent == 2.5
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.check_epsilon(4.1, round_index=1)
    with pytest.raises(ConfigError, match="client-level"):
        ledger.record_round(round_index=1, events=[EVENT])
    assert ledger.granularity is Granularity.EXAMPLE


def test_loading_a_ledger_of_another_accountant_is_refused_by_name():
    a = PrivacyLedger(delta=DELTA, accountant="prv")
    b = PrivacyLedger(delta=DELTA, accountant="rdp")
    with pytest.raises(ConfigError, match="accountant 'prv'.*'rdp'"):
        b.load_state_dict(a.to_dict())
