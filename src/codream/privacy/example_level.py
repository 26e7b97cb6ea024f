"""Example-level DP (cross-silo): each client trains with DP-SGD through Opacus, with its own accountant.

The unit of privacy is one training example of one client. Cross-entropy steps on private data go
through Opacus (`GradSampleModule` per-example gradients, `DPOptimizer` clipping and Gaussian noise)
on Poisson-sampled batches, and every such step is one event in the client's accountant. Everything the
client then releases (dream gradients, soft labels) is post-processing of a DP model, *except* what
reads private data directly: BatchNorm running statistics. So this mode refuses BatchNorm models
(build them with ``norm="group"``) and the dream loss must drop its BatchNorm term (``w_bn = 0``).

Poisson sampling is what DP-SGD's accounting amplifies by, so its coins must be secret: they come from
the operating system (`os_random`), never from the run seed. A seeded sampler (`sampling_seed`) and
seeded noise (`noise_seed`) exist for reproducible tests only; a trainer using either says so in
`not_private`, and the run's ledger records it.

Knowledge-distillation steps on dreams and aggregated soft labels read no private data: they run
through a separate, plain optimiser with the per-example hooks switched off, so they neither spend
budget nor touch the DP optimiser's state.

A fixed clip bound far below the typical per-example gradient norm shrinks every step, so a run of few
DP-SGD steps stays under-trained whatever its noise. `AdaptiveClipping` (Andrew et al. 2021) lets the
bound track a quantile of the per-example norms from a privately released clipped fraction.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import Tensor, nn

from ..distill import kd_loss
from ..exceptions import ConfigError
from .accountant import Accountant, PrivacyEvent, create_accountant
from .label_histogram import NoisyLabelHistogram, label_histogram_event, release_label_histogram
from .ledger import Granularity, LedgerRound, PrivacyLedger
from .os_random import os_bernoulli

__all__ = [
    "AdaptiveClipping",
    "DPSGDTrainer",
    "dp_trainer_factory",
    "check_example_level_model",
    "check_example_round",
    "record_example_round",
    "restore_example_accountants",
]

logger = logging.getLogger(__name__)


@contextmanager
def _quiet_hooks() -> Iterator[None]:
    # Opacus' backward hooks stay registered while disabled; torch warns that they fire on inputs that
    # need no gradient, which is expected here and says nothing about privacy.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def check_example_level_model(model: nn.Module) -> None:
    """Refuse a model example-level DP-SGD cannot train privately.

    Raises:
        ConfigError: for BatchNorm (its batch statistics mix examples, so per-example gradients do not
            exist, and its running statistics leak private data into what the client releases), naming
            the fix, or for any other module Opacus' validator rejects.
    """
    batchnorms = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batchnorms:
        shown = ", ".join(batchnorms[:3]) + (" ..." if len(batchnorms) > 3 else "")
        raise ConfigError(
            f"example-level DP cannot use BatchNorm (found {len(batchnorms)} layers: {shown}): its "
            "statistics mix examples and its running statistics read private data directly. Build the "
            'model with norm="group" (or norm="none") and set the dream loss weight w_bn = 0.'
        )
    # Opacus accepts InstanceNorm with running statistics, but those buffers are private data too.
    tracking = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats
    ]
    if tracking:
        raise ConfigError(
            f"example-level DP cannot use normalisation with running statistics ({', '.join(tracking[:3])}): "
            'they read private data directly. Use norm="group" (or track_running_stats=False).'
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("example-level DP cannot train this model: " + "; ".join(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class AdaptiveClipping:
    """Let DP-SGD's clip bound follow a quantile of the per-example gradient norms (Andrew et al. 2021).

    Each step also releases how many of the batch's examples the current bound left unclipped, with
    Gaussian noise; the bound then moves geometrically, C <- C exp(-learning_rate (b - target_quantile)),
    where b is that noisy count over the expected batch size. The count is centred (each example adds
    +1/2 or -1/2, the expected half-batch is added back publicly) so that one example changes it by at
    most 1/2: the gradient sum (noise z_grad C) and the count (noise count_noise_std) together are then one
    Gaussian mechanism of noise multiplier z, with z^-2 = z_grad^-2 + (2 count_noise_std)^-2, and the
    accountant records z.

    Attributes:
        target_quantile: fraction of examples the bound should leave unclipped (0.5: the median norm).
        learning_rate: step size of the geometric update (the paper's 0.2).
        count_noise_std: std of the count's noise; None: expected batch size / 20, as in the paper.
            It must exceed z / 2, and the closer it is, the more of the budget the count takes from the
            gradient.
    Raises:
        ConfigError: for a quantile outside (0, 1), or a non-positive learning rate or noise std.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float | None = None

    def __post_init__(self) -> None:
        if not (0 < self.target_quantile < 1):
            raise ConfigError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be finite and > 0, got {self.learning_rate}")
        if self.count_noise_std is not None and not (
            math.isfinite(self.count_noise_std) and self.count_noise_std > 0
        ):
            raise ConfigError(f"count_noise_std must be finite and > 0, got {self.count_noise_std}")

    def noise_std(self, expected_batch_size: int) -> float:
        """The count's noise std for a batch of `expected_batch_size` examples."""
        return self.count_noise_std if self.count_noise_std is not None else expected_batch_size / 20

    def gradient_noise_multiplier(self, noise_multiplier: float, expected_batch_size: int) -> float:
        """z_grad: the gradient's share of a combined noise multiplier z.

        Raises:
            ConfigError: when the count's noise alone would not be enough for z (std <= z / 2).
        """
        if noise_multiplier == 0:
            return 0.0
        sigma_b = self.noise_std(expected_batch_size)
        if not (2 * sigma_b > noise_multiplier):
            raise ConfigError(
                f"adaptive clipping needs count_noise_std > noise_multiplier / 2 = "
                f"{noise_multiplier / 2:.4g} (got {sigma_b:.4g}): with less noise on the count, no gradient "
                "noise reaches the total noise multiplier. Raise count_noise_std or the batch size."
            )
        return (noise_multiplier**-2 - (2 * sigma_b) ** -2) ** -0.5


class _AdaptiveClipDPOptimizer(DPOptimizer):
    """`DPOptimizer` whose noise multiplier is z_grad and which moves its clip bound after every step.

    Opacus' `AdaClipDPOptimizer` divides the count by the realised batch size (private under Poisson
    sampling) and adds an uncentred count, whose sensitivity 1 its noise split does not cover; this
    class divides by the expected batch size and centres the count.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, adaptive: AdaptiveClipping, **kwargs: Any
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.adaptive = adaptive
        self.count_noise_std = adaptive.noise_std(int(self.expected_batch_size))
        self.unclipped_fraction = math.nan  # the last released (noisy) estimate
        self._centred_count: Tensor | None = None

    def clip_and_accumulate(self) -> None:
        samples = self.grad_samples
        if len(samples[0]) == 0:
            self._centred_count = torch.zeros((), device=samples[0].device)
        else:
            per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in samples]
            norms = torch.stack(per_param, dim=1).norm(2, dim=1)
            self._centred_count = ((norms <= self.max_grad_norm).to(norms.dtype) - 0.5).sum()
        super().clip_and_accumulate()

    def add_noise(self) -> None:
        super().add_noise()
        assert self._centred_count is not None
        count = self._centred_count
        noise = torch.randn((), generator=self.generator, device=count.device) * self.count_noise_std
        self.unclipped_fraction = float(count + noise) / self.expected_batch_size + 0.5
        self._centred_count = None

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        self.unclipped_fraction = math.nan
        done = super().pre_step(closure)
        if done and math.isfinite(self.unclipped_fraction):  # set by this step's add_noise
            a = self.adaptive
            self.max_grad_norm *= math.exp(-a.learning_rate * (self.unclipped_fraction - a.target_quantile))
        return done


class DPSGDTrainer:
    """A `LocalTrainer` whose cross-entropy steps are DP-SGD (Opacus) and whose KD steps are plain SGD.

    Args:
        model: the client's model (GroupNorm or no normalisation); trained in place.
        x_train: (N, C, H, W) local inputs; y_train: (N,) labels.
        generator: the client's learning generator (the trainer interface's; DP-SGD's Poisson coins
            never come from it, since the run seed is no secret).
        noise_multiplier: DP-SGD noise std / max_grad_norm.
        max_grad_norm: per-example gradient clip norm.
        batch_size: expected Poisson batch size (sample rate q = batch_size / N).
        lr, momentum: DP-SGD optimiser settings.
        kd_lr, kd_momentum: the separate KD optimiser's settings (default: same lr, momentum 0.9).
        accountant: "prv" (default) or "rdp".
        delta: the delta `epsilon()` reports at.
        noise_seed: seed of the DP noise generator for reproducible tests; None keys it from the OS.
        sampling_seed: seed of a generator for the Poisson coins, for reproducible tests only; None
            (default) draws every coin from the OS. Either seed marks the trainer not private.
        adaptive_clipping: let the clip bound (starting at max_grad_norm) track a quantile of the
            per-example gradient norms; `noise_multiplier` is then the combined mechanism's z, which the
            accountant records, and the gradient gets the larger z_grad. None: a fixed bound.
        label_noise_multiplier: z of the one DP label histogram the client may release
            (`released_label_counts`, the only source of its class weights); None refuses to release
            anything derived from its labels.
        target_epsilon: the client's budget; the label histogram is refused past it.
    Raises:
        ConfigError: for a BatchNorm (or otherwise unsupported) model or invalid settings.
    """

    def __init__(
        self,
        model: nn.Module,
        x_train: Tensor,
        y_train: Tensor,
        generator: torch.Generator,
        *,
        noise_multiplier: float,
        max_grad_norm: float = 1.0,
        batch_size: int = 64,
        lr: float = 0.05,
        momentum: float = 0.0,
        kd_lr: float | None = None,
        kd_momentum: float = 0.9,
        accountant: str = "prv",
        delta: float = 1e-5,
        noise_seed: int | None = None,
        adaptive_clipping: AdaptiveClipping | None = None,
        sampling_seed: int | None = None,
        label_noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
    ) -> None:
        check_example_level_model(model)
        n = int(x_train.shape[0])
        if n == 0 or y_train.shape[0] != n:
            raise ConfigError(f"need matching, non-empty local data, got {n} and {y_train.shape[0]}")
        if not (1 <= batch_size <= n):
            raise ConfigError(f"batch_size must be in [1, {n}], got {batch_size}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm must be finite and > 0, got {max_grad_norm}")
        if not (0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        if label_noise_multiplier is not None and not (
            math.isfinite(label_noise_multiplier) and label_noise_multiplier > 0
        ):
            raise ConfigError(f"label_noise_multiplier must be finite and > 0, got {label_noise_multiplier}")
        if adaptive_clipping is not None and not isinstance(adaptive_clipping, AdaptiveClipping):
            raise ConfigError(f"adaptive_clipping must be an AdaptiveClipping, got {adaptive_clipping!r}")
        self.noise_multiplier = noise_multiplier  # what the accountant records
        self.label_noise_multiplier = label_noise_multiplier
        self.target_epsilon = target_epsilon
        self.adaptive_clipping = adaptive_clipping
        self.model = model
        self.x_train, self.y_train = x_train, y_train
        self.generator = generator
        self.batch_size = batch_size
        self.sample_rate = batch_size / n
        self.delta = delta
        self.accountant: Accountant = create_accountant(accountant)
        # The coins: from the OS, or (tests only) from a seeded generator that anyone with the seed replays.
        self.sampling_generator = (
            None if sampling_seed is None else torch.Generator().manual_seed(int(sampling_seed))
        )
        reasons = []
        if sampling_seed is not None:
            reasons.append("DP-SGD batches drawn from a seeded generator (sampling_seed, a test option)")
        if noise_seed is not None:
            reasons.append(
                "DP-SGD and label-histogram noise drawn from a seeded generator (noise_seed, a test option)"
            )
        self.not_private: tuple[str, ...] = tuple(reasons)
        self.noise_seed = noise_seed
        seed = noise_seed if noise_seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        # The noise is drawn where the parameters live (Opacus samples it on the gradient's device),
        # so the generator must be on that device too: a CPU generator cannot feed CUDA sampling.
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.noise_generator = torch.Generator(device=device).manual_seed(seed)
        # Hooks stay off except inside ce_step: dream gradients and KD must never leave per-example
        # gradients behind for the next DP step to pick up.
        self._gsm = GradSampleModule(model, loss_reduction="mean")
        self._gsm.disable_hooks()
        sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        dp_options: dict[str, Any] = dict(
            max_grad_norm=max_grad_norm,
            expected_batch_size=batch_size,
            loss_reduction="mean",
            generator=self.noise_generator,
        )
        self.dp_optimizer: DPOptimizer
        if adaptive_clipping is None:
            self.dp_optimizer = DPOptimizer(sgd, noise_multiplier=noise_multiplier, **dp_options)
        else:
            z_grad = adaptive_clipping.gradient_noise_multiplier(noise_multiplier, batch_size)
            self.dp_optimizer = _AdaptiveClipDPOptimizer(
                sgd, adaptive=adaptive_clipping, noise_multiplier=z_grad, **dp_options
            )
        self.dp_optimizer.attach_step_hook(self._account)
        self.kd_optimizer = torch.optim.SGD(
            model.parameters(), lr=kd_lr if kd_lr is not None else lr, momentum=kd_momentum
        )
        self.empty_batches = 0
        self.label_histogram: NoisyLabelHistogram | None = None

    @property
    def private(self) -> bool:
        """False when a seeded test option makes the sampling or the noise predictable."""
        return not self.not_private

    def _poisson_batch(self) -> Tensor:
        """Indices of this step's batch: each example in independently with probability q."""
        n = int(self.x_train.shape[0])
        if self.sampling_generator is not None:
            mask = torch.rand(n, generator=self.sampling_generator) < self.sample_rate
        else:
            mask = torch.from_numpy(os_bernoulli(n, self.sample_rate))
        return torch.nonzero(mask).flatten().to(self.x_train.device)

    @property
    def clip_bound(self) -> float:
        """The per-example clip bound the next DP-SGD step uses."""
        return float(self.dp_optimizer.max_grad_norm)

    def _account(self, optimizer: DPOptimizer) -> None:
        # The trainer's z, not the optimiser's: with adaptive clipping the gradient carries z_grad > z and
        # the released count the rest, and only together are they the mechanism of multiplier z.
        if self.noise_multiplier > 0:
            self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        else:
            logger.warning("DP-SGD step with noise multiplier 0: no privacy guarantee")

    def _clear_grads(self) -> None:
        for p in self.model.parameters():
            p.grad = None
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    setattr(p, attr, None)

    def ce_step(self) -> float:
        """One DP-SGD step on a Poisson-sampled batch (each example in with probability q)."""
        self.model.train()
        self.dp_optimizer.zero_grad(set_to_none=True)
        self._clear_grads()
        chosen = self._poisson_batch()
        if chosen.numel() == 0:
            # An empty Poisson batch is still a step: no per-example gradients (not one zero example,
            # which adaptive clipping would count), then noise only.
            self.empty_batches += 1
            for p in self.model.parameters():
                if p.requires_grad:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            self.dp_optimizer.step()
            self._clear_grads()
            return float("nan")
        self._gsm.enable_hooks()
        try:
            loss = F.cross_entropy(self._gsm(self.x_train[chosen]), self.y_train[chosen])
            with _quiet_hooks():
                loss.backward()
        finally:
            self._gsm.disable_hooks()
        self.dp_optimizer.step()
        self._clear_grads()
        return float(loss.detach())

    def kd_step(self, x: Tensor, y_soft: Tensor, temperature: float) -> float:
        """One plain SGD step of KD on dreams: no noise, no accounting, the DP optimiser untouched."""
        self.model.train()
        self._clear_grads()
        loss = kd_loss(self.model(x), y_soft, temperature)
        with _quiet_hooks():
            loss.backward()
        self.kd_optimizer.step()
        self._clear_grads()
        return float(loss.detach())

    def release_label_histogram(
        self, num_classes: int, *, noise_multiplier: float, target_epsilon: float | None = None
    ) -> NoisyLabelHistogram:
        """This client's label counts, released once per run through a charged Gaussian mechanism.

        The first call charges this trainer's accountant (refusing past `target_epsilon`) and releases;
        every later call returns the same release at no cost, so the class weights derived from it can
        be used every round. Its state travels with `state_dict`, so a resume does not release again.

        Raises:
            PrivacyBudgetExceeded: the first release would exceed the target (nothing is charged).
            ConfigError: a later call asks for another noise multiplier or number of classes.
        """
        if self.label_histogram is not None:
            h = self.label_histogram
            if (h.noise_multiplier, len(h.counts)) != (float(noise_multiplier), num_classes):
                raise ConfigError(
                    f"the label histogram was released once, with noise multiplier {h.noise_multiplier:g} "
                    f"over {len(h.counts)} classes; it is not released again with other settings"
                )
            return h
        self.label_histogram = release_label_histogram(
            self.y_train.detach().cpu().numpy(),
            num_classes=num_classes,
            noise_multiplier=noise_multiplier,
            accountant=self.accountant,
            delta=self.delta,
            target_epsilon=target_epsilon,
            noise_seed=self.noise_seed,  # None (private) unless the trainer is a seeded test one
        )
        return self.label_histogram

    def released_label_counts(self, num_classes: int) -> np.ndarray:
        """(K,) the label counts this client may derive released values from: the DP histogram's.

        The conditional method reads its class weights (and so every round's scaling of dream
        gradients and soft labels) from here; the first call charges the histogram, later ones reuse it.

        Raises:
            ConfigError: no `label_noise_multiplier` was given, so nothing derived from labels may leave.
            PrivacyBudgetExceeded: the histogram would exceed the client's target.
        """
        if self.label_noise_multiplier is None:
            raise ConfigError(
                "example-level DP releases label statistics only through the charged DP label histogram; "
                "give the DP-SGD trainer a label_noise_multiplier (and plan its event into the budget), "
                "or use a method that releases no class weights"
            )
        h = self.release_label_histogram(
            num_classes, noise_multiplier=self.label_noise_multiplier, target_epsilon=self.target_epsilon
        )
        return np.asarray(h.counts, dtype=np.float64)

    def epsilon(self, *, delta: float | None = None) -> float:
        """Epsilon this client has spent so far."""
        return self.accountant.get_epsilon(delta=self.delta if delta is None else delta)

    def epsilon_after(self, steps: int, *, delta: float | None = None) -> float:
        """Epsilon after `steps` more DP-SGD steps (nothing is recorded).

        With a `label_noise_multiplier` whose histogram is not released yet, it counts that release too:
        the conditional method makes it at the start of the first round.
        """
        events = []
        if steps > 0:
            events.append(
                PrivacyEvent(
                    noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=steps
                )
            )
        if self.label_noise_multiplier is not None and self.label_histogram is None:
            events.append(label_histogram_event(self.label_noise_multiplier))
        return self.accountant.epsilon_with(events, delta=self.delta if delta is None else delta)

    def state_dict(self) -> dict:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "dp_optimizer": copy.deepcopy(self.dp_optimizer.original_optimizer.state_dict()),
            "kd_optimizer": copy.deepcopy(self.kd_optimizer.state_dict()),
            "accountant": self.accountant.state_dict(),
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "sampling_generator": (
                None if self.sampling_generator is None else self.sampling_generator.get_state()
            ),
            "empty_batches": self.empty_batches,
            "clip_bound": self.clip_bound,
            "label_histogram": None if self.label_histogram is None else self.label_histogram.to_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.dp_optimizer.original_optimizer.load_state_dict(copy.deepcopy(state["dp_optimizer"]))
        self.kd_optimizer.load_state_dict(copy.deepcopy(state["kd_optimizer"]))
        self.accountant.load_state_dict(state["accountant"])
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])
        if self.sampling_generator is not None and state.get("sampling_generator") is not None:
            self.sampling_generator.set_state(state["sampling_generator"])
        self.empty_batches = int(state["empty_batches"])
        if "clip_bound" in state:  # absent from states saved before adaptive clipping existed
            self.dp_optimizer.max_grad_norm = float(state["clip_bound"])
        saved = state.get("label_histogram")
        self.label_histogram = None if saved is None else NoisyLabelHistogram.from_dict(saved)


