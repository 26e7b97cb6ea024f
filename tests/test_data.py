"""Data loading, the IDX reader and client partitions."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from codream.data import (
    DEFAULT_IDX_DIRS,
    dataset_names,
    load_dataset,
    partition,
    partition_summary,
    read_idx,
)
from codream.exceptions import ConfigError, DataError


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX encoding, written out independently of the reader under test."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(be).tobytes()


def _write_idx_folder(folder: Path, *, n_train: int, n_test: int, side: int, gz: bool, rng) -> dict:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    arrays["train-labels-idx1-ubyte"][:10] = np.arange(10)  # every class present
    for stem, arr in arrays.items():
        blob = _idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return arrays


# ------------------------------------------------------------------------------------------------ digits


def test_digits_has_the_documented_split_shape_and_classes(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8)
    assert digits.x_test.shape == (360, 1, 8, 8)
    assert digits.y_train.dtype == torch.int64 and digits.x_train.dtype == torch.float32
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert set(digits.y_test.tolist()) == set(range(10))


def test_digits_training_set_is_normalised_to_zero_mean_and_unit_std(digits):
    assert abs(float(digits.x_train.mean())) < 1e-5
    assert abs(float(digits.x_train.std()) - 1.0) < 1e-3
    # The test set uses the training statistics, so it is close to but not exactly standardised.
    assert abs(float(digits.x_test.mean())) < 0.2


def test_digits_split_is_stratified_and_seeded(digits):
    counts = np.bincount(digits.y_test.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.x_train, digits.x_train)
    assert not torch.equal(other.y_train, digits.y_train)


def test_limits_take_a_seeded_subset_of_the_requested_size():
    a = load_dataset("digits", limit_train=300, limit_test=50, seed=3)
    b = load_dataset("digits", limit_train=300, limit_test=50, seed=3)
    assert a.x_train.shape[0] == 300 and a.x_test.shape[0] == 50
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-5  # normalised over the subset actually kept


def test_a_tiny_subset_keeps_the_full_class_count():
    ds = load_dataset("digits", limit_train=3, limit_test=2, seed=0)
    assert ds.num_classes == 10 and len(ds.y_train) == 3


def test_unknown_data_set_name_lists_the_valid_names():
    with pytest.raises(ConfigError, match="digits.*fashion-mnist"):
        load_dataset("cifar-1000")


def test_non_positive_limit_is_rejected():
    with pytest.raises(ConfigError, match="limit_train"):
        load_dataset("digits", limit_train=0)


# --------------------------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("type_code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_idx_reader_round_trips_every_type_code(tmp_path, type_code):
    rng = np.random.default_rng(type_code)
    arr = rng.integers(-100 if type_code != 0x08 else 0, 100, size=(3, 4, 5))
    path = tmp_path / "a-idx3"
    path.write_bytes(_idx_bytes(arr, type_code))
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)


def test_idx_reader_reads_gzipped_files(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(arr)))
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_idx_reader_rejects_a_bad_magic_number(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(path)


def test_idx_reader_rejects_an_unknown_type_code(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(path)


def test_idx_reader_rejects_a_truncated_body(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(_idx_bytes(np.zeros((2, 3), dtype=np.uint8))[:-1])
    with pytest.raises(DataError, match="promises 6 data bytes"):
        read_idx(path)


def test_idx_reader_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere"):
        read_idx(tmp_path / "nothere")


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_an_idx_folder_loads_as_a_normalised_dataset(tmp_path, gz):
    arrays = _write_idx_folder(tmp_path, n_train=40, n_test=12, side=6, gz=gz, rng=np.random.default_rng(0))
    ds = load_dataset("idx", tmp_path)
    assert ds.x_train.shape == (40, 1, 6, 6) and ds.x_test.shape == (12, 1, 6, 6)
    assert ds.num_classes == 10 and ds.input_shape == (1, 6, 6)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    raw = arrays["train-images-idx3-ubyte"].astype(np.float64)
    expected = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_missing_idx_file_error_names_the_file_and_how_to_get_it(tmp_path):
    _write_idx_folder(tmp_path, n_train=20, n_test=5, side=4, gz=True, rng=np.random.default_rng(1))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "--data-dir" in message


def test_idx_images_and_labels_of_different_lengths_are_rejected(tmp_path):
    _write_idx_folder(tmp_path, n_train=20, n_test=5, side=4, gz=False, rng=np.random.default_rng(2))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(19, dtype=np.uint8)))
    with pytest.raises(DataError, match="do not match"):
        load_dataset("idx", tmp_path)


def _corrupt_labels(folder: Path, stem: str, at: dict[int, int]) -> None:
    """Rewrite label file `stem` of an IDX folder with some labels replaced."""
    labels = read_idx(folder / stem)
    for i, label in at.items():
        labels[i] = label
    (folder / stem).write_bytes(_idx_bytes(labels))


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_labels_outside_the_ten_classes_of_fashion_mnist_are_refused_not_a_bigger_model(tmp_path, name):
    _write_idx_folder(tmp_path, n_train=30, n_test=8, side=4, gz=False, rng=np.random.default_rng(3))
    _corrupt_labels(tmp_path, "train-labels-idx1-ubyte", {12: 200, 13: 37})
    with pytest.raises(DataError, match=r"train labels 37, 200 are outside its 10 classes 0\.\.9"):
        load_dataset(name, tmp_path)


def test_fashion_mnist_test_labels_outside_its_classes_are_refused(tmp_path):
    _write_idx_folder(tmp_path, n_train=30, n_test=8, side=4, gz=False, rng=np.random.default_rng(4))
    _corrupt_labels(tmp_path, "t10k-labels-idx1-ubyte", {0: 10})
    with pytest.raises(DataError, match="test labels 10 are outside its 10 classes"):
        load_dataset("fashion-mnist", tmp_path)


def test_generic_idx_labels_that_skip_classes_are_refused(tmp_path):
    # Labels 200 and 37 in a ten-class file would otherwise make a 201-class model.
    _write_idx_folder(tmp_path, n_train=30, n_test=8, side=4, gz=False, rng=np.random.default_rng(5))
    _corrupt_labels(tmp_path, "train-labels-idx1-ubyte", {12: 200, 13: 37})
    with pytest.raises(DataError, match="labels run up to 200 but no training example has class 10, 11"):
        load_dataset("idx", tmp_path)


def test_every_idx_name_has_a_default_folder():
    assert set(dataset_names()) == {"digits", *DEFAULT_IDX_DIRS}


@pytest.mark.skipif(
    not (DEFAULT_IDX_DIRS["fashion-mnist"] / "t10k-labels-idx1-ubyte.gz").exists()
    and not (DEFAULT_IDX_DIRS["fashion-mnist"] / "t10k-labels-idx1-ubyte").exists(),
    reason="Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)",
)
def test_fashion_mnist_loads_with_the_standard_shapes():
    ds = load_dataset("fashion-mnist", limit_train=500, limit_test=200, seed=0)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (500, 1, 28, 28) and ds.x_test.shape == (200, 1, 28, 28)
    assert abs(float(ds.x_train.mean())) < 1e-4


# -------------------------------------------------------------------------------------------- partitions


def _tv_from_global(labels: np.ndarray, parts, num_classes: int) -> float:
    """Mean total-variation distance between each client's class mix and the global one."""
    counts = partition_summary(labels, parts, num_classes).astype(float)
    mix = counts / counts.sum(axis=1, keepdims=True)
    overall = np.bincount(labels, minlength=num_classes) / len(labels)
    return float(0.5 * np.abs(mix - overall).sum(axis=1).mean())


