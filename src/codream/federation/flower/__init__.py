"""codream on Flower: the same roles and protocol messages, carried between real processes.

Only this package imports flwr. Install it with ``pip install codream[flower]``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the Flower engine needs the flwr package: pip install codream[flower]") from err

from .app import write_app_dir
from .harness import DeploymentError, FlowerDeployment

__all__ = ["DeploymentError", "FlowerDeployment", "write_app_dir"]
