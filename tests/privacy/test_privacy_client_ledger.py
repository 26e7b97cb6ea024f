"""Each client's own ledger against the server: unamplified composition of the rounds it took part in."""

from __future__ import annotations

import json
import random

import pytest

from codream.exceptions import ConfigError, PrivacyBudgetExceeded
from codream.privacy import PrivacyEvent, epsilon_for
from codream.privacy.client_ledger import (
    ClientBudgetSummary,
    ClientLedger,
    client_ledger_path,
    client_round_event,
    load_client_ledgers,
)

DELTA = 1e-5
Z = 2.0
EVENT = client_round_event(Z)


def _ledger(cid: int = 0, target: float | None = 20.0, **kwargs) -> ClientLedger:
    return ClientLedger(client_id=cid, delta=DELTA, target_epsilon=target, **kwargs)


def test_a_clients_epsilon_with_cohorts_is_the_unamplified_composition_of_its_own_rounds(tmp_path):
    population, cohort, rounds = 10, 3, 20
    ledgers = {c: _ledger(c, None, path=client_ledger_path(tmp_path, c)) for c in range(population)}
    picks = random.Random(0)
    taken: dict[int, int] = dict.fromkeys(range(population), 0)
    for r in range(rounds):
        for c in picks.sample(range(population), cohort):  # the cohort the server knows
            ledgers[c].charge(r, EVENT, session=f"session-{r}")
            taken[c] += 1
    # What the server-side ledger used to claim: every client amplified at q = cohort / population.
    amplified = epsilon_for(noise_multiplier=Z, sample_rate=cohort / population, steps=rounds, delta=DELTA)
    for c, ledger in ledgers.items():
        own = (
            epsilon_for(noise_multiplier=Z, sample_rate=1.0, steps=taken[c], delta=DELTA) if taken[c] else 0.0
        )
        assert ledger.participations == taken[c]
        assert ledger.spent == pytest.approx(own, rel=1e-12)
    summary = ClientBudgetSummary.from_ledgers(load_client_ledgers(tmp_path))
    most = max(taken.values())
    assert summary.relation == "zero-out"
    assert summary.max_epsilon == pytest.approx(
        epsilon_for(noise_multiplier=Z, sample_rate=1.0, steps=most, delta=DELTA)
    )
    assert summary.max_epsilon > 2 * amplified and summary.mean_epsilon > 1.5 * amplified
    assert summary.mean_epsilon == pytest.approx(sum(led.spent for led in ledgers.values()) / population)
    assert summary.participations == taken
    assert [row.charged for row in summary.rounds] == [cohort] * rounds
    assert summary.rounds[-1].max_epsilon == pytest.approx(summary.max_epsilon)


def test_the_amplified_claim_of_7_99_is_about_19_for_ten_rounds_taken_part_in_and_30_for_twenty():
    # Population 1000, 100 rounds, cohort 100: z = 0.9941 meets 7.99 at q = 0.1 by the Gaussian analysis.
    assert epsilon_for(noise_multiplier=0.9941, sample_rate=0.1, steps=100, delta=DELTA) == pytest.approx(
        7.99, abs=0.005
    )
    ledger = _ledger(target=None)
    for r in range(20):
        ledger.charge(r, client_round_event(0.9941), session=f"s{r}")
        if r == 9:
            assert ledger.spent == pytest.approx(19.2, abs=0.05)
    assert ledger.spent == pytest.approx(30.4, abs=0.05)


def test_a_round_over_the_clients_own_target_is_refused_and_nothing_is_recorded(tmp_path):
    path = tmp_path / "c.json"
    two = epsilon_for(noise_multiplier=Z, sample_rate=1.0, steps=2, delta=DELTA)
    three = epsilon_for(noise_multiplier=Z, sample_rate=1.0, steps=3, delta=DELTA)
    ledger = _ledger(target=(two + three) / 2, path=path)
    for r in range(2):
        assert ledger.check(r, EVENT) > ledger.spent
        ledger.charge(r, EVENT, session=f"s{r}")
    before = path.read_text()
    with pytest.raises(PrivacyBudgetExceeded, match="client 0: round 2 would spend.*over its target"):
        ledger.check(2, EVENT)
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.charge(2, EVENT, session="s2")
    assert ledger.participations == 2 and ledger.rounds == (0, 1)
    assert path.read_text() == before


