"""A seeded run on a two-node Ray cluster equals the same run on the local runtime.

The cluster is the one a user starts by hand on two machines: ``ray start --head`` and
a second ``ray start --address`` process, here both on this machine with one CPU each, so
the run's two engine actors (one CPU apiece) can only be placed one on each node. The
nodes and the run's driver share a fresh cluster token; the driver is a process of its own
(``fedwarden run``), as on a real cluster, so no earlier Ray session of the test process
can lend it another token.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
FEDWARDEN = [sys.executable, "-m", "fedwarden.cli"]
ALIVE_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
print(json.dumps([node["Resources"].get("CPU") for node in ray.nodes() if node["Alive"]]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _checked(command: list[str], env: dict[str, str]) -> str:
    completed = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


@pytest.fixture
def cluster_env() -> dict[str, str]:
    """The environment of every process of the cluster and of its driver."""
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def two_node_cluster(cluster_env: dict[str, str]) -> Iterator[str]:
    """``ray start --head`` and a second node process, one CPU each; the head's address."""
    # Ray's socket paths live under its temp dir and must stay short.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        _checked(
            [
                RAY,
                "start",
                "--head",
                f"--port={address.rpartition(':')[2]}",
                "--include-dashboard=false",
                f"--temp-dir={temp_dir}",
                *common,
            ],
            cluster_env,
        )
        _checked([RAY, "start", f"--address={address}", *common], cluster_env)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=cluster_env, capture_output=True, timeout=120)


def _final_model(config: Path, env: dict[str, str], runtime: str) -> dict[str, np.ndarray]:
    summary = json.loads(_checked([*FEDWARDEN, "run", str(config), "--json"], env))
    assert summary["runtime"] == runtime
    with np.load(Path(summary["run_dir"]) / "model.npz") as model:
        return {name: model[name] for name in model.files}


def test_a_two_node_ray_cluster_trains_bit_identically_to_the_local_runtime(
    two_node_cluster: str, cluster_env: dict[str, str], tmp_path: Path
) -> None:
    common = f"""
seed = 5
rounds = 3
runs_dir = "{tmp_path / "runs"}"
[data]
source = "digits"
num_clients = 6
[sampling]
cohort_size = 4
"""
    local_config = tmp_path / "local.toml"
    local_config.write_text(f'name = "local"{common}[runtime]\nworkers = 2\n')
    cluster_config = tmp_path / "cluster.toml"
    cluster_config.write_text(
        f'name = "cluster"{common}[runtime]\nkind = "ray"\nworkers = 2\n'
        f'address = "{two_node_cluster}"\n'
    )
    local = _final_model(local_config, cluster_env, "local")
    on_cluster = _final_model(cluster_config, cluster_env, "ray")
    # The cluster the run used: two live nodes of one CPU each, so one actor on each.
    alive = json.loads(_checked([sys.executable, "-c", ALIVE_NODES, two_node_cluster], cluster_env))
    assert alive == [1.0, 1.0]
    assert local.keys() == on_cluster.keys()
    for name in local:
        np.testing.assert_array_equal(on_cluster[name], local[name])
