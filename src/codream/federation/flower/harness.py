"""Start a SuperLink and SuperNodes as real processes, launch a run, and always clean up.

A Flower deployment on one machine is several independent processes: the SuperLink (which itself
starts a SuperExec and, per run, a ServerApp process), one SuperNode per client (each with its own
SuperExec and one ClientApp process per message), and codream's per-node worker. Some of them detach
into their own sessions, so killing the process groups we started is not enough. Every process we
start carries a deployment token in its environment; `close` terminates our process groups, then
finds every process that still carries the token and kills it. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...exceptions import CodreamError, ConfigError

__all__ = [
    "DeploymentError",
    "FlowerDeployment",
    "free_ports",
    "format_node_config",
]

log = logging.getLogger(__name__)

#: Environment variable every process of one deployment carries; its value is the deployment token.
TOKEN_ENV = "CODREAM_FLOWER_DEPLOYMENT"

_NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")
_RUN_ID_RE = re.compile(r"Successfully started run (\d+)")


class DeploymentError(CodreamError):
    """A Flower process did not start, did not become ready in time, or a run failed."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ask the kernel for `count` distinct free TCP ports on `host`.

    The sockets are closed before returning, so another process could take a port in between; the
    window is small and a clash shows up as a start-up failure, not as a silent misrouting.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def format_node_config(config: Mapping[str, object]) -> str:
    """Render a SuperNode's `--node-config` value: space-separated `key=value`, strings quoted."""
    parts = []
    for key, value in config.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
            raise ConfigError(f"node config key {key!r} must be letters, digits, '-' or '_'")
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int | float):
            rendered = repr(value)
        elif isinstance(value, str):
            if '"' in value or " " in value:
                raise ConfigError(f"node config value for {key!r} may not hold quotes or spaces: {value!r}")
            rendered = f'"{value}"'
        else:
            raise ConfigError(f"node config value for {key!r} must be bool, int, float or str, got {value!r}")
        parts.append(f"{key}={rendered}")
    return " ".join(parts)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _processes_with_token(token: str) -> list[int]:
    """Pids of live processes whose environment carries this deployment's token (Linux /proc)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


@dataclass(slots=True)
class _Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: object = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass(slots=True)
class FlowerDeployment:
    """A SuperLink and `num_supernodes` SuperNodes on this machine, as separate processes.

    Use it as a context manager: on exit every process it started (and every process those started)
    is terminated, also when the body raised.

    Args:
        num_supernodes: how many SuperNodes to start.
        node_configs: one mapping per SuperNode for `--node-config` (default: partition-id and
            num-partitions).
        workdir: where logs, the Flower home and app folders go (default: a fresh temp folder,
            removed on exit unless `keep_workdir`).
        host: the loopback address everything binds to.
        start_timeout: seconds to wait for all processes to be ready.
        env: extra environment for every process.
        keep_workdir: keep a temp workdir (and its logs) after closing.
        stop_grace: seconds processes get to exit on SIGTERM before SIGKILL.

    Raises:
        DeploymentError: from `start` when a process exits early or is not ready in time; the
            message carries the tail of its log.
    """

    num_supernodes: int
    node_configs: Sequence[Mapping[str, object]] | None = None
    workdir: Path | None = None
    host: str = "127.0.0.1"
    start_timeout: float = 60.0
    env: Mapping[str, str] = field(default_factory=dict)
    keep_workdir: bool = False
    stop_grace: float = 3.0
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    link_port: int = 0
    _procs: dict[str, _Proc] = field(default_factory=dict)
    _own_workdir: bool = False
    node_ids: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_supernodes < 1:
            raise ConfigError(f"num_supernodes must be >= 1, got {self.num_supernodes}")
        if self.node_configs is not None and len(self.node_configs) != self.num_supernodes:
            raise ConfigError(
                f"{len(self.node_configs)} node configs given for {self.num_supernodes} SuperNodes"
            )

    # ---------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> FlowerDeployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def flwr_home(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "flwr-home"

    @property
    def superlink_address(self) -> str:
        return f"{self.host}:{self.link_port}"

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env["FLWR_HOME"] = str(self.flwr_home)
        env[TOKEN_ENV] = self.token
        # Each SuperExec polls for new tasks; the default second adds up over a protocol's many steps.
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, name: str, argv: list[str]) -> _Proc:
        assert self.workdir is not None
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._base_env(),
            cwd=self.workdir,
            start_new_session=True,  # its own process group, so we can signal it and its children
        )
        proc = _Proc(name=name, popen=popen, log_path=log_path, log_file=log_file)
        self._procs[name] = proc
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return proc

    def start(self) -> None:
        """Start the SuperLink, then the SuperNodes, and wait until every node has registered."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="codream-flower-"))
            self._own_workdir = True
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        ports = free_ports(1 + self.num_supernodes, self.host)
        self.link_port = ports[0]
        (self.flwr_home / "config.toml").write_text(
            '[superlink]\ndefault = "codream-local"\n\n'
            f'[superlink.codream-local]\naddress = "{self.superlink_address}"\ninsecure = true\n'
        )
        deadline = time.monotonic() + self.start_timeout
        link = self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host",
                self.host,
                "--port",
                str(self.link_port),
                "--disable-runtime-dependency-installation",
            ],
        )
        self._wait(lambda: _port_open(self.host, self.link_port), link, deadline, "SuperLink port open")
        for i in range(self.num_supernodes):
            config = (
                dict(self.node_configs[i])
                if self.node_configs is not None
                else {"partition-id": i, "num-partitions": self.num_supernodes}
            )
            self._spawn(
                f"supernode-{i}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    self.superlink_address,
                    "--host",
                    self.host,
                    "--port",
                    str(ports[1 + i]),
                    "--node-config",
                    format_node_config(config),
                ],
            )
        for i in range(self.num_supernodes):
            proc = self._procs[f"supernode-{i}"]
            self._wait(
                lambda p=proc: _NODE_ID_RE.search(p.log_text()) is not None,
                proc,
                deadline,
                "SuperNode registered",
            )
            match = _NODE_ID_RE.search(proc.log_text())
            assert match is not None
            self.node_ids[i] = int(match.group(1))
        log.info(
            "Flower deployment ready: SuperLink %s, %d SuperNodes",
            self.superlink_address,
            self.num_supernodes,
        )

    def _wait(self, ready, proc: _Proc, deadline: float, what: str) -> None:
        while not ready():
            if not proc.alive():
                raise DeploymentError(
                    f"{proc.name} exited (code {proc.popen.returncode}) before {what}:\n"
                    f"{_tail(proc.log_text())}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"{proc.name}: no '{what}' within {self.start_timeout:.0f} s:\n{_tail(proc.log_text())}"
                )
            time.sleep(0.1)

    # ------------------------------------------------------------------------------------ runs
    def launch(self, app_dir: Path, *, name: str = "flwr-run") -> _Proc:
        """Submit the Flower app in `app_dir` to the SuperLink; returns the streaming `flwr run`."""
        return self._spawn(name, ["flwr", "run", str(app_dir), "codream-local", "--stream"])

    def wait_run(self, proc: _Proc, *, timeout: float) -> str:
        """Wait (bounded) for a launched run's log stream to end; returns its log.

        Raises:
            DeploymentError: when `flwr run` fails or does not end within `timeout` seconds.
        """
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop(proc)
            raise DeploymentError(
                f"the Flower run did not finish within {timeout:.0f} s:\n{_tail(proc.log_text())}"
            ) from None
        text = proc.log_text()
        if proc.popen.returncode != 0:
            raise DeploymentError(f"`flwr run` failed (exit {proc.popen.returncode}):\n{_tail(text)}")
        return text

    def kill_node(self, index: int) -> None:
        """Kill SuperNode `index` and everything it started, at once (SIGKILL): a crashed client."""
        proc = self._procs[f"supernode-{index}"]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        log.info("killed SuperNode %d (pid %d)", index, proc.popen.pid)

    def node_alive(self, index: int) -> bool:
        return self._procs[f"supernode-{index}"].alive()

    def log_of(self, name: str) -> str:
        """The log of one process: "superlink", "supernode-3", "flwr-run"."""
        return self._procs[name].log_text()

    # --------------------------------------------------------------------------------- cleanup
    def _stop(self, proc: _Proc, grace: float = 5.0) -> None:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        # The leader may be gone while others of its group live on.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop every process of this deployment; safe to call twice and after a failed start."""
        procs = list(self._procs.values())
        # Ask politely all at once (a SuperNode takes a few seconds to shut down), then insist.
        for proc in procs:
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            self._stop(proc, grace=0.0)
            if proc.log_file is not None:
                with contextlib.suppress(OSError):
                    proc.log_file.close()
        for _ in range(50):
            leftovers = _processes_with_token(self.token)
            if not leftovers:
                break
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        else:
            log.warning(
                "processes of deployment %s survived SIGKILL: %s",
                self.token,
                _processes_with_token(self.token),
            )
        if self._own_workdir and not self.keep_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leftover_processes(self) -> list[int]:
        """Pids still carrying this deployment's token (empty after `close`)."""
        return _processes_with_token(self.token)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
