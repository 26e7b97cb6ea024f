"""The server's dream generator G(z, y): driven only by the sum of the clients' input gradients."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from codream.aggregation import AggregateResult
from codream.dreams import client_dream_loss
from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, Federation, FederationConfig
from codream.models import DreamGenerator
from fakes import RecordingAggregator


def config(**dream) -> FederationConfig:
    base = dict(batch_size=8, global_steps=2, source="generator", latent_dim=16, generator_width=8)
    base.update(dream)
    return FederationConfig(
        dataset="digits",
        num_clients=3,
        models=("cnn", "mlp", "resnet8"),
        alpha=1.0,
        samples_per_client=120,
        limit_test=100,
        seed=7,
        dream=DreamConfig(**base),
        distill=DistillConfig(kd_steps=4, warmup_steps=10, buffer_size=32),
    )


def test_the_generator_update_is_the_summed_client_gradients_backpropagated_through_g(digits):
    # Raw gradients (clip at a bound nothing reaches) and no server priors: the update direction is
    # exactly the mean of the clients' input gradients.
    cfg = dataclasses.replace(config(contribution="clip", clip_norm=1e9, w_tv=0.0, w_l2=0.0), method="paper")
    fed = Federation(cfg, dataset=digits)
    server = fed.server
    x = server.begin_round(0)
    for c in fed.clients:
        c.begin_round(0)
    g0 = copy.deepcopy(server.dream_generator)
    z, y = server._z.clone(), server._gen_classes.clone()
    vectors = [c.dream_gradient(x) for c in fed.clients]
    x_next = server.apply_dream_step(AggregateResult(total=np.sum(vectors, axis=0), contributors=(0, 1, 2)))

    x_ref = g0(z, y)
    assert torch.allclose(x_ref, x, atol=1e-6)
    losses = []
    for c in fed.clients:
        c.model.eval()
        losses.append(client_dream_loss(c.model, x_ref, cfg.dream)[0])
    want = torch.autograd.grad(torch.stack(losses).sum() / 3, list(g0.parameters()))
    got = [p.grad for p in server.dream_generator.parameters()]
    # float32 sums in another order: entries far below the gradient's scale differ by round-off only
    scale = max(float(w.abs().max()) for w in want)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5 * scale)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(g0.parameters(), server.dream_generator.parameters(), strict=True)
    ]
    assert all(moved)
    assert not torch.equal(x_next, x)  # fresh latents through the updated G


def test_the_generator_path_releases_exactly_the_plan_and_resumes_bit_for_bit(digits):
    agg = RecordingAggregator()
    fed = Federation(config(), aggregator=agg, dataset=digits)
    fed.run(2)
    later = [s.name for s in fed.server.specs()]  # the class weights went once, in round 0
    assert later == ["dream/0", "dream/1", "soft_labels"]
    planned = ["class_weights", *later]
    assert agg.plans == [(0, planned), (1, later)]
    assert [(r, n) for r, n, *_ in agg.sums] == [(0, n) for n in planned] + [(1, n) for n in later]
    lengths = {s.name: s.length for s in fed.server.specs()} | {"class_weights": fed.server.num_classes}
    assert all(length == lengths[name] for _, name, _, length in agg.sums)

    first = Federation(config(), dataset=digits)
    first.run_round()
    resumed = Federation(config(), dataset=digits)
    resumed.load_state_dict(first.state_dict())
    resumed.run_round()
    for a, b in zip(
        resumed.server.dream_generator.parameters(), fed.server.dream_generator.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert torch.equal(resumed.last_dreams[0], fed.last_dreams[0])


def test_conditional_dreams_come_from_g_for_their_target_classes(digits):
    fed = Federation(config(), dataset=digits)
    server = fed.server
    x = server.begin_round(0)
    res = AggregateResult(
        total=np.stack([c.class_weights() for c in fed.clients]).sum(0), contributors=(0, 1, 2)
    )
    server.receive_class_weights(res)
    targets = server.assign_targets()
    assert torch.equal(server._gen_classes, targets)
    assert x is server.x  # the tensor begin_round handed out now holds the dreams of the targets


def test_the_generator_needs_sides_divisible_by_four_and_valid_settings():
    with pytest.raises(ConfigError, match="divisible by 4"):
        DreamGenerator((1, 6, 6), 10)
    with pytest.raises(ConfigError, match="dream.source"):
        DreamConfig(source="gan")
    with pytest.raises(ConfigError, match="generator_lr"):
        DreamConfig(generator_lr=0.0)
