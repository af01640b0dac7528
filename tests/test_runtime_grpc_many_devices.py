"""One server process holds many connected devices with a bounded number of threads.

Runs ``benchmarks/many_devices.py`` scaled down: 200 devices, each on its own
mutual-TLS connection with its own certificate, held by one server process
while it runs a round over a sampled cohort of 50. The server's threads must
not grow with its devices (a device waiting on its session is a coroutine),
and the round's aggregate must be exactly what the sampled devices sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
DEVICES, COHORT = 200, 50
THREAD_BOUND = 32
"""The server's threads whatever its devices: main, the event loop, the worker pool, gRPC's
own pollers and the benchmark's sampler; far fewer than the devices it holds."""


@pytest.mark.slow
def test_one_server_holds_200_devices_with_bounded_threads_and_aggregates_the_cohort() -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY / "src")}
    finished = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.many_devices"),
            *("--devices", str(DEVICES), "--cohort", str(COHORT), "--json"),
        ],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    figures = json.loads(finished.stdout.splitlines()[-1])
    assert figures["connected_at_round_start"] == DEVICES
    assert figures["load_generator_most_connected"] == DEVICES
    assert figures["participants"] == COHORT
    assert figures["accepted"] == COHORT
    assert figures["refused"] == [] and figures["failed"] == []
    expected = figures["expected_aggregate"]
    assert figures["aggregate_min"] == pytest.approx(expected, abs=1e-6)
    assert figures["aggregate_max"] == pytest.approx(expected, abs=1e-6)
    assert figures["server_max_threads"] <= THREAD_BOUND < DEVICES
