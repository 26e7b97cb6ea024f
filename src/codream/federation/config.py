"""Configuration of a CoDream federation: dreams, distillation and the federation around them.

Every setting lives in a frozen dataclass that validates itself, so an invalid run fails at start-up with
a `ConfigError` naming the field, never half-way through a round. Defaults are sized for a CPU; the
paper's CIFAR-10 values are quoted in comments where ours differ.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from ..exceptions import ConfigError

__all__ = [
    "Contribution",
    "DistillConfig",
    "DreamConfig",
    "DreamOptimizer",
    "DreamSource",
    "FederationConfig",
    "DreamAugment",
    "KDBatchNorm",
    "LabelWeighting",
    "LocalLoss",
    "Method",
    "SoftLabelKind",
]


class Method(enum.Enum):
    """Which CoDream variant optimises the dreams.

    PAPER: every dream is free; each client's loss is entropy + BatchNorm statistics (+ adversarial),
        all clients weigh equally (Singh et al. 2024).
    CONDITIONAL: each dream gets a target class, balanced over the classes that some client holds; a
        client adds cross-entropy to the target and weighs its gradient, BatchNorm statistics and soft
        label on each dream by how well it knows that class (its local class frequency relative to its
        most frequent class). The per-class weights are summed through the seam too, so the server can
        turn the weighted sums into weighted means.
    """

    PAPER = "paper"
    CONDITIONAL = "conditional"


class DreamOptimizer(enum.Enum):
    """The server's optimiser in data space."""

    ADAM = "adam"
    SGD = "sgd"


class DreamSource(enum.Enum):
    """What the server optimises with the summed client gradients.

    PIXELS: a fresh dream batch every round, optimised directly in data space (the paper).
    GENERATOR: a conditional generator G(z, y) kept across rounds; every global step the clients
        return their input gradient on x = G(z, y), the server backpropagates the sum through G and
        draws fresh latents z, so dreams improve from round to round instead of restarting from noise.
    """

    PIXELS = "pixels"
    GENERATOR = "generator"


class Contribution(enum.Enum):
    """How a client bounds its dream gradient before release.

    NORMALIZE: scale to L2 norm `clip_norm` (every client counts the same, whatever its architecture's
        gradient scale; without this one model's gradient can be 5-30x the others' and dominate).
    CLIP: scale down only when longer than `clip_norm`.
    """

    NORMALIZE = "normalize"
    CLIP = "clip"


class SoftLabelKind(enum.Enum):
    """What clients release on the final dreams: softmax probabilities (paper, Eq. 5) or raw logits."""

    PROBABILITIES = "probabilities"
    LOGITS = "logits"


class LabelWeighting(enum.Enum):
    """How the conditional method weighs a client's soft label on a dream.

    TARGET: the whole row by the client's weight for the dream's target class.
    CLASS: each class column c by the client's weight for class c, so the server forms the
        class-weighted ensemble p(c) = sum_k w_k(c) p_k(c) / sum_k w_k(c) (rows then renormalised): a
        client speaks only about the classes it holds, whatever the dream's target. Still sum-only.
    """

    TARGET = "target"
    CLASS = "class"


class LocalLoss(enum.Enum):
    """The cross-entropy a client trains on its own (label-skewed) data.

    PLAIN: softmax over all K classes: pushes down every class the client lacks, overwriting what KD
        taught about them.
    RESTRICTED: FedRS (Li and Zhan 2021): the logits of classes absent from the client's data are
        scaled by `restrict_alpha` inside the loss (0: their logits get no gradient at all).
    ADJUSTED: logit adjustment for label skew (Menon et al. 2021; cf. FedLC): logits plus
        `logit_adjust_tau` * log prior_k(c); absent classes (prior 0) drop out of the softmax.
    """

    PLAIN = "plain"
    RESTRICTED = "restricted"
    ADJUSTED = "adjusted"


class DreamAugment(enum.Enum):
    """Label-preserving transforms of each KD minibatch of dreams (the dream keeps its soft label).

    NONE: dreams as released. SHIFT: each dream translated by up to `augment_shift` pixels (zero
    padding, which is the data mean in normalised space). SHIFT_FLIP: also mirrored left-right with
    probability 1/2 (for data where that preserves the class, such as Fashion-MNIST; not digits).
    """

    NONE = "none"
    SHIFT = "shift"
    SHIFT_FLIP = "shift_flip"


