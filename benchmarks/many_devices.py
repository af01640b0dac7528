"""Many devices on one server: N mutual-TLS devices held by one process, a round over a cohort.

Run from the repository root (opacus ships a top-level ``benchmarks`` package)::

    .venv/bin/python -m benchmarks.many_devices [--devices 2000] [--cohort 500] [--json]

What it does, all on loopback:

1. **PKI**: a deployment CA, the server's kit and one client kit per device
   (ECDSA P-256 TLS certificate bound to its own Ed25519 identity key), made
   with :mod:`fedwarden.deploy.pki` as ``fedwarden pki issue`` makes them.
2. **Server process**: the ``grpc`` runtime (``grpc.aio``, mutual TLS, the
   run store as its journal) under a FedAvg :class:`~fedwarden.server.Server`
   over a small softmax model; it waits until every device has joined, then
   runs one round over a cohort sampled from all of them.
3. **Load generator**: this process, one ``grpc.aio`` event loop speaking the
   real protocol for every device, each on its own TLS connection with its
   own certificate: ``Join``, the ``Connect`` session with heartbeats, and for
   a fit task ``Download`` (checked against its SHA-256) and a signed
   ``Upload`` (built by the client's own :func:`signed_upload`). Device ``i``
   sends the constant update ``0.125 (1 + i mod 4)`` with ``1 + i mod 3``
   examples, so the round's aggregate is known.

It prints the connections the server held when the round started, the
round's time, the server's peak RSS and its thread count (the most seen,
sampled every 50 ms from ``/proc/self/task``), and checks the new global
model against the weighted mean of what the sampled devices sent.
``RLIMIT_NOFILE`` is raised to its hard limit in both processes (one socket
per device on each side). Nothing here asserts a time: this is a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedwarden.core.messages import ClientUpdate, TrainConfig
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.governance.store import RunStore
from fedwarden.models.numpy import softmax_regression
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import _Stubs, signed_upload, upload_stream
from fedwarden.runtime.grpc.credentials import ClientKit, TlsKit
from fedwarden.runtime.grpc.server import GrpcRuntime
from fedwarden.runtime.grpc.service import RunDescription
from fedwarden.runtime.grpc.wire import grpc_options, version_message
from fedwarden.server import CentralTestSet, Server, ServerSettings
from fedwarden.strategies import FedAvg, UniformSampler

RUN_ID = "many-devices"
FEATURES, CLASSES = 20, 4
"""A small softmax model: 84 parameters."""
HEARTBEAT_S = 30.0
CONNECTING_AT_ONCE = 64
"""Devices the load generator connects at a time (TLS handshakes in flight)."""
REPOSITORY = Path(__file__).resolve().parents[1]


def device_name(index: int) -> str:
    return f"device-{index:05d}"


def device_update(index: int) -> tuple[float, int]:
    """Device ``index``'s constant update value and its example count."""
    return 0.125 * (1 + index % 4), 1 + index % 3