def dp_trainer_factory(
    **options: Any,
) -> Callable[[nn.Module, Tensor, Tensor, torch.Generator], DPSGDTrainer]:
    """A `TrainerFactory` building a `DPSGDTrainer` with `options` (noise_multiplier, batch_size, ...).

    Raises:
        ConfigError: at once when `noise_multiplier` is missing, rather than when the first client is built.
    """
    if "noise_multiplier" not in options:
        raise ConfigError(
            "example-level DP needs a noise_multiplier (see `codream privacy plan --granularity example`)"
        )

    def factory(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator) -> DPSGDTrainer:
        return DPSGDTrainer(model, x, y, generator, **options)

    return factory


def check_example_round(
    ledger: PrivacyLedger, trainers: Mapping[int, DPSGDTrainer], *, steps: int, round_index: int
) -> float:
    """Refuse a round in which each client's `steps` more DP-SGD steps would push the maximum over target.

    Returns:
        the largest epsilon any client would have after the round.
    Raises:
        PrivacyBudgetExceeded: when that exceeds the ledger's target (and overspending is not allowed).
    """
    if ledger.granularity is not Granularity.EXAMPLE:
        raise ConfigError("example-level budgets need an example-level ledger")
    worst = max((t.epsilon_after(steps, delta=ledger.delta) for t in trainers.values()), default=0.0)
    return ledger.check_epsilon(worst, round_index=round_index)


