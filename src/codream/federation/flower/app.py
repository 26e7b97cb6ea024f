"""The Flower app folder: a pyproject.toml whose components point at codream's installed modules.

`flwr run` needs a folder with a pyproject.toml; it bundles that folder and sends it to the SuperLink.
codream is already installed wherever the SuperLink and the SuperNodes run (same environment), so the
folder holds no code, only the components and the run config. The run config is flat TOML: Flower
passes it to both the ServerApp and every ClientApp.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from ...exceptions import ConfigError

__all__ = ["APP_NAME", "render_pyproject", "write_app_dir"]

APP_NAME = "codream-flower"
SERVERAPP = "codream.federation.flower.serverapp:app"
CLIENTAPP = "codream.federation.flower.clientapp:app"


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    raise ConfigError(f"run config value for {key!r} must be bool, int, float or str, got {value!r}")


def render_pyproject(run_config: Mapping[str, object], *, version: str = "1.0.0") -> str:
    """The app's pyproject.toml text for this run config."""
    lines = [
        "[build-system]",
        'requires = ["setuptools>=68"]',
        'build-backend = "setuptools.build_meta"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        f'version = "{version}"',
        'description = "codream on Flower: CoDream rounds under codream\'s own secure aggregation"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "codream"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVERAPP}"',
        f'clientapp = "{CLIENTAPP}"',
        "",
        "[tool.flwr.app.config]",
    ]
    for key, value in run_config.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ConfigError(f"run config key {key!r} must be letters, digits, '-' or '_'")
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def write_app_dir(path: str | Path, run_config: Mapping[str, object]) -> Path:
    """Create (or overwrite) the app folder at `path` for this run config; returns its path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(render_pyproject(run_config))
    return path
