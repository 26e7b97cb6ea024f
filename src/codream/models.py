"""A hand-written model zoo: architectures that differ for real, so clients cannot share weights.

Every model takes an input shape (C, H, W) and a class count, and works for 8x8 digits as well as 28x28
Fashion-MNIST. They are small enough to train on a CPU (tens to a few hundred thousand parameters):

- ``mlp``: two hidden layers on the flattened image; no normalisation (``norm`` is ignored).
- ``cnn``: two conv -> norm -> ReLU -> 2x2 max-pool stages (16, 32 channels), then two fully connected layers.
- ``resnet8``: a conv stem and three residual basic blocks (16, 32, 64 channels; the last two halve the
  resolution, with a 1x1 projection shortcut), global average pooling and a linear head.
- ``vgg``: VGG-style stacks of 3x3 conv -> norm -> ReLU (16 | 32, 32 | 64, 64 channels, a max-pool after
  each stack), global average pooling and a two-layer classifier.

Any other ``torch.nn.Module`` joins the zoo with `register_model(name, factory)`; configs then name it
like a built-in architecture.

``norm`` picks the normalisation layer of the convolutional models: ``"batch"`` (BatchNorm, whose running
statistics the dream loss matches), ``"group"`` (GroupNorm; what example-level DP-SGD needs, since
BatchNorm mixes examples and Opacus rejects it) or ``"none"``. No layer works in place, so Opacus'
per-sample gradient hooks see every activation.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from torch import nn

from .exceptions import ConfigError

__all__ = ["NORMS", "DreamGenerator", "build_model", "count_parameters", "model_names", "register_model"]

NORMS = ("batch", "group", "none")

_MAX_GROUPS = 8  # GroupNorm groups: gcd(channels, 8), so 16/32/64 channels get 8 groups.


def _norm2d(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, _MAX_GROUPS), channels)
    return nn.Identity()


def _conv_block(norm: str, c_in: int, c_out: int) -> list[nn.Module]:
    # The conv has no bias when a normalisation layer follows: the norm's shift makes it redundant.
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=norm == "none"),
        _norm2d(norm, c_out),
        nn.ReLU(),
    ]


class MLP(nn.Module):
    """Flatten -> 256 -> 128 -> K with ReLU."""

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, hidden: tuple[int, int] = (256, 128)
    ):
        super().__init__()
        c, h, w = input_shape
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.net(x)


class SmallCNN(nn.Module):
    """conv(16) -> pool -> conv(32) -> pool -> fc(128) -> K."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, norm: str):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            *_conv_block(norm, c, 16),
            nn.MaxPool2d(2),  # (B, 16, H/2, W/2)
            *_conv_block(norm, 16, 32),
            nn.MaxPool2d(2),  # (B, 32, H/4, W/4)
        )
        flat = 32 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm2d(norm, c_out)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = _norm2d(norm, c_out)
        self.act2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm2d(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet8(nn.Module):
    """Stem conv(16) and blocks 16 -> 32 (stride 2) -> 64 (stride 2): 7 convs + 1 linear layer."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, norm: str):
        super().__init__()
        c = input_shape[0]
        self.stem = nn.Sequential(*_conv_block(norm, c, 16))
        self.layers = nn.Sequential(
            BasicBlock(16, 16, 1, norm),  # (B, 16, H, W)
            BasicBlock(16, 32, 2, norm),  # (B, 32, H/2, W/2)
            BasicBlock(32, 64, 2, norm),  # (B, 64, H/4, W/4)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x)))  # (B, 64, 1, 1)
        return self.fc(torch.flatten(out, 1))


class VGG(nn.Module):
    """Stacks [16] M [32, 32] M [64, 64] M of conv-norm-ReLU, global average pool, 64 -> 64 -> K."""

    CFG: tuple[int | str, ...] = (16, "M", 32, 32, "M", 64, 64, "M")

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, norm: str):
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for item in self.CFG:
            if item == "M":
                # ceil_mode keeps a 1-pixel map alive on small inputs (8 -> 4 -> 2 -> 1).
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                layers += _conv_block(norm, c, int(item))
                c = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


_Builder = Callable[[tuple[int, int, int], int, str], nn.Module]

_REGISTRY: dict[str, tuple[_Builder, int]] = {
    # name: (builder, smallest height/width it accepts)
    "mlp": (lambda shape, k, norm: MLP(shape, k), 1),
    "cnn": (lambda shape, k, norm: SmallCNN(shape, k, norm), 4),
    "resnet8": (lambda shape, k, norm: ResNet8(shape, k, norm), 1),
    "vgg": (lambda shape, k, norm: VGG(shape, k, norm), 1),
}


_BUILT_IN = frozenset(_REGISTRY)


def register_model(
    name: str, factory: Callable[..., nn.Module], *, min_side: int = 1, replace: bool = False
) -> None:
    """Make your own architecture usable by name: ``models = [name, ...]`` in a config, `build_model`.

    Args:
        name: the name configs use; not a built-in one, no commas.
        factory: builds a fresh, untrained model that maps (B, C, H, W) images to (B, K) logits. It is
            called as ``factory(input_shape, num_classes)`` (adding ``norm=`` when it takes a ``norm``
            parameter), or as ``factory()`` when it takes no arguments. It runs under the client's
            seed, so its initialisation is reproducible; a class works as well as a function.
        min_side: the smallest image height/width the architecture accepts.
        replace: allow registering `name` again (a registered name only; built-ins stay).

    `build_model` checks the output shape on a zero batch, so a model for the wrong class count is a
    clear error at start-up, not a shape error in the first round.

    Raises:
        ConfigError: a taken or malformed name, or a factory that is not callable.
    """
    if not isinstance(name, str) or not name.strip() or "," in name or name != name.strip():
        raise ConfigError(
            f"a model name must be a non-empty string without commas or spaces around it, got {name!r}"
        )
    if name in _BUILT_IN:
        raise ConfigError(f"model {name!r} is built in; register yours under another name")
    if name in _REGISTRY and not replace:
        raise ConfigError(f"model {name!r} is registered already; pass replace=True to replace it")
    if not callable(factory):
        raise ConfigError(f"the factory of model {name!r} must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = (_user_builder(name, factory), int(min_side))


def _user_builder(name: str, factory: Callable[..., nn.Module]) -> _Builder:
    """Adapt a user factory to the zoo's (input_shape, num_classes, norm) call, checking what it returns."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it the general way
        params = None
    takes_args = params is None or any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
    )
    takes_norm = params is not None and any(p.name == "norm" or p.kind is p.VAR_KEYWORD for p in params)

    def build(shape: tuple[int, int, int], k: int, norm: str) -> nn.Module:
        if not takes_args:
            model = factory()
        elif takes_norm:
            model = factory(shape, k, norm=norm)
        else:
            model = factory(shape, k)
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"the factory of model {name!r} returned {type(model).__name__}, not a torch.nn.Module"
            )
        _check_output(name, model, shape, k)
        return model

    return build