def raise_open_files() -> int:
    """Raise the soft limit of open files to the hard one; the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def make_pki(root: Path, devices: int) -> Path:
    pki = root / "pki"
    init_ca(pki, "many-devices")
    issue(pki, "server", "server")
    for index in range(devices):
        issue(pki, "client", device_name(index))
    return pki


# --- the server process ----------------------------------------------------------------------


class ProcessWatch:
    """The process's most threads and resident memory, sampled every 50 ms."""

    def __init__(self) -> None:
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="process-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.max_threads = max(self.max_threads, len(os.listdir("/proc/self/task")))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_mib() -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    status = Path("/proc/self/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def serve(root: Path, devices: int, cohort: int) -> None:
    """The server process: hold every device, run one round over ``cohort`` of them."""
    open_files = raise_open_files()
    watch = ProcessWatch()
    client_ids = [device_name(index) for index in range(devices)]
    store = RunStore.sqlite(root / "store.db")
    store.create_run(RUN_ID, "many devices", "{}", str(root))
    trainer = softmax_regression(FEATURES, CLASSES)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=64)
    dataset = FederatedDataset(
        RUN_ID, {"server": ClientData("server", x, y, x, y)}, x, y, FEATURES, CLASSES
    )
    runtime = GrpcRuntime(
        "127.0.0.1:0",
        tls=TlsKit.from_dir(root / "pki" / "servers" / "server"),
        journal=store,
        run=RunDescription(RUN_ID, "{}", FEATURES, CLASSES),
        spool_dir=root / "spool",
        expected_clients=client_ids,
        heartbeat_s=HEARTBEAT_S,
        join_timeout_s=900.0,
    )
    pipeline = Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean())
    server = Server(
        trainer=trainer,
        strategy=FedAvg(TrainConfig(local_epochs=1, batch_size=16, learning_rate=0.1)),
        sampler=UniformSampler(cohort),
        pipeline=pipeline,
        runtime=runtime,
        client_ids=client_ids,
        settings=ServerSettings(rounds=1, seed=0, min_cohort=1, deadline_s=600.0),
        central_test=CentralTestSet(x, y),
    )
    print(json.dumps({"port": runtime.serve()}), flush=True)
    started = time.monotonic()
    runtime.start(Workload(dataset, trainer, pipeline.stages, 0))
    joined_s = time.monotonic() - started
    connected = len(runtime.connected_clients())
    threads_held = len(os.listdir("/proc/self/task"))
    before = server.vector.astype(np.float64)
    started = time.monotonic()
    record = server.run_round(0)
    round_s = time.monotonic() - started
    aggregate = server.vector.astype(np.float64) - before
    threads_after_round = len(os.listdir("/proc/self/task"))
    watch.stop()
    figures = {
        "devices": devices,
        "cohort": cohort,
        "connected_at_round_start": connected,
        "participants": record.participants,
        "join_all_s": round(joined_s, 2),
        "round_s": round(round_s, 3),
        "server_peak_rss_mib": round(peak_rss_mib(), 1),
        "server_threads_while_holding": threads_held,
        "server_threads_after_round": threads_after_round,
        "server_max_threads": max(watch.max_threads, threads_held, threads_after_round),
        "server_worker_threads": runtime.limits.worker_threads,
        "open_files_limit": open_files,
        "aggregate_min": float(aggregate.min()),
        "aggregate_max": float(aggregate.max()),
    }
    print(json.dumps(figures), flush=True)
    runtime.close()
    store.close()


# --- the load generator ----------------------------------------------------------------------