def record_example_round(
    ledger: PrivacyLedger,
    trainers: Mapping[int, DPSGDTrainer],
    *,
    round_index: int,
    details: Mapping[str, float] | None = None,
) -> LedgerRound:
    """Record every client's epsilon after a round; the run's epsilon is their maximum.

    A trainer running a seeded test option marks the ledger not private, naming the client.
    """
    for cid, t in trainers.items():
        for reason in t.not_private:
            ledger.mark_not_private(f"client {cid}: {reason}")
    return ledger.record_client_epsilons(
        round_index=round_index,
        client_epsilons={cid: t.epsilon(delta=ledger.delta) for cid, t in trainers.items()},
        details=details,
        client_accountants={cid: t.accountant.state_dict() for cid, t in trainers.items()},
    )


def restore_example_accountants(ledger: PrivacyLedger, trainers: Mapping[int, DPSGDTrainer]) -> list[int]:
    """Resume: give each trainer the accountant the ledger last recorded for it, where that is longer.

    A trainer restored from a checkpoint has forgotten the DP-SGD steps of any round recorded after the
    checkpoint; those steps shaped releases that reached the server, so they stay accounted.

    Returns:
        the clients whose accountant was extended.
    Raises:
        ConfigError: when a recorded history does not extend the trainer's own (they disagree).
    """
    latest: dict[int, Mapping[str, Any]] = {}
    for r in ledger.rounds:
        latest.update(r.client_accountants)
    extended = []
    for cid, trainer in trainers.items():
        if cid not in latest:
            continue
        recorded = create_accountant(trainer.accountant.mechanism())
        recorded.load_state_dict(latest[cid])
        own, theirs = trainer.accountant.history, recorded.history
        if _extends(theirs, own) and recorded.total_steps > trainer.accountant.total_steps:
            trainer.accountant.load_state_dict(latest[cid])
            extended.append(cid)
        elif not _extends(own, theirs):
            raise ConfigError(
                f"client {cid}: the ledger's accountant history and the checkpoint's disagree; refusing to "
                "resume rather than lose DP-SGD steps"
            )
    return extended


def _extends(longer: tuple[PrivacyEvent, ...], shorter: tuple[PrivacyEvent, ...]) -> bool:
    """Whether the merged history `longer` starts with everything in `shorter`."""
    if not shorter:
        return True
    if len(longer) < len(shorter) or longer[: len(shorter) - 1] != shorter[:-1]:
        return False
    a, b = longer[len(shorter) - 1], shorter[-1]
    same = (a.noise_multiplier, a.sample_rate, a.mechanism) == (
        b.noise_multiplier,
        b.sample_rate,
        b.mechanism,
    )
    return same and a.steps >= b.steps
