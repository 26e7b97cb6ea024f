"""codream: federated learning by co-optimised dreams, summed under secure aggregation and DP.

Clients with different model architectures never share weights. They jointly optimise a batch of
synthetic inputs, agree on soft labels for them and distil that knowledge into their own models.
Everything a client releases is a vector the server only needs to sum; `codream.aggregation` is the one
seam through which every such vector passes (plain mean, secure sum, or secure sum with DP).

The public API (see the README's "As a library"):

- `RunConfig`: a run's settings, the one TOML format (`RunConfig.from_toml`, `RunConfig.from_dict`);
- `build_run(config, **settings) -> Run`: the run, run round by round (`Run.run_round()`), its
  metrics in `Run.records`, the best round (selected on the validation split) in `Run.best_round()`;
- `build_federation`, `build_client`, `load_federation_data`: the same construction one level down (a
  `Federation` with your own aggregator or trainers; one client, as a Flower node builds it);
- `register_model(name, factory)`, `register_dataset(name, train, test)`: your own architecture and
  data, usable by name in any config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "PrivacyPlan",
    "Run",
    "RunConfig",
    "build_client",
    "build_federation",
    "build_run",
    "dataset_names",
    "load_federation_data",
    "model_names",
    "register_dataset",
    "register_model",
]

if TYPE_CHECKING:
    from .build import PrivacyPlan, Run, build_client, build_federation, build_run, load_federation_data
    from .data import dataset_names, register_dataset
    from .models import model_names, register_model
    from .runconfig import RunConfig

# Loaded on first use, so `import codream` (and the CLI's start-up) stays light.
_LAZY = {
    "PrivacyPlan": "build",
    "Run": "build",
    "build_client": "build",
    "build_federation": "build",
    "build_run": "build",
    "load_federation_data": "build",
    "RunConfig": "runconfig",
    "dataset_names": "data",
    "register_dataset": "data",
    "model_names": "models",
    "register_model": "models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
