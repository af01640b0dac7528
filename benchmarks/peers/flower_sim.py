"""Run the peer-benchmark workload on Flower's Simulation Engine (Ray backend).

One call starts Flower's Simulation Engine with one virtual SuperNode per
client, runs the ServerApp and ClientApp of :mod:`benchmarks.peers._flower_app`
for ``rounds`` rounds, and shuts the engine (and the Ray cluster it started)
down again. Flower's documented way to use all CPUs of one machine is to give
each ClientApp ``num_cpus=1``, so one Ray actor per core trains clients in
parallel; that is the configuration used here.

What ``seed`` controls: the initial model and every client's minibatch shuffle.
Flower samples the cohort with Python's ``random`` over node ids that it draws
itself, so cohorts are uniform without replacement but not reproducible.

Flower and Ray are imported when :func:`run_flower` is called, not before.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from benchmarks.peers._workload import (
    AccuracyTrace,
    ClientArrays,
    PeerResult,
    central_accuracy,
    check_workload,
    missing_bench_extra,
    peer_result,
)
from fedwarden.core.errors import FedwardenError

QUIET_LOG_LEVEL = logging.ERROR
"""Level of Flower's and Ray's logs during a run: progress and warnings are dropped, errors kept."""


def run_flower(
    clients: Sequence[ClientArrays],
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[np.int64],
    *,
    rounds: int,
    cohort_size: int,
    lr: float,
    seed: int,
    trace: AccuracyTrace | None = None,
) -> PeerResult:
    """Train softmax regression with FedAvg on Flower's Simulation Engine and time it.

    ``wall_s`` runs from just before ``flwr.simulation.run_simulation`` (so it
    includes starting Ray and its actor pool) to its return (after Ray is shut
    down); writing the client data to a temporary file happens before it, the
    central evaluation of the final model after it. With a ``trace``, the
    ServerApp scores the global model before the first round and after every
    round through the strategy's ``evaluate_fn`` (Flower's central evaluation),
    and that time is left out of ``wall_s``.

    Raises:
        ImportError: if Flower, Ray or PyTorch is not installed.
        ConfigError: if the workload arguments are out of range.
        FedwardenError: if Ray is already running in this process (Flower would
            shut it down), or a client failed during the run.
    """
    check_workload(clients, x_test, y_test, rounds=rounds, cohort_size=cohort_size, lr=lr)
    # Flower reads this when imported; a benchmark must not post telemetry events.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import ray
        from flwr.simulation import run_simulation

        from benchmarks.peers import _flower_app
        from benchmarks.peers._softmax_regression import (
            SoftmaxRegression,
            initial_model,
            linear_layer,
        )
    except ImportError as error:
        raise missing_bench_extra("Flower", error) from error
    if ray.is_initialized():
        raise FedwardenError(
            "Ray is already running in this process, and Flower's Simulation Engine would "
            "run on that cluster and shut it down when done; call run_flower before "
            "starting a Ray runtime or after ray.shutdown()"
        )

    model = initial_model(SoftmaxRegression, x_test.shape[1], seed)
    with tempfile.TemporaryDirectory(prefix="fedwarden-flower-") as data_dir:
        data_path = _write_partitions(clients, Path(data_dir))
        server_app, final_model = _flower_app.build_server_app(
            num_clients=len(clients),
            rounds=rounds,
            cohort_size=cohort_size,
            lr=lr,
            seed=seed,
            data_path=str(data_path),
            initial_model=model,
            trace=trace,
        )
        with _quiet_logs("flwr", "ray"):
            if trace is not None:
                trace.start()
            start = time.perf_counter()
            started_at = time.time()
            try:
                run_simulation(
                    server_app=server_app,
                    client_app=_flower_app.client_app,
                    num_supernodes=len(clients),
                    backend_config=_backend_config(),
                )
            finally:
                # Flower shuts Ray down itself; this only catches a run that died early.
                # Ray was not running before the call, so nothing of the caller's stops.
                if ray.is_initialized():
                    ray.shutdown()
            wall_s = (
                time.perf_counter() - start - (0.0 if trace is None else trace.evaluation_seconds)
            )
            wait_for_ray_to_exit(started_at)

    if final_model.arrays is None:
        raise FedwardenError(
            "Flower's simulation returned without a final global model; rerun with the "
            "'flwr' logger at INFO to see where the ServerApp stopped"
        )
    model.load_state_dict(final_model.arrays.to_torch_state_dict())
    return peer_result(
        f"flwr {version('flwr')}",
        rounds=rounds,
        cohort_size=cohort_size,
        wall_s=wall_s,
        accuracy=central_accuracy(*linear_layer(model), x_test, y_test),
    )


def wait_for_ray_to_exit(since: float, timeout_s: float = 30.0) -> None:
    """Wait until the Ray processes started after ``since`` (epoch seconds) have exited.

    ``ray.shutdown()`` returns while its actors, raylet and GCS are still
    exiting (about a second here, at full CPU), so the next framework's clock
    would run beside Ray's tear-down; off the clock, after ``timeout_s`` the
    benchmark goes on regardless.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        _is_ray(process, since)
        for process in psutil.process_iter(["name", "cmdline", "create_time"])
    ):
        time.sleep(0.05)


def _is_ray(process: psutil.Process, since: float) -> bool:
    """A process Ray started after ``since``: an actor (``ray::...``), raylet, GCS or helper."""
    names = [process.info["name"] or "", *(process.info["cmdline"] or [])]
    started = process.info["create_time"] or 0.0
    return started >= since - 1.0 and any(
        name.startswith(("ray::", "raylet", "gcs_server")) or "/ray/" in name for name in names
    )


def _backend_config() -> dict[str, dict[str, Any]]:
    """Ray backend settings: one CPU per ClientApp, so one actor per available core."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": _available_cores(),
            "num_gpus": 0,
            "logging_level": QUIET_LOG_LEVEL,
            "log_to_driver": False,
        },
    }


def _available_cores() -> int:
    """Count the cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _write_partitions(clients: Sequence[ClientArrays], data_dir: Path) -> Path:
    """Write client ``k``'s arrays as ``x_<k>`` and ``y_<k>`` into one ``.npz`` file."""
    path = data_dir / "partitions.npz"
    arrays: dict[str, Any] = {}
    for index, (features, labels) in enumerate(clients):
        arrays[f"x_{index}"] = np.ascontiguousarray(features, dtype=np.float32)
        arrays[f"y_{index}"] = np.ascontiguousarray(labels, dtype=np.int64)
    np.savez(path, **arrays)
    return path


@contextmanager
def _quiet_logs(*logger_names: str) -> Iterator[None]:
    """Set these loggers to ``QUIET_LOG_LEVEL`` for the block, then restore their levels.

    Restoring matters for Ray too: ``ray.init`` sets its logger's level for the whole process.
    """
    loggers = [logging.getLogger(name) for name in logger_names]
    previous_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(QUIET_LOG_LEVEL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous_levels, strict=True):
            logger.setLevel(level)
