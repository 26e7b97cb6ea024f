"""L2 clipping of released vectors, with counts: nothing is clipped silently.

The clip norm is the sensitivity every DP calibration in codream divides by (C_g for a dream gradient
over the whole dream batch, C_y for soft labels), so a clipped contribution is not an error, but how
often it happens tells the user whether the bound is too tight (bias) or too loose (noise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..exceptions import ConfigError

__all__ = ["ClipCounter", "ClipStats", "clip_contributions", "clip_l2"]


def clip_l2(vector: np.ndarray, bound: float) -> tuple[np.ndarray, bool]:
    """Scale `vector` down to L2 norm `bound` if it is longer; return it and whether it was clipped."""
    norm = float(np.linalg.norm(vector))
    if norm > bound:
        return vector * (bound / norm), True
    return vector, False


@dataclass(frozen=True, slots=True)
class ClipStats:
    """How many of `total` contributions were scaled down to the bound."""

    clipped: int
    total: int

    @property
    def fraction(self) -> float:
        return self.clipped / self.total if self.total else 0.0


def clip_contributions(
    vectors: Mapping[int, np.ndarray], bound: float
) -> tuple[dict[int, np.ndarray], ClipStats, dict[int, float]]:
    """Clip each client's vector to L2 norm `bound`.

    Args:
        vectors: client id -> float vector.
        bound: the L2 clip norm (> 0).
    Returns:
        (clipped vectors as float64, counts, each vector's norm before clipping).
    Raises:
        ConfigError: for a non-positive bound or a vector holding NaN or infinity.
    """
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigError(f"clip bound must be finite and > 0, got {bound}")
    out: dict[int, np.ndarray] = {}
    norms: dict[int, float] = {}
    clipped = 0
    for cid, v in vectors.items():
        arr = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ConfigError(f"client {cid}: vector holds NaN or infinity")
        norms[cid] = float(np.linalg.norm(arr))
        out[cid], was = clip_l2(arr, bound)
        clipped += was
    return out, ClipStats(clipped=clipped, total=len(out)), norms


@dataclass(slots=True)
class ClipCounter:
    """Running clip counts per release name over a round (or a run)."""

    counts: dict[str, ClipStats] = field(default_factory=dict)

    def add(self, name: str, stats: ClipStats) -> None:
        old = self.counts.get(name, ClipStats(0, 0))
        self.counts[name] = ClipStats(clipped=old.clipped + stats.clipped, total=old.total + stats.total)

    @property
    def total(self) -> ClipStats:
        return ClipStats(
            clipped=sum(s.clipped for s in self.counts.values()),
            total=sum(s.total for s in self.counts.values()),
        )
