"""A run's thread count reaches every native thread pool: torch's, numpy's BLAS, OpenMP, and the pools
of libraries loaded after the run's set-up (scipy's own OpenBLAS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import threadpoolctl
import torch

from codream.cli import run as run_module
from codream.cli.config import RunConfig
from codream.devices import THREAD_ENV_VARS, pin_threads
from codream.exceptions import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


class _Stop(Exception):
    """Raised by the stand-in engine once it has looked at the thread pools."""


@pytest.fixture
def two_threads_everywhere():
    """Every pool at 2 threads (so that pinning to 1 is visible on any machine), restored afterwards."""
    saved_env = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    saved_torch = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=2):  # restores every pool's original count on exit
        torch.set_num_threads(2)
        try:
            yield
        finally:
            torch.set_num_threads(saved_torch)
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _pool_threads() -> list[tuple[str, int]]:
    return [(pool["filepath"], pool["num_threads"]) for pool in threadpoolctl.threadpool_info()]


def test_a_run_pins_torch_blas_and_openmp_to_its_thread_count(tmp_path, two_threads_everywhere):
    seen: dict[str, object] = {}

    def engine(config, aggregator):
        seen["pools"] = _pool_threads()
        seen["torch"] = torch.get_num_threads()
        raise _Stop

    assert any(n == 2 for _, n in _pool_threads())
    with pytest.raises(_Stop):
        rc = RunConfig(rounds=1, threads=1, out=str(tmp_path / "run"))
        run_module.execute_run(rc, progress=False, federation_factory=engine)
    assert seen["torch"] == 1
    assert any("blas" in path or "openblas" in path for path, _ in seen["pools"])  # type: ignore[union-attr]
    assert all(n == 1 for _, n in seen["pools"]), seen["pools"]  # type: ignore[union-attr]
    assert all(os.environ[name] == "1" for name in THREAD_ENV_VARS)


def test_libraries_loaded_after_the_pinning_start_with_the_same_count():
    # A fresh interpreter whose environment asks for 2 threads everywhere; scipy's own OpenBLAS
    # loads only after the pinning and must still come up with 1 thread.
    script = (
        "import json, threadpoolctl, torch\n"
        "from codream.devices import pin_threads\n"
        "pin_threads(1)\n"
        "import scipy.linalg\n"
        "print(json.dumps({'torch': torch.get_num_threads(), 'pools': threadpoolctl.threadpool_info()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update({"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["torch"] == 1
    blas = [pool for pool in info["pools"] if pool["user_api"] == "blas"]
    assert blas, info["pools"]
    assert all(pool["num_threads"] == 1 for pool in info["pools"]), info["pools"]


def test_a_flower_node_pins_its_worker_to_the_node_thread_count(two_threads_everywhere):
    from codream.federation.config import DistillConfig, DreamConfig, FederationConfig
    from codream.federation.flower.engine import CodreamNode, config_to_dict
    from codream.federation.flower.wire import Payload

    config = FederationConfig(
        dataset="digits",
        num_clients=2,
        alpha=None,
        samples_per_client=30,
        limit_test=50,
        models=("mlp",),
        rounds=1,
        seed=5,
        dream=DreamConfig(batch_size=4, global_steps=1),
        distill=DistillConfig(kd_steps=1, batch_size=4, warmup_steps=1, buffer_size=8),
    )
    node = CodreamNode({"partition-id": 0, "num-partitions": 2, "torch-threads": 1})
    node.handle(Payload("setup", {"config": config_to_dict(config), "aggregation": "secure", "bits": 32}))
    assert torch.get_num_threads() == 1
    assert all(n == 1 for _, n in _pool_threads()), _pool_threads()


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_pin_threads_refuses_a_count_below_one_or_not_an_integer(threads):
    with pytest.raises(ConfigError):
        pin_threads(threads)  # type: ignore[arg-type]


def test_no_thread_count_leaves_every_pool_alone(two_threads_everywhere):
    before = _pool_threads()
    pin_threads(None)
    assert _pool_threads() == before and torch.get_num_threads() == 2
