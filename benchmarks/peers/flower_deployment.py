"""Time rounds of Flower's deployment runtime: a SuperLink and SuperNodes on loopback.

:func:`run_flower_deployment` starts what a Flower user starts by hand for a
deployment on one machine, each as its own process group:

- ``flower-superlink --insecure --port PORT`` (Flower 1.42 serves its Fleet,
  Control and ServerAppIo APIs over HTTP on that one port; runtime installation
  of app dependencies is off, the app needs nothing the environment lacks);
- ``num_nodes`` x ``flower-supernode --insecure --superlink 127.0.0.1:PORT
  --node-config "partition-id=K num-partitions=N"``;
- ``flwr run`` of the app in :mod:`_flower_deployment_app
  <benchmarks.peers._flower_deployment_app>`, with a Flower home of its own
  (``FLWR_HOME``) that names the SuperLink as the default connection.

Both SuperLink and SuperNodes keep their default ``subprocess`` isolation: the
SuperLink starts a ``flwr-serverapp`` for the run, and each SuperNode a
``flwr-clientapp`` per message. The ServerApp writes one JSON line per round to
a timings file (see the app's module docstring); this module waits for all the
rounds, then ends every process group it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Final

from fedwarden.core.errors import FedwardenError

logger = logging.getLogger(__name__)

APP_DIR: Final = Path(__file__).parent / "_flower_deployment_app"
"""The Flower App (``pyproject.toml`` and ``flower_round_app.py``) that ``flwr run`` submits."""

CONNECTION_NAME: Final = "benchmark"
"""Name of the SuperLink connection in the run's own Flower configuration."""

STOP_GRACE_S: Final = 10.0
"""How long a stopped process group may take to exit before it is killed."""


class FlowerDeploymentFailed(FedwardenError):
    """Flower's SuperLink, SuperNodes or run did not come up or finish as expected."""


@dataclass(frozen=True)
class FlowerDeploymentResult:
    """Per-round wall times of one Flower deployment run, as its ServerApp measured them.

    ``round_seconds[i]`` is round ``i + 1``; ``commands`` are the command lines
    that were started (one SuperNode's stands for all of them).
    """

    flwr_version: str
    num_nodes: int
    round_seconds: tuple[float, ...]
    commands: tuple[str, ...]


def run_flower_deployment(
    *,
    workdir: Path,
    num_nodes: int,
    rounds: int,
    model_size: int,
    timeout_s: float,
) -> FlowerDeploymentResult:
    """Run ``rounds`` FedAvg rounds on ``num_nodes`` SuperNodes and return each round's time.

    Raises:
        FlowerDeploymentFailed: if a process exits early, ``flwr run`` fails, or the
            rounds are not all done within ``timeout_s`` (logs stay in ``workdir``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    environment = _environment(workdir, port)
    timings = workdir / "timings.jsonl"
    timings.unlink(missing_ok=True)
    executables = Path(sys.executable).parent
    superlink_command = [
        str(executables / "flower-superlink"),
        "--insecure",
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]
    node_commands = [
        [
            str(executables / "flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{port}",
            "--port",
            str(_free_port()),
            "--node-config",
            f"partition-id={index} num-partitions={num_nodes}",
        ]
        for index in range(num_nodes)
    ]
    overrides = " ".join(
        [
            f"num-server-rounds={rounds}",
            f"num-nodes={num_nodes}",
            f"model-size={model_size}",
            f"timings-path={json.dumps(str(timings))}",
        ]
    )
    run_command = [str(executables / "flwr"), "run", str(APP_DIR), "--run-config", overrides]
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        processes.append(_start(superlink_command, workdir / "superlink.log", environment, logs))
        _wait_for_port(port, processes[0], timeout_s=60.0)
        for index, command in enumerate(node_commands):
            processes.append(_start(command, workdir / f"supernode-{index}.log", environment, logs))
        submitted = subprocess.run(
            run_command, env=environment, capture_output=True, timeout=120, check=False
        )
        if submitted.returncode != 0:
            raise FlowerDeploymentFailed(
                f"`flwr run` exited with {submitted.returncode}: "
                f"{submitted.stdout.decode(errors='replace')[-2000:]}"
                f"{submitted.stderr.decode(errors='replace')[-2000:]}"
            )
        round_seconds = _wait_for_rounds(timings, rounds, processes, workdir, timeout_s)
    finally:
        for process in processes:
            _stop(process)
        for log in logs:
            log.close()
    return FlowerDeploymentResult(
        flwr_version=version("flwr"),
        num_nodes=num_nodes,
        round_seconds=round_seconds,
        commands=tuple(
            shlex.join(command) for command in (superlink_command, node_commands[0], run_command)
        ),
    )


def _environment(workdir: Path, port: int) -> dict[str, str]:
    """This run's environment: its own Flower home naming the SuperLink, no telemetry."""
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    executables = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # The SuperLink and SuperNodes start flwr-serverapp, flower-superexec and
        # flwr-clientapp by name.
        "PATH": executables + os.pathsep + os.environ.get("PATH", ""),
    }


def _start(
    command: list[str], log_path: Path, environment: dict[str, str], logs: list[IO[bytes]]
) -> subprocess.Popen[bytes]:
    """Start ``command`` in a process group of its own, logging to ``log_path``."""
    log = log_path.open("wb")
    logs.append(log)
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=environment,
        start_new_session=True,
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until something accepts connections on loopback ``port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FlowerDeploymentFailed(
                f"flower-superlink exited with {process.returncode} before listening on "
                f"port {port}; see superlink.log"
            )
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FlowerDeploymentFailed(f"flower-superlink did not listen on port {port} in {timeout_s} s")


def _wait_for_rounds(
    timings: Path,
    rounds: int,
    processes: list[subprocess.Popen[bytes]],
    workdir: Path,
    timeout_s: float,
) -> tuple[float, ...]:
    """Wait for the ServerApp's ``rounds`` timing lines; their seconds in round order."""
    deadline = time.monotonic() + timeout_s
    records: list[dict[str, float]] = []
    while time.monotonic() < deadline:
        if timings.exists():
            records = [json.loads(line) for line in timings.read_text().splitlines() if line]
            if len(records) >= rounds:
                records.sort(key=lambda record: record["round"])
                return tuple(float(record["seconds"]) for record in records[:rounds])
        exited = [process.args for process in processes if process.poll() is not None]
        if exited:
            raise FlowerDeploymentFailed(
                f"{len(exited)} Flower process(es) exited mid-run (first: {exited[0]!r}); "
                f"see the logs in {workdir}"
            )
        time.sleep(0.5)
    raise FlowerDeploymentFailed(
        f"only {len(records)} of {rounds} Flower rounds finished in {timeout_s:.0f} s; "
        f"see the logs in {workdir}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the process group ``process`` leads: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit on SIGTERM; killing it", process.args)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
