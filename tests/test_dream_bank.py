"""The server's dream bank: cohort clients acquire the released dreams of rounds they missed."""

from __future__ import annotations

import io

import pytest
import torch

from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from codream.federation.server import DreamBank

BATCH = 8
ROUNDS = 4


def bank_config(bank_size: int = ROUNDS * BATCH, **overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=6,
        clients_per_round=2,
        models=("mlp", "cnn") * 3,
        alpha=1.0,
        samples_per_client=60,
        limit_test=100,
        rounds=ROUNDS,
        seed=5,
        dream=DreamConfig(batch_size=BATCH, global_steps=2),
        distill=DistillConfig(
            kd_steps=3, warmup_steps=5, batch_size=16, buffer_size=ROUNDS * BATCH, bank_size=bank_size
        ),
    )
    base.update(overrides)
    return FederationConfig(**base)


def params(fed: Federation) -> list[torch.Tensor]:
    return [t.detach().clone() for c in fed.clients for t in c.model.state_dict().values()]


def released(fed: Federation) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """Every round's released dreams and target logits, from a bank large enough to hold them all."""
    assert fed.server.bank is not None and fed.server.bank.dropped == 0
    return list(fed.server.bank.entries)


@pytest.fixture(scope="module")
def banked(digits):
    fed = Federation(bank_config(), dataset=digits)
    metrics = fed.run()
    return fed, metrics


# -- the bank itself ---------------------------------------------------------------------------------


def test_the_bank_keeps_the_last_dreams_in_release_order_and_drops_the_oldest_first():
    bank = DreamBank(10)
    rounds = [(r, torch.full((4, 1, 2, 2), float(r)), torch.full((4, 3), float(r))) for r in range(4)]
    for r, x, y in rounds:
        bank.add(r, x, y)
        assert len(bank) <= 10
    # 16 dreams released, the last 10 kept: two of round 1, all of rounds 2 and 3.
    assert len(bank) == 10 and bank.dropped == 6
    assert [r for r, _, _ in bank.entries] == [1, 2, 3]
    assert [int(x.shape[0]) for _, x, _ in bank.entries] == [2, 4, 4]
    for r, x, y in bank.entries:
        assert torch.all(x == r) and torch.all(y == r)
    with pytest.raises(ConfigError, match="round 3 banked after round 3"):
        bank.add(3, rounds[0][1], rounds[0][2])


def test_the_bank_hands_each_entry_to_a_client_once():
    bank = DreamBank(100)
    bank.add(0, torch.zeros(2, 1, 2, 2), torch.zeros(2, 3))
    assert len(bank.take(7)) == 1
    bank.add(1, torch.ones(2, 1, 2, 2), torch.ones(2, 3))
    bank.add(2, torch.full((2, 1, 2, 2), 2.0), torch.full((2, 3), 2.0))
    got = bank.take(7)
    assert [float(x[0, 0, 0, 0]) for x, _ in got] == [1.0, 2.0]
    assert bank.take(7) == []
    # A client never seen before gets the whole bank.
    assert [float(x[0, 0, 0, 0]) for x, _ in bank.take(3)] == [0.0, 1.0, 2.0]


# -- in the federation -------------------------------------------------------------------------------


def test_without_a_bank_clients_hold_only_the_dreams_of_their_own_rounds(digits):
    fed = Federation(bank_config(bank_size=0), dataset=digits)
    assert fed.server.bank is None
    fed.run()
    rounds_of = {
        c.client_id: [m.round for m in fed.history if c.client_id in m.participants] for c in fed.clients
    }
    for client in fed.clients:
        assert len(client.buffer) == BATCH * len(rounds_of[client.client_id])


