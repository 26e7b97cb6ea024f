"""Orthonormal release projections and the aggregator that releases dream gradients through them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from codream.aggregation import ProjectedReleases, ReleaseKind, VectorSpec, create_aggregator
from codream.exceptions import ConfigError
from codream.privacy.projection import BlockMeans, LowFrequency, dct_matrix

SHAPE = (2, 8, 12)  # (C, H, W): non-square, two channels
DIM = math.prod(SHAPE)
PROJECTIONS = [BlockMeans(1), BlockMeans(2), BlockMeans(4), LowFrequency(1), LowFrequency(3), LowFrequency(8)]


def _bound(p):
    return p.for_image(*SHAPE[1:])


def _matrix(p, batch: int = 1) -> np.ndarray:
    """P as a dense (released, dim) matrix, column by column."""
    n = batch * DIM
    return np.stack([p.project(e) for e in np.eye(n)], axis=1)


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.name)
def test_rows_are_orthonormal_and_lift_is_the_transpose(projection):
    p = _bound(projection)
    m = _matrix(p)
    assert m.shape == (p.released_length(DIM), DIM)
    np.testing.assert_allclose(m @ m.T, np.eye(m.shape[0]), atol=1e-12)
    y = np.random.default_rng(0).normal(size=m.shape[0])
    np.testing.assert_allclose(p.lift(y), m.T @ y, atol=1e-12)


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.name)
def test_projection_never_lengthens_and_is_exact_on_its_subspace(projection):
    p = _bound(projection)
    rng = np.random.default_rng(1)
    for _ in range(5):
        g = rng.normal(size=3 * DIM)
        assert np.linalg.norm(p.project(g)) <= np.linalg.norm(g) * (1 + 1e-12)
        in_subspace = p.lift(p.project(g))
        np.testing.assert_allclose(p.lift(p.project(in_subspace)), in_subspace, atol=1e-12)


@pytest.mark.parametrize("projection", PROJECTIONS, ids=lambda p: p.name)
def test_lifted_sum_of_projections_is_the_projected_sum(projection):
    p = _bound(projection)
    gs = np.random.default_rng(2).normal(size=(5, 2 * DIM))
    lhs = p.lift(sum(p.project(g) for g in gs))
    np.testing.assert_allclose(lhs, p.lift(p.project(gs.sum(axis=0))), atol=1e-12)


def test_block_means_are_block_sums_over_f_and_lift_spreads_them():
    p = BlockMeans(2).for_image(4, 4)
    x = np.arange(16.0)
    y = p.project(x).reshape(2, 2)
    blocks = x.reshape(2, 2, 2, 2).sum(axis=(1, 3)) / 2
    np.testing.assert_allclose(y, blocks)
    np.testing.assert_allclose(p.lift(y.ravel()).reshape(4, 4), np.kron(blocks / 2, np.ones((2, 2))))


def test_dct_matrix_is_orthonormal_and_low_frequency_keeps_constants_and_smooth_images():
    d = dct_matrix(7)
    np.testing.assert_allclose(d @ d.T, np.eye(7), atol=1e-12)
    np.testing.assert_allclose(d[0], np.full(7, 1 / math.sqrt(7)))
    p = LowFrequency(2).for_image(6, 6)
    const = np.full(36, 3.0)
    np.testing.assert_allclose(p.lift(p.project(const)), const, atol=1e-12)
    i, j = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    smooth = np.cos(np.pi * (2 * i + 1) / 56) * np.cos(np.pi * (2 * j + 1) * 2 / 56)
    kept = np.linalg.norm(LowFrequency(3).for_image(28, 28).project(smooth.ravel()))
    assert kept == pytest.approx(np.linalg.norm(smooth))
    assert LowFrequency(10).for_image(28, 28).released_length(16 * 784) == 16 * 100


def test_bad_factors_and_frequencies_are_refused():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError):
            BlockMeans(bad)
        with pytest.raises(ConfigError):
            LowFrequency(bad)
    with pytest.raises(ConfigError, match="divide"):
        BlockMeans(3).for_image(28, 28)
    with pytest.raises(ConfigError, match="exceed"):
        LowFrequency(9).for_image(8, 12)
    with pytest.raises(ConfigError, match="exceed"):
        LowFrequency(9).for_image(12, 8)
    with pytest.raises(ConfigError, match="not bound"):
        BlockMeans(2).project(np.zeros(16))
    with pytest.raises(ConfigError, match="batch"):
        _bound(BlockMeans(2)).project(np.zeros(DIM + 1))
    with pytest.raises(ConfigError):
        ProjectedReleases(create_aggregator("plain"), LowFrequency(13), SHAPE)
    with pytest.raises(ConfigError):
        ProjectedReleases(create_aggregator("plain"), BlockMeans(2), (8, 12))


def _round_vectors(rng, specs, participants, scale=1.0):
    return [{c: rng.normal(size=s.length) * scale for c in participants} for s in specs]


@pytest.mark.parametrize("renormalize", [False, True])
def test_plain_inner_totals_match_a_hand_computation_and_other_vectors_pass_through(renormalize):
    clip = 1.0
    specs = [VectorSpec.dream_gradient(s, 3 * DIM, clip) for s in range(2)] + [
        VectorSpec.soft_labels(30, 2.0)
    ]
    agg = ProjectedReleases(create_aggregator("plain"), LowFrequency(3), SHAPE, renormalize=renormalize)
    assert agg.released_spec(specs[0]) == VectorSpec.dream_gradient(0, 3 * 2 * 9, clip)
    assert agg.released_spec(specs[2]) is specs[2]
    proj = agg.projection
    participants = [0, 3, 5]
    rng = np.random.default_rng(3)
    all_vectors = _round_vectors(rng, specs, participants)
    for vs in all_vectors[:2]:  # the client normalises to the clip norm, as `ClientRole` does
        for c in vs:
            vs[c] *= 0.999 / np.linalg.norm(vs[c])
    rnd = agg.open_round(round_index=0, participants=participants, specs=specs)
    kept = []
    for spec, vectors in zip(specs[:2], all_vectors[:2], strict=True):
        res = rnd.sum(spec, vectors)
        expected = np.zeros(spec.length)
        for v in vectors.values():
            p = proj.project(v)
            kept.append(np.linalg.norm(p) / np.linalg.norm(v))
            expected += proj.lift(p * (np.linalg.norm(v) / np.linalg.norm(p) if renormalize else 1.0))
        assert res.total.shape == (spec.length,) and res.contributors == (0, 3, 5) and res.clipped == 0
        np.testing.assert_allclose(res.total, expected, atol=1e-12)
    labels = rnd.sum(specs[2], all_vectors[2])
    clipped = [v * min(1.0, 2.0 / np.linalg.norm(v)) for v in all_vectors[2].values()]
    np.testing.assert_allclose(labels.total, np.sum(clipped, axis=0), atol=1e-12)
    report = rnd.close()
    assert report.projection_signal_fraction == pytest.approx(np.mean(kept))
    assert 0 < report.projection_signal_fraction < 1
    # bytes: the dreams go out at their released length, the labels at theirs
    assert report.bytes_sent_per_client[0] == 8 * (2 * 3 * 2 * 9 + 30)


def test_renormalised_releases_use_the_clip_norm_and_never_exceed_it():
    clip = 0.5
    agg = ProjectedReleases(create_aggregator("plain"), BlockMeans(4), SHAPE)
    rng = np.random.default_rng(4)
    for scale in (1e-3, 0.1, 10.0):
        v = rng.normal(size=2 * DIM) * scale
        if np.linalg.norm(v) > clip:  # the client's own clip, before the release
            v *= clip / np.linalg.norm(v)
        released, kept = agg.release(v)
        assert np.linalg.norm(released) == pytest.approx(np.linalg.norm(v))
        assert np.linalg.norm(released) <= clip * (1 + 1e-12)
        assert kept == pytest.approx(np.linalg.norm(agg.projection.project(v)) / np.linalg.norm(v))
    raw, _ = ProjectedReleases(create_aggregator("plain"), BlockMeans(4), SHAPE, renormalize=False).release(v)
    assert np.linalg.norm(raw) < np.linalg.norm(v)
    zero, kept = agg.release(np.zeros(DIM))
    assert not zero.any() and kept is None


def test_over_long_release_is_still_clipped_by_the_inner_aggregator():
    spec = VectorSpec.dream_gradient(0, DIM, 1.0)
    agg = ProjectedReleases(create_aggregator("plain"), BlockMeans(2), SHAPE)
    rnd = agg.open_round(round_index=0, participants=[0], specs=[spec])
    res = rnd.sum(spec, {0: np.full(DIM, 5.0)})
    assert res.clipped == 1
    assert np.linalg.norm(res.total) == pytest.approx(1.0)  # lift is an isometry on the subspace


def test_secure_dp_inner_sums_the_projected_releases_with_noise_at_the_released_dimension():
    inner = create_aggregator(
        "secure+dp", noise_multiplier=0.5, noise_seed=1, rounding_seed=1, min_survivors=4
    )
    shape = (1, 8, 8)
    specs = [VectorSpec.dream_gradient(0, 16 * 64, 1.0), VectorSpec.soft_labels(40, 0.5)]
    z_i = 0.5 * math.sqrt(len(specs))  # per release, calibrated for n_min = 4
    agg = ProjectedReleases(inner, LowFrequency(4), shape)
    assert agg.name == "secure+dp+dct4"
    participants = list(range(6))
    rng = np.random.default_rng(5)
    rnd = agg.open_round(round_index=0, participants=participants, specs=specs)
    dreams = {c: rng.normal(size=16 * 64) for c in participants}
    for c in dreams:
        dreams[c] *= 0.999 / np.linalg.norm(dreams[c])
    res = rnd.sum(specs[0], dreams)
    assert res.total.shape == (16 * 64,) and res.count == 6 and res.clipped is None
    proj = agg.projection
    signal = sum(proj.lift(agg.release(v)[0]) for v in dreams.values())
    error = proj.project(res.total - signal)  # the noise lives in the 256 released coordinates only
    np.testing.assert_allclose(proj.lift(proj.project(res.total)), res.total, atol=1e-9)
    assert error.std() == pytest.approx(math.sqrt(6 / 4) * z_i * 1.0, rel=0.2)
    labels = {c: rng.normal(size=40) * 1e-3 for c in participants}
    out = rnd.sum(specs[1], labels)
    assert out.total.shape == (40,)
    report = rnd.close()
    assert report.dp.noise_std["dream/0"] == pytest.approx(z_i, rel=1e-3)
    assert 0 < report.projection_signal_fraction < 1


def test_only_dream_gradients_are_projected_whatever_their_name():
    agg = ProjectedReleases(create_aggregator("plain"), BlockMeans(2), SHAPE)
    assert agg.projects(VectorSpec("anything", DIM, 1.0, ReleaseKind.DREAM_GRADIENT))
    assert not agg.projects(VectorSpec("dream/0", DIM, 1.0))
