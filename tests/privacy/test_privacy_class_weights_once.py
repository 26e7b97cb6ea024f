"""The class weights are released once per run, over one fixed set, never over changing cohorts.

A client's class weights never change. Summed every round over a cohort the server picks (and
over whichever clients survive), they would give the server one linear equation per round in the
clients' vectors, and enough rounds solve for every client's label histogram. These tests attack a
`secure` run with cohorts as an honest-but-curious server would: they collect every sum the run
released with its contributor set and solve by least squares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from codream.aggregation import ReleaseKind, create_aggregator
from codream.exceptions import AbortReason, ProtocolAbort
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from fakes import RecordingAggregator


def population(**overrides) -> FederationConfig:
    base = dict(
        dataset="digits",
        num_clients=10,
        clients_per_round=6,
        models=("mlp",),
        alpha=0.3,
        samples_per_client=40,
        limit_test=50,
        rounds=14,
        seed=3,
        method="conditional",
        dream=DreamConfig(batch_size=20, global_steps=1),
        distill=DistillConfig(kd_steps=1, batch_size=8, warmup_steps=1, buffer_size=20),
    )
    base.update(overrides)
    return FederationConfig(**base)


def solve(sets: Sequence[Sequence[int]], totals: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """The server's least-squares estimate of every client's vector from sums over known sets."""
    a = np.zeros((len(sets), n))
    for i, s in enumerate(sets):
        a[i, list(s)] = 1.0
    estimate, *_ = np.linalg.lstsq(a, totals, rcond=None)
    return estimate, int(np.linalg.matrix_rank(a))


@pytest.fixture(scope="module")
def attacked(digits):
    spy = RecordingAggregator(create_aggregator("secure", rounding_seed=3))
    fed = Federation(population(), aggregator=spy, dataset=digits)
    fed.run()
    truth = np.stack([c.class_weights() for c in fed.clients])  # (N, K)
    return fed, spy, truth


def test_the_class_weights_are_released_once_over_the_first_rounds_survivors(attacked):
    fed, spy, truth = attacked
    ((r, contributors, total),) = spy.released(ReleaseKind.CLASS_WEIGHTS)
    assert r == 0 and contributors == fed.history[0].participants
    release = fed.server.class_weight_release
    assert release is not None and release.contributors == contributors
    np.testing.assert_allclose(total, truth[list(contributors)].sum(0), atol=1e-4)
    # The attack: one sum over one set is one equation per class; nothing separates the clients.
    estimate, rank = solve([contributors], total[None, :], fed.config.num_clients)
    assert rank == 1
    assert np.abs(estimate - truth).max() > 0.3


def test_the_soft_labels_no_longer_re_release_the_class_weights_summed_over_each_cohort(attacked):
    """Weighting each row of probabilities by the client's weight of its target class made every
    row total that weight, so the summed rows re-released the class-weight sum over every round's
    survivors. Each row now sums to 1 whatever the weight: the totals say only how many clients
    contributed, and the same attack that solves the old releases exactly recovers nothing."""
    fed, spy, truth = attacked
    k = fed.server.num_classes
    n = fed.config.num_clients
    rounds = spy.released(ReleaseKind.SOFT_LABELS)
    assert len(rounds) == fed.config.rounds
    sets, row_totals, old_totals = [], [], []
    for _, contributors, total in rounds:
        rows = total.reshape(-1, k).sum(axis=1)  # (B,)
        np.testing.assert_allclose(rows, len(contributors), rtol=1e-4)
        sets.append(contributors)
        row_totals.append(rows)
        old_totals.append(truth[list(contributors)].sum(0))  # what the old rows totalled, per class
    old_estimate, rank = solve(sets, np.asarray(old_totals), n)
    assert rank == n  # cohorts of 6 out of 10 over 14 rounds: the old releases pinned down every client
    np.testing.assert_allclose(old_estimate, truth, atol=1e-6)
    # The run's release: every row totals the number of contributors, so the estimate is 1 for
    # every client and class, whatever the client holds.
    per_class = np.stack([np.full(k, rows.mean()) for rows in row_totals])
    estimate, _ = solve(sets, per_class, n)
    np.testing.assert_allclose(estimate, 1.0, atol=1e-3)
    assert np.abs(estimate - truth).max() > 0.5


def test_a_resumed_run_does_not_release_the_class_weights_again(digits):
    config = population(rounds=3)
    first = Federation(config, dataset=digits)
    first.run(2)
    spy = RecordingAggregator(create_aggregator("secure", rounding_seed=3))
    resumed = Federation(config, aggregator=spy, dataset=digits)
    resumed.load_state_dict(first.state_dict())
    resumed.run_round()
    assert [spec.kind for _, spec, _, _ in spy.seen if spec.kind is ReleaseKind.CLASS_WEIGHTS] == []
    kept, before = resumed.server.class_weight_release, first.server.class_weight_release
    assert kept.contributors == before.contributors and np.array_equal(kept.total, before.total)
    assert resumed.server.targets is not None and len(torch.unique(resumed.server.targets)) > 1


class AbortingAfterTheClassWeights(RecordingAggregator):
    """Aborts round 0 at its first dream step: the class weights have left, no checkpoint exists."""

    def open_round(self, *, round_index, participants, specs):
        inner = super().open_round(round_index=round_index, participants=participants, specs=specs)
        sum_ = inner.sum

        def sum(spec, vectors, *, context=b""):
            if round_index == 0 and spec.kind is ReleaseKind.DREAM_GRADIENT:
                raise ProtocolAbort(AbortReason.TOO_FEW_PEERS, "a crash after the class weights")
            return sum_(spec, vectors, context=context)

        inner.sum = sum
        return inner


def test_a_round_stopped_after_the_class_weights_does_not_ask_for_them_again(digits, tmp_path):
    """The server keeps the release the moment it arrives: the round run again (a resume that found
    no checkpoint, the round never having finished) uses it instead of asking its cohort again."""
    config = population(rounds=1)
    path = tmp_path / "class_weights.json"
    crashing = AbortingAfterTheClassWeights(create_aggregator("secure", rounding_seed=3))
    first = Federation(config, aggregator=crashing, dataset=digits)
    first.server.persist_release(path)
    with pytest.raises(ProtocolAbort):
        first.run_round()
    assert len(crashing.released(ReleaseKind.CLASS_WEIGHTS)) == 1 and path.exists()
    spy = RecordingAggregator(create_aggregator("secure", rounding_seed=3))
    again = Federation(config, aggregator=spy, dataset=digits)
    again.server.persist_release(path)
    again.run_round()
    assert spy.released(ReleaseKind.CLASS_WEIGHTS) == []
    kept, before = again.server.class_weight_release, first.server.class_weight_release
    assert kept.contributors == before.contributors and np.array_equal(kept.total, before.total)


def test_a_resumed_flower_run_does_not_ask_its_nodes_for_the_class_weights_again(tmp_path):
    pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")
    from codream.federation.flower.wire import decode
    from flower_loopback import Loopback, run_loopback, tiny_config

    class Asked(Loopback):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.plans: list[tuple[int, list[str]]] = []

        def exchange(self, requests, *, timeout):
            for body in requests.values():
                request = decode(body)
                if request.kind == "session":
                    self.plans.append((request.fields["round"], [s[3] for s in request.fields["specs"]]))
            return super().exchange(requests, timeout=timeout)

    config = tiny_config(rounds=3, clients_per_round=3)
    first = Asked(config.num_clients, node_config={"state-dir": str(tmp_path / "nodes")})
    run_loopback(config, tmp_path / "run", transport=first, rounds=2)
    assert {r for r, kinds in first.plans if "class_weights" in kinds} == {0}
    again = Asked(config.num_clients, node_config={"state-dir": str(tmp_path / "nodes")})
    results, _ = run_loopback(config, tmp_path / "run", transport=again, resume=True)
    assert [r["round"] for r in results["rounds"]] == [2]
    assert again.plans and all(r == 2 and "class_weights" not in kinds for r, kinds in again.plans)


def test_an_old_checkpoint_or_a_torn_release_file_is_refused_with_a_clear_error(digits, tmp_path):
    from codream.exceptions import ConfigError

    fed = Federation(population(rounds=1), dataset=digits)
    fed.run_round()
    state = fed.server.state_dict()
    old = {k: v for k, v in state.items() if k != "class_weight_release"}
    old.update(class_weight_mean=fed.server.class_weight_mean, weight_floor=1e-3)
    with pytest.raises(ConfigError, match="predates the once-per-run class-weight release"):
        Federation(population(rounds=1), dataset=digits).server.load_state_dict(old)
    torn = tmp_path / "class_weights.json"
    torn.write_text('{"round_index": 0, "total": [0.5')
    with pytest.raises(ConfigError, match="is not a class-weight release"):
        Federation(population(rounds=1), dataset=digits).server.persist_release(torn)
