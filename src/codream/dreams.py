"""Dreams: synthetic inputs that clients and server optimise together (CoDream, Singh et al. 2024, §3.1).

A dream batch x has shape (B, C, H, W) in normalised input space and starts as Gaussian noise. Each
client scores it with a loss that reads only its own model (and, through BatchNorm running statistics,
a summary of its private data); the server sums the clients' gradients through the aggregation seam,
adds the data-independent priors itself, and moves x with an optimiser in data space.

Every loss term is a function of its own so it can be tested and weighted apart:

- `entropy_loss`: mean prediction entropy (confident dreams),
- `target_loss`: cross-entropy to a per-dream target class (the class-conditional variant),
- `BatchNormStatistics`: DeepInversion's feature-statistics regulariser, via forward hooks,
- `adversarial_loss`: teacher/student disagreement where they agree on the argmax,
- `total_variation`, `l2_prior`: priors the server applies (they read no private data).

Each term takes optional per-dream weights (B,) so a client can speak only for the classes it knows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exceptions import ConfigError
from .federation.config import DreamConfig, DreamOptimizer

__all__ = [
    "BatchNormStatistics",
    "DataSpaceOptimizer",
    "DreamLossTerms",
    "adversarial_loss",
    "client_dream_gradient",
    "client_dream_loss",
    "entropy_gradient",
    "entropy_loss",
    "init_dreams",
    "l2_prior",
    "prior_gradient",
    "target_loss",
    "total_variation",
]

log = logging.getLogger(__name__)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def init_dreams(
    batch_size: int, input_shape: tuple[int, int, int], *, generator: torch.Generator, std: float = 1.0
) -> Tensor:
    """A fresh dream batch x ~ N(0, std^2 I) of shape (B, C, H, W), drawn from `generator`."""
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    return torch.randn((batch_size, *input_shape), generator=generator) * std


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of values (B,) under per-dream weights (B,); zero when every weight is zero."""
    if weights is None:
        return values.mean()
    total = weights.sum()
    if float(total) <= 0:
        return values.sum() * 0.0
    return (values * weights).sum() / total