def test_with_every_client_in_every_round_a_bank_changes_nothing_bit_for_bit(digits):
    full = dict(clients_per_round=None, num_clients=2, models=("mlp", "cnn"))
    off = Federation(bank_config(bank_size=0, **full), dataset=digits)
    on = Federation(bank_config(**full), dataset=digits)
    assert [m.accuracies for m in off.run(2)] == [m.accuracies for m in on.run(2)]
    assert all(torch.equal(a, b) for a, b in zip(params(off), params(on), strict=True))


def test_the_federations_bank_is_bounded_and_in_release_order(digits):
    size = 2 * BATCH
    distill = DistillConfig(kd_steps=3, warmup_steps=5, batch_size=16, buffer_size=size, bank_size=size)
    fed = Federation(bank_config(distill=distill), dataset=digits)
    for _ in range(3):
        fed.run_round()
        bank = fed.server.bank
        assert len(bank) <= size
        rounds = [r for r, _, _ in bank.entries]
        assert rounds == sorted(rounds) and rounds[-1] == fed.round - 1
        assert torch.equal(bank.entries[-1][1], fed.last_dreams[0])
    assert [r for r, _, _ in fed.server.bank.entries] == [1, 2]
    assert fed.server.bank.dropped == BATCH


def test_a_client_acquires_every_released_round_up_to_its_last_one_exactly_once(banked):
    fed, metrics = banked
    entries = released(fed)
    assert [r for r, _, _ in entries] == list(range(ROUNDS))
    late = 0
    for client in fed.clients:
        rounds = [m.round for m in metrics if client.client_id in m.participants]
        if not rounds:
            assert len(client.buffer) == 0
            continue
        first, last = rounds[0], rounds[-1]
        late += first > 0
        want = [e for e in entries if e[0] <= last]
        assert torch.equal(client.buffer.x, torch.cat([x for _, x, _ in want]))
        assert torch.equal(client.buffer.y, torch.cat([y for _, _, y in want]))
        assert client.buffer.dropped == 0
    # The seeded cohorts do sample some client for the first time after round 0.
    assert late > 0


def test_a_resumed_run_with_a_bank_equals_an_unbroken_one(digits, banked):
    unbroken, metrics = banked
    first = Federation(bank_config(), dataset=digits)
    first.run(2)
    blob = io.BytesIO()
    torch.save(first.state_dict(), blob)
    blob.seek(0)
    resumed = Federation(bank_config(), dataset=digits)
    resumed.load_state_dict(torch.load(blob, weights_only=False))
    assert resumed.server.bank.last_seen == first.server.bank.last_seen
    got = resumed.run(ROUNDS - 2)
    assert [m.accuracies for m in got] == [m.accuracies for m in metrics[2:]]
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(unbroken), strict=True))
    for a, b in zip(resumed.server.bank.entries, unbroken.server.bank.entries, strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert resumed.server.bank.last_seen == unbroken.server.bank.last_seen


def test_a_checkpoint_with_a_bank_and_a_federation_without_one_are_refused_together(digits):
    with_bank = Federation(bank_config(), dataset=digits)
    without = Federation(bank_config(bank_size=0), dataset=digits)
    with pytest.raises(ConfigError, match="dream bank"):
        without.load_state_dict(with_bank.state_dict())
    with pytest.raises(ConfigError, match="dream bank"):
        with_bank.load_state_dict(without.state_dict())


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_a_bank_size_that_is_not_a_non_negative_integer_is_refused(bad):
    with pytest.raises(ConfigError, match="distill.bank_size"):
        DistillConfig(bank_size=bad)


def test_a_bank_larger_than_the_clients_buffer_is_refused():
    with pytest.raises(ConfigError, match="bank_size=65 exceeds distill.buffer_size=64"):
        DistillConfig(buffer_size=64, bank_size=65)
    assert DistillConfig(buffer_size=64, bank_size=64).bank_size == 64


def test_a_bank_smaller_than_one_rounds_dreams_is_refused():
    with pytest.raises(ConfigError, match="bank_size=4 is smaller than one round's dreams"):
        bank_config(bank_size=4)
