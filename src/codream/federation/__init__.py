"""The CoDream learning loop: configuration, client and server roles, and the in-process engine.

Importing the package loads only the configuration; the roles and the engine load on first use, so
`codream.dreams` and `codream.distill` can import the configuration without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import (
    Contribution,
    DistillConfig,
    DreamConfig,
    DreamOptimizer,
    FederationConfig,
    Method,
    SoftLabelKind,
)

if TYPE_CHECKING:
    from .client import ClientRole
    from .server import ServerRole
    from .simulation import Federation, RoundMetrics

__all__ = [
    "ClientRole",
    "Contribution",
    "DistillConfig",
    "DreamConfig",
    "DreamOptimizer",
    "Federation",
    "FederationConfig",
    "Method",
    "RoundMetrics",
    "ServerRole",
    "SoftLabelKind",
]

_LAZY = {
    "ClientRole": "client",
    "ServerRole": "server",
    "Federation": "simulation",
    "RoundMetrics": "simulation",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
