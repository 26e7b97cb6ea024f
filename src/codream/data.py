"""Data sets and client partitions.

Three sources, none of which downloads anything at run time:

- ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), the embedded
  default that needs no set-up. A seeded, class-stratified split gives 1437 training and 360 test images.
- ``"fashion-mnist"``, ``"mnist"``, ``"idx"``: a folder of MNIST-format IDX files, read by the small
  reader below (no torchvision). Files may be gzipped or raw.
- your own: `register_dataset` takes a torch ``Dataset`` or tensors (grey or RGB images, any size) under
  a name that configs then use like a built-in one.

Every data set comes back as float32 tensors of shape (N, C, H, W), normalised per channel with the
*training* set's mean and standard deviation (the test set never informs preprocessing), and int64 labels.

Partitions split the training indices among clients: IID, or label-skewed by a Dirichlet(alpha) prior
over classes with equal-size clients (see `partition`).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .exceptions import ConfigError, DataError

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_IDX_DIRS",
    "Dataset",
    "class_names",
    "dataset_names",
    "hold_out",
    "load_dataset",
    "partition",
    "partition_summary",
    "read_idx",
    "register_dataset",
    "split_validation",
]

logger = logging.getLogger(__name__)

#: Where each IDX data set is looked for when no ``data_dir`` is given.
DEFAULT_IDX_DIRS: dict[str, Path] = {
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
    "idx": Path("/usr/share/datasets/fashion-mnist"),
    "mnist": Path("/usr/share/datasets/mnist"),
}

#: The classes of the data sets whose classes are known; labels outside them are refused.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "digits": tuple(str(k) for k in range(10)),
    "mnist": tuple(str(k) for k in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}  # fmt: skip

_DIGITS_TEST_SIZE = 360  # 1797 - 360 = 1437 training images, a 80/20 split.

# The four files of an MNIST-format folder, by role.
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True, slots=True)
class Dataset:
    """A normalised train/test split.

    Attributes:
        name: the data set's name as passed to `load_dataset`.
        x_train: float32 (N, C, H, W), zero mean and unit std per channel over the training set.
        y_train: int64 (N,) labels in [0, num_classes).
        x_test: float32 (M, C, H, W), normalised with the training set's statistics.
        y_test: int64 (M,).
        num_classes: number of classes K.
        input_shape: (C, H, W) of one example.
        x_val, y_val: the validation split carved from the training data by `split_validation`
            (None until then); no client holds it.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def split_validation(data: Dataset, fraction: float, *, seed: int = 0) -> Dataset:
    """`data` with `fraction` of its training examples moved, per class and seeded, to a validation split.

    Each class gives ``round(fraction * its count)`` examples, chosen by a generator seeded from `seed`,
    so the split is the same in every process that loads the same data (both engines). What stays in
    training keeps its order. The training-set normalisation is not redone: the validation split is
    part of the training data, never of the test set. A data set that has a validation split already,
    or a fraction of 0, comes back as it is.

    Raises:
        ConfigError: a fraction outside [0, 1), or one that leaves no validation or no training example.
    """
    if isinstance(fraction, bool) or not (0.0 <= fraction < 1.0):
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0 or data.x_val is not None:
        return data
    y = data.y_train.cpu().numpy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A11D]))
    held = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = int(round(fraction * len(members)))
        held.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if len(val) == 0 or len(val) == len(y):
        raise ConfigError(
            f"validation fraction {fraction:g} of {len(y)} training examples holds out {len(val)}; "
            "choose a fraction that leaves examples on both sides (or 0 for no validation split)"
        )
    keep = np.setdiff1d(np.arange(len(y)), val)
    val_t, keep_t = torch.from_numpy(val), torch.from_numpy(keep)
    return dataclasses.replace(
        data,
        x_train=data.x_train[keep_t],
        y_train=data.y_train[keep_t],
        x_val=data.x_train[val_t],
        y_val=data.y_train[val_t],
    )


def hold_out(data: Dataset, n: int) -> Dataset:
    """`data` with its last `n` training examples as the evaluation set, which no client then holds.

    Settings are chosen on this validation split so that nothing is selected on the test set.

    Raises:
        ConfigError: n < 1 or n leaving no training examples.
    """
    total = len(data.y_train)
    if not (1 <= n < total):
        raise ConfigError(f"cannot hold out {n} of {total} training examples; choose 1 to {total - 1}")
    k = total - n
    return dataclasses.replace(
        data,
        x_train=data.x_train[:k],
        y_train=data.y_train[:k],
        x_test=data.x_train[k:],
        y_test=data.y_train[k:],
    )


