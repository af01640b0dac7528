"""Scale in simulation: client-rounds/s and peak memory at 1,000, 10,000 and 100,000 clients.

Workload (issue 20): FedProx Synthetic(1, 1) with N clients, each generated on
demand in the worker that trains it, softmax regression 60 -> 10, one local
epoch of SGD with batch 10 and learning rate 0.05, FedAvg over a uniform
cohort of 1,000 clients per round, the local runtime with one worker per
core. Each N runs in a fresh process. Peak RSS is the largest sum of the
parent's and the workers' resident memory, sampled every 50 ms. Throughput is
client-rounds per second of the timed rounds, after a first round that is not
counted (the workers import their modules and receive their share while it
runs: a small share fits the pipe's buffer and the start returns at once, a
large one waits for the worker); ``load_s`` is building the data set (sizes
and the central test set), ``start_s`` starting the workers.

Run: ``python -m benchmarks.scale`` (N = 1,000, 10,000 and 100,000) or
``python -m benchmarks.scale --clients 100000 --rounds 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

from fedwarden.core.config import DataConfig
from fedwarden.core.messages import TrainConfig
from fedwarden.data import load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import LocalRuntime, Workload
from fedwarden.server import Server, ServerSettings
from fedwarden.strategies import FedAvg, UniformSampler

SAMPLE_INTERVAL_S = 0.05


class PeakMemory:
    """Samples the resident memory of this process and its children; keeps the largest sum."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        parent = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [parent, *parent.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak_bytes = max(self.peak_bytes, total)
            time.sleep(SAMPLE_INTERVAL_S)


def run_once(num_clients: int, cohort_size: int, rounds: int, seed: int) -> dict[str, Any]:
    """One run at ``num_clients``; returns throughput, phases and peak RSS."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        dataset = load_dataset(DataConfig(source="synthetic", num_clients=num_clients), seed)
        loaded = time.perf_counter()
        trainer = softmax_regression(dataset.num_features, 10)
        train = TrainConfig(local_epochs=1, batch_size=10, learning_rate=0.05)
        pipeline = Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean())
        runtime = LocalRuntime()
        with runtime:
            server = Server(
                trainer=trainer,
                strategy=FedAvg(train),
                sampler=UniformSampler(cohort_size),
                pipeline=pipeline,
                runtime=runtime,
                client_ids=dataset.client_ids,
                settings=ServerSettings(rounds=rounds + 1, seed=seed),
            )
            runtime.start(Workload(dataset, trainer, pipeline.stages, seed))
            ready = time.perf_counter()
            server.run_round(0)
            warm = time.perf_counter()
            for round_index in range(1, rounds + 1):
                server.run_round(round_index)
            finished = time.perf_counter()
            workers = runtime.num_workers
        accuracy = trainer.evaluate(server.vector, dataset.x_test, dataset.y_test)["accuracy"]
    return {
        "clients": num_clients,
        "cohort": cohort_size,
        "rounds": rounds,
        "workers": workers,
        "client_rounds_per_s": rounds * cohort_size / (finished - warm),
        "load_s": loaded - started,
        "start_s": ready - loaded,
        "first_round_s": warm - ready,
        "rounds_s": finished - warm,
        "peak_rss_mb": memory.peak_bytes / 2**20,
        "accuracy": accuracy,
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    """Run each N in a fresh process and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="*", default=[1_000, 10_000, 100_000])
    parser.add_argument("--cohort", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_once(args.clients[0], args.cohort, args.rounds, args.seed)))
        return
    results = []
    for num_clients in args.clients:
        command = [sys.executable, "-m", "benchmarks.scale", "--one", "--clients"]
        command += [str(num_clients), "--cohort", str(args.cohort), "--rounds", str(args.rounds)]
        command += ["--seed", str(args.seed)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        print(
            f"N = {num_clients:>7,}  cohort {result['cohort']:,}  {result['rounds']} rounds  "
            f"{result['client_rounds_per_s']:>7.0f} client-rounds/s  "
            f"peak RSS {result['peak_rss_mb']:>6.0f} MB  load {result['load_s']:.1f} s  "
            f"start {result['start_s']:.1f} s  first round {result['first_round_s']:.1f} s  "
            f"accuracy {result['accuracy']:.3f}  "
            f"load average {result['load_average_1m']:.1f}",
            flush=True,
        )
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
