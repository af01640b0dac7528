"""A seeded run on a two-node Ray cluster equals the same run on the local runtime.

The cluster is the one a user starts by hand on two machines: ``ray start --head`` and
a second ``ray start --address`` process, here both on loopback with one CPU each, so
the run's two engine actors (one CPU apiece) can only be placed one on each node.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedwarden.core.config import RunConfig
from fedwarden.server.launch import run

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _ray(*arguments: str, env: dict[str, str]) -> None:
    completed = subprocess.run(
        [RAY, *arguments], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``ray start --head`` and a second node process, one CPU each, on 127.0.0.1.

    The nodes and this process (the run's driver) share a fresh cluster token, as the
    machines of a real cluster would.
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(16))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's socket paths live under its temp dir and must stay short.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    address = f"127.0.0.1:{_free_port()}"
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        _ray(
            "start",
            "--head",
            f"--port={address.rpartition(':')[2]}",
            "--include-dashboard=false",
            f"--temp-dir={temp_dir}",
            *common,
            env=env,
        )
        _ray("start", f"--address={address}", *common, env=env)
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _final_vector(config: RunConfig, tmp_path: Path, name: str) -> dict[str, np.ndarray]:
    result = run(config.model_copy(update={"name": name}))
    assert result.run_dir is not None
    with np.load(Path(result.run_dir) / "model.npz") as model:
        return {key: model[key] for key in model.files}


def test_a_two_node_ray_cluster_trains_bit_identically_to_the_local_runtime(
    two_node_cluster: str, tmp_path: Path
) -> None:
    import ray

    values: dict[str, Any] = {
        "seed": 5,
        "rounds": 3,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"source": "digits", "num_clients": 6},
        "sampling": {"cohort_size": 4},
        "runtime": {"workers": 2},
    }
    local = _final_vector(RunConfig.from_mapping(values), tmp_path, "local")
    values["runtime"] = {"kind": "ray", "workers": 2, "address": two_node_cluster}
    on_cluster = _final_vector(RunConfig.from_mapping(values), tmp_path, "cluster")
    # The cluster the run connected to: two live nodes of one CPU each.
    ray.init(address=two_node_cluster, configure_logging=False, log_to_driver=False)
    alive = [node for node in ray.nodes() if node["Alive"]]
    ray.shutdown()
    assert len(alive) == 2
    assert all(node["Resources"]["CPU"] == 1 for node in alive)
    assert local.keys() == on_cluster.keys()
    for name in local:
        np.testing.assert_array_equal(on_cluster[name], local[name])