def dataset_names() -> list[str]:
    """Names `load_dataset` accepts: the built-in ones, then the registered ones."""
    return ["digits", *DEFAULT_IDX_DIRS, *sorted(_REGISTERED)]


def class_names(name: str) -> tuple[str, ...] | None:
    """The class names of data set `name`, where they are known (built-in, or given at registration)."""
    return CLASS_NAMES.get(name)


@dataclass(frozen=True, slots=True)
class _Registered:
    """A registered data set, as raw arrays: split, subset and normalised like the built-ins at load."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    test_fraction: float


_REGISTERED: dict[str, _Registered] = {}


def register_dataset(
    name: str,
    train: object,
    test: object | None = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    replace: bool = False,
) -> None:
    """Make your own data usable by name: ``dataset = name`` in a config, `load_dataset(name)`.

    Args:
        name: the name configs use; not a built-in one.
        train: a map-style torch ``Dataset`` of (image, label) pairs, or a pair (x, y) of tensors or
            arrays; images (N, C, H, W) or, for one channel, (N, H, W); integer labels.
        test: the same for the test set; None holds out `test_fraction` of `train` per class, seeded
            by the run's seed at load time.
        num_classes: K (labels are 0..K-1); default: ``len(class_names)``, else the largest label + 1
            with every class present in training.
        class_names: one name per class, for plots and reports.
        test_fraction: the test share when `test` is None.
        replace: allow registering `name` again (a registered name only; built-ins stay).

    The data are copied at registration (float32 images, int64 labels) and normalised per channel
    with the training set's statistics when loaded, as the built-in data sets are.

    Raises:
        ConfigError: a taken or malformed name, data of the wrong shape or type, labels outside the
            classes, or a bad test fraction.
    """
    if not isinstance(name, str) or not name.strip() or "," in name or name != name.strip():
        raise ConfigError(
            f"a data set name must be a non-empty string without commas or spaces around it, got {name!r}"
        )
    if name in ("digits", *DEFAULT_IDX_DIRS):
        raise ConfigError(f"data set {name!r} is built in; register yours under another name")
    if name in _REGISTERED and not replace:
        raise ConfigError(f"data set {name!r} is registered already; pass replace=True to replace it")
    if not (0.0 < test_fraction < 1.0):
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    x_train, y_train = _as_arrays(train, f"data set {name!r} train")
    x_test = y_test = None
    if test is not None:
        x_test, y_test = _as_arrays(test, f"data set {name!r} test")
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ConfigError(
                f"data set {name!r}: test images {x_test.shape[1:]} differ from train images "
                f"{x_train.shape[1:]}"
            )
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ConfigError(
                f"data set {name!r}: num_classes={num_classes} but {len(class_names)} class names"
            )
        num_classes = len(class_names)
    if num_classes is None:
        num_classes = int(y_train.max()) + 1
        missing = np.setdiff1d(np.arange(num_classes), y_train)
        if len(missing):
            raise ConfigError(
                f"data set {name!r}: no training example has class {', '.join(map(str, missing[:5]))}; "
                "pass num_classes= (or class_names=) if the labels run 0..K-1 with some classes absent"
            )
    if num_classes < 2:
        raise ConfigError(f"data set {name!r}: needs at least 2 classes, got {num_classes}")
    for split, y in (("train", y_train), ("test", y_test)):
        if y is not None and (y.min() < 0 or y.max() >= num_classes):
            bad = np.unique(y[(y < 0) | (y >= num_classes)])[:5]
            raise ConfigError(
                f"data set {name!r}: {split} labels {', '.join(map(str, bad))} are outside its "
                f"{num_classes} classes 0..{num_classes - 1}"
            )
    _REGISTERED[name] = _Registered(x_train, y_train, x_test, y_test, float(test_fraction))
    CLASS_NAMES.pop(name, None)
    CLASS_NAMES[name] = class_names if class_names is not None else tuple(str(k) for k in range(num_classes))


def _as_arrays(data: object, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, C, H, W), labels int64 (N,)) from a torch Dataset or an (x, y) pair."""
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for v in data)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)  # type: ignore[arg-type]
        if n == 0:
            raise ConfigError(f"{what}: the Dataset is empty")
        xs, ys = [], []
        for i in range(n):
            item = data[i]  # type: ignore[index]
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ConfigError(f"{what}: item {i} is not an (image, label) pair")
            xi, yi = item
            xs.append(np.asarray(xi.detach().cpu() if isinstance(xi, torch.Tensor) else xi, dtype=np.float32))
            ys.append(int(yi.item() if isinstance(yi, torch.Tensor) else yi))
        try:
            x, y = np.stack(xs), np.asarray(ys)
        except ValueError:
            raise ConfigError(f"{what}: its images do not all have the same shape") from None
    else:
        raise ConfigError(f"{what}: expected a torch Dataset or a pair (x, y), got {type(data).__name__}")
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ConfigError(
            f"{what}: expected images (N, C, H, W) or (N, H, W) and labels (N,), got {x.shape} and {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise ConfigError(f"{what}: labels must be integers, got dtype {y.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{what}: images hold NaN or infinite values")
    return x.copy(), y.astype(np.int64)


def _load_registered(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    reg = _REGISTERED[name]
    if reg.x_test is not None and reg.y_test is not None:
        return reg.x_train, reg.y_train, reg.x_test, reg.y_test
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E57]))
    test = []
    for c in np.unique(reg.y_train):
        members = np.flatnonzero(reg.y_train == c)
        test.append(rng.permutation(members)[: int(round(reg.test_fraction * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(reg.y_train)), test_idx)
    if len(test_idx) == 0 or len(train_idx) == 0:
        raise ConfigError(
            f"data set {name!r}: test_fraction {reg.test_fraction:g} of {len(reg.y_train)} examples leaves "
            "an empty split; register a test set or more examples"
        )
    return reg.x_train[train_idx], reg.y_train[train_idx], reg.x_train[test_idx], reg.y_train[test_idx]


def load_dataset(
    name: str = "digits",
    data_dir: str | Path | None = None,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a data set, optionally a seeded subset of it, normalised with training-set statistics.

    Args:
        name: ``"digits"`` (embedded) or an IDX folder name: ``"fashion-mnist"``, ``"mnist"``, ``"idx"``.
        data_dir: folder of IDX files; defaults to `DEFAULT_IDX_DIRS[name]`. Ignored for ``"digits"``.
        limit_train: keep a seeded random subset of this many training examples (None: all).
        limit_test: likewise for the test set.
        seed: seeds the digits split and the subsets.

    Returns:
        The `Dataset`.

    Raises:
        ConfigError: unknown name or a non-positive limit.
        DataError: an IDX file is missing, truncated or malformed.
    """
    if name not in dataset_names():
        raise ConfigError(f"unknown data set {name!r}; valid names: {', '.join(dataset_names())}")
    for label, limit in (("limit_train", limit_train), ("limit_test", limit_test)):
        if limit is not None and limit <= 0:
            raise ConfigError(f"{label} must be positive or None, got {limit}")

    if name == "digits":
        x_train, y_train, x_test, y_test = _load_digits(seed)
    elif name in _REGISTERED:
        x_train, y_train, x_test, y_test = _load_registered(name, seed)
    else:
        folder = Path(data_dir) if data_dir is not None else DEFAULT_IDX_DIRS[name]
        x_train, y_train, x_test, y_test = _load_idx_folder(folder, name)

    # Counted before subsetting, so a small subset that misses a class keeps the full output layer.
    num_classes = _num_classes(name, y_train, y_test, folder=data_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    x_train, y_train = _subset(x_train, y_train, limit_train, rng)
    x_test, y_test = _subset(x_test, y_test, limit_test, rng)
    xt, xs = _normalise(x_train, x_test)
    logger.debug("loaded %s: %d train, %d test, shape %s", name, len(y_train), len(y_test), xt.shape[1:])
    return Dataset(
        name=name,
        x_train=xt,
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=xs,
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in xt.shape[1:]),  # type: ignore[arg-type]
    )


def _num_classes(name: str, y_train: np.ndarray, y_test: np.ndarray, *, folder: object) -> int:
    """K for labels 0..K-1: the data set's known classes, or for "idx" the classes the labels use.

    A label outside the known classes, or (for "idx") a class below the largest label that no training
    example has, is a corrupted file, not a bigger model: it is refused.

    Raises:
        DataError: naming the labels and the folder.
    """
    where = f"data set {name!r}" + (f" in {folder}" if folder is not None else "")
    known = CLASS_NAMES.get(name)
    if known is not None:
        for split, y in (("train", y_train), ("test", y_test)):
            bad = np.unique(y[(y < 0) | (y >= len(known))])
            if len(bad):
                shown = ", ".join(map(str, bad[:5].tolist())) + (", ..." if len(bad) > 5 else "")
                raise DataError(
                    f"{where}: {split} labels {shown} are outside its {len(known)} classes "
                    f"0..{len(known) - 1}; the label file is corrupted or belongs to another data set"
                )
        return len(known)
    k = int(max(y_train.max(), y_test.max())) + 1
    missing = np.setdiff1d(np.arange(k), y_train)
    if len(missing):
        shown = ", ".join(map(str, missing[:5].tolist())) + (", ..." if len(missing) > 5 else "")
        raise DataError(
            f"{where}: labels run up to {k - 1} but no training example has class {shown}; labels must "
            "be 0..K-1 with every class present (a corrupted label file?)"
        )
    return k


def _load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=_DIGITS_TEST_SIZE, stratify=y, random_state=seed
    )
    return x_train, y_train, x_test, y_test


def _subset(
    x: np.ndarray, y: np.ndarray, limit: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if limit is None or limit >= len(y):
        return x, y
    keep = np.sort(rng.choice(len(y), size=limit, replace=False))
    return x[keep], y[keep]


def _normalise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation with the training set's statistics, computed in float64."""
    xt = x_train.astype(np.float64)
    mean = xt.mean(axis=(0, 2, 3), keepdims=True)
    std = xt.std(axis=(0, 2, 3), keepdims=True)
    std = np.where(std > 0, std, 1.0)  # a constant channel stays constant (zero) rather than dividing by 0
    out_train = ((xt - mean) / std).astype(np.float32)
    out_test = ((x_test.astype(np.float64) - mean) / std).astype(np.float32)
    return torch.from_numpy(out_train), torch.from_numpy(out_test)


# --------------------------------------------------------------------------------------------- IDX files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or raw, into a native-endian numpy array.

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, then one big-endian uint32 per dimension, then the data
    in C order, big-endian. A file ending in ``.gz`` is decompressed.

    Args:
        path: the file.

    Returns:
        The array with the file's dimensions and dtype.

    Raises:
        DataError: the file is missing, has a bad magic number, or holds more or fewer bytes than its
            header promises.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD with type code TT in "
            f"{sorted(hex(t) for t in _IDX_DTYPES)} and DD >= 1 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise DataError(
            f"{path}: header promises {expected} data bytes for dims {dims}, file has {len(raw) - header_len}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def _find_idx_file(folder: Path, stem: str, name: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    how = (
        "install it with `apt-get install -y dataset-fashion-mnist`"
        if name in ("fashion-mnist", "idx")
        else "point --data-dir at a folder of MNIST-format IDX files"
    )
    raise DataError(
        f"data set {name!r}: missing file {folder / stem}.gz (or uncompressed {folder / stem}); {how}, "
        f"or pass --data-dir (data_dir=) naming a folder that holds the four IDX files "
        f"{', '.join(_IDX_FILES.values())}"
    )


def _load_idx_folder(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {role: read_idx(_find_idx_file(folder, stem, name)) for role, stem in _IDX_FILES.items()}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"{folder}: {split} images {x.shape} and labels {y.shape} do not match "
                "(expected (N, H, W) or (N, C, H, W) images and (N,) labels)"
            )
        if x.ndim == 3:
            x = x[:, None, :, :]
        if np.issubdtype(y.dtype, np.floating) or (len(y) and y.min() < 0):
            raise DataError(f"{folder}: {split} labels must be non-negative integers")
        out += [x.astype(np.float32), y.astype(np.int64)]
    if out[0].shape[1:] != out[2].shape[1:]:
        raise DataError(
            f"{folder}: train images {out[0].shape[1:]} and test images {out[2].shape[1:]} differ in shape"
        )
    return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------------------- partitions


def partition(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    num_clients: int,
    *,
    alpha: float | None,
    samples_per_client: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices among clients: IID or label-skewed by Dirichlet(alpha), equal sizes, disjoint.

    IID (``alpha`` None or inf): one seeded permutation, cut into consecutive blocks.

    Dirichlet (finite ``alpha > 0``): the indices of each class are shuffled once into a pool. Then, for
    each client in turn, its class prior p ~ Dir(alpha, ..., alpha) is drawn and its quota of
    ``samples_per_client`` is filled from what the pools still hold: draw class counts
    ~ Multinomial(still needed, p restricted to the classes whose pools are not exhausted, renormalised),
    take from each pool at most what it holds, and repeat with what is still needed. Each repetition either
    fills the quota or exhausts a pool, so it ends after at most K + 1 draws. Small alpha gives each client
    a few dominant classes; large alpha gives every client roughly the global class mix. Later clients
    can only take what earlier ones left, which matters only when the quotas use up nearly all the data.
    If p puts all its mass on exhausted classes the draw falls back to the remaining classes in
    proportion to what they hold.

    Args:
        labels: (N,) integer class labels of the pool being split.
        num_clients: number of clients, >= 1.
        alpha: Dirichlet concentration; None or ``math.inf`` for IID.
        samples_per_client: each client's size; default ``N // num_clients``.
        seed: seeds every draw; the same arguments give the same partition.

    Returns:
        One sorted int64 index array per client, each of length ``samples_per_client``, pairwise disjoint.

    Raises:
        ConfigError: non-positive num_clients, samples_per_client or alpha, or quotas exceeding N.
    """
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise ConfigError("labels must be non-negative")
    n = len(y)
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    per_client = n // num_clients if samples_per_client is None else samples_per_client
    if per_client < 1:
        raise ConfigError(
            f"samples_per_client must be >= 1, got {per_client} ({n} samples, {num_clients} clients)"
        )
    if per_client * num_clients > n:
        raise ConfigError(
            f"{num_clients} clients x {per_client} samples = {per_client * num_clients} "
            f"exceeds the {n} available"
        )
    if alpha is not None and not (alpha > 0):
        raise ConfigError(f"alpha must be > 0, inf or None (IID), got {alpha}")

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDA7A]))
    if alpha is None or math.isinf(alpha):
        perm = rng.permutation(n)
        blocks = (perm[k * per_client : (k + 1) * per_client] for k in range(num_clients))
        return [np.sort(block).astype(np.int64) for block in blocks]

    num_classes = int(y.max()) + 1 if n else 0
    pools = [rng.permutation(np.flatnonzero(y == c)) for c in range(num_classes)]
    used = np.zeros(num_classes, dtype=np.int64)  # how much of each pool is taken
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    parts: list[np.ndarray] = []
    for _ in range(num_clients):
        prior = rng.dirichlet(np.full(num_classes, float(alpha)))
        if not np.all(np.isfinite(prior)):  # tiny alpha can underflow; fall back to one random class
            prior = np.eye(num_classes)[rng.integers(num_classes)]
        take = np.zeros(num_classes, dtype=np.int64)
        need = per_client
        while need > 0:
            remaining = sizes - used - take
            weights = prior * (remaining > 0)
            if weights.sum() <= 0:
                weights = remaining.astype(np.float64)
            draw = rng.multinomial(need, weights / weights.sum())
            got = np.minimum(draw, remaining)
            take += got
            need -= int(got.sum())
        chosen = [pools[c][used[c] : used[c] + take[c]] for c in range(num_classes)]
        used += take
        parts.append(np.sort(np.concatenate(chosen)).astype(np.int64))
    return parts


def partition_summary(
    labels: torch.Tensor | np.ndarray | Sequence[int], parts: Sequence[np.ndarray], num_classes: int
) -> np.ndarray:
    """Class counts of each client.

    Args:
        labels: (N,) labels the partition indexes into.
        parts: one index array per client, as from `partition`.
        num_classes: K.

    Returns:
        int64 array (num_clients, K): entry (k, c) counts client k's examples of class c.

    Raises:
        ConfigError: a label is outside [0, num_classes).
    """
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for k, idx in enumerate(parts):
        client_labels = y[np.asarray(idx, dtype=np.int64)]
        if len(client_labels) and (client_labels.min() < 0 or client_labels.max() >= num_classes):
            raise ConfigError(f"client {k} holds a label outside [0, {num_classes})")
        out[k] = np.bincount(client_labels, minlength=num_classes)
    return out
