"""A hand-written model zoo: architectures that differ for real, so clients cannot share weights.

Every model takes an input shape (C, H, W) and a class count, and works for 8x8 digits as well as 28x28
Fashion-MNIST. They are small enough to train on a CPU (tens to a few hundred thousand parameters):

- ``mlp``: two hidden layers on the flattened image; no normalisation (``norm`` is ignored).
- ``cnn``: two conv -> norm -> ReLU -> 2x2 max-pool stages (16, 32 channels), then two fully connected layers.
- ``resnet8``: a conv stem and three residual basic blocks (16, 32, 64 channels; the last two halve the
  resolution, with a 1x1 projection shortcut), global average pooling and a linear head.
- ``vgg``: VGG-style stacks of 3x3 conv -> norm -> ReLU (16 | 32, 32 | 64, 64 channels, a max-pool after
  each stack), global average pooling and a two-layer classifier.

``norm`` picks the normalisation layer of the convolutional models: ``"batch"`` (BatchNorm, whose running
statistics the dream loss matches), ``"group"`` (GroupNorm; what example-level DP-SGD needs, since
BatchNorm mixes examples and Opacus rejects it) or ``"none"``. No layer works in place, so Opacus'
per-sample gradient hooks see every activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .exceptions import ConfigError

__all__ = ["NORMS", "DreamGenerator", "build_model", "count_parameters", "model_names"]

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


def model_names() -> list[str]:
    """Names `build_model` accepts, sorted."""
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