@pytest.mark.parametrize("alpha", [None, math.inf, 0.05, 0.5, 10.0])
@pytest.mark.parametrize("per_client", [None, 100])
def test_partitions_are_disjoint_equal_sized_and_cover_exactly_the_chosen_samples(digits, alpha, per_client):
    y = digits.y_train
    parts = partition(y, 7, alpha=alpha, samples_per_client=per_client, seed=4)
    size = len(y) // 7 if per_client is None else per_client
    assert len(parts) == 7
    assert all(len(p) == size and p.dtype == np.int64 for p in parts)
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union) == 7 * size  # disjoint
    assert union.min() >= 0 and union.max() < len(y)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    counts = partition_summary(y, parts, 10)
    assert counts.sum() == 7 * size and np.all(counts.sum(axis=1) == size)


def test_a_partition_may_use_every_sample(digits):
    y = digits.y_train[:1430]
    parts = partition(y, 10, alpha=0.1, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1430))


def test_small_alpha_concentrates_classes_and_large_alpha_approaches_iid(digits):
    y = digits.y_train.numpy()
    tv = {
        a: _tv_from_global(y, partition(y, 10, alpha=a, samples_per_client=100, seed=7), 10)
        for a in (0.05, 1.0, 1e4, None)
    }
    assert tv[0.05] > 0.55  # a few dominant classes per client
    assert tv[0.05] > tv[1.0] + 0.15
    assert tv[1.0] > tv[1e4] + 0.1
    assert tv[1e4] < 0.2 and tv[None] < 0.2  # only sampling noise of 100 draws remains
    top = partition_summary(y, partition(y, 10, alpha=0.05, samples_per_client=100, seed=7), 10).max(axis=1)
    assert np.mean(top) > 55  # the dominant class holds over half of a client's data on average


