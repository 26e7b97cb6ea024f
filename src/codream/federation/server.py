"""The server's side of a CoDream round: it owns the dreams and only ever sees sums.

The server draws the dreams, plans the round's releases (`specs`), turns each aggregated sum into a
data-space update (adding its own data-independent priors and, in the adaptive variant, its student's
entropy gradient), turns the summed soft labels into KD targets, and optionally distils a student of its
own on the same dreams. See protocols/codream.md.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..aggregation import AggregateResult, VectorSpec
from ..distill import DreamBuffer, augment_dreams, kd_loss, soft_labels_to_target_logits
from ..dreams import DataSpaceOptimizer, entropy_gradient, init_dreams, prior_gradient
from ..exceptions import ConfigError
from ..models import DreamGenerator
from .config import DreamSource, FederationConfig, LabelWeighting, Method, SoftLabelKind

__all__ = ["CLASS_WEIGHTS_FILE", "ClassWeightRelease", "DreamBank", "ServerRole", "StudentTrainer"]

#: The server's copy of the run's one class-weight release, in its run or out directory.
CLASS_WEIGHTS_FILE = "class_weights.json"

log = logging.getLogger(__name__)

# Weighted means divide by the summed class weight; a class no survivor holds gets at least this.
_EPS = 1e-8


@dataclass(frozen=True)
class ClassWeightRelease:
    """The run's one release of the class weights: their sum over a fixed set of clients.

    Attributes:
        round_index: the round it was released in.
        total: (K,) the summed class weights (noised under secure+dp).
        count: how many clients contributed.
        contributors: who they were (the survivors of that release; public, as every round's).
    """

    round_index: int
    total: np.ndarray
    count: int
    contributors: tuple[int, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassWeightRelease:
        try:
            return cls(
                round_index=int(d["round_index"]),
                total=np.asarray(d["total"], dtype=np.float64),
                count=int(d["count"]),
                contributors=tuple(int(c) for c in d["contributors"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"malformed class-weight release: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "round_index": self.round_index,
            "total": [float(v) for v in self.total],
            "count": self.count,
            "contributors": list(self.contributors),
        }

    def write(self, path: Path) -> None:
        """Write it to `path` atomically (a temporary file, synced, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> ClassWeightRelease:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as err:
            raise ConfigError(f"{path} is not a class-weight release: {err}") from None


class StudentTrainer:
    """The server's optional model: learns only from dreams and their aggregated labels (no data).

    Released dreams and labels are all it reads, so it is post-processing and costs no privacy; it is
    the federation's one global model. Its BatchNorm running statistics follow the dreams: they are its
    only data (and match the clients' statistics by construction of the BatchNorm dream term), and
    left at their initial values they would normalise test inputs with mean 0 and variance 1.
    """

    def __init__(self, model: nn.Module, config: FederationConfig, generator: torch.Generator) -> None:
        dc = config.distill
        self.model = model
        self.config = config
        self.generator = generator
        self.buffer = DreamBuffer(dc.buffer_size)
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=dc.student_lr, momentum=dc.momentum, weight_decay=dc.weight_decay
        )

    def distill(self) -> float:
        """`student_kd_steps` (default `kd_steps`) KD steps on the buffer; returns the mean loss."""
        dc = self.config.distill
        steps = dc.kd_steps if dc.student_kd_steps is None else dc.student_kd_steps
        temperature = dc.temperature if dc.student_temperature is None else dc.student_temperature
        losses = []
        self.model.train()
        for _ in range(steps if len(self.buffer) else 0):
            xb, yb = self.buffer.sample(dc.batch_size, self.generator)
            xb = augment_dreams(xb, dc.augment, dc.augment_shift, self.generator)
            self.optimizer.zero_grad(set_to_none=True)
            loss = kd_loss(self.model(xb), yb, temperature)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
            self.optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else 0.0

    def state_dict(self) -> dict:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "buffer": self.buffer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.buffer.load_state_dict(state["buffer"])
        self.generator.set_state(state["generator"])


class DreamBank:
    """The last `capacity` released dreams with their target logits, for clients that missed their rounds.

    In a cohort federation a client takes part in few rounds; the bank lets it distil what the
    federation released before it was sampled. Entries are whole rounds in release order, kept on the
    CPU; beyond capacity the oldest dreams leave first (a round may lose its oldest dreams). Per
    client it remembers the last round handed over, so no entry reaches a client twice.

    Args:
        capacity: the most dreams (samples, not rounds) kept, >= 1.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ConfigError(f"bank capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.entries: list[tuple[int, Tensor, Tensor]] = []  # (round, x (B, C, H, W), y (B, K))
        self.last_seen: dict[int, int] = {}  # client id -> last round it acquired
        self.dropped = 0

    def __len__(self) -> int:
        return sum(int(x.shape[0]) for _, x, _ in self.entries)

    def add(self, round_index: int, x: Tensor, y: Tensor) -> None:
        """Bank round `round_index`'s dreams x (B, C, H, W) with target logits y (B, K)."""
        if self.entries and round_index <= self.entries[-1][0]:
            raise ConfigError(f"round {round_index} banked after round {self.entries[-1][0]}")
        if x.shape[0] != y.shape[0]:
            raise ConfigError(f"{x.shape[0]} dreams but {y.shape[0]} labels")
        self.entries.append((round_index, x.detach().cpu().clone(), y.detach().cpu().clone()))
        excess = len(self) - self.capacity
        while excess > 0:
            r, xo, yo = self.entries[0]
            cut = min(excess, int(xo.shape[0]))
            if cut == xo.shape[0]:
                self.entries.pop(0)
            else:
                self.entries[0] = (r, xo[cut:], yo[cut:])
            self.dropped += cut
            excess -= cut

    def take(self, client_id: int) -> list[tuple[Tensor, Tensor]]:
        """The entries `client_id` has not acquired yet, oldest first; marks them as acquired."""
        last = self.last_seen.get(client_id, -1)
        new = [(x, y) for r, x, y in self.entries if r > last]
        if self.entries:
            self.last_seen[client_id] = self.entries[-1][0]
        return new

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "entries": [(r, x.clone(), y.clone()) for r, x, y in self.entries],
            "last_seen": dict(self.last_seen),
            "dropped": self.dropped,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ConfigError(f"bank capacity {state['capacity']} does not match {self.capacity}")
        self.entries = [(int(r), x.clone(), y.clone()) for r, x, y in state["entries"]]
        self.last_seen = {int(k): int(v) for k, v in state["last_seen"].items()}
        self.dropped = int(state["dropped"])


class ServerRole:
    """The server: dreams, their data-space optimiser, the round's plan and the optional student.

    Args:
        config: the federation's configuration.
        input_shape: (C, H, W) of the data.
        num_classes: K.
        generator: seeds dream initialisation and target assignment.
        student: the optional server model (see `StudentTrainer`).
    """

    def __init__(
        self,
        config: FederationConfig,
        input_shape: tuple[int, int, int],
        num_classes: int,
        generator: torch.Generator,
        student: StudentTrainer | None = None,
    ) -> None:
        self.config = config
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.generator = generator
        self.student = student
        self.round_index = -1
        self._opt: DataSpaceOptimizer | None = None
        self.x: Tensor | None = None  # (B, C, H, W)
        self.targets: Tensor | None = None  # (B,)
        # The class weights are a time-invariant statistic of each client: released once per run,
        # over one fixed set (the first round's survivors), kept here and never asked for again.
        self.class_weight_release: ClassWeightRelease | None = None
        self.release_path: Path | None = None  # where it is kept the moment it arrives (`persist_release`)
        self.class_weight_mean: np.ndarray | None = None  # (K,) the release's mean
        self.soft_labels: Tensor | None = None  # (B, K) aggregated
        self.target_logits: Tensor | None = None  # (B, K) what clients distil toward
        self.dream_steps = 0
        self._weight_floor = _EPS
        self.bank = DreamBank(config.distill.bank_size) if config.distill.bank_size > 0 else None
        dc = config.dream
        self.dream_generator: DreamGenerator | None = None
        self._g_opt: torch.optim.Optimizer | None = None
        self._z: Tensor | None = None  # (B, latent_dim) latents of the current dreams
        self._x_graph: Tensor | None = None  # G(z, y) with its graph, for the next backward
        self._gen_classes: Tensor | None = None  # (B,) the classes y of the current dreams
        if dc.source is DreamSource.GENERATOR:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.dream_generator = DreamGenerator(
                    self.input_shape, num_classes, latent_dim=dc.latent_dim, width=dc.generator_width
                )
            self._g_opt = torch.optim.Adam(
                self.dream_generator.parameters(), lr=dc.generator_lr, betas=dc.betas
            )

    @property
    def conditional(self) -> bool:
        return self.config.method is Method.CONDITIONAL

    @property
    def needs_class_weights(self) -> bool:
        """Whether this round's plan asks for the class weights: conditional, and not released yet."""
        return self.conditional and self.class_weight_release is None

    def specs(self) -> list[VectorSpec]:
        """The round's plan: every vector each client will release, in order, with its L2 bound.

        The class weights are planned only until they are released, once per run.
        """
        dc, kc = self.config.dream, self.config.distill
        b, k = dc.batch_size, self.num_classes
        dream_len = b * math.prod(self.input_shape)
        specs = []
        if self.needs_class_weights:
            specs.append(VectorSpec.class_weights(k))
        specs += [VectorSpec.dream_gradient(s, dream_len, dc.clip_norm) for s in range(dc.global_steps)]
        label_bound = math.sqrt(b) if kc.soft_labels is SoftLabelKind.PROBABILITIES else kc.logit_clip_norm
        specs.append(VectorSpec.soft_labels(b * k, label_bound))
        return specs

    def begin_round(self, round_index: int) -> Tensor:
        """Fresh dreams (B, C, H, W) for the round: x ~ N(0, I) with a fresh data-space optimiser, or
        G(z, y) for fresh latents (classes drawn at random until `receive_class_weights` assigns them)."""
        dc = self.config.dream
        self.round_index = round_index
        self.targets = None
        self.soft_labels = None
        self.target_logits = None
        if self.dream_generator is not None:
            self._generate(torch.randint(self.num_classes, (dc.batch_size,), generator=self.generator))
            assert self.x is not None
            return self.x
        x = init_dreams(dc.batch_size, self.input_shape, generator=self.generator, std=dc.init_std)
        self._opt = DataSpaceOptimizer(x, dc)
        self.x = self._opt.x.detach().clone()
        return self.x

    def _generate(self, classes: Tensor) -> None:
        """x = G(z, classes) for fresh latents z (B, latent_dim), keeping the graph for the next step."""
        assert self.dream_generator is not None
        b = classes.shape[0]
        self._gen_classes = classes.long()
        self._z = torch.randn((b, self.config.dream.latent_dim), generator=self.generator)
        self.dream_generator.train()
        self._x_graph = self.dream_generator(self._z, self._gen_classes)  # (B, C, H, W)
        self.x = self._x_graph.detach().clone()

    def new_dreams(self, round_index: int) -> Tensor:
        """Alias of `begin_round`: fresh dreams (B, C, H, W) for round `round_index`."""
        return self.begin_round(round_index)

    def receive_class_weights(self, result: AggregateResult) -> None:
        """Keep the run's one release of the class weights: their sum over its contributors.

        Each client's class weights never change, so a sum over another set of clients would let
        the server solve for every client's vector by differencing; they are released once, over
        the first round's survivors, and every later round uses this release (`assign_targets`).

        Raises:
            ConfigError: no contributor, or the weights were already released this run.
        """
        if self.class_weight_release is not None:
            raise ConfigError(
                "the class weights are released once per run; they were released in round "
                f"{self.class_weight_release.round_index + 1}"
            )
        if result.count == 0:
            raise ConfigError("no client contributed class weights")
        release = ClassWeightRelease(
            round_index=self.round_index,
            total=np.asarray(result.total, dtype=np.float64).copy(),
            count=int(result.count),
            contributors=tuple(int(c) for c in result.contributors),
        )
        self._keep_class_weights(release)
        if self.release_path is not None:  # before the round goes on: a crash must not ask again
            release.write(self.release_path)

    def persist_release(self, path: str | Path) -> None:
        """Keep the class-weight release in `path` the moment it arrives, and adopt one already there.

        A checkpoint is written only once a round finishes; a run stopped after the release but
        before that (and resumed, or rerun in the same run directory) would otherwise ask again.
        """
        self.release_path = Path(path)
        if self.class_weight_release is None and self.release_path.exists():
            self._keep_class_weights(ClassWeightRelease.read(self.release_path))

    def _keep_class_weights(self, release: ClassWeightRelease) -> None:
        self.class_weight_release = release
        self.class_weight_mean = release.total / release.count  # (K,)
        # A class counts as held when a client holds it at (half) the minimum weight; the same
        # value floors the per-dream normaliser, so noise on the sum (DP) cannot blow a dream up.
        self._weight_floor = max(0.5 * self.config.dream.min_class_weight, _EPS) / release.count

    def assign_targets(self) -> Tensor:
        """Assign each dream a target class, balanced over the classes some client holds; (B,).

        The classes held are those of the run's one class-weight release. With a dream generator the
        round's dreams are redrawn for these classes, in place in the tensor `begin_round` returned.

        Raises:
            ConfigError: before the class weights were released, or no class is held.
        """
        if self.class_weight_mean is None:
            raise ConfigError("targets need the class weights, released once in the run's first round")
        mean = self.class_weight_mean
        eligible = np.flatnonzero(mean >= self._weight_floor)
        if eligible.size == 0:
            raise ConfigError("no client holds any class with a positive weight")
        b = self.config.dream.batch_size
        # A random order of the eligible classes, cycled over the batch: each class gets B // |eligible|
        # or one more dreams, and which classes get the extra one changes from round to round.
        order = torch.as_tensor(eligible)[torch.randperm(eligible.size, generator=self.generator)]
        self.targets = order[torch.arange(b) % eligible.size].long()
        if self.dream_generator is not None:
            # The round's first dreams, now of their target classes, written into the tensor
            # `begin_round` returned: an engine holding that tensor sends the right dreams.
            first = self.x
            self._generate(self.targets)
            if first is not None and first.shape == self.x.shape:
                first.copy_(self.x)
                self.x = first
        return self.targets

    def _per_dream_weight(self) -> Tensor:
        """Mean client weight of each dream's target class, (B,), floored at one minimal holder."""
        assert self.targets is not None and self.class_weight_mean is not None
        w = torch.as_tensor(self.class_weight_mean, dtype=torch.float32)[self.targets]
        return w.clamp_min(self._weight_floor)

    def apply_dream_step(self, result: AggregateResult) -> Tensor:
        """One step from the summed client directions; returns the new dreams (B, C, H, W).

        The direction is the mean over contributors (a per-dream weighted mean in the conditional
        method), plus the gradient of the server's priors, minus lambda * grad_x H(student(x)) in the
        adaptive variant. Pixels: one data-space optimiser step on x. Generator: the direction is
        backpropagated through x = G(z, y) (its gradient on G's weights is the sum of the clients'
        input gradients pulled back through G, divided by the count), one Adam step on G, and fresh
        latents give the next dreams.
        """
        if (self._opt is None and self.dream_generator is None) or self.x is None:
            raise ConfigError("apply_dream_step before begin_round")
        if self.conditional and self.targets is None:
            raise ConfigError("the conditional method needs class weights before the first dream step")
        dc = self.config.dream
        x = self.x
        if result.count == 0:
            log.warning("round %d: no client survived a dream step; the dreams stay", self.round_index)
            return x
        direction = torch.as_tensor(result.total / result.count, dtype=torch.float32).reshape(x.shape)
        if self.conditional:
            direction = direction / self._per_dream_weight()[:, None, None, None]
        direction = direction + prior_gradient(x, w_tv=dc.w_tv, w_l2=dc.w_l2)
        if dc.adaptive_lambda > 0 and self.student is not None:
            dev = next(self.student.model.parameters()).device
            direction = direction - dc.adaptive_lambda * entropy_gradient(self.student.model, x.to(dev)).cpu()
        if self.dream_generator is not None:
            self._generator_step(direction)
        else:
            assert self._opt is not None
            self.x = self._opt.step(direction)
        self.dream_steps += 1
        return self.x

    def _generator_step(self, direction: Tensor) -> None:
        """Backpropagate `direction` (B, C, H, W) through the current G(z, y), step G, draw fresh dreams."""
        if self._x_graph is None or self._gen_classes is None:
            raise ConfigError("a generator step needs the dreams of begin_round (not a restored checkpoint)")
        assert self.dream_generator is not None and self._g_opt is not None
        if not torch.isfinite(direction).all():
            raise ConfigError("the aggregated dream direction holds NaN or infinity")
        self._g_opt.zero_grad(set_to_none=True)
        self._x_graph.backward(direction.to(self._x_graph.dtype))
        self._g_opt.step()
        self._generate(self._gen_classes)

    def receive_soft_labels(self, result: AggregateResult) -> tuple[Tensor, Tensor]:
        """Turn the summed soft labels into the round's labels (B, K) and KD target logits (B, K)."""
        if result.count == 0:
            raise ConfigError("no client contributed soft labels")
        b, k = self.config.dream.batch_size, self.num_classes
        y = torch.as_tensor(result.total / result.count, dtype=torch.float32).reshape(b, k)
        dc = self.config.distill
        if self.conditional and dc.label_weighting is LabelWeighting.CLASS:
            assert self.class_weight_mean is not None
            w = torch.as_tensor(self.class_weight_mean, dtype=torch.float32)  # (K,)
            # Column c over the mean weight for class c: the class-weighted ensemble. A class no
            # survivor holds (at half the minimum weight) gets probability 0, not noise over a tiny number.
            y = torch.where(w >= self._weight_floor, y / w.clamp_min(self._weight_floor)[None, :], 0.0)
        elif self.conditional:
            w = self._per_dream_weight()  # (B,) mean weight of each dream's class in the run's release
            if dc.soft_labels is SoftLabelKind.PROBABILITIES:
                # Each client's row is a p + (1 - a) e_t (sums to 1): take out the target-class mass
                # the weights predict. Exact when this round's contributors are the release's; over
                # another cohort the target column is off by the difference of their mean weights.
                assert self.targets is not None
                target = F.one_hot(self.targets, k).to(y.dtype)
                y = y - (1.0 - w)[:, None] * y.sum(dim=1, keepdim=True) * target
            y = y / w[:, None]
        kind = dc.soft_labels
        if kind is SoftLabelKind.PROBABILITIES:
            y = y.clamp_min(0)
            y = y / y.sum(dim=1, keepdim=True).clamp_min(_EPS)
        self.soft_labels = y
        self.target_logits = soft_labels_to_target_logits(y, kind, dc.label_temperature)
        return y, self.target_logits

    def label_probabilities(self) -> Tensor:
        """The aggregated soft labels as probabilities (B, K), whatever kind travelled."""
        if self.soft_labels is None:
            raise ConfigError("no soft labels yet this round")
        if self.config.distill.soft_labels is SoftLabelKind.PROBABILITIES:
            return self.soft_labels
        return F.softmax(self.soft_labels, dim=1)

    def distill_student(self) -> float:
        """The student keeps the round's dreams and distils on its buffer; 0.0 without a student."""
        if self.student is None:
            return 0.0
        if self.x is None or self.target_logits is None:
            raise ConfigError("distill_student before the round's soft labels")
        dev = next(self.student.model.parameters()).device
        self.student.buffer.add(self.x.to(dev), self.target_logits.to(dev))
        return self.student.distill()

    def bank_round(self) -> None:
        """Put the round's released dreams and target logits in the bank (no-op without a bank)."""
        if self.bank is None:
            return
        if self.x is None or self.target_logits is None:
            raise ConfigError("bank_round before the round's soft labels")
        self.bank.add(self.round_index, self.x, self.target_logits)

    def state_dict(self) -> dict:
        return {
            "bank": None if self.bank is None else self.bank.state_dict(),
            "generator": self.generator.get_state(),
            "round_index": self.round_index,
            "dream_steps": self.dream_steps,
            "student": None if self.student is None else self.student.state_dict(),
            "x": self.x,
            "targets": self.targets,
            "class_weight_release": None
            if self.class_weight_release is None
            else self.class_weight_release.to_dict(),
            "soft_labels": self.soft_labels,
            "target_logits": self.target_logits,
            "dream_generator": None
            if self.dream_generator is None
            else {
                "model": {k: v.clone() for k, v in self.dream_generator.state_dict().items()},
                "optimizer": copy.deepcopy(self._g_opt.state_dict()),
            },
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["student"] is None) != (self.student is None):
            raise ConfigError("checkpoint and configuration disagree on whether the server has a student")
        if (state.get("bank") is None) != (self.bank is None):
            raise ConfigError("checkpoint and configuration disagree on whether the server has a dream bank")
        if (state.get("dream_generator") is None) != (self.dream_generator is None):
            raise ConfigError(
                "checkpoint and configuration disagree on whether the server has a dream generator"
            )
        self.generator.set_state(state["generator"])
        self.round_index = int(state["round_index"])
        self.dream_steps = int(state["dream_steps"])
        if self.student is not None:
            self.student.load_state_dict(state["student"])
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
        self.x, self.targets = state["x"], state["targets"]
        self.class_weight_release, self.class_weight_mean, self._weight_floor = None, None, _EPS
        kept = state.get("class_weight_release")
        if kept is not None:  # released in an earlier round: never asked for again
            self._keep_class_weights(ClassWeightRelease.from_dict(kept))
        elif self.conditional and state.get("class_weight_mean") is not None:
            raise ConfigError(
                "this checkpoint predates the once-per-run class-weight release (its server asked for "
                "the class weights every round); start the run again"
            )
        self.soft_labels, self.target_logits = state["soft_labels"], state["target_logits"]
        self._opt = None
        if self.dream_generator is not None:
            assert self._g_opt is not None
            self.dream_generator.load_state_dict(state["dream_generator"]["model"])
            self._g_opt.load_state_dict(copy.deepcopy(state["dream_generator"]["optimizer"]))
            self._x_graph = None
