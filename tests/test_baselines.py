"""Local-only, FedAvg and centralized baselines on digits, and FedAvg's weighted averaging."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from codream.baselines import (
    BaselineConfig,
    Method,
    fedavg_average,
    run_baseline,
    run_centralized,
    run_fedavg,
    run_local_only,
)
from codream.data import partition
from codream.exceptions import ConfigError

FAST = BaselineConfig(rounds=2, local_steps=25, batch_size=32, lr=0.05, seed=0)


@pytest.fixture(scope="module")
def iid_parts(digits):
    return partition(digits.y_train, 3, alpha=None, seed=0)


@pytest.fixture(scope="module")
def fedavg_mlp(digits, iid_parts):
    return run_fedavg(digits, iid_parts, "mlp", FAST, device="cpu")


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_local_only_clients_beat_chance_by_a_wide_margin(digits, iid_parts):
    result = run_local_only(digits, iid_parts, ["mlp", "cnn", "mlp"], FAST, device="cpu")
    assert result.method is Method.LOCAL and result.models == ("mlp", "cnn", "mlp")
    assert len(result.final_accuracy) == 3
    assert min(result.final_accuracy) > 0.6  # chance is 0.1
    assert len(result.history) == FAST.rounds and result.history[-1] == result.final_accuracy


def test_fedavg_beats_chance_by_a_wide_margin(fedavg_mlp):
    assert fedavg_mlp.method is Method.FEDAVG
    assert min(fedavg_mlp.final_accuracy) > 0.6
    assert len(set(fedavg_mlp.final_accuracy)) == 1  # one global model credited to every client


def test_fedavg_with_batch_norm_models_beats_chance(digits, iid_parts):
    config = BaselineConfig(rounds=1, local_steps=20, batch_size=32, seed=0)
    assert min(run_fedavg(digits, iid_parts, "cnn", config, device="cpu").final_accuracy) > 0.5


def test_centralized_beats_chance_and_trains_each_architecture_once(digits, iid_parts):
    result = run_centralized(digits, iid_parts, ["mlp", "mlp", "mlp"], FAST, device="cpu")
    assert result.method is Method.CENTRALIZED
    assert result.final_accuracy[0] > 0.8
    assert len(set(result.final_accuracy)) == 1  # the same mlp, credited to the three clients
    assert result.steps_per_round == FAST.local_steps * 3  # matched budget: the federation's examples


def test_the_same_seed_gives_identical_numbers(digits, iid_parts, fedavg_mlp):
    again = run_fedavg(digits, iid_parts, "mlp", FAST, device="cpu")
    assert again.history == fedavg_mlp.history
    other = run_fedavg(digits, iid_parts, "mlp", BaselineConfig(**{**_fields(FAST), "seed": 1}), device="cpu")
    assert other.history != fedavg_mlp.history


def test_best_over_rounds_is_the_per_client_maximum_and_results_serialise(fedavg_mlp):
    hist = np.asarray(fedavg_mlp.history)
    assert fedavg_mlp.best_over_rounds == tuple(hist.max(axis=0))
    assert fedavg_mlp.best_mean >= fedavg_mlp.mean
    data = json.loads(json.dumps(fedavg_mlp.to_dict()))
    assert data["method"] == "fedavg" and data["best_over_rounds_mean"] == fedavg_mlp.best_mean
    assert data["seconds"] > 0 and data["config"]["rounds"] == FAST.rounds


def test_fedavg_average_equals_the_hand_computed_weighted_mean_of_every_tensor():
    a, b = _tiny(0), _tiny(1)
    # Give the BatchNorm layers different running statistics and step counters.
    a.train()(torch.randn(8, 3))
    for _ in range(3):
        b.train()(torch.randn(8, 3) * 2 + 1)
    sa, sb = a.state_dict(), b.state_dict()
    out = fedavg_average([sa, sb], [300, 100])
    assert set(out) == set(sa)
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        expected = 0.75 * sa[key] + 0.25 * sb[key]
        torch.testing.assert_close(out[key], expected)
        assert out[key].dtype == sa[key].dtype
    # num_batches_tracked: 1 and 3 -> 0.75 * 1 + 0.25 * 3 = 1.5, rounded half to even -> 2, still int64
    assert out["1.num_batches_tracked"].dtype == torch.int64
    assert int(out["1.num_batches_tracked"]) == 2


def test_fedavg_average_of_identical_states_is_that_state():
    state = _tiny(3).state_dict()
    out = fedavg_average([state, state, state], [1, 2, 3])
    for key, value in state.items():
        torch.testing.assert_close(out[key], value)


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "one weight per state"), ([0.0, 0.0], "not all zero"), ([1.0, -1.0], "non-negative")],
)
def test_fedavg_average_rejects_bad_weights(weights, match):
    state = _tiny(0).state_dict()
    with pytest.raises(ConfigError, match=match):
        fedavg_average([state, state], weights)


def test_fedavg_average_rejects_mismatched_states():
    with pytest.raises(ConfigError, match="keys"):
        fedavg_average([_tiny(0).state_dict(), nn.Linear(3, 2).state_dict()], [1, 1])


def test_fedavg_refuses_heterogeneous_architectures(digits, iid_parts):
    with pytest.raises(ConfigError, match="one shared architecture"):
        run_fedavg(digits, iid_parts, ["mlp", "cnn", "mlp"], FAST, device="cpu")


def test_baselines_reject_a_model_list_of_the_wrong_length(digits, iid_parts):
    with pytest.raises(ConfigError, match="2 model names for 3 clients"):
        run_local_only(digits, iid_parts, ["mlp", "cnn"], FAST, device="cpu")


def test_an_unknown_baseline_name_lists_the_valid_ones(digits, iid_parts):
    with pytest.raises(ConfigError, match="local.*fedavg.*centralized"):
        run_baseline("feddf", digits, iid_parts, "mlp", FAST, device="cpu")


@pytest.mark.parametrize("field", ["rounds", "local_steps", "batch_size"])
def test_a_zero_budget_is_rejected(field):
    with pytest.raises(ConfigError, match=field):
        BaselineConfig(**{field: 0})


def _fields(config: BaselineConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.mark.parametrize("method", ["local", "fedavg", "centralized"])
def test_a_validation_split_is_evaluated_every_round_like_the_test_set(digits, iid_parts, method):
    import dataclasses

    config = BaselineConfig(rounds=2, local_steps=5, batch_size=32, seed=0)
    models = "mlp" if method == "fedavg" else ["mlp", "cnn", "mlp"]
    assert run_baseline(method, digits, iid_parts, models, config, device="cpu").val_history == ()
    # A validation split equal to the test split must score exactly what the test set does.
    mirrored = dataclasses.replace(digits, x_val=digits.x_test, y_val=digits.y_test)
    result = run_baseline(method, mirrored, iid_parts, models, config, device="cpu")
    assert len(result.val_history) == config.rounds
    assert result.val_history == result.history