def test_iid_client_class_mix_follows_the_global_mix(digits):
    y = digits.y_train.numpy()
    parts = partition(y, 4, alpha=None, seed=1)
    counts = partition_summary(y, parts, 10)
    expected = np.bincount(y, minlength=10) / len(y) * len(parts[0])
    assert np.abs(counts - expected).max() < 20  # hypergeometric spread for ~36 per class


def test_same_seed_gives_the_same_partition_and_another_seed_a_different_one(digits):
    y = digits.y_train
    for alpha in (None, 0.3):
        a = partition(y, 5, alpha=alpha, seed=11)
        b = partition(y, 5, alpha=alpha, seed=11)
        c = partition(y, 5, alpha=alpha, seed=12)
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
        assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_numpy_and_torch_labels_give_the_same_partition(digits):
    a = partition(digits.y_train, 3, alpha=0.5, seed=2)
    b = partition(digits.y_train.numpy(), 3, alpha=0.5, seed=2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_clients": 0, "alpha": None}, "num_clients"),
        ({"num_clients": 3, "alpha": 0.0}, "alpha"),
        ({"num_clients": 3, "alpha": -1.0}, "alpha"),
        ({"num_clients": 3, "alpha": None, "samples_per_client": 600}, "exceeds"),
        ({"num_clients": 3, "alpha": None, "samples_per_client": 0}, "samples_per_client"),
    ],
)
def test_bad_partition_arguments_are_rejected(digits, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        partition(digits.y_train, **kwargs)


def test_summary_counts_each_clients_classes():
    labels = np.array([0, 1, 1, 2, 2, 2])
    counts = partition_summary(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 3]])
    with pytest.raises(ConfigError):
        partition_summary(labels, [np.array([5])], 2)


def test_hold_out_evaluates_on_training_examples_no_client_can_hold():
    from codream.data import hold_out

    data = load_dataset("digits", seed=0)
    val = hold_out(data, 100)
    n = len(data.y_train) - 100
    assert torch.equal(val.x_test, data.x_train[n:]) and torch.equal(val.y_test, data.y_train[n:])
    assert torch.equal(val.x_train, data.x_train[:n]) and len(val.y_train) == n
    for bad in (0, len(data.y_train)):
        with pytest.raises(ConfigError, match="hold out"):
            hold_out(data, bad)