def _check_output(name: str, model: nn.Module, shape: tuple[int, int, int], k: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as exc:  # noqa: BLE001 - any failure on a plain batch is the same start-up error
        raise ConfigError(
            f"model {name!r} fails on a (2, {', '.join(map(str, shape))}) batch: {exc}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, k):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model {name!r} maps a (2, {', '.join(map(str, shape))}) batch to {got}; "
            f"it must return logits of shape (2, {k})"
        )


def model_names() -> list[str]:
    """Names `build_model` accepts, sorted: the built-in architectures and the registered ones."""
    return sorted(_REGISTRY)


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    norm: str = "batch",
    seed: int | None = None,
) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: one of `model_names()`.
        input_shape: (C, H, W) of one example.
        num_classes: K >= 2 outputs (logits).
        norm: ``"batch"``, ``"group"`` or ``"none"``; models without normalisation ignore it.
        seed: initialise the weights from this seed, leaving torch's global RNG as it was; None draws
            from the global RNG.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        ConfigError: unknown name or norm, a bad shape or class count.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(model_names())}")
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if len(input_shape) != 3 or any(int(s) != s or s < 1 for s in input_shape):
        raise ConfigError(f"input_shape must be (C, H, W) with positive integers, got {input_shape}")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
    builder, min_side = _REGISTRY[name]
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if min(shape[1:]) < min_side:
        raise ConfigError(
            f"model {name!r} needs inputs at least {min_side}x{min_side}, got {shape[1]}x{shape[2]}"
        )
    if seed is None:
        return builder(shape, num_classes, norm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(shape, num_classes, norm)


class DreamGenerator(nn.Module):
    """G(z, y): a conditional generator of dreams (DCGAN-style, as in DFAD / DENSE), held by the server.

    The latent z (B, latent_dim) is multiplied by a learned embedding of the target class y (B,), mapped
    to a (2w, H/4, W/4) map and upsampled twice through conv -> BatchNorm -> LeakyReLU to (C, H, W).
    The output passes a BatchNorm without affine parameters, so a batch of dreams has zero mean and unit
    variance per channel: the scale of normalised input data, whatever the weights.

    Args:
        input_shape: (C, H, W) of a dream; H and W must be multiples of 4.
        num_classes: K.
        latent_dim: size of z.
        width: w, channels of the last hidden map.
    """

    def __init__(
        self, input_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 64, width: int = 32
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise ConfigError(f"the dream generator needs H and W divisible by 4, got {h}x{w}")
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self._init = (h // 4, w // 4)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Linear(latent_dim, 2 * width * (h // 4) * (w // 4))
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),  # (B, 2w, H/2, W/2)
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),  # (B, 2w, H, W)
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
            nn.BatchNorm2d(c, affine=False),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, latent), (B,) -> (B, C, H, W)
        h = self.project(z * self.embed(y))
        return self.body(h.reshape(z.shape[0], -1, *self._init))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