def test_charging_is_idempotent_per_session_and_a_rerun_round_is_charged_again():
    ledger = _ledger()
    first = ledger.charge(0, EVENT, session=b"\x01\x02")
    assert ledger.charge(0, EVENT, session=b"\x01\x02") is first  # a later release of the same session
    assert ledger.check(0, EVENT, session="0102") == ledger.spent  # costs nothing more
    assert ledger.participations == 1
    ledger.charge(0, EVENT, session="rerun-after-resume")  # the same round released again: charged again
    assert ledger.rounds == (0, 0)
    assert ledger.spent == pytest.approx(
        epsilon_for(noise_multiplier=Z, sample_rate=1.0, steps=2, delta=DELTA)
    )
    with pytest.raises(ConfigError, match="was charged"):
        ledger.charge(0, client_round_event(3.0), session="rerun-after-resume")
    with pytest.raises(ConfigError, match="session id"):
        ledger.charge(1, EVENT, session="")


def test_amplified_events_and_integer_noise_under_prv_are_refused():
    ledger = _ledger()
    with pytest.raises(ConfigError, match="sample rate 1.*knows who took part"):
        ledger.charge(0, PrivacyEvent(noise_multiplier=Z, sample_rate=0.1, mechanism="integer"), session="s")
    with pytest.raises(ConfigError, match="PRV"):
        _ledger(accountant="prv").charge(0, EVENT, session="s")
    gaussian = _ledger(accountant="prv")
    gaussian.charge(0, client_round_event(Z, mechanism="gaussian"), session="s")
    assert gaussian.spent > 0
    assert ledger.participations == 0


def test_the_file_is_the_truth_reopening_adopts_it_and_a_changed_budget_is_refused(tmp_path):
    path = tmp_path / "client-3.json"
    ledger = _ledger(3, target=10.0, path=path)
    assert json.loads(path.read_text())["participations"] == 0  # every client's file exists from the start
    for r in range(3):
        ledger.charge(r, EVENT, session=f"s{r}")
        assert json.loads(path.read_text())["participations"] == r + 1
    reopened = _ledger(3, target=10.0, path=path)
    assert reopened.rounds == (0, 1, 2) and reopened.spent == pytest.approx(ledger.spent)
    for kwargs, what in (
        ({"target": 12.0}, "target_epsilon"),
        ({"target": None}, "target_epsilon"),
        ({"delta": 1e-6}, "delta"),
        ({"accountant": "prv"}, "accountant"),
    ):
        delta = kwargs.pop("delta", DELTA)
        with pytest.raises(ConfigError, match=f"{what}.*cannot change"):
            ClientLedger(
                client_id=3, delta=delta, target_epsilon=kwargs.pop("target", 10.0), path=path, **kwargs
            )
    with pytest.raises(ConfigError, match="client_id"):
        _ledger(4, target=10.0, path=path)
    assert _ledger(3, target=10.0, path=path).rounds == (0, 1, 2)  # refusals left the file intact


def test_a_checkpoint_older_than_the_file_is_merged_never_written_over_it(tmp_path):
    path = tmp_path / "client-0.json"
    ledger = _ledger(path=path)
    ledger.charge(0, EVENT, session="a")
    checkpoint = ledger.state_dict()
    ledger.charge(1, EVENT, session="b")  # released after the checkpoint, then a crash
    resumed = ClientLedger.from_state(checkpoint, path=path)
    assert resumed.rounds == (0, 1)
    assert resumed.spent == pytest.approx(ledger.spent)
    assert json.loads(path.read_text())["participations"] == 2
    # Without the file, the checkpoint alone restores what it holds.
    alone = ClientLedger.from_state(checkpoint)
    assert alone.rounds == (0,) and alone.path is None


def test_not_private_reasons_are_kept_and_reported(tmp_path):
    path = client_ledger_path(tmp_path, 1)
    ledger = _ledger(1, path=path, not_private=["seeded noise (test option)"])
    ledger.mark_not_private("seeded noise (test option)")
    assert ledger.not_private == ["seeded noise (test option)"]
    _ledger(2, path=client_ledger_path(tmp_path, 2))
    summary = ClientBudgetSummary.from_ledgers(load_client_ledgers(tmp_path))
    assert summary.not_private == {1: ("seeded noise (test option)",)}
    assert summary.to_dict()["not_private"] == {"1": ["seeded noise (test option)"]}


def test_a_summary_refuses_ledgers_that_disagree_or_repeat_a_client():
    with pytest.raises(ConfigError, match="at least one"):
        ClientBudgetSummary.from_ledgers([])
    with pytest.raises(ConfigError, match="two ledgers for one client"):
        ClientBudgetSummary.from_ledgers([_ledger(0), _ledger(0)])
    with pytest.raises(ConfigError, match="differs from"):
        ClientBudgetSummary.from_ledgers([_ledger(0), _ledger(1, target=5.0)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": -1},
        {"client_id": True},
        {"delta": 0.0},
        {"target_epsilon": 0.0},
        {"target_epsilon": float("inf")},
    ],
)
def test_invalid_settings_are_refused(kwargs):
    options = {"client_id": 0, "delta": DELTA, "target_epsilon": 1.0, **kwargs}
    with pytest.raises(ConfigError):
        ClientLedger(**options)