def entropy_loss(logits: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean entropy of softmax(logits), logits (B, K); minimal (0) for one-hot predictions.

    Computed from log_softmax so it stays finite for extreme logits.
    """
    logp = F.log_softmax(logits, dim=1)  # (B, K)
    ent = -(logp.exp() * logp).sum(dim=1)  # (B,)
    return _weighted_mean(ent, weights)


def target_loss(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of logits (B, K) to target classes (B,): pulls each dream toward its class."""
    return _weighted_mean(F.cross_entropy(logits, targets, reduction="none"), weights)


def _js_divergence(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Jensen-Shannon divergence per row of two logit batches (B, K) -> (B,)."""
    pa, pb = F.softmax(logits_a, dim=1), F.softmax(logits_b, dim=1)
    log_m = (0.5 * (pa + pb)).clamp_min(1e-12).log()
    kl_a = (pa * (F.log_softmax(logits_a, dim=1) - log_m)).sum(dim=1)
    kl_b = (pb * (F.log_softmax(logits_b, dim=1) - log_m)).sum(dim=1)
    return 0.5 * (kl_a + kl_b)


def adversarial_loss(teacher_logits: Tensor, student_logits: Tensor, weights: Tensor | None = None) -> Tensor:
    """Minus the teacher/student Jensen-Shannon divergence on dreams where both pick the same class.

    Minimising it moves dreams to where the student still agrees with the teacher on the class but
    not on the distribution: the knowledge the student has not absorbed yet (DeepInversion's
    adaptive competition). Dreams where they already disagree are left alone, so the term does not
    push dreams off the teacher's class.
    """
    agree = (teacher_logits.argmax(dim=1) == student_logits.argmax(dim=1)).to(teacher_logits.dtype)  # (B,)
    return -_weighted_mean(agree * _js_divergence(teacher_logits, student_logits), weights)


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels of x (B, C, H, W): smooth dreams score low."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    return dh + dw


def l2_prior(x: Tensor) -> Tensor:
    """Mean over dreams of the L2 norm of each dream x_i (C, H, W): keeps dreams in the data's range."""
    return x.flatten(1).norm(dim=1).mean()


class BatchNormStatistics:
    """DeepInversion's regulariser: dreams' feature statistics should match each BN layer's running ones.

    For every BatchNorm layer l, with the batch mean mu_l and (biased) variance var_l of its input over
    all axes but the channel axis, the loss is sum_l ||mu_l - running_mean_l||_2 +
    ||var_l - running_var_l||_2. It is zero when the batch statistics equal the running ones. The
    statistics can be weighted per dream, so a client matches its statistics only on the dreams of
    the classes it knows (its running statistics describe those classes, not the others).

    Use as a context manager around the forward pass; `loss()` then returns the sum over layers.
    """

    def __init__(self, model: nn.Module, weights: Tensor | None = None) -> None:
        self.model = model
        self.weights = weights
        self._terms: list[Tensor] = []
        self._handles: list = []

    def __enter__(self) -> BatchNormStatistics:
        self._terms = []
        for module in self.model.modules():
            if (
                isinstance(module, _BN_TYPES)
                and module.track_running_stats
                and module.running_mean is not None
            ):
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def num_layers(self) -> int:
        return len(self._terms)

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        feat = inputs[0]  # (B, C, ...) at this layer
        b, c = feat.shape[0], feat.shape[1]
        per_dream = feat.reshape(b, c, -1)  # (B, C, S)
        if self.weights is None:
            w = torch.full((b,), 1.0 / b, dtype=feat.dtype, device=feat.device)
        else:
            total = self.weights.sum()
            if float(total) <= 0:
                self._terms.append(feat.sum() * 0.0)
                return
            w = (self.weights / total).to(feat.dtype)
        mean = torch.einsum("b,bc->c", w, per_dream.mean(dim=2))  # (C,)
        var = torch.einsum("b,bc->c", w, ((per_dream - mean[None, :, None]) ** 2).mean(dim=2))  # (C,)
        self._terms.append(
            torch.linalg.vector_norm(mean - module.running_mean)
            + torch.linalg.vector_norm(var - module.running_var)
        )

    def loss(self) -> Tensor:
        """Sum over BN layers of the statistics mismatch recorded during the last forward pass."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) and m.track_running_stats for m in model.modules())


@dataclass(frozen=True, slots=True)
class DreamLossTerms:
    """The weighted terms of one client's dream loss, as floats for logging."""

    entropy: float
    target: float
    batchnorm: float
    adversarial: float
    total: float


@contextmanager
def _eval_mode(*models: nn.Module | None) -> Iterator[None]:
    """Evaluate models in eval mode (BN normalises with running statistics) and restore their mode."""
    present = [m for m in models if m is not None]
    modes = [m.training for m in present]
    try:
        for m in present:
            m.eval()
        yield
    finally:
        for m, mode in zip(present, modes, strict=True):
            m.train(mode)


def client_dream_loss(
    model: nn.Module,
    x: Tensor,
    config: DreamConfig,
    *,
    targets: Tensor | None = None,
    weights: Tensor | None = None,
    student: nn.Module | None = None,
    use_adversarial: bool = False,
) -> tuple[Tensor, DreamLossTerms]:
    """One client's loss L_k(x) on dreams x (B, C, H, W); the model must already be in eval mode.

    Args:
        model: the client's model.
        x: dreams, (B, C, H, W), requires_grad if a gradient is wanted.
        config: loss weights.
        targets: (B,) target classes (class-conditional variant) or None.
        weights: (B,) how much this client speaks for each dream, or None for all equally.
        student: the server's student (for the adversarial term).
        use_adversarial: whether the adversarial term is active this round.
    Returns:
        The scalar loss and its terms.
    """
    bn = BatchNormStatistics(model, weights) if config.w_bn > 0 else None
    if bn is not None:
        with bn:
            logits = model(x)  # (B, K)
        bn_term = config.w_bn * bn.loss().to(logits.dtype)
    else:
        logits = model(x)
        bn_term = logits.sum() * 0.0
    ent = config.w_ent * entropy_loss(logits, weights) if config.w_ent > 0 else logits.sum() * 0.0
    tgt = (
        config.w_ce * target_loss(logits, targets, weights)
        if targets is not None and config.w_ce > 0
        else logits.sum() * 0.0
    )
    if use_adversarial and config.w_adv > 0:
        if student is None:
            raise ConfigError("the adversarial term needs the server's student model")
        adv = config.w_adv * adversarial_loss(logits, student(x), weights)
    else:
        adv = logits.sum() * 0.0
    total = ent + tgt + bn_term + adv
    terms = DreamLossTerms(
        entropy=float(ent.detach()),
        target=float(tgt.detach()),
        batchnorm=float(bn_term.detach()),
        adversarial=float(adv.detach()),
        total=float(total.detach()),
    )
    return total, terms


def client_dream_gradient(
    model: nn.Module,
    x: Tensor,
    config: DreamConfig,
    *,
    targets: Tensor | None = None,
    weights: Tensor | None = None,
    student: nn.Module | None = None,
    use_adversarial: bool = False,
) -> tuple[Tensor, DreamLossTerms]:
    """What a client computes on the dreams at one global step, before bounding it for release.

    With `config.local_steps == 1` this is grad_x L_k(x). With more, the client takes that many
    gradient steps of size `local_lr` on its own copy x_k (re-evaluating the loss at each new x_k)
    and returns the pseudo-gradient x - x_k, which points the same way as a gradient.

    Args:
        model, x, config, targets, weights, student, use_adversarial: as for `client_dream_loss`.
    Returns:
        (update (B, C, H, W), the loss terms at the first local step). x is not modified.
    """
    x0 = x.detach()
    x_local = x0.clone()
    first_terms: DreamLossTerms | None = None
    grad = torch.zeros_like(x0)
    with _eval_mode(model, student):
        for _ in range(config.local_steps):
            xk = x_local.clone().requires_grad_(True)
            loss, terms = client_dream_loss(
                model,
                xk,
                config,
                targets=targets,
                weights=weights,
                student=student,
                use_adversarial=use_adversarial,
            )
            if first_terms is None:
                first_terms = terms
            if loss.requires_grad:
                (grad,) = torch.autograd.grad(loss, xk)
            else:  # every term weighted to zero
                grad = torch.zeros_like(x0)
            if config.local_steps > 1:
                x_local = x_local - config.local_lr * grad
    assert first_terms is not None
    if config.local_steps == 1:
        return grad.detach(), first_terms
    return (x0 - x_local).detach(), first_terms


def prior_gradient(x: Tensor, *, w_tv: float, w_l2: float) -> Tensor:
    """grad_x of the server's priors w_tv * TV(x) + w_l2 * L2(x), shape (B, C, H, W)."""
    if w_tv == 0 and w_l2 == 0:
        return torch.zeros_like(x)
    xg = x.detach().clone().requires_grad_(True)
    loss = w_tv * total_variation(xg) + w_l2 * l2_prior(xg)
    (grad,) = torch.autograd.grad(loss, xg)
    return grad


def entropy_gradient(model: nn.Module, x: Tensor) -> Tensor:
    """grad_x of the mean prediction entropy of `model` on x (B, C, H, W), in eval mode."""
    xg = x.detach().clone().requires_grad_(True)
    with _eval_mode(model):
        loss = entropy_loss(model(xg))
    (grad,) = torch.autograd.grad(loss, xg)
    return grad


class DataSpaceOptimizer:
    """The server's optimiser over the dream pixels (Adam by default: "FedAdam on inputs").

    The server never sees a client's loss, only the aggregated update direction, so it feeds that
    direction in as the gradient of x.
    """

    def __init__(self, x: Tensor, config: DreamConfig) -> None:
        self.x = x.detach().clone().requires_grad_(True)
        if config.optimizer is DreamOptimizer.ADAM:
            self._opt: torch.optim.Optimizer = torch.optim.Adam([self.x], lr=config.lr, betas=config.betas)
        else:
            self._opt = torch.optim.SGD([self.x], lr=config.lr, momentum=config.betas[0])
        self.steps = 0

    def step(self, direction: Tensor) -> Tensor:
        """Move x against `direction` (B, C, H, W); returns the new x (a detached copy)."""
        if direction.shape != self.x.shape:
            raise ConfigError(f"direction has shape {tuple(direction.shape)}, dreams {tuple(self.x.shape)}")
        if not torch.isfinite(direction).all():
            raise ConfigError("the aggregated dream direction holds NaN or infinity")
        self.x.grad = direction.to(self.x.dtype).clone()
        self._opt.step()
        self.x.grad = None
        self.steps += 1
        return self.x.detach().clone()
