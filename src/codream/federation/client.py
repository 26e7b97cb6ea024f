"""The client's side of a CoDream round, in step-sized methods an engine can interleave with messages.

A round, as the client sees it (see protocols/codream.md):

1. (conditional method) release `class_weights()`;
2. receive the round's context with `begin_round` (round index, dream targets, student);
3. for every global step: receive the dreams x, release `dream_gradient(x)`;
4. receive the final dreams, release `soft_labels(x)`;
5. receive the aggregated soft labels, `acquire(x, y)` and `distill()`.

Every `*_vector` a client returns is what it releases: a float64 vector already bounded to the
`VectorSpec` the server planned, so clipping at the seam is the exception, not the rule, and is counted.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..distill import DreamBuffer, JointTrainer, LocalTrainer, augment_dreams, predict_soft_labels
from ..dreams import DreamLossTerms, client_dream_gradient
from ..exceptions import ConfigError
from .config import (
    Contribution,
    FederationConfig,
    KDBatchNorm,
    LabelWeighting,
    LocalLoss,
    Method,
    SoftLabelKind,
)

__all__ = ["ClientRole", "DistillStats"]

log = logging.getLogger(__name__)

# A unit-normalised release is scaled just inside its bound so float rounding never trips the seam's
# clipping counter (which must mean "a contribution was really cut").
_INSIDE = 1.0 - 1e-6


@dataclass(frozen=True, slots=True)
class DistillStats:
    """Mean losses, step counts and wall time of one round of local learning."""

    kd_loss: float
    ce_loss: float
    kd_steps: int
    ce_steps: int
    seconds: float = 0.0


class ClientRole:
    """One client: its model (through its trainer), its private labels' class counts and its dream buffer.

    Args:
        client_id: the id used at the seam.
        trainer: owns the model and the private data (`LocalTrainer`).
        y_train: (N,) the client's labels, used for its per-class weights (conditional method) unless
            the trainer guards them (`label_counts`).
        num_classes: K.
        config: the federation's configuration.
        generator: the client's generator for buffer minibatches.
    """

    def __init__(
        self,
        client_id: int,
        trainer: LocalTrainer,
        y_train: Tensor,
        num_classes: int,
        config: FederationConfig,
        generator: torch.Generator,
    ) -> None:
        dc = config.distill
        if dc.joint and not isinstance(trainer, JointTrainer):
            raise ConfigError(
                f"distill.joint needs a trainer with joint_step; {type(trainer).__name__} has none"
            )
        # A trainer that does not say it applies the configured local loss or KD BatchNorm handling
        # would silently train with another one.
        if getattr(trainer, "local_loss", LocalLoss.PLAIN) is not dc.local_loss:
            raise ConfigError(
                f"{type(trainer).__name__} does not apply distill.local_loss={dc.local_loss.value}"
            )
        if getattr(trainer, "kd_batchnorm", KDBatchNorm.DREAMS) is not dc.kd_batchnorm:
            raise ConfigError(
                f"{type(trainer).__name__} does not apply distill.kd_batchnorm={dc.kd_batchnorm.value}"
            )
        self.client_id = client_id
        self.trainer = trainer
        self.num_classes = num_classes
        self.config = config
        self.generator = generator
        counts = torch.bincount(y_train.long(), minlength=num_classes).to(torch.float64)
        self.class_counts = counts.numpy()
        self.buffer = DreamBuffer(config.distill.buffer_size)
        self.student: nn.Module | None = None
        self._round = -1
        self._targets: Tensor | None = None
        self._dream_weights: Tensor | None = None
        self._use_adversarial = False
        self.last_terms: DreamLossTerms | None = None
        self.last_distill: DistillStats | None = None  # the latest round's, for timing

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def device(self) -> torch.device:
        """Where the model lives; dreams arrive on the CPU and are moved here."""
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    # -- releases ------------------------------------------------------------------------------------

    def label_counts(self) -> np.ndarray:
        """(K,) the label counts every released value derived from labels is computed from.

        A trainer that guards its labels (`DPSGDTrainer.released_label_counts`, example-level DP) gives
        its once-per-run DP histogram, clamped at 0, so class weights and everything they scale are
        post-processing of one charged release; otherwise the raw counts.
        """
        released = getattr(self.trainer, "released_label_counts", None)
        if released is None:
            return self.class_counts
        return np.clip(np.asarray(released(self.num_classes), dtype=np.float64), 0.0, None)

    def class_weights(self) -> np.ndarray:
        """How well this client knows each class, (K,) in [0, 1]: its count over its largest count.

        Classes under `dream.min_class_weight` of the largest count get 0. The vector's L2 norm is at
        most sqrt(K), the bound the server plans for it. The counts are `label_counts()`.
        """
        counts = self.label_counts()
        top = float(counts.max())
        if top <= 0:
            return np.zeros(self.num_classes)
        w = counts / top
        w[w < self.config.dream.min_class_weight] = 0.0
        return w * _INSIDE

    def begin_round(
        self, round_index: int, *, targets: Tensor | None = None, student: nn.Module | None = None
    ) -> None:
        """Take the round's context from the server: dream targets (B,) and, optionally, its student."""
        if self.config.method is Method.CONDITIONAL and targets is None:
            raise ConfigError("the conditional method needs the dreams' target classes")
        self._round = round_index
        self._targets = None if targets is None else targets.long()
        if self._targets is not None:
            w = torch.as_tensor(self.class_weights(), dtype=torch.float32)
            self._dream_weights = w[self._targets]  # (B,)
        else:
            self._dream_weights = None
        if student is not None:
            self.student = student
        dc = self.config.dream
        self._use_adversarial = (
            dc.w_adv > 0 and round_index >= dc.adv_start_round and self.student is not None
        )

    def dream_gradient(self, x: Tensor, step: int | None = None) -> np.ndarray:
        """This client's bounded update direction on dreams x (B, C, H, W), flattened to (B*C*H*W,).

        `step` (the global step index) is informational: the client's answer depends only on x.

        Normalised to L2 norm `dream.clip_norm` (or clipped to it) over the whole batch, so every client
        weighs the same whatever its architecture's gradient scale.
        """
        dc = self.config.dream
        dev = self.device
        grad, terms = client_dream_gradient(
            self.model,
            x.to(dev),
            dc,
            targets=None if self._targets is None else self._targets.to(dev),
            weights=None if self._dream_weights is None else self._dream_weights.to(dev),
            student=self.student,
            use_adversarial=self._use_adversarial,
        )
        self.last_terms = terms
        vec = grad.reshape(-1).to(torch.float64).cpu().numpy()
        norm = float(np.linalg.norm(vec))
        if not math.isfinite(norm):
            raise ConfigError(f"client {self.client_id}: dream gradient is not finite")
        if dc.contribution is Contribution.NORMALIZE:
            return vec * (dc.clip_norm * _INSIDE / norm) if norm > 0 else np.zeros_like(vec)
        return vec

    def soft_labels(self, x: Tensor) -> np.ndarray:
        """This client's soft labels on the final dreams x, flattened (B*K,).

        Probabilities at `distill.label_temperature` (rows in the simplex, so the vector's norm is at
        most sqrt(B)) or logits. In the conditional method each row is multiplied by this client's weight
        a for the dream's target class (probabilities: plus 1 - a on the target class, so the row still
        sums to 1), or (`label_weighting = "class"`) each column by its weight for that class; weights
        are in [0, 1], so the bound holds either way.
        """
        dc = self.config.distill
        y = predict_soft_labels(self.model, x.to(self.device), dc.soft_labels, dc.label_temperature)
        y = y.to(torch.float64).cpu()  # (B, K)
        if self._dream_weights is not None:
            if dc.label_weighting is LabelWeighting.CLASS:
                y = y * torch.as_tensor(self.class_weights(), dtype=torch.float64)[None, :]
            else:
                a = self._dream_weights.to(torch.float64)[:, None]  # (B, 1)
                y = y * a
                if dc.soft_labels is SoftLabelKind.PROBABILITIES and self._targets is not None:
                    # The mass a row withholds from its prediction goes to the dream's target class,
                    # so every row sums to 1 whatever the weight: otherwise the summed rows' totals
                    # would re-release the sum of the class weights every round, over each round's
                    # survivors, and differencing would give every client's weights away.
                    target = torch.nn.functional.one_hot(self._targets.cpu(), self.num_classes)
                    y = y + (1.0 - a) * target.to(torch.float64)
        if self.config.distill.soft_labels is SoftLabelKind.PROBABILITIES:
            y = y * _INSIDE
        return y.reshape(-1).numpy()

    # -- local learning ------------------------------------------------------------------------------

    def warm_up(self) -> float:
        """`distill.warmup_steps` cross-entropy steps on local data; returns the mean loss."""
        steps = self.config.distill.warmup_steps
        losses = [self.trainer.ce_step() for _ in range(steps)]
        return float(np.mean(losses)) if losses else 0.0

    def acquire(self, x: Tensor, y_target: Tensor) -> None:
        """Keep dreams x (B, C, H, W) with their target logits (B, K) in the buffer.

        Called with the round's dreams, and, when the server keeps a bank (`distill.bank_size`), with
        every banked round this client missed, oldest first.
        """
        self.buffer.add(x.to(self.device), y_target.to(self.device))

    def distill(self) -> DistillStats:
        """`kd_steps` KD steps on buffer minibatches, interleaved with `ce_ratio` CE steps per KD step.

        With `distill.joint` a KD step that is owed a CE step takes both in one loss
        (`JointTrainer.joint_step`); any further CE steps owed (ce_ratio > 1) follow on their own.
        """
        dc = self.config.distill
        kd, ce = [], []
        owed = 0.0
        t0 = time.perf_counter()
        for _ in range(dc.kd_steps if len(self.buffer) else 0):
            xb, yb = self.buffer.sample(dc.batch_size, self.generator)
            xb = augment_dreams(xb, dc.augment, dc.augment_shift, self.generator)
            owed += dc.ce_ratio
            if dc.joint and owed >= 1.0:
                kd_l, ce_l = self.trainer.joint_step(xb, yb, dc.temperature)  # type: ignore[attr-defined]
                kd.append(kd_l)
                ce.append(ce_l)
                owed -= 1.0
            else:
                kd.append(self.trainer.kd_step(xb, yb, dc.temperature))
            while owed >= 1.0:
                ce.append(self.trainer.ce_step())
                owed -= 1.0
        self.last_distill = DistillStats(
            kd_loss=float(np.mean(kd)) if kd else 0.0,
            ce_loss=float(np.mean(ce)) if ce else 0.0,
            kd_steps=len(kd),
            ce_steps=len(ce),
            seconds=time.perf_counter() - t0,
        )
        return self.last_distill

    def evaluate(self, x_test: Tensor, y_test: Tensor) -> float:
        """Accuracy of this client's model on (x_test, y_test)."""
        from ..evaluation import accuracy

        return float(accuracy(self.model, x_test, y_test))

    # -- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "trainer": self.trainer.state_dict(),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])
