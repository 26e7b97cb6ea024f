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
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exceptions import ConfigError
from .federation.config import DistillConfig, DreamAugment, KDBatchNorm, LocalLoss, SoftLabelKind

__all__ = [
    "DreamBuffer",
    "JointTrainer",
    "LocalTrainer",
    "SGDTrainer",
    "TrainerFactory",
    "augment_dreams",
    "class_weighted_ensemble",
    "frozen_batchnorm",
    "kd_loss",
    "local_cross_entropy",
    "predict_soft_labels",
    "real_half_batchnorm",
    "sgd_trainer_factory",
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


def soft_labels_to_target_logits(y: Tensor, kind: SoftLabelKind, label_temperature: float = 1.0) -> Tensor:
    """Aggregated soft labels (B, K) -> target logits for `kd_loss`.

    Probabilities p released at temperature tau become tau * log p: at KD temperature T = tau the
    target is p itself, and the student matches it with its own logits divided by tau.
    """
    if kind is SoftLabelKind.PROBABILITIES:
        p = y.clamp_min(0)
        p = p / p.sum(dim=1, keepdim=True).clamp_min(_PROB_FLOOR)
        return label_temperature * p.clamp_min(_PROB_FLOOR).log()
    return y


def local_cross_entropy(
    logits: Tensor,
    y: Tensor,
    class_counts: Tensor,
    mode: LocalLoss,
    *,
    restrict_alpha: float = 0.0,
    logit_adjust_tau: float = 1.0,
) -> Tensor:
    """Cross-entropy on a client's own minibatch that leaves the classes it lacks to KD.

    Under label skew a plain softmax pushes every absent class down on every local step and so
    erases what distillation taught about them. RESTRICTED (FedRS) scales the absent classes' logits
    by alpha inside the loss, so at alpha 0 they get exactly no gradient; ADJUSTED adds
    tau * log prior(c) (logit adjustment), which removes absent classes (prior 0) from the softmax and
    also stops the client's frequent classes from dominating the rare ones it holds.

    Args:
        logits: (B, K) model outputs.
        y: (B,) labels, all of classes the client holds.
        class_counts: (K,) the client's label counts.
        mode: see `LocalLoss`.
        restrict_alpha, logit_adjust_tau: the mode's strength.
    Returns:
        The mean loss over the batch.
    """
    if mode is LocalLoss.PLAIN:
        return F.cross_entropy(logits, y)
    present = (class_counts > 0).to(logits.device)  # (K,)
    if mode is LocalLoss.RESTRICTED:
        scale = torch.where(present, 1.0, float(restrict_alpha)).to(logits.dtype)  # (K,)
        return F.cross_entropy(logits * scale, y)
    prior = class_counts.to(logits.device, logits.dtype) / class_counts.sum().clamp_min(1)
    offset = torch.where(present, logit_adjust_tau * prior.clamp_min(_PROB_FLOOR).log(), -math.inf)
    return F.cross_entropy(logits + offset, y)


@torch.no_grad()
def class_weighted_ensemble(models: list[nn.Module], class_weights: Tensor, x: Tensor) -> Tensor:
    """The class-weighted ensemble of teachers: p(c) = sum_k w_k(c) p_k(c) / sum_k w_k(c), rows renormalised.

    What the server forms from the sums with `label_weighting = "class"`; here computed directly from
    the models, as a measuring device (for example on a test set).

    Args:
        models: the K_t teachers, evaluated in eval mode.
        class_weights: (K_t, K) each teacher's weight per class (`ClientRole.class_weights`).
        x: (N, C, H, W) inputs.
    Returns:
        (N, K) probabilities; classes no teacher holds get probability 0.
    """
    num = None
    for model, w in zip(models, class_weights, strict=True):
        p = predict_soft_labels(model, x, SoftLabelKind.PROBABILITIES)  # (N, K)
        term = p * w.to(p)[None, :]
        num = term if num is None else num + term
    assert num is not None
    total = class_weights.sum(dim=0).to(num)  # (K,)
    p = torch.where(total > 0, num / total.clamp_min(_PROB_FLOOR), 0.0)
    return p / p.sum(dim=1, keepdim=True).clamp_min(_PROB_FLOOR)


def augment_dreams(x: Tensor, mode: DreamAugment, shift: int, generator: torch.Generator) -> Tensor:
    """Randomly translate (and mirror) each dream of a KD minibatch x (B, C, H, W); a new tensor.

    Every dream gets its own offset in [-shift, shift]^2, drawn from `generator` (reproducible), with
    zero padding; SHIFT_FLIP also mirrors each dream left-right with probability 1/2. More distinct
    inputs per released dream, at no privacy cost: the label travels with the dream.
    """
    if mode is DreamAugment.NONE or x.shape[0] == 0:
        return x
    b, _, h, w = x.shape
    out = x
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift))  # (B, C, H + 2s, W + 2s)
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator).to(x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
        cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        out = out.permute(0, 3, 1, 2).contiguous()
    if mode is DreamAugment.SHIFT_FLIP:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


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


@contextmanager
def real_half_batchnorm(model: nn.Module, n_real: int) -> Iterator[None]:
    """Normalise a batch of [real; dreams] with its joint statistics; update running ones from the real part.

    The first `n_real` rows of every BatchNorm input are the client's own data: its running
    statistics (what it normalises test data with and what the dream term matches) follow them with
    the layer's momentum, exactly as in a cross-entropy step, while the dreams behind them never move
    them. Normalising dreams together with real data keeps KD on the activation scale real data sees.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]

    def update(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if not module.training or module.running_mean is None:
            return
        real = inputs[0][:n_real].detach()  # (n_real, C, ...)
        dims = [0, *range(2, real.dim())]
        n = real.numel() // real.shape[1]
        mean = real.mean(dim=dims)
        var = real.var(dim=dims, unbiased=n > 1)
        m = module._codream_momentum  # type: ignore[attr-defined]
        module.running_mean.mul_(1 - m).add_(m * mean)
        module.running_var.mul_(1 - m).add_(m * var)

    handles = []
    try:
        for module, momentum in zip(bns, momenta, strict=True):
            module._codream_momentum = 0.1 if momentum is None else momentum  # type: ignore[attr-defined]
            module.momentum = 0.0  # the layer's own update is a no-op; the hook does the real part's
            handles.append(module.register_forward_pre_hook(update))
        yield
    finally:
        for h in handles:
            h.remove()
        for module, momentum in zip(bns, momenta, strict=True):
            module.momentum = momentum
            if hasattr(module, "_codream_momentum"):
                del module._codream_momentum


@torch.no_grad()
def predict_soft_labels(model: nn.Module, x: Tensor, kind: SoftLabelKind, temperature: float = 1.0) -> Tensor:
    """The model's soft labels on dreams x (B, C, H, W): probabilities (at `temperature`) or logits, (B, K).

    Evaluated in eval mode; the model's mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
    if kind is SoftLabelKind.PROBABILITIES:
        return F.softmax(logits / temperature, dim=1)
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


@runtime_checkable
class JointTrainer(LocalTrainer, Protocol):
    """A trainer that can take KD and cross-entropy in one optimiser step (`distill.joint`)."""

    def joint_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> tuple[float, float]:
        """One step on KD(x, y_soft) + ce_weight * CE(local minibatch); returns (KD loss, CE loss)."""
        ...


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
        local_loss, restrict_alpha, logit_adjust_tau: the local cross-entropy (`local_cross_entropy`).
        kd_batchnorm: how BatchNorm normalises KD batches (`KDBatchNorm`); MIXED draws a local
            minibatch for every KD step to normalise the dreams with.
        ce_weight: weight of the CE term in `joint_step`.
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
        local_loss: LocalLoss | str = LocalLoss.PLAIN,
        restrict_alpha: float = 0.0,
        logit_adjust_tau: float = 1.0,
        kd_batchnorm: KDBatchNorm | str = KDBatchNorm.DREAMS,
        ce_weight: float = 1.0,
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
        self.local_loss = LocalLoss(local_loss)
        self.restrict_alpha = float(restrict_alpha)
        self.logit_adjust_tau = float(logit_adjust_tau)
        self.kd_batchnorm = KDBatchNorm(kd_batchnorm)
        self.ce_weight = float(ce_weight)
        self._counts: Tensor | None = None  # (K,) label counts, once K is known from the model
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

    def _ce(self, logits: Tensor, y: Tensor) -> Tensor:
        if self._counts is None:
            self._counts = torch.bincount(self.y_train.long(), minlength=logits.shape[1]).to(logits.device)
        return local_cross_entropy(
            logits,
            y,
            self._counts,
            self.local_loss,
            restrict_alpha=self.restrict_alpha,
            logit_adjust_tau=self.logit_adjust_tau,
        )

    def _kd_forward(self, x: Tensor, xr: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Logits on dreams x and, when given, on real inputs xr; BatchNorm as `kd_batchnorm` says."""
        if self.kd_batchnorm is KDBatchNorm.MIXED:
            if xr is None:
                xr, _ = self._next_batch()
            with real_half_batchnorm(self.model, xr.shape[0]):
                out = self.model(torch.cat([xr, x]))  # (n_real + B, K)
            return out[xr.shape[0] :], out[: xr.shape[0]]
        with frozen_batchnorm(self.model):
            dream_logits = self.model(x)
        return dream_logits, None if xr is None else self.model(xr)

    def ce_step(self) -> float:
        x, y = self._next_batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._ce(self.model(x), y)
        loss.backward()
        self._step()
        return float(loss.detach())

    def kd_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        dream_logits, _ = self._kd_forward(x, None)
        loss = kd_loss(dream_logits, y_soft, temperature)
        loss.backward()
        self._step()
        return float(loss.detach())

    def joint_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> tuple[float, float]:
        """One optimiser step on KD(x, y_soft) + ce_weight * CE on the next local minibatch."""
        xr, yr = self._next_batch()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        dream_logits, real_logits = self._kd_forward(x, xr)
        assert real_logits is not None
        kd = kd_loss(dream_logits, y_soft, temperature)
        ce = self._ce(real_logits, yr)
        (kd + self.ce_weight * ce).backward()
        self._step()
        return float(kd.detach()), float(ce.detach())

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


def sgd_trainer_factory(config: DistillConfig) -> TrainerFactory:
    """The plain SGD trainer with a distillation configuration's learning settings."""

    def factory(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> SGDTrainer:
        return SGDTrainer(
            model,
            x,
            y,
            generator,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            batch_size=config.ce_batch_size,
            local_loss=config.local_loss,
            restrict_alpha=config.restrict_alpha,
            logit_adjust_tau=config.logit_adjust_tau,
            kd_batchnorm=config.kd_batchnorm,
            ce_weight=config.ce_weight,
        )

    return factory
