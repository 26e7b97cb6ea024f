"""Building the parties of a federation, once for every engine: data, clients, server.

The in-process engine builds every client with `build_client`; a Flower node builds its own one with
the same function, from the same configuration, so a client is the same model, data and random
streams wherever it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..distill import TrainerFactory, sgd_trainer_factory
from .client import ClientRole
from .config import FederationConfig
from .seeding import stream
from .server import ServerRole, StudentTrainer

__all__ = [
    "FederationData",
    "build_client",
    "build_server",
    "default_trainer_factory",
    "load_federation_data",
]


def default_trainer_factory(config: FederationConfig) -> TrainerFactory:
    """The plain SGD trainer with the configuration's learning settings."""
    return sgd_trainer_factory(config.distill)


@dataclass(frozen=True)
class FederationData:
    """A loaded dataset, its partition over the clients, and the (possibly limited) test split."""

    dataset: object  # codream.data.Dataset
    parts: list
    x_test: Tensor
    y_test: Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.dataset.input_shape)  # type: ignore[attr-defined]

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)  # type: ignore[attr-defined]


def load_federation_data(config: FederationConfig, dataset=None) -> FederationData:
    """Load `config.dataset` (or take `dataset`), carve its validation split (`config.validation`),
    partition the rest by the run seed, limit the test split.

    Raises:
        DataError, ConfigError: missing data or an invalid partition.
    """
    from ..data import load_dataset, partition, split_validation

    if dataset is None:
        dataset = load_dataset(
            config.dataset, config.data_dir, limit_test=config.limit_test, seed=config.seed
        )
    # Carved before the partition, so that no client holds the validation split (a no-op at 0).
    dataset = split_validation(dataset, config.validation, seed=config.seed)
    x_test, y_test = dataset.x_test, dataset.y_test
    if config.limit_test is not None and config.limit_test < len(y_test):
        x_test, y_test = x_test[: config.limit_test], y_test[: config.limit_test]
    parts = partition(
        dataset.y_train,
        config.num_clients,
        alpha=config.alpha,
        samples_per_client=config.samples_per_client,
        seed=config.seed,
    )
    return FederationData(dataset, parts, x_test, y_test)


def build_client(
    config: FederationConfig,
    data: FederationData,
    client_id: int,
    trainer_factory: TrainerFactory | None = None,
) -> ClientRole:
    """Client `client_id`: its partition, its model (seeded by run seed and id), its trainer and streams."""
    from ..models import build_model

    factory = trainer_factory if trainer_factory is not None else default_trainer_factory(config)
    ds = data.dataset
    idx = torch.as_tensor(np.asarray(data.parts[client_id]), dtype=torch.long)
    x_k, y_k = ds.x_train[idx].to(config.device), ds.y_train[idx].to(config.device)  # type: ignore[attr-defined]
    model = build_model(
        config.client_models()[client_id],
        data.input_shape,
        data.num_classes,
        norm=config.norm,
        seed=config.seed * 1009 + client_id,
    ).to(config.device)
    trainer = factory(model, x_k, y_k, stream(config.seed, 1, client_id))
    return ClientRole(
        client_id, trainer, y_k.cpu(), data.num_classes, config, stream(config.seed, 2, client_id)
    )


def build_server(config: FederationConfig, input_shape: tuple[int, ...], num_classes: int) -> ServerRole:
    """The server: dreams, plan, the optional dream bank and student (seeded by the run seed)."""
    from ..models import build_model

    student = None
    if config.distill.student is not None:
        s_model = build_model(
            config.distill.student, input_shape, num_classes, norm=config.norm, seed=config.seed * 1009 + 997
        ).to(config.device)
        student = StudentTrainer(s_model, config, stream(config.seed, 3))
    return ServerRole(config, tuple(input_shape), num_classes, stream(config.seed, 4), student=student)
