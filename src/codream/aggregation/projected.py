"""Lower-dimensional dream-gradient releases: each client releases P g, the server lifts P^T sum.

The projections themselves (data-independent, orthonormal rows) live in `codream.privacy.projection`;
see there why they keep the sensitivity and shrink the noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..exceptions import ConfigError
from ..privacy.projection import ReleaseProjection
from .local import AggregationRound, Aggregator
from .plan import AggregateResult, ReleaseKind, RoundReport, VectorSpec

__all__ = ["ProjectedReleases"]


class ProjectedReleases(Aggregator):
    """Release every dream gradient as P g through `inner`, and lift the sum back with P^T.

    Dream gradients are projected before they reach `inner` (their spec keeps its clip norm, with the
    released length); the other vectors (soft labels, class weights) pass
    through unchanged. With `renormalize`, each projected vector is rescaled to the norm the client's
    unprojected vector had: clients normalise their releases to the clip norm, so without it the
    release spends only ||P g|| / ||g|| of the clip budget, and the noise, calibrated to the clip norm,
    does not shrink with it. The rescaled norm is the original one, so the clip bound (and with it
    the DP guarantee) is unchanged; the lifted sum is then P^T P sum_k s_k g_k with s_k >= 1 per client.
    The fraction of the norm the projection kept is reported as `projection_signal_fraction`.

    Args:
        inner: the aggregator that sums the released vectors (`plain`, `secure`, `secure+dp`).
        projection: the map P, bound here to the dreams' (H, W).
        input_shape: (C, H, W) of one dream.
        renormalize: rescale each projected vector to its unprojected norm.
    Raises:
        ConfigError: an input shape that is not (C, H, W) or that the projection cannot act on.
    """

    def __init__(
        self,
        inner: Aggregator,
        projection: ReleaseProjection,
        input_shape: Sequence[int],
        *,
        renormalize: bool = True,
    ) -> None:
        if len(input_shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
        c, h, w = (int(s) for s in input_shape)
        if c < 1:
            raise ConfigError(f"input_shape must be positive, got {tuple(input_shape)}")
        self.inner = inner
        self.mode = inner.mode
        self.projection = projection.for_image(h, w)
        self.shape = (c, h, w)
        self.renormalize = bool(renormalize)
        self.name = f"{getattr(inner, 'name', '?') or '?'}+{self.projection.name}" + (
            "" if self.renormalize else "-raw"
        )

    def projects(self, spec: VectorSpec) -> bool:
        """Whether `spec` is a dream gradient this wrapper projects."""
        return spec.kind is ReleaseKind.DREAM_GRADIENT

    def released_spec(self, spec: VectorSpec) -> VectorSpec:
        """The spec of what actually leaves a client for `spec`."""
        if not self.projects(spec):
            return spec
        if spec.length % math.prod(self.shape):
            raise ConfigError(
                f"vector {spec.name!r} of length {spec.length} is not a batch of {self.shape} dreams"
            )
        return dataclasses.replace(spec, length=self.projection.released_length(spec.length))

    def release(self, vector: np.ndarray) -> tuple[np.ndarray, float | None]:
        """What a client releases for one dream vector, and the fraction of its norm P kept (None if 0)."""
        v = np.asarray(vector, dtype=np.float64)
        p = self.projection.project(v)
        norm = float(np.linalg.norm(v))
        if norm == 0:
            return p, None
        kept = float(np.linalg.norm(p))
        if self.renormalize and kept > 0:
            p = p * (norm / kept)
        return p, kept / norm

    def open_round(
        self, *, round_index: int, participants: Sequence[int], specs: Sequence[VectorSpec]
    ) -> AggregationRound:
        released = [self.released_spec(s) for s in specs]
        inner = self.inner.open_round(round_index=round_index, participants=participants, specs=released)
        return _ProjectedRound(
            self, inner, released, round_index=round_index, participants=participants, specs=specs
        )


class _ProjectedRound(AggregationRound):
    def __init__(
        self, owner: ProjectedReleases, inner: AggregationRound, released: list[VectorSpec], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._owner = owner
        self._inner = inner
        self._released = released
        self._kept: list[float] = []

    def sum(
        self, spec: VectorSpec, vectors: Mapping[int, np.ndarray], *, context: bytes = b""
    ) -> AggregateResult:
        self._check_contributions(spec, vectors)
        released = self._released[self._next]
        self._next += 1
        if not self._owner.projects(spec):
            return self._inner.sum(released, vectors, context=context)
        projected = {}
        for cid, v in vectors.items():
            projected[cid], kept = self._owner.release(v)
            if kept is not None:
                self._kept.append(kept)
        res = self._inner.sum(released, projected, context=context)
        return dataclasses.replace(res, total=self._owner.projection.lift(res.total))

    def close(self) -> RoundReport:
        report = self._inner.close()
        kept = float(np.mean(self._kept)) if self._kept else None
        return dataclasses.replace(report, projection_signal_fraction=kept)
