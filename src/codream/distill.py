"""Knowledge aggregation and acquisition: soft labels, the dream buffer, KD and local training.

After the dreams of a round are optimised, each client labels them with its model; the server sums the
labels through the seam and broadcasts the mean. Every client keeps the dreams and their mean label in a
bounded FIFO buffer and distils from it (CoDream §3.2-3.3), interleaved with cross-entropy steps on its
own data so it does not forget what only it knows.

Soft labels travel as probabilities (the paper's Eq. 5) or logits. Whatever travels, a KD target is
handed to trainers as *target logits*: scores whose softmax at temperature T is the teacher distribution
(log-probabilities are such scores, so averaged probabilities p become log p).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exceptions import ConfigError
from .federation.config import SoftLabelKind

__all__ = [
    "DreamBuffer",
    "LocalTrainer",
    "SGDTrainer",
    "TrainerFactory",
    "frozen_batchnorm",
    "kd_loss",
    "predict_soft_labels",
    "soft_labels_to_target_logits",
]

log = logging.getLogger(__name__)

# The smallest probability a target keeps when turned into logits: log(1e-12) = -27.6, so a class no
# client predicts stays at essentially zero mass for T >= 1 while the logits stay finite.
_PROB_FLOOR = 1e-12


def kd_loss(student_logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(target/T) || softmax(student/T)), averaged over the batch.

    Both sides go through log_softmax, so the loss and its gradient stay finite for logits of any
    finite size (a softmax of 1e4 underflows to exact zeros and log(0) would give NaN).

    Args:
        student_logits: (B, K) the model being trained.
        target_logits: (B, K) teacher scores (logits or log-probabilities).
        temperature: T > 0.
    Returns:
        A scalar tensor.
    Raises:
        ConfigError: for mismatched shapes or a non-positive temperature.
    """
    if student_logits.shape != target_logits.shape or student_logits.dim() != 2:
        raise ConfigError(
            f"kd_loss needs two (B, K) tensors of the same shape, got {tuple(student_logits.shape)} "
            f"and {tuple(target_logits.shape)}"
        )
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_s = F.log_softmax(student_logits / temperature, dim=1)  # (B, K)
    log_t = F.log_softmax(target_logits.detach() / temperature, dim=1)  # (B, K)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def soft_labels_to_target_logits(y: Tensor, kind: SoftLabelKind) -> Tensor:
    """Aggregated soft labels (B, K) -> target logits for `kd_loss` (log p for probabilities)."""
    if kind is SoftLabelKind.PROBABILITIES:
        p = y.clamp_min(0)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(_PROB_FLOOR)
        return p.clamp_min(_PROB_FLOOR).log()
    return y


@contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Let BatchNorm layers normalise with batch statistics without updating their running ones.

    Training on dreams must not move the running statistics toward the dreams': they are the
    knowledge the BatchNorm dream term matches and what the model normalises real test data with.
    Batch statistics (rather than eval mode) keep KD stable on dreams whose statistics still differ
    from the running ones; in eval mode such dreams blow activations up and KD diverges.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
        yield
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum


@torch.no_grad()
def predict_soft_labels(model: nn.Module, x: Tensor, kind: SoftLabelKind) -> Tensor:
    """The model's soft labels on dreams x (B, C, H, W): probabilities or logits, (B, K), eval mode."""
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    if kind is SoftLabelKind.PROBABILITIES:
        return F.softmax(logits, dim=1)
    return logits