@dataclass
class Load:
    """What the devices did, counted on the load generator's one event loop."""

    connected: int = 0
    most_connected: int = 0
    accepted: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Device index -> (update value, examples) of each accepted upload."""
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def device(
    index: int, kit: ClientKit, address: str, load: Load, connecting: asyncio.Semaphore
) -> None:
    """One device: join, hold the session, answer a fit task, leave when the run is over."""
    client_id = kit.client_id
    options = [*grpc_options(), ("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.secure_channel(address, kit.tls.channel_credentials(), options) as channel:
        stubs = _Stubs.on(channel)
        hello = pb.JoinRequest(
            version=version_message(),
            client_id=client_id,
            identity_public_key=kit.identity.public_key().public_bytes_raw(),
        )
        async with connecting:
            reply: pb.JoinReply = await stubs.join(hello, timeout=600)
        stop = asyncio.Event()

        async def signals() -> Any:
            yield pb.ClientSignal(hello=hello)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), reply.heartbeat_seconds)
                except TimeoutError:
                    yield pb.ClientSignal(heartbeat=pb.Heartbeat())

        call = stubs.connect(signals())
        load.connected += 1
        load.most_connected = max(load.most_connected, load.connected)
        try:
            async for task in call:
                if task.WhichOneof("kind") == "finished":
                    break
                await answer(index, kit, stubs, task, load)
        finally:
            load.connected -= 1
            stop.set()


async def answer(index: int, kit: ClientKit, stubs: _Stubs, task: pb.Task, load: Load) -> None:
    """Download the task's model, check it, and upload this device's signed update."""
    request = pb.DownloadRequest(run_id=task.run_id, version=task.model.version)
    model = b"".join([bytes(chunk) async for chunk in stubs.download(request)])
    if hashlib.sha256(model).digest() != task.model.sha256:
        load.failed.append(f"{kit.client_id}: the model does not match its hash")
        return
    value, examples = device_update(index)
    vector = np.full(len(model) // VECTOR_DTYPE.itemsize, value, dtype=VECTOR_DTYPE)
    update = ClientUpdate(task.round_index, kit.client_id, vector, num_examples=examples)
    header, body = signed_upload(task, kit.client_id, update, kit.identity)
    receipt: pb.UploadReceipt = await stubs.upload(upload_stream(header, body))
    if receipt.accepted:
        load.accepted[index] = (value, examples)
    else:
        load.refused.append(f"{kit.client_id}: {receipt.reason} {receipt.message}")


async def generate_load(pki: Path, devices: int, address: str) -> Load:
    load = Load()
    kits = [ClientKit.from_dir(pki / "clients" / device_name(index)) for index in range(devices)]
    connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)
    results = await asyncio.gather(
        *(device(index, kit, address, load, connecting) for index, kit in enumerate(kits)),
        return_exceptions=True,
    )
    load.failed += [repr(result) for result in results if isinstance(result, BaseException)]
    return load


def expected_aggregate(accepted: dict[int, tuple[float, int]]) -> float:
    """The weighted mean of the accepted devices' constant updates."""
    total = sum(examples for _, examples in accepted.values())
    return sum(value * examples for value, examples in accepted.values()) / total


def run(devices: int, cohort: int) -> dict[str, Any]:
    """The whole benchmark; its figures as one dict."""
    raise_open_files()
    with tempfile.TemporaryDirectory(prefix="many-devices-") as folder:
        root = Path(folder)
        started = time.monotonic()
        pki = make_pki(root, devices)
        pki_s = time.monotonic() - started
        command = [sys.executable, "-m", "benchmarks.many_devices", "--serve", str(root)]
        server = subprocess.Popen(
            [*command, "--devices", str(devices), "--cohort", str(cohort)],
            cwd=REPOSITORY,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        try:
            port = json.loads(server.stdout.readline())["port"]
            load = asyncio.run(generate_load(pki, devices, f"127.0.0.1:{port}"))
            line = server.stdout.readline()
            server.wait(timeout=120)
        except BaseException:
            server.kill()
            raise
        if not line:
            raise SystemExit(
                f"the server process ended without its figures (exit {server.returncode})"
            )
        figures: dict[str, Any] = json.loads(line)
    figures.update(
        pki_s=round(pki_s, 1),
        load_generator_most_connected=load.most_connected,
        accepted=len(load.accepted),
        refused=load.refused,
        failed=load.failed[:10],
        expected_aggregate=expected_aggregate(load.accepted) if load.accepted else None,
        load_generator_peak_rss_mib=round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--cohort", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print only the figures as JSON")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.devices, args.cohort)
        return
    figures = run(args.devices, args.cohort)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"devices connected (server, at round start): {figures['connected_at_round_start']}")
    print(f"cohort sampled / uploads accepted: {figures['participants']} / {figures['accepted']}")
    print(f"all devices joined in: {figures['join_all_s']} s (certificates: {figures['pki_s']} s)")
    print(f"round time: {figures['round_s']} s")
    print(f"server peak RSS: {figures['server_peak_rss_mib']} MiB")
    print(
        f"server threads: {figures['server_threads_while_holding']} while holding every device, "
        f"{figures['server_max_threads']} at most ({figures['server_worker_threads']} workers)"
    )
    print(
        f"aggregate: {figures['aggregate_min']:.6f}..{figures['aggregate_max']:.6f}, "
        f"expected {figures['expected_aggregate']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
