"""The model zoo: every architecture on both input sizes and with every normalisation."""

from __future__ import annotations

import itertools

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from codream.exceptions import ConfigError
from codream.models import NORMS, build_model, count_parameters, model_names

SHAPES = [(1, 8, 8), (1, 28, 28)]
CASES = list(itertools.product(model_names(), SHAPES, NORMS))


def _ids(case):
    name, shape, norm = case
    return f"{name}-{shape[1]}x{shape[2]}-{norm}"


def test_the_registry_holds_at_least_the_four_contract_architectures():
    assert {"mlp", "cnn", "resnet8", "vgg"} <= set(model_names())


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_every_model_maps_a_batch_to_logits_and_passes_gradients_to_the_input(case):
    name, shape, norm = case
    model = build_model(name, shape, 10, norm=norm, seed=0)
    x = torch.randn(4, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # dreams need d loss / d input
    assert all(p.grad is not None for p in model.parameters())
    assert 1_000 < count_parameters(model) < 400_000  # small enough to train on a CPU


@pytest.mark.parametrize("case", [c for c in CASES if c[2] == "group"], ids=_ids)
def test_group_norm_models_are_accepted_by_opacus(case):
    name, shape, norm = case
    model = build_model(name, shape, 10, norm=norm, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", [n for n in model_names() if n != "mlp"])
def test_batch_norm_models_carry_batch_norm_layers_and_opacus_rejects_them(name):
    model = build_model(name, (1, 8, 8), 10, norm="batch", seed=0)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) != []


@pytest.mark.parametrize("name", [n for n in model_names() if n != "mlp"])
def test_norm_none_models_have_no_normalisation_layers(name):
    model = build_model(name, (1, 8, 8), 10, norm="none", seed=0)
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norm_types) for m in model.modules())


def test_architectures_differ_in_parameter_layout():
    layouts = {
        name: tuple(tuple(p.shape) for p in build_model(name, (1, 28, 28), 10, seed=0).parameters())
        for name in model_names()
    }
    assert len(set(layouts.values())) == len(layouts)


def test_the_same_seed_builds_identical_weights_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("resnet8", (1, 8, 8), 10, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("resnet8", (1, 8, 8), 10, seed=5)
    c = build_model("resnet8", (1, 8, 8), 10, seed=6)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_three_channel_inputs_and_other_class_counts_work():
    for name in model_names():
        out = build_model(name, (3, 32, 32), 7, seed=0)(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, 7)


def test_an_unknown_model_name_lists_the_registry():
    with pytest.raises(ConfigError, match="cnn.*mlp.*resnet8.*vgg"):
        build_model("transformer", (1, 8, 8), 10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (1, 8, 8), "num_classes": 10, "norm": "layer"}, "norm"),
        ({"input_shape": (8, 8), "num_classes": 10}, "input_shape"),
        ({"input_shape": (1, 8, 8), "num_classes": 1}, "num_classes"),
    ],
)
def test_bad_model_arguments_are_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_model("cnn", **kwargs)


def test_too_small_an_input_for_the_cnn_is_rejected():
    with pytest.raises(ConfigError, match="at least 4x4"):
        build_model("cnn", (1, 3, 3), 10)