class DreamBuffer:
    """A bounded FIFO store of dreams and their target logits; the oldest dreams leave first.

    Args:
        capacity: the most dreams (samples, not batches) kept.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ConfigError(f"buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.x: Tensor | None = None  # (N, C, H, W), N <= capacity
        self.y: Tensor | None = None  # (N, K)
        self.dropped = 0  # dreams pushed out so far, so that eviction is never silent

    def __len__(self) -> int:
        return 0 if self.x is None else int(self.x.shape[0])

    def add(self, x: Tensor, y: Tensor) -> None:
        """Append dreams x (B, C, H, W) with targets y (B, K); evict the oldest beyond capacity."""
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"{x.shape[0]} dreams but {y.shape[0]} labels")
        if self.x is not None and (x.shape[1:] != self.x.shape[1:] or y.shape[1:] != self.y.shape[1:]):
            raise ConfigError(
                f"dream shape {tuple(x.shape[1:])} does not match the buffer's {tuple(self.x.shape[1:])}"
            )
        x, y = x.detach().clone(), y.detach().clone()
        if self.x is None:
            self.x, self.y = x, y
        else:
            self.x, self.y = torch.cat([self.x, x]), torch.cat([self.y, y])
        excess = len(self) - self.capacity
        if excess > 0:
            self.x, self.y = self.x[excess:], self.y[excess:]
            self.dropped += excess

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A minibatch of min(batch_size, len) distinct dreams, drawn with `generator`."""
        if self.x is None:
            raise ConfigError("the dream buffer is empty")
        idx = torch.randperm(len(self), generator=generator)[:batch_size]
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "x": self.x, "y": self.y, "dropped": self.dropped}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ConfigError(f"buffer capacity {state['capacity']} does not match {self.capacity}")
        self.x, self.y, self.dropped = state["x"], state["y"], int(state["dropped"])


@runtime_checkable
class LocalTrainer(Protocol):
    """Owns a client's model and its private data; all the local learning a client does.

    A differentially private trainer implements the same protocol: `ce_step` reads private data and
    is where privacy is spent; `kd_step` reads only dreams and public soft labels.
    """

    model: nn.Module

    def ce_step(self) -> float:
        """One optimiser step of cross-entropy on a minibatch of local data the trainer draws itself."""
        ...

    def kd_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> float:
        """One optimiser step of KD on dreams x (B, C, H, W) toward target logits y_soft (B, K)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


TrainerFactory = Callable[[nn.Module, Tensor, Tensor, torch.Generator], LocalTrainer]


class SGDTrainer:
    """Plain minibatch SGD with momentum for cross-entropy on local data and KD on dreams.

    Local minibatches are drawn as epochs of a random permutation from the trainer's own generator, so
    every local sample is seen once per epoch and the order is reproducible.

    Args:
        model: the client's model (trained in place).
        x_train: (N, C, H, W) local inputs.
        y_train: (N,) local labels.
        generator: the client's torch.Generator for minibatch order.
        lr, momentum, weight_decay: SGD settings.
        batch_size: cross-entropy minibatch size.
        max_grad_norm: clip each step's gradient to this L2 norm (None: no clipping); a guard against
            the occasional wild KD batch early on, when dreams are still far from real data.
    """

    def __init__(
        self,
        model: nn.Module,
        x_train: Tensor,
        y_train: Tensor,
        generator: torch.Generator,
        *,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 64,
        max_grad_norm: float | None = 10.0,
    ) -> None:
        if x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
            raise ConfigError(
                f"need matching, non-empty local data, got {x_train.shape[0]} and {y_train.shape[0]}"
            )
        self.model = model
        self.x_train, self.y_train = x_train, y_train
        self.generator = generator
        self.batch_size = batch_size
        self.max_grad_norm = max_grad_norm
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self._perm = torch.randperm(x_train.shape[0], generator=generator)
        self._pos = 0

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        n = self.x_train.shape[0]
        if self._pos + min(self.batch_size, n) > n:
            self._perm = torch.randperm(n, generator=self.generator)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += len(idx)
        return self.x_train[idx], self.y_train[idx]

    def _step(self) -> None:
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()

    def ce_step(self) -> float:
        x, y = self._next_batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self._step()
        return float(loss.detach())

    def kd_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm(self.model):
            loss = kd_loss(self.model(x), y_soft, temperature)
        loss.backward()
        self._step()
        return float(loss.detach())

    def state_dict(self) -> dict:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "perm": self._perm.clone(),
            "pos": self._pos,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"])
        self._perm = state["perm"].clone()
        self._pos = int(state["pos"])
