"""A run's configuration on the Flower engine: the one `RunConfig` format, what Flower carries of it.

`codream run --config FILE` (in process, or with ``engine = "flower"`` on a deployment on this
machine) and the operator's ``python -m codream.federation.flower app DIR --config FILE`` read the same
`codream.runconfig.RunConfig` TOML file (a run directory's config.toml too), and both map it onto the
learning loop's `FederationConfig` with the same `codream.runconfig.federation_config`, so one file
describes the same federation everywhere. What a Flower run cannot honour is refused here, by name,
before anything starts; nothing is dropped silently.

On a real deployment (`app_run_config`) some settings belong to each node's own node config, never to
the run: its CPU threads (``torch-threads``), its DP noise and budget (under ``secure+dp`` the run
carries only the public noise multiplier the encoding is sized for; under example-level DP each node
runs DP-SGD from its own node config), and its data folder. The server holds no training data, so it
trains no baselines. The app command is the Flower engine whatever the file's ``engine`` says.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ...exceptions import ConfigError
from ...runconfig import RunConfig, federation_config
from ..config import FederationConfig
from .engine import config_to_dict, refuse_unsupported

__all__ = [
    "app_run_config",
    "deployment_notes",
    "flower_federation_config",
    "node_dp_settings",
    "refuse_unsupported_settings",
]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}

#: Where the ServerApp writes its results when neither ``--out-dir`` nor the file's ``out`` says.
DEFAULT_OUT_DIR = "~/codream-flower-results"


def refuse_unsupported_settings(rc: RunConfig, *, deployment: bool) -> None:
    """Refuse, in one line naming it, the first setting of `rc` a Flower run cannot honour.

    Args:
        rc: the run's configuration.
        deployment: True for the operator's app folder of a real deployment, False for
            `codream run --engine flower` on this machine (which trains the baselines itself).
    Raises:
        ConfigError: naming the setting and what to do instead.
    """
    if rc.dropout > 0:
        raise ConfigError(
            f"--dropout {rc.dropout:g}: carried by --engine simulation only (on Flower, clients drop for "
            "real); drop it or use --engine simulation"
        )
    if not deployment:
        return
    if rc.threads != _DEFAULTS["threads"]:
        raise ConfigError(
            f"--threads {rc.threads}: each SuperNode sets its own CPU threads (torch-threads in its node "
            f"config, default {_DEFAULTS['threads']}); drop it"
        )
    if rc.privacy_unit == "example":
        for key in ("epsilon", "noise_multiplier"):
            if getattr(rc, key) is not None:
                raise ConfigError(
                    f"--{key.replace('_', '-')} {getattr(rc, key):g}: under --privacy-unit example each "
                    "node runs DP-SGD from its own node config (dp-sgd-noise-multiplier, target-epsilon); "
                    "drop it here"
                )
        if rc.delta != _DEFAULTS["delta"]:
            raise ConfigError(
                f"--delta {rc.delta:g}: under --privacy-unit example each node sets its own delta in its "
                "node config; drop it here"
            )


def deployment_notes(rc: RunConfig) -> list[str]:
    """What the app command leaves to others in `rc`, one line each, for it to print: settings that
    are not about the federation itself (a run directory's config.toml carries them), so they are
    reported, not refused."""
    notes = []
    if rc.baselines:
        notes.append(
            f"baselines {','.join(rc.baselines)}: not trained on a deployment (its server holds no "
            "training data); train them with codream run on the same config"
        )
    if rc.json:
        notes.append("json: the app command prints no run summary; the results are flower-results.json")
    if rc.imports:
        notes.append(
            f"imports {','.join(rc.imports)}: loaded by the ServerApp only; a node loads only what its "
            f'own node config names: add imports="{",".join(rc.imports)}" to every --node-config'
        )
    return notes


def flower_federation_config(rc: RunConfig, *, device: str, deployment: bool) -> FederationConfig:
    """The `FederationConfig` a Flower run of `rc` runs, after refusing what Flower cannot honour.

    Args:
        rc: the run's configuration.
        device: the device every party uses ("auto": each machine resolves its own).
        deployment: as for `refuse_unsupported_settings`.
    Raises:
        ConfigError: a setting Flower cannot honour, or any error of the configuration.
    """
    refuse_unsupported_settings(rc, deployment=deployment)
    config = federation_config(rc, device=device)
    refuse_unsupported(config)
    return config


def app_run_config(
    rc: RunConfig,
    *,
    client_nodes: str = "",
    verify_keys: str | None = None,
    bits: int = 32,
    step_timeout: float = 60.0,
    setup_timeout: float = 600.0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """The Flower run config of the app folder (`app.write_app_dir`) for a real deployment of `rc`.

    Args:
        rc: the run's configuration (a `codream run` config file).
        client_nodes: ``"CID=NODE ..."``, binding client ids to Flower node ids ("" for none).
        verify_keys: the roster's public keys file, needed with ``secagg_mode = "malicious"``.
        bits: ring width of the masked sums.
        step_timeout: seconds before a silent client is dropped.
        setup_timeout: seconds a client may take to load its data and warm up.
        out_dir: the results folder on the SuperLink's machine (default: the file's ``out``, else
            ~/codream-flower-results).
    Raises:
        ConfigError: a setting Flower cannot honour (named), or any error of the configuration.
    """
    from ...privacy_plan import PrivacyPlan

    config = flower_federation_config(rc, device=rc.device, deployment=True)
    run_config: dict[str, Any] = {
        "handler": "codream",
        "num-nodes": config.num_clients,
        "codream-config": json.dumps(config_to_dict(config)),
        "aggregation": rc.aggregation,
        "rounds": rc.rounds,
        "threshold": rc.threshold or 0,
        "bits": bits,
        "graph": rc.graph,
        "step-timeout": float(step_timeout),
        "setup-timeout": float(setup_timeout),
        "wait-timeout": 600.0,
        "out-dir": out_dir or rc.out or DEFAULT_OUT_DIR,
        "record-trace": False,
        "client-nodes": client_nodes,
        "corrupt-fraction": float(rc.corrupt_fraction),
    }
    if rc.imports:  # the server's own copy of the user's models and data sets (never sent to nodes)
        run_config["imports"] = ",".join(rc.imports)
    if rc.secagg_mode == "malicious":
        if not verify_keys:
            raise ConfigError(
                "--secagg-mode malicious: the server needs the roster's public keys; give the app "
                "command --verify-keys FILE (the file every node holds)"
            )
        run_config["malicious"] = True
        run_config["verify-keys"] = str(verify_keys)
    if rc.aggregation == "secure+dp":
        # The public multiplier the encoding's headroom is sized for; each node draws its own noise.
        plan = PrivacyPlan(rc, config)
        run_config["noise-multiplier"] = float(plan.noise_multiplier)
    return run_config


def node_dp_settings(run_config: dict[str, Any], rc: RunConfig) -> str | None:
    """The DP keys every SuperNode's own node config needs for this run (None without DP)."""
    if rc.privacy_unit == "example":
        return 'privacy-unit="example" dp-sgd-noise-multiplier=<its own> (and optionally target-epsilon)'
    if "noise-multiplier" not in run_config:
        return None
    keys = f'aggregation="secure+dp" noise-multiplier={run_config["noise-multiplier"]!r} delta={rc.delta!r}'
    if rc.epsilon is not None:
        keys += f" target-epsilon={rc.epsilon!r}"
    return keys
