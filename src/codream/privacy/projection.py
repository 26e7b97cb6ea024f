"""Lower-dimensional releases under client-level DP: fixed projections with orthonormal rows.

The distributed DP noise on a released sum has L2 norm growing with sqrt(released dimension), while a
clipped release's signal does not. A client can therefore release P g instead of its dream gradient g,
where P is a fixed, data-independent linear map with orthonormal rows (P P^T = I):

- ||P g|| <= ||g||, so a clipped vector stays within its bound and the sensitivity is unchanged;
- the server lifts the noisy sum with P^T, and P^T sum_k P g_k = P^T P sum_k g_k is the projection of
  the summed gradients onto the kept subspace: nothing about the protocol or the accounting changes;
- the noise norm shrinks by sqrt(dim / released dim), the signal by the fraction of g outside the
  subspace, which is measured per round.

Projections act on every (H, W) channel image of a flattened (B, C, H, W) vector, as P X = A X B^T with
A (h', H) and B (w', W) orthonormal-row matrices: `BlockMeans` (f x f block means, the pixels' coarse
average) and `LowFrequency` (the k x k lowest-frequency coefficients of the orthonormal 2D DCT-II, the
smooth part of an image in the basis JPEG uses). The seam applies them to dream gradients
(`codream.aggregation.ProjectedReleases`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..exceptions import ConfigError

__all__ = ["BlockMeans", "LowFrequency", "ReleaseProjection", "dct_matrix"]


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal n-point DCT-II matrix D (D D^T = I); row k is the k-th frequency."""
    if n < 1:
        raise ConfigError(f"DCT size must be >= 1, got {n}")
    k = np.arange(n, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2.0 * i + 1.0) * k / (2.0 * n))
    d[0] /= np.sqrt(2.0)
    return d


def _block_mean_matrix(n: int, factor: int) -> np.ndarray:
    """(n / f, n) rows of f ones / sqrt(f): orthonormal, and A X A^T gives f x f block sums / f."""
    return np.kron(np.eye(n // factor), np.full((1, factor), 1.0 / math.sqrt(factor)))


class ReleaseProjection(ABC):
    """A fixed map P with orthonormal rows, applied to each (H, W) channel image of a flattened vector.

    A projection is bound to one image size (`image_shape`) before use; `ProjectedReleases` binds it to
    the dreams' (H, W) with `for_image`.
    """

    image_shape: tuple[int, int] | None

    @property
    @abstractmethod
    def name(self) -> str:
        """A short label for reports, e.g. ``"block2"`` or ``"dct7"``."""

    @abstractmethod
    def _check(self, height: int, width: int) -> None:
        """Raise ConfigError if this projection cannot act on (height, width) images."""

    @abstractmethod
    def _matrices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """A (h', H) and B (w', W), both with orthonormal rows, so that P X = A X B^T."""

    def for_image(self, height: int, width: int) -> ReleaseProjection:
        """This projection bound to (height, width) images; refuses sizes it cannot act on."""
        height, width = int(height), int(width)
        if height < 1 or width < 1:
            raise ConfigError(f"image shape must be positive, got {height}x{width}")
        self._check(height, width)
        return dataclasses.replace(self, image_shape=(height, width))  # type: ignore[type-var]

    def _bound(self) -> tuple[np.ndarray, np.ndarray]:
        if self.image_shape is None:
            raise ConfigError(f"projection {self.name!r} is not bound to an image size; call for_image(H, W)")
        return self._matrices(*self.image_shape)

    @property
    def released_image_shape(self) -> tuple[int, int]:
        """(h', w'): the shape each (H, W) image is released as."""
        a, b = self._bound()
        return a.shape[0], b.shape[0]

    def _images(self, length: int) -> int:
        h, w = self.image_shape or (0, 0)
        if h * w == 0 or length % (h * w):
            raise ConfigError(f"a vector of length {length} is not a batch of {h}x{w} images")
        return length // (h * w)

    def released_length(self, length: int) -> int:
        """How many coordinates a flattened vector of `length` (a batch of H x W images) is released as."""
        self._bound()
        hp, wp = self.released_image_shape
        return self._images(length) * hp * wp

    def project(self, vector: np.ndarray) -> np.ndarray:
        """P g: each (H, W) image of the flattened vector to its (h', w') coefficients, flattened."""
        a, b = self._bound()
        h, w = self.image_shape  # type: ignore[misc]
        v = np.asarray(vector, dtype=np.float64).reshape(-1)
        x = v.reshape(self._images(v.size), h, w)
        return np.einsum("ih,nhw,jw->nij", a, x, b, optimize=True).reshape(-1)

    def lift(self, vector: np.ndarray) -> np.ndarray:
        """P^T y: each (h', w') block of coefficients back to an (H, W) image, flattened."""
        a, b = self._bound()
        hp, wp = a.shape[0], b.shape[0]
        y = np.asarray(vector, dtype=np.float64).reshape(-1)
        if y.size % (hp * wp):
            raise ConfigError(f"a vector of length {y.size} is not a batch of {hp}x{wp} coefficient blocks")
        y = y.reshape(-1, hp, wp)
        return np.einsum("ih,nij,jw->nhw", a, y, b, optimize=True).reshape(-1)


@dataclass(frozen=True, slots=True)
class BlockMeans(ReleaseProjection):
    """f x f block sums / f: the block means up to the scale that makes the rows orthonormal.

    Keeps 1/f^2 of the dimension; f must divide H and W. The same map as the trade-off benchmark's
    `LowResolutionReleases`.
    """

    factor: int
    image_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or int(self.factor) != self.factor or self.factor < 1:
            raise ConfigError(f"block factor must be an integer >= 1, got {self.factor!r}")
        if self.image_shape is not None:
            self._check(*self.image_shape)

    @property
    def name(self) -> str:
        return f"block{self.factor}"

    def _check(self, height: int, width: int) -> None:
        if height % self.factor or width % self.factor:
            raise ConfigError(f"block factor {self.factor} must divide the image size {height}x{width}")

    def _matrices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        return _cached_block(height, self.factor), _cached_block(width, self.factor)


@dataclass(frozen=True, slots=True)
class LowFrequency(ReleaseProjection):
    """The k x k lowest-frequency coefficients of the orthonormal 2D DCT-II: P X = D_k X D_k^T.

    Keeps k^2 of H x W coordinates, the smooth part of each image; unlike block means it has no
    blocking artefacts, and a smooth gradient keeps more of its norm for the same released dimension.
    """

    k: int
    image_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 1:
            raise ConfigError(f"number of DCT frequencies must be an integer >= 1, got {self.k!r}")
        if self.image_shape is not None:
            self._check(*self.image_shape)

    @property
    def name(self) -> str:
        return f"dct{self.k}"

    def _check(self, height: int, width: int) -> None:
        if self.k > height or self.k > width:
            raise ConfigError(f"{self.k} DCT frequencies exceed the image size {height}x{width}")

    def _matrices(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        return _cached_dct(height)[: self.k], _cached_dct(width)[: self.k]


_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def _cached_block(n: int, factor: int) -> np.ndarray:
    key = ("block", n, factor)
    if key not in _CACHE:
        _CACHE[key] = _block_mean_matrix(n, factor)
    return _CACHE[key]


def _cached_dct(n: int) -> np.ndarray:
    key = ("dct", n, 0)
    if key not in _CACHE:
        _CACHE[key] = dct_matrix(n)
    return _CACHE[key]
