"""A federation of real processes on loopback for the grpc runtime's tests.

A CA, a server kit and one client kit per site, one ``.npz`` per site cut
from digits, a run config, and helpers that start ``fedwarden server`` and
``fedwarden client`` as subprocesses and read back what they did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedwarden.core.config import DataConfig
from fedwarden.data import load_dataset
from fedwarden.data.sources import save_client_file
from fedwarden.deploy.pki import init_ca, issue

TESTS = Path(__file__).parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@dataclass
class Federation:
    """Paths and processes of one test federation."""

    root: Path
    sites: list[str]
    config_text: str
    port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    clients: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server_logs: list[Path] = field(default_factory=list)
    # How ``fedwarden`` is started: this interpreter here, or a command inside a container image.
    launcher: tuple[str, ...] = (sys.executable, "-m", "fedwarden.cli")

    @classmethod
    def create(cls, root: Path, sites: int = 5, **settings: Any) -> Federation:
        """Provision ``sites`` clients and write a run config with ``settings`` in TOML."""
        dataset = load_dataset(DataConfig(source="digits", num_clients=sites), seed=0)
        pki = root / "pki"
        init_ca(pki, "test")
        issue(pki, "server", "server")
        for client_id, data in dataset.clients.items():
            issue(pki, "client", client_id)
            save_client_file(data, root / "data" / f"{client_id}.npz")
        config = root / "run.toml"
        config.write_text(_toml(settings, runs_dir=root / "runs", sites=sites))
        return cls(root, dataset.client_ids, config.read_text())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def environment(self) -> dict[str, str]:
        """The subprocesses' environment: ``tests`` importable for scripted trainers."""
        path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": path}

    def start_server(self) -> subprocess.Popen[bytes]:
        """``fedwarden server`` with mutual TLS, its store and health port under ``root``."""
        log = self.root / f"server-{len(self.server_logs)}.log"
        self.server_logs.append(log)
        command = [
            *self.launcher,
            "server",
            str(self.root / "run.toml"),
            "--address",
            self.address,
            "--identity",
            str(self.pki / "servers" / "server"),
            "--store",
            f"sqlite:///{self.root / 'store.db'}",
            "--health-address",
            f"127.0.0.1:{self.health_port}",
        ]
        with open(log, "wb") as output:
            self.server = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=self.environment()
            )
        return self.server

    def start_client(
        self, client_id: str, data: Path | None = None, options: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """``fedwarden client`` for one site on its ``.npz`` (or ``data``), logging to its log."""
        command = [
            *self.launcher,
            "client",
            "--server",
            self.address,
            "--data",
            str(data or self.root / "data" / f"{client_id}.npz"),
            "--identity",
            str(self.pki / "clients" / client_id),
            *options,
        ]
        with open(self.client_log(client_id), "ab") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=self.environment()
            )
        self.clients[client_id] = process
        return process

    def start_clients(self, options: Sequence[str] = ()) -> None:
        for client_id in self.sites:
            self.start_client(client_id, options=options)

    def client_log(self, client_id: str) -> Path:
        return self.root / f"{client_id}.log"

    def wait_server(self, timeout: float = 240) -> int:
        """The server's exit status (the test fails if it runs past ``timeout``)."""
        assert self.server is not None
        try:
            return self.server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not finish:\n{self.server_output()}") from None

    def server_output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.server_logs)

    def run_dir(self) -> Path:
        (directory,) = (self.root / "runs").iterdir()
        return directory

    def completed_rounds(self) -> list[dict[str, Any]]:
        """The round records the server has checkpointed so far."""
        runs = self.root / "runs"
        if not runs.exists():
            return []
        metrics = [path / "metrics.json" for path in runs.iterdir()]
        if not metrics or not metrics[0].exists():
            return []
        records: list[dict[str, Any]] = json.loads(metrics[0].read_text())
        return records

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads((self.run_dir() / "summary.json").read_text())
        return summary

    def stop(self) -> None:
        """Kill whatever is still running (test teardown)."""
        for process in [self.server, *self.clients.values()]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()


def _toml(settings: dict[str, Any], runs_dir: Path, sites: int) -> str:
    sections: dict[str, dict[str, Any]] = {
        "data": {"source": "digits", "num_clients": sites},
        "model": {"kind": "softmax"},
        "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1},
        "sampling": {"scheme": "uniform", "cohort_size": sites, "deadline_s": 120},
        "runtime": {"kind": "grpc", "heartbeat_s": 1, "join_timeout_s": 120},
    }
    top: dict[str, Any] = {"name": "deployed", "rounds": 3, "runs_dir": str(runs_dir)}
    for key, value in settings.items():
        if isinstance(value, dict):
            sections.setdefault(key, {}).update(value)
        else:
            top[key] = value
    lines = [f"{key} = {json.dumps(value)}" for key, value in top.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
