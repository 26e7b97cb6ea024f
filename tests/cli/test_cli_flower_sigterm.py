"""SIGTERM to `codream run --engine flower` stops every process the run started, as Ctrl-C does.

The run is started as a real process with a marker in its environment, which every process it starts
inherits (SuperLink, SuperExec, SuperNodes, ServerApp, ClientApps, workers); after SIGTERM no live
process may carry the marker. Every wait is bounded, and whatever is left is killed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower engine needs flwr (pip install codream[flower])")

pytestmark = [pytest.mark.flower, pytest.mark.slow]

MARKER_ENV = "CODREAM_TEST_MARKER"
SRC = Path(__file__).resolve().parents[2] / "src"
TINY = [
    "--clients", "2", "--models", "mlp", "--dream-batch", "8", "--global-steps", "1", "--kd-steps", "2",
    "--warmup-steps", "3", "--limit-test", "60", "--no-progress",
]  # fmt: skip


def marked_processes(marker: str) -> dict[int, str]:
    """Live processes whose environment carries the marker, with their command names (Linux /proc)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
        except OSError:  # gone, or a zombie
            continue
    return found


def wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early (exit {proc.returncode}):\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"not ready within {timeout:.0f} s")
        time.sleep(0.25)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_sigterm_stops_every_process_of_a_flower_run(tmp_path):
    marker = secrets.token_hex(8)
    out = tmp_path / "run"
    env = dict(
        os.environ, **{MARKER_ENV: marker}, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    )
    argv = [sys.executable, "-c", "from codream.cli import main; main()", "run", *TINY,
            "--engine", "flower", "--rounds", "50", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        logs = out / "flower" / "logs"
        # The ServerApp has reached the protocol once progress.jsonl exists: every kind of process runs.
        wait_for(lambda: (out / "flower" / "progress.jsonl").exists(), 240, proc)
        started = marked_processes(marker)
        assert len(started) >= 6, started  # the CLI, SuperLink, 2 SuperNodes and their children
        # The log folder the run printed is where the processes write, while they run.
        assert (logs / "superlink.log").stat().st_size > 0 and (logs / "supernode-1.log").is_file()

        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop within 60 s of SIGTERM")
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert f"(logs in {logs})" in stdout
        assert "before the deployment finished a round, so there is nothing to resume" in stderr
        assert f"`codream run --config {out}/config.toml --out {out}-2`" in stderr
        assert "Traceback" not in stderr
        assert marked_processes(marker) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pid in marked_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
