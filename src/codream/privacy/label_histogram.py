"""A charged DP histogram of a client's labels: the only way label statistics leave an example-level client.

The conditional method weights each dream's gradient and soft labels by the client's class weights
(its label counts over their maximum). Released raw, one training label moves that vector, so its
epsilon is infinite. Here the counts are released once per run through the Gaussian mechanism and
charged to the client's own example-level accountant; everything derived from them (the class
weights, every round's scaling of dream gradients and soft labels) is post-processing of that one
release and costs nothing more. Released once, over a fixed data set, it also leaves nothing to
difference across rounds.

Mechanism: counts c_k = #{i : y_i = k} plus independent N(0, z^2) noise per class, from the OS.
Adding or removing one training example changes one count by 1, so the L2 sensitivity is 1 and the
release is one Gaussian event of multiplier z on the whole data set (sample rate 1) under the
add/remove relation DP-SGD's accounting uses. It composes with the client's DP-SGD steps in the same
accountant, RDP or PRV.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..exceptions import ConfigError, PrivacyBudgetExceeded
from .accountant import Accountant, PrivacyEvent
from .os_random import os_gaussian

__all__ = [
    "DEFAULT_LABEL_NOISE_MULTIPLIER",
    "NoisyLabelHistogram",
    "label_histogram_event",
    "release_label_histogram",
]

SENSITIVITY = 1.0  # one example added or removed moves one count by one

#: z of the histogram `codream run --privacy-unit example` and the trade-off benchmark release: noise
#: std 20 on counts of hundreds, and at epsilon 1 over the benchmark's 52 DP-SGD steps it raises the
#: steps' own multiplier by about 1 % (2.074 -> 2.102, PRV).
DEFAULT_LABEL_NOISE_MULTIPLIER = 20.0


def label_histogram_event(noise_multiplier: float) -> PrivacyEvent:
    """The event one release costs: a Gaussian of multiplier z on the whole data set, once."""
    return PrivacyEvent(noise_multiplier=noise_multiplier, sample_rate=1.0)


@dataclass(frozen=True, slots=True)
class NoisyLabelHistogram:
    """What the client released: noisy label counts, and the multiplier they were released with.

    Attributes:
        counts: (K,) true counts plus N(0, z^2) noise each; the released values.
        noise_multiplier: z (noise std over the sensitivity 1).
    """

    counts: tuple[float, ...]
    noise_multiplier: float

    def class_weights(self, *, min_class_weight: float = 0.0) -> np.ndarray:
        """(K,) class weights in [0, 1] by post-processing: noisy counts clamped at 0, over their maximum.

        Classes under `min_class_weight` of the largest get 0, as for raw counts; all zero when no
        noisy count is positive.
        """
        c = np.clip(np.asarray(self.counts, dtype=np.float64), 0.0, None)
        top = float(c.max()) if c.size else 0.0
        if top <= 0:
            return np.zeros(len(self.counts))
        w = c / top
        w[w < min_class_weight] = 0.0
        return w

    def to_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "noise_multiplier": self.noise_multiplier}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoisyLabelHistogram:
        try:
            return cls(
                counts=tuple(float(c) for c in data["counts"]),
                noise_multiplier=float(data["noise_multiplier"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed label histogram {dict(data)!r}: {exc}") from None


def release_label_histogram(
    labels: Sequence[int] | np.ndarray,
    *,
    num_classes: int,
    noise_multiplier: float,
    accountant: Accountant,
    delta: float,
    target_epsilon: float | None = None,
    noise_seed: int | None = None,
) -> NoisyLabelHistogram:
    """Charge the release to `accountant`, then release the noisy label counts.

    Args:
        labels: (N,) the client's training labels in [0, num_classes).
        num_classes: K.
        noise_multiplier: z > 0; the noise std per count (the sensitivity is 1).
        accountant: the client's example-level accountant (its DP-SGD steps' own).
        delta: the delta the budget is stated at.
        target_epsilon: the client's budget; the release is refused if it would exceed it.
        noise_seed: seeded noise for reproducible tests and benchmarks only (a trainer given one says
            it is not private); None (default) draws the noise from the OS.
    Returns:
        the released histogram.
    Raises:
        PrivacyBudgetExceeded: the release would exceed the target; nothing is charged or released.
        ConfigError: for labels outside [0, K), or an invalid multiplier.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier}")
    y = np.asarray(labels).reshape(-1)
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"labels must be integers in [0, {num_classes}), got {y.dtype} in [{y.min()}, {y.max()}]"
        )
    event = label_histogram_event(noise_multiplier)
    accountant.check_event(event)
    prospective = None if target_epsilon is None else accountant.epsilon_with([event], delta=delta)
    if prospective is not None and target_epsilon is not None and prospective > target_epsilon:
        raise PrivacyBudgetExceeded(
            f"the label histogram would spend epsilon {prospective:.4g} at delta {delta:g} "
            f"(example-level, {accountant.mechanism()}), over the target {target_epsilon:g}; "
            "raise its noise multiplier or plan it into the budget (ExampleLevelSchedule.extra_events)"
        )
    accountant.add(event)  # charged before anything is released
    counts = np.bincount(y.astype(np.int64), minlength=num_classes).astype(np.float64)
    std = noise_multiplier * SENSITIVITY
    if noise_seed is None:
        noise = os_gaussian(num_classes, std=std)
    else:
        noise = np.random.default_rng([int(noise_seed), 0x1AB]).normal(0.0, std, num_classes)
    noisy = counts + noise
    return NoisyLabelHistogram(
        counts=tuple(float(c) for c in noisy), noise_multiplier=float(noise_multiplier)
    )
