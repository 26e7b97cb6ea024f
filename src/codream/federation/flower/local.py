"""`run_flower`: a whole codream run on a local Flower deployment (SuperLink + SuperNodes on loopback).

This is what ``codream run --engine flower`` calls. It starts the processes, writes the Flower app
folder for this run, launches it with ``flwr run``, optionally kills one SuperNode at a chosen point
of the protocol (to show that a crashed client is dropped and the round still finishes), waits for the
run to end within a time bound, and always stops every process.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...exceptions import ConfigError
from ..config import FederationConfig
from .app import write_app_dir
from .engine import AGGREGATIONS, config_to_dict, refuse_unsupported
from .harness import DeploymentError, FlowerDeployment
from .serverapp import RESULTS_FILE

__all__ = ["KillAt", "run_flower"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KillAt:
    """Kill SuperNode `node` (its partition id) once the server starts `stage` of `vector` in `round`.

    Attributes:
        node: the SuperNode (= client id) to kill.
        round: federation round, 0-based.
        vector: index in the round's plan of releases (-1 for the session's key exchange).
        stage: "session", "release" or "learn".
    """

    node: int
    round: int = 0
    vector: int = 0
    stage: str = "release"


def run_flower(
    config: FederationConfig,
    *,
    aggregation: str = "secure",
    num_supernodes: int | None = None,
    out_dir: str | Path,
    kill_node_at: KillAt | None = None,
    rounds: int | None = None,
    threshold: int | None = None,
    bits: int | None = None,
    graph: str = "complete",
    corrupt_fraction: float = 0.1,
    malicious: bool = False,
    imports: Sequence[str] = (),
    resume: bool = False,
    dp: Mapping[str, float] | None = None,
    ledger_dir: str | Path | None = None,
    node_options: Mapping[int, Mapping[str, object]] | None = None,
    step_timeout: float = 30.0,
    setup_timeout: float = 180.0,
    timeout: float = 1800.0,
    record_trace: bool = False,
    keep_logs: bool = True,
) -> dict:
    """Run `config` on a Flower deployment on this machine, one SuperNode per client.

    Args:
        config: the federation (its `num_clients` SuperNodes are started unless `num_supernodes`).
        aggregation: "plain", "secure" or "secure+dp".
        num_supernodes: how many SuperNodes to start (default and minimum: `config.num_clients`).
        out_dir: results (flower-results.json, dreams.npz, progress.jsonl), logs/ (one log per
            process, written as it runs) and the deployment's app/ and flwr-home/ go here.
        kill_node_at: kill one SuperNode mid-run (fault injection), see `KillAt`.
        rounds: number of rounds (default `config.rounds`).
        threshold: Shamir threshold (default: the secure aggregator's).
        bits: ring width of the secure sum (default 32, 24 under DP).
        graph: the masking graph, "complete" or "harary" (each node's own policy may refuse one).
        corrupt_fraction: the share of corrupt clients the Harary graph and threshold withstand.
        malicious: malicious-server mode: fresh signing keys are provisioned into out_dir/keys/ (each
            node's own key file and the public verify-keys file, named in the node configs), and every
            node demands the mode.
        imports: modules or .py files that register the user's models and data sets: loaded by the
            server and, through each node's own node config, by every node (one operator runs both
            here).
        resume: continue the run in `out_dir` from the server's state after its last finished round
            and every node's own state (out_dir/node_state/); without it, a fresh run (earlier state in
            `out_dir` is removed).
        dp: secure+dp only: ``noise_multiplier`` (the round's z_eff), ``delta`` and optionally
            ``target_epsilon``, given to every SuperNode's own node config (each node draws its own
            noise and keeps its own ledger in out_dir/client_ledgers/) and the multiplier to the
            server, which sizes the encoding with it.
        ledger_dir: where the nodes keep their ledgers (default out_dir/client_ledgers).
        node_options: more of each node's own node config, by partition id (e.g. its example-level
            DP, `engine.ExampleDP`).
        step_timeout: seconds each protocol step waits for a client before dropping it.
        setup_timeout: seconds a client may take to load its data and warm up.
        timeout: bound on the whole run, in seconds.
        record_trace: also write every sum of the run to trace.npz.
        keep_logs: keep every process's log under out_dir/logs.

    Returns:
        The results dict the ServerApp wrote (status, the metrics of every finished round of the
        run, resumed or not, dropped clients), plus
        "deployment" (ports, node ids, seconds to start, the killed node if any).

    Raises:
        ConfigError: an unsupported aggregation or option, or too few SuperNodes.
        DeploymentError: a process failed to start, the run failed or ran past `timeout`.
    """
    if aggregation not in AGGREGATIONS:
        raise ConfigError(f"the Flower engine supports aggregation {list(AGGREGATIONS)}, got {aggregation!r}")
    refuse_unsupported(config)
    n = config.num_clients if num_supernodes is None else num_supernodes
    if n < config.num_clients:
        raise ConfigError(f"{config.num_clients} clients need {config.num_clients} SuperNodes, got {n}")
    if kill_node_at is not None and not 0 <= kill_node_at.node < n:
        raise ConfigError(f"kill_node_at.node must be a SuperNode index in 0..{n - 1}")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in (
        RESULTS_FILE,
        "progress.jsonl",
        "dreams.npz",
        "trace.npz",
        *(() if resume else ("rounds.jsonl",)),
    ):
        (out / stale).unlink(missing_ok=True)
    node_state = out / "node_state"
    if not resume:  # a fresh run: no node may continue from an earlier run's state
        (out / "server_state.pt").unlink(missing_ok=True)
        if node_state.exists():
            shutil.rmtree(node_state)
    # The deployment's own folder is `out`: every process logs straight into out/logs, where a
    # user is told to look, while the run goes on as well as after it.
    workdir = out
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    run_config = {
        "handler": "codream",
        "num-nodes": config.num_clients,
        "codream-config": json.dumps(config_to_dict(config)),
        "aggregation": aggregation,
        "rounds": config.rounds if rounds is None else rounds,
        "threshold": threshold or 0,
        "bits": bits or 0,
        "graph": graph,
        "corrupt-fraction": float(corrupt_fraction),
        "step-timeout": float(step_timeout),
        "setup-timeout": float(setup_timeout),
        "wait-timeout": 60.0,
        # Every process is stopped right after the run, workers included: no need to wait for them.
        "finish-timeout": 0.5,
        "out-dir": str(out),
        "record-trace": record_trace,
        "resume": resume,
    }
    # Each node's own policy: it releases under the run's mode or stronger, whatever the server asks.
    node_configs: list[dict[str, object]] = [
        {
            "partition-id": i,
            "num-partitions": config.num_clients,
            "aggregation": aggregation,
            "state-dir": str(node_state),
        }
        for i in range(n)
    ]
    if imports:
        entries = ",".join(str(Path(e).resolve()) if str(e).endswith(".py") else str(e) for e in imports)
        run_config["imports"] = entries
        for nc in node_configs:
            nc["imports"] = entries
    if malicious:
        if aggregation == "plain":
            raise ConfigError("malicious-server mode needs secure aggregation, not plain")
        from .keys import provision_keys

        verify, signing = provision_keys(out / "keys", range(n))
        run_config["malicious"] = True
        run_config["verify-keys"] = str(verify)
        for i, nc in enumerate(node_configs):
            nc.update({"malicious": "true", "signing-key": str(signing[i]), "verify-keys": str(verify)})
    if aggregation == "secure+dp":
        if not dp or "noise_multiplier" not in dp:
            raise ConfigError("secure+dp on Flower needs dp={'noise_multiplier': ..., 'delta': ...}")
        run_config["noise-multiplier"] = float(dp["noise_multiplier"])
        own = {"noise-multiplier": float(dp["noise_multiplier"]), "delta": float(dp.get("delta", 1e-5))}
        if dp.get("target_epsilon") is not None:
            own["target-epsilon"] = float(dp["target_epsilon"])
        for nc in node_configs:
            nc.update(own, **{"ledger-dir": str(ledger_dir or out / "client_ledgers")})
    for i, options in (node_options or {}).items():
        if not 0 <= int(i) < n:
            raise ConfigError(f"node options for partition {i}, outside 0..{n - 1}")
        node_configs[int(i)].update(options)
    t0 = time.monotonic()
    with FlowerDeployment(
        n,
        node_configs=node_configs,
        workdir=workdir,
        keep_workdir=keep_logs,
        env={"CODREAM_FLOWER_LOG_DIR": str(logs)},
    ) as deployment:
        started = time.monotonic() - t0
        app_dir = write_app_dir(workdir / "app", run_config)
        proc = deployment.launch(app_dir)
        killed = None
        deadline = time.monotonic() + timeout
        if kill_node_at is not None:
            _wait_for_progress(out / "progress.jsonl", kill_node_at, proc, deadline)
            if proc.alive():
                deployment.kill_node(kill_node_at.node)
                killed = {
                    "node": kill_node_at.node,
                    "round": kill_node_at.round,
                    "vector": kill_node_at.vector,
                    "stage": kill_node_at.stage,
                }
        deployment.wait_run(proc, timeout=max(1.0, deadline - time.monotonic()))
        results_path = out / RESULTS_FILE
        if not results_path.exists():
            raise DeploymentError(f"the run ended without results; see {logs}")
        results = json.loads(results_path.read_text())
        # Every round the run finished, a resumed run's earlier ones included (kept as they came).
        rounds_log = out / "rounds.jsonl"
        if rounds_log.exists():
            results["rounds"] = [json.loads(x) for x in rounds_log.read_text().splitlines() if x.strip()]
        results["deployment"] = {
            "superlink": deployment.superlink_address,
            "node_ids": {str(k): v for k, v in deployment.node_ids.items()},
            "start_seconds": started,
            "killed": killed,
            "token": deployment.token,
        }
    results["deployment"]["total_seconds"] = time.monotonic() - t0
    if results.get("status") != "completed":
        raise DeploymentError(f"the Flower run failed: {results.get('error')}")
    return results


_STAGES = {"session": 0, "release": 1, "learn": 2}


def _wait_for_progress(path: Path, at: KillAt, proc, deadline: float) -> None:
    """Block until the server reports reaching `at` (or a later point), or the run ends."""
    target = (at.round, at.vector if at.stage == "release" else (-1 if at.stage == "session" else 10**9))
    while time.monotonic() < deadline and proc.alive():
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    p = json.loads(line)
                except ValueError:
                    continue
                point = (
                    p["round"],
                    p["vector"] if p["stage"] == "release" else (-1 if p["stage"] == "session" else 10**9),
                )
                if point >= target:
                    return
        time.sleep(0.05)
    if time.monotonic() >= deadline:
        raise DeploymentError("the run did not reach the kill point in time")