class KDBatchNorm(enum.Enum):
    """Which statistics BatchNorm layers normalise a KD batch of dreams with.

    DREAMS: the dream batch's own statistics; running statistics untouched.
    MIXED: the statistics of the dream batch concatenated with a batch of the client's own data; the
        running statistics follow the real half only (dreams never move them).
    """

    DREAMS = "dreams"
    MIXED = "mixed"


def _enum(cls, value, name: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{name} must be one of {[m.value for m in cls]}, got {value!r}") from None


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _positive_int(name: str, value: int, *, minimum: int = 1) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class DreamConfig:
    """How the dreams of one round are drawn and optimised.

    Attributes:
        batch_size: dreams per round, B (paper: 256).
        global_steps: server updates of the dreams per round; each one is one release per client
            (paper: 2000; far too many for a CPU).
        local_steps: gradient steps each client takes on its own copy of the dreams per global step;
            with more than one, the client releases the pseudo-gradient x - x_local.
        local_lr: step size of those local steps (only used when local_steps > 1).
        lr: the server's data-space learning rate (paper: 0.05).
        optimizer: "adam" (paper: "FedAdam on inputs") or "sgd".
        betas: Adam's betas; for SGD, betas[0] is the momentum.
        w_ent: weight of the mean prediction entropy.
        w_bn: weight of the BatchNorm-statistics regulariser (DeepInversion; paper: 10).
        w_ce: weight of cross-entropy to the dream's target class (conditional method only).
        w_adv: weight of the adversarial term against the server's student (0 disables it).
        adv_start_round: first round (0-based) in which the adversarial term is used; the student
            needs a few rounds of distillation before disagreeing with it means anything.
        w_tv: weight of the total-variation prior, applied by the server.
        w_l2: weight of the L2 prior, applied by the server.
        adaptive_lambda: adaptive-server variant: the server subtracts lambda * grad_x H(student(x)),
            steering dreams to where its student is unsure (needs a student; 0 disables).
        init_std: dreams start as N(0, init_std^2) in normalised input space.
        contribution: "normalize" or "clip", see `Contribution`.
        clip_norm: the L2 bound of one client's dream gradient over the whole batch; also the
            VectorSpec clip_norm (the DP sensitivity).
        min_class_weight: a client's weight for a class it holds below this fraction of its largest
            class is treated as zero (conditional method): a handful of samples is not knowledge.
        source: "pixels" (paper) or "generator", see `DreamSource`.
        generator_lr: Adam learning rate of the generator's weights (with `betas`).
        latent_dim, generator_width: size of the generator's latent and of its last hidden map.
    """

    batch_size: int = 64
    global_steps: int = 60
    local_steps: int = 1
    local_lr: float = 0.05
    lr: float = 0.1  # larger than the paper's 0.05 because we take ~30x fewer steps
    optimizer: DreamOptimizer | str = DreamOptimizer.ADAM
    betas: tuple[float, float] = (0.9, 0.999)
    w_ent: float = 1.0
    w_bn: float = 10.0
    w_ce: float = 3.0  # 1 -> 3 helped on Fashion-MNIST Dir(0.1), see benchmarks/results/federation-tuning.md
    w_adv: float = 0.0
    adv_start_round: int = 2
    w_tv: float = 1e-4  # paper 2.5e-5 at 32x32; our gradients are normalised, so the prior scale differs
    w_l2: float = 1e-5
    adaptive_lambda: float = 0.0
    init_std: float = 1.0
    contribution: Contribution | str = Contribution.NORMALIZE
    clip_norm: float = 1.0
    min_class_weight: float = 0.02
    source: DreamSource | str = DreamSource.PIXELS
    generator_lr: float = 1e-3
    latent_dim: int = 64
    generator_width: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", _enum(DreamOptimizer, self.optimizer, "dream.optimizer"))
        object.__setattr__(self, "source", _enum(DreamSource, self.source, "dream.source"))
        _positive("dream.generator_lr", self.generator_lr)
        _positive_int("dream.latent_dim", self.latent_dim)
        _positive_int("dream.generator_width", self.generator_width)
        object.__setattr__(self, "contribution", _enum(Contribution, self.contribution, "dream.contribution"))
        _positive_int("dream.batch_size", self.batch_size)
        _positive_int("dream.global_steps", self.global_steps)
        _positive_int("dream.local_steps", self.local_steps)
        _positive_int("dream.adv_start_round", self.adv_start_round, minimum=0)
        for name in ("local_lr", "lr", "init_std", "clip_norm"):
            _positive(f"dream.{name}", getattr(self, name))
        for name in ("w_ent", "w_bn", "w_ce", "w_adv", "w_tv", "w_l2", "adaptive_lambda", "min_class_weight"):
            _non_negative(f"dream.{name}", getattr(self, name))
        if self.min_class_weight >= 1:
            raise ConfigError(f"dream.min_class_weight must be < 1, got {self.min_class_weight}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"dream.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", (float(self.betas[0]), float(self.betas[1])))


@dataclass(frozen=True, slots=True)
class DistillConfig:
    """How clients (and the server's student) learn from the dreams.

    Attributes:
        temperature: KD temperature T. Soft labels are averaged *probabilities* by default; the
            target is softmax(log p / T), which for T = 1 is p itself. The reference T = 20 was for
            averaged logits; over averaged probabilities it flattens the target to near uniform.
        kd_steps: KD optimiser steps per client per round, each on a minibatch drawn from the buffer.
        batch_size: KD minibatch size.
        lr: learning rate of the plain SGD trainer (CE and KD).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        ce_batch_size: minibatch size of local cross-entropy steps.
        ce_ratio: local cross-entropy steps per KD step, interleaved (0.5 = one CE step every other
            KD step); keeps clients anchored to their real data while they learn from dreams.
        buffer_size: dreams kept per client, FIFO (several rounds' worth, so a client keeps revisiting
            classes it saw in earlier dreams).
        bank_size: dreams the server keeps from past rounds, with their aggregated target logits, for
            clients that missed those rounds (0: no bank). In a cohort federation a client takes part in
            few rounds and would otherwise distil only their dreams; the dreams and labels are the
            round's released output, so handing them on is post-processing and costs no privacy. Each
            cohort client acquires the bank entries it has not had yet into its own buffer, so
            `buffer_size` must be >= bank_size (a smaller buffer would drop the oldest on arrival).
        warmup_steps: local cross-entropy steps before the first round.
        soft_labels: "probabilities" (paper) or "logits".
        logit_clip_norm: L2 bound of one client's soft-label vector when it releases logits
            (probabilities are bounded by sqrt(B) and need no setting).
        student: architecture of the server's optional student model (None: no student).
        student_lr: learning rate of the student.
        student_kd_steps: the student's KD steps per round (None: `kd_steps`).
        student_temperature: the student's KD temperature (None: `temperature`); it learns only from
            dreams, and a flatter target carries more of the ensemble's ranking of the other classes.
        label_temperature: clients release softmax(logits / tau) (probabilities only); the server's
            KD target logits are tau * log(mean), so KD at `temperature` = tau matches the tempered
            ensemble on both sides (Hinton et al.). 1: the paper's probabilities.
        label_weighting: "target" or "class", see `LabelWeighting` (conditional method only).
        joint: KD and cross-entropy in one loss: a KD step that is owed a CE step (`ce_ratio`) adds
            `ce_weight` x CE on a local minibatch to the KD loss and takes one optimiser step on the
            sum, instead of two alternating steps. Same CE minibatches per round either way.
        ce_weight: weight of the CE term in a joint step.
        local_loss: "plain", "restricted" or "adjusted", see `LocalLoss` (warm-up included).
        restrict_alpha: FedRS scale of absent classes' logits, in [0, 1].
        logit_adjust_tau: logit-adjustment strength tau > 0.
        kd_batchnorm: "dreams" or "mixed", see `KDBatchNorm`.
        augment: "none", "shift" or "shift_flip", see `DreamAugment` (clients and student).
        augment_shift: the largest translation in pixels.
    """

    temperature: float = 1.0
    kd_steps: int = 100
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    ce_batch_size: int = 64
    ce_ratio: float = 0.4  # 40 CE steps per 100 KD steps: more KD at the same local budget helped
    buffer_size: int = 1024
    bank_size: int = 0
    warmup_steps: int = 200
    soft_labels: SoftLabelKind | str = SoftLabelKind.PROBABILITIES
    logit_clip_norm: float = 1000.0
    student: str | None = None
    student_lr: float = 0.05
    student_kd_steps: int | None = None
    student_temperature: float | None = None
    label_temperature: float = 1.0
    label_weighting: LabelWeighting | str = LabelWeighting.TARGET
    joint: bool = False
    ce_weight: float = 1.0
    local_loss: LocalLoss | str = LocalLoss.PLAIN
    restrict_alpha: float = 0.0
    logit_adjust_tau: float = 1.0
    kd_batchnorm: KDBatchNorm | str = KDBatchNorm.DREAMS
    augment: DreamAugment | str = DreamAugment.NONE
    augment_shift: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "soft_labels", _enum(SoftLabelKind, self.soft_labels, "distill.soft_labels"))
        object.__setattr__(
            self, "label_weighting", _enum(LabelWeighting, self.label_weighting, "distill.label_weighting")
        )
        object.__setattr__(self, "local_loss", _enum(LocalLoss, self.local_loss, "distill.local_loss"))
        object.__setattr__(
            self, "kd_batchnorm", _enum(KDBatchNorm, self.kd_batchnorm, "distill.kd_batchnorm")
        )
        object.__setattr__(self, "augment", _enum(DreamAugment, self.augment, "distill.augment"))
        _positive_int("distill.augment_shift", self.augment_shift, minimum=0)
        if not isinstance(self.joint, bool):
            raise ConfigError(f"distill.joint must be true or false, got {self.joint!r}")
        if self.student_kd_steps is not None:
            _positive_int("distill.student_kd_steps", self.student_kd_steps, minimum=0)
        if self.student_temperature is not None:
            _positive("distill.student_temperature", self.student_temperature)
        for name in ("label_temperature", "logit_adjust_tau"):
            _positive(f"distill.{name}", getattr(self, name))
        _non_negative("distill.ce_weight", self.ce_weight)
        if not (isinstance(self.restrict_alpha, int | float) and 0 <= self.restrict_alpha <= 1):
            raise ConfigError(f"distill.restrict_alpha must be in [0, 1], got {self.restrict_alpha!r}")
        if self.label_temperature != 1 and self.soft_labels is not SoftLabelKind.PROBABILITIES:
            raise ConfigError(
                "distill.label_temperature tempers released probabilities; "
                "with logits use distill.temperature"
            )
        _positive("distill.temperature", self.temperature)
        _positive_int("distill.kd_steps", self.kd_steps, minimum=0)
        _positive_int("distill.batch_size", self.batch_size)
        _positive_int("distill.ce_batch_size", self.ce_batch_size)
        _positive_int("distill.buffer_size", self.buffer_size)
        _positive_int("distill.bank_size", self.bank_size, minimum=0)
        if self.bank_size > self.buffer_size:
            raise ConfigError(
                f"distill.bank_size={self.bank_size} exceeds distill.buffer_size={self.buffer_size}: "
                "a client's buffer could not hold the bank it acquires"
            )
        _positive_int("distill.warmup_steps", self.warmup_steps, minimum=0)
        for name in ("lr", "student_lr", "logit_clip_norm"):
            _positive(f"distill.{name}", getattr(self, name))
        for name in ("momentum", "weight_decay", "ce_ratio"):
            _non_negative(f"distill.{name}", getattr(self, name))
        if self.momentum >= 1:
            raise ConfigError(f"distill.momentum must be < 1, got {self.momentum}")

    @property
    def ce_steps_per_round(self) -> int:
        """Local cross-entropy steps a client interleaves with its `kd_steps` KD steps in one round.

        floor(kd_steps x ce_ratio): the loop accumulates ce_ratio per KD step and takes a CE step per
        whole unit, so this is what it takes (or one more, where float rounding leaves the last unit a
        hair short): an upper bound for DP-SGD step counts and the step budget baselines are matched to.
        """
        return math.floor(self.kd_steps * self.ce_ratio + 1e-9)


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """One federation: data, partition, client models, rounds and the method.

    Attributes:
        dataset: dataset name for `codream.data.load_dataset`.
        data_dir: folder of IDX files (None: the dataset's default).
        num_clients: number of clients (the population).
        clients_per_round: size of the cohort sampled (seeded, without replacement) for each round
            (None: every client takes part in every round). A client warms up the first time it is
            sampled; only the cohort releases, distils and is evaluated in a round.
        alpha: Dirichlet concentration of the partition (None or inf: IID).
        samples_per_client: training samples per client (None: split everything).
        limit_test: test samples used for evaluation (None: all).
        validation: fraction of the training data held out, per class and seeded, before the
            partition (`codream.data.split_validation`): no client trains on it, and the best round is
            selected on it instead of the test set (0: no validation split).
        models: one architecture name per client, or a single name for all.
        norm: normalisation layers of client models ("batch", "group", "none").
        rounds: default number of rounds for `Federation.run`.
        seed: seeds the partition, model initialisation, dreams and every minibatch.
        device: torch device string.
        method: "conditional" (default, see `Method`) or "paper".
        dream: the dream settings.
        distill: the distillation settings.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    num_clients: int = 4
    clients_per_round: int | None = None
    alpha: float | None = 0.1
    samples_per_client: int | None = None
    limit_test: int | None = None
    validation: float = 0.0
    models: tuple[str, ...] = ("resnet8", "cnn", "vgg", "mlp")
    norm: str = "batch"
    rounds: int = 5
    seed: int = 0
    device: str = "cpu"
    method: Method | str = Method.CONDITIONAL
    dream: DreamConfig = field(default_factory=DreamConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _enum(Method, self.method, "method"))
        if isinstance(self.models, str):
            object.__setattr__(self, "models", tuple(m.strip() for m in self.models.split(",") if m.strip()))
        else:
            object.__setattr__(self, "models", tuple(self.models))
        _positive_int("num_clients", self.num_clients)
        _positive_int("rounds", self.rounds, minimum=0)
        if self.clients_per_round is not None:
            _positive_int("clients_per_round", self.clients_per_round)
            if self.clients_per_round > self.num_clients:
                raise ConfigError(
                    f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}"
                )
        if not self.models:
            raise ConfigError("models must name at least one architecture")
        if len(self.models) not in (1, self.num_clients):
            raise ConfigError(
                f"models must name 1 or num_clients={self.num_clients} architectures, got {len(self.models)}"
            )
        if self.alpha is not None and not (self.alpha > 0):
            raise ConfigError(f"alpha must be > 0 (or None/inf for IID), got {self.alpha!r}")
        if self.samples_per_client is not None:
            _positive_int("samples_per_client", self.samples_per_client)
        if self.limit_test is not None:
            _positive_int("limit_test", self.limit_test)
        if isinstance(self.validation, bool) or not (0.0 <= self.validation < 1.0):
            raise ConfigError(f"validation must be a fraction in [0, 1), got {self.validation!r}")
        if self.norm not in ("batch", "group", "none"):
            raise ConfigError(f"norm must be one of ['batch', 'group', 'none'], got {self.norm!r}")
        if not isinstance(self.dream, DreamConfig):
            raise ConfigError(f"dream must be a DreamConfig, got {type(self.dream).__name__}")
        if not isinstance(self.distill, DistillConfig):
            raise ConfigError(f"distill must be a DistillConfig, got {type(self.distill).__name__}")
        if 0 < self.distill.bank_size < self.dream.batch_size:
            raise ConfigError(
                f"distill.bank_size={self.distill.bank_size} is smaller than one round's dreams "
                f"(dream.batch_size={self.dream.batch_size}); use 0 (no bank) or at least the batch"
            )
        if self.distill.label_weighting is LabelWeighting.CLASS and (
            self.method is not Method.CONDITIONAL
            or self.distill.soft_labels is not SoftLabelKind.PROBABILITIES
        ):
            raise ConfigError(
                "distill.label_weighting='class' needs the conditional method (its class weights) and "
                "probability soft labels"
            )
        needs_student = self.dream.w_adv > 0 or self.dream.adaptive_lambda > 0
        if needs_student and self.distill.student is None:
            raise ConfigError(
                "dream.w_adv > 0 and dream.adaptive_lambda > 0 need a server student (distill.student)"
            )

    def client_models(self) -> tuple[str, ...]:
        """The architecture of each client, in client order."""
        return self.models if len(self.models) == self.num_clients else self.models * self.num_clients

    @property
    def releases_per_round(self) -> int:
        """The most vectors a client releases through the seam in one round, fixed before it starts.

        One per global dream step, one soft-label vector, plus (conditional method) one vector of
        per-class weights at the start of the run's first round only (they are released once per
        run). A round is one composed privacy event over its releases, whatever their number.
        """
        extra = 1 if self.method is Method.CONDITIONAL else 0
        return self.dream.global_steps + 1 + extra

    @property
    def sample_rate(self) -> float:
        """Fraction of the population in each round's cohort (the q of privacy accounting)."""
        if self.clients_per_round is None:
            return 1.0
        return self.clients_per_round / self.num_clients
