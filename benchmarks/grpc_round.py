"""Round overhead of the gRPC deployment runtime: a 10M-parameter model, 10 clients, loopback.

Run from the repository root (opacus ships a top-level ``benchmarks`` package)::

    .venv/bin/python -m benchmarks.grpc_round [--repeats N] [--without-fsync]
        [--flower-rounds N] [--skip-flower]

Five measurements, printed as a table and then as one JSON line. The raw TLS
round and the fedwarden runs alternate (raw, run, raw, run, ..., raw), so a
machine shared with other work loads both alike; each is also given in CPU
seconds (the server process and its client processes together), which other
work on the machine disturbs far less than wall time:

1. **Wire format**: a 40 MB ``float32`` vector cut by :func:`wire.chunks` into
   ``UploadChunk`` (upload) or ``Chunk`` (download) messages, serialized on the
   sender, parsed on the receiver, hashed with SHA-256 and written into a
   buffer, in GB/s; and Flower 1.42's wire form of the same vector (an
   ``ArrayRecord`` deflated into content-addressed chunks, each in a
   ``PushObjectRequest``, and inflated back to NumPy).
2. **Raw transfer**: the bytes of one round without any protocol: 10 client
   processes each download 40 MB from one server and upload 40 MB back over
   plain TCP sockets, then over TLS sockets with mutual authentication by ECDSA
   P-256 certificates from :mod:`fedwarden.deploy.pki` (what gRPC uses too);
   and a **bare gRPC round**: the same bytes in the runtime's framed chunks
   over ``grpc.aio`` with mutual TLS and no protocol (no hashing, signing,
   spooling or aggregation), the floor of any protocol on this transport.
3. **fedwarden round**: ``fedwarden run`` of a ``runtime.kind = "grpc"`` config
   (server in process, 10 ``fedwarden client`` processes, mutual TLS) with the
   zero-cost trainer of :mod:`benchmarks.peers._constant_update`; the median
   ``round_seconds`` of rounds 2..5 of every run (round 1 includes connecting),
   and its ratio to the median TLS raw transfer. Also the cost of spooling one
   update durably (write 40 MB and ``fsync``), which the server pays before every
   receipt, and with ``--without-fsync`` one more run with ``os.fsync`` a no-op
   in the server process (what durability costs; the product always fsyncs).
4. **Flower's deployment runtime**, same model size, 10 SuperNodes (see
   :mod:`benchmarks.peers.flower_deployment`), and the ratio Flower / fedwarden.
5. Machine and command lines.

Nothing here asserts a time: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import unittest.mock
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import numpy as np
import psutil

from benchmarks.peers._constant_update import MODEL_SIZE
from benchmarks.peers.flower_deployment import FlowerDeploymentFailed, run_flower_deployment
from fedwarden.build.run import run
from fedwarden.core.config import RunConfig
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.runtime.grpc.credentials import TlsKit
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    CHUNK_DATA_TAG,
    UPLOAD_DATA_TAG,
    chunks,
    framed,
    grpc_options,
    read_chunk,
    read_upload_chunk,
)
from fedwarden.server.server import Server

NUM_CLIENTS: Final = 10
ROUNDS: Final = 5
FLOWER_ROUNDS: Final = 3
"""Flower's rounds: on a small machine each takes tens of seconds (see the module docstring)."""

PAYLOAD_BYTES: Final = MODEL_SIZE * 4
WIRE_REPEATS: Final = 3
"""Each wire measurement is the best of this many passes over the 40 MB vector."""

RAW_CHUNK: Final = 1 << 20
"""Bytes per socket call in the raw transfer."""

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
COMMAND: Final = ".venv/bin/python -m benchmarks.grpc_round"


@dataclass(frozen=True)
class WireThroughput:
    """GB/s (10^9 bytes per second) of one wire format, each way, over a 40 MB vector."""

    upload_gb_s: float
    download_gb_s: float
    serialize_upload_gb_s: float | None = None
    """Framing and parsing alone, without the integrity hash (fedwarden only)."""
    serialize_download_gb_s: float | None = None


@dataclass(frozen=True)
class RawRound:
    """One raw round: wall seconds, and CPU seconds of the server and client processes."""

    wall_s: float
    cpu_s: float


@dataclass(frozen=True)
class RawTransfer:
    """Raw rounds over plain TCP (one) and mutual TLS (one before and after each fedwarden run).

    ``grpc`` holds the bare gRPC rounds (:func:`bare_grpc_round`), one beside each TLS round.
    """

    tcp: RawRound
    tls: tuple[RawRound, ...]
    grpc: tuple[RawRound, ...]

    @property
    def tls_median(self) -> RawRound:
        """Median wall and median CPU seconds of the TLS raw rounds."""
        return _median_round(self.tls)

    @property
    def grpc_median(self) -> RawRound:
        """Median wall and median CPU seconds of the bare gRPC rounds."""
        return _median_round(self.grpc)


def _ratios(over: RawRound, under: RawRound) -> str:
    """``over``'s wall and CPU seconds as multiples of ``under``'s."""
    return f"{over.wall_s / under.wall_s:.2f}x / {over.cpu_s / under.cpu_s:.2f}x"


def _median_round(rounds: tuple[RawRound, ...]) -> RawRound:
    return RawRound(
        statistics.median(round_.wall_s for round_ in rounds),
        statistics.median(round_.cpu_s for round_ in rounds),
    )


@dataclass(frozen=True)
class FedwardenRounds:
    """The grpc runtime's rounds (wall and CPU seconds), and what spooling one update costs."""

    round_seconds: tuple[float, ...]
    round_cpu_seconds: tuple[float, ...]
    """CPU seconds of the server process and the client processes over each round."""
    round_server_cpu_seconds: tuple[float, ...]
    """The server process's share of ``round_cpu_seconds``."""
    spool_fsync_s: float

    @property
    def median_s(self) -> float:
        """Median round time after the first round (which includes connection set-up)."""
        return statistics.median(self.round_seconds[1:])

    @property
    def median_cpu_s(self) -> float:
        """Median CPU seconds of a round after the first."""
        return statistics.median(self.round_cpu_seconds[1:])

    @property
    def median(self) -> RawRound:
        """The median wall and median CPU seconds of a round after the first, as a raw round's."""
        return RawRound(self.median_s, self.median_cpu_s)

    @property
    def median_server_cpu_s(self) -> float:
        """Median CPU seconds of the server process in a round after the first."""
        return statistics.median(self.round_server_cpu_seconds[1:])


def pooled(runs: list[FedwardenRounds]) -> FedwardenRounds:
    """Several runs as one: rounds 2..5 of each (the first of the result is a placeholder)."""
    return FedwardenRounds(
        round_seconds=(math.nan, *(s for run in runs for s in run.round_seconds[1:])),
        round_cpu_seconds=(math.nan, *(s for run in runs for s in run.round_cpu_seconds[1:])),
        round_server_cpu_seconds=(
            math.nan,
            *(s for run in runs for s in run.round_server_cpu_seconds[1:]),
        ),
        spool_fsync_s=statistics.median(run.spool_fsync_s for run in runs),
    )


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds so far of this process and of its living child processes, all threads."""
    process = psutil.Process()
    children = 0.0
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            children += sum(child.cpu_times()[:2])
    return sum(process.cpu_times()[:2]), children


def best_seconds(action: Callable[[], None], repeats: int = WIRE_REPEATS) -> float:
    """Fastest of ``repeats`` timed calls of ``action``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def fedwarden_wire(vector: np.ndarray[Any, Any]) -> WireThroughput:
    """Throughput of fedwarden's chunked upload and download, end to end in one process.

    The code paths of the runtime: the sender frames each 1 MiB chunk as an
    ``UploadChunk`` (``Chunk`` for downloads) with :func:`framed`, the receiver
    reads it with :func:`read_upload_chunk` (:func:`read_chunk`) and writes it
    into a buffer (the spool; the client's model vector). ``serialize_*``
    stops there; ``upload``/``download`` add the SHA-256 the server computes
    over an upload and the client over a download.
    """
    body = memoryview(vector.data)
    received = bytearray(body.nbytes)
    target = memoryview(received)

    def move(tag: int, hashed: bool) -> None:
        digest = hashlib.sha256()
        filled = 0
        for piece in chunks(body):
            raw = framed(tag, piece)
            data = read_upload_chunk(raw) if tag == UPLOAD_DATA_TAG else read_chunk(raw)
            assert isinstance(data, memoryview)
            if hashed:
                digest.update(data)
            target[filled : filled + len(data)] = data
            filled += len(data)
        digest.digest()

    seconds: dict[str, float] = {}
    for name, tag, hashed in (
        ("upload", UPLOAD_DATA_TAG, True),
        ("download", CHUNK_DATA_TAG, True),
        ("serialize_upload", UPLOAD_DATA_TAG, False),
        ("serialize_download", CHUNK_DATA_TAG, False),
    ):
        seconds[name] = best_seconds(functools.partial(move, tag, hashed))
    return WireThroughput(
        upload_gb_s=body.nbytes / seconds["upload"] / 1e9,
        download_gb_s=body.nbytes / seconds["download"] / 1e9,
        serialize_upload_gb_s=body.nbytes / seconds["serialize_upload"] / 1e9,
        serialize_download_gb_s=body.nbytes / seconds["serialize_download"] / 1e9,
    )


def _pair(wire: WireThroughput, *, serialized: bool) -> str:
    """Upload and download GB/s of a wire measurement, as "up / down"."""
    if serialized:
        return f"{wire.serialize_upload_gb_s:.2f} / {wire.serialize_download_gb_s:.2f}"
    return f"{wire.upload_gb_s:.2f} / {wire.download_gb_s:.2f}"


def flower_wire(vector: np.ndarray[Any, Any]) -> WireThroughput | str:
    """Throughput of Flower 1.42's object push of an ``ArrayRecord``, or why it was not measured.

    Sender: build the ``ArrayRecord`` (NumPy's ``.npy`` bytes), deflate it and
    its ``ArrayChunk`` children (each named by its SHA-256), wrap each in a
    ``PushObjectRequest`` and serialize it. Receiver: parse the requests,
    inflate the record from the contents and read the NumPy array back. Flower
    moves the same objects both ways, so upload and download are the same figure.
    """
    try:
        from flwr.app import ArrayRecord
        from flwr.proto.message_pb2 import PushObjectRequest
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
        from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
    except ImportError as error:
        return f"flwr's object API is not importable ({error})"

    def round_trip() -> None:
        record = ArrayRecord([vector])
        objects = get_all_nested_objects(record)
        wire = [
            PushObjectRequest(
                object_id=object_id, object_content=item.deflate()
            ).SerializeToString()
            for object_id, item in objects.items()
        ]
        contents = {}
        for data in wire:
            request = PushObjectRequest.FromString(data)
            contents[request.object_id] = request.object_content
        inflated = inflate_object_from_contents(record.object_id, contents)
        assert isinstance(inflated, ArrayRecord)
        inflated.to_numpy_ndarrays()

    throughput = vector.nbytes / best_seconds(round_trip) / 1e9
    return WireThroughput(upload_gb_s=throughput, download_gb_s=throughput)


def raw_round(pki: Path | None) -> RawRound:
    """One round's bytes over TCP (``pki`` None) or mutual TLS, 10 client processes.

    Wall time from the server sending the first byte to the last client's upload
    fully received; CPU time of this process and the (exited) clients.
    """
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = time.process_time()
    wall_s = _raw_round(pki)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = (
        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    )
    return RawRound(wall_s, time.process_time() - cpu_before + children_cpu)


def _raw_round(pki: Path | None) -> float:
    """From the server sending the first byte to the last client's upload fully received."""
    server_context = None
    if pki is not None:
        server_kit = pki / "servers" / "server"
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(server_kit / "tls.crt", server_kit / "tls.key")
        server_context.load_verify_locations(server_kit / "ca.crt")
        server_context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0), backlog=NUM_CLIENTS)
    port = listener.getsockname()[1]
    processes_context = multiprocessing.get_context("fork")
    clients = [
        processes_context.Process(target=_raw_client, args=(port, pki)) for _ in range(NUM_CLIENTS)
    ]
    for client in clients:
        client.start()
    connections: list[socket.socket] = []
    for _ in range(NUM_CLIENTS):
        connection, _address = listener.accept()
        if server_context is not None:
            connection = server_context.wrap_socket(connection, server_side=True)
        connections.append(connection)
    listener.close()
    model = memoryview(bytes(PAYLOAD_BYTES))
    finished: list[float] = []
    lock = threading.Lock()

    def serve(connection: socket.socket) -> None:
        upload = memoryview(bytearray(PAYLOAD_BYTES))
        connection.sendall(model)
        _receive_exactly(connection, upload)
        with lock:
            finished.append(time.perf_counter())
        connection.sendall(b"k")

    threads = [threading.Thread(target=serve, args=(connection,)) for connection in connections]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.join()
    for connection in connections:
        connection.close()
    if len(finished) != NUM_CLIENTS or any(client.exitcode != 0 for client in clients):
        raise RuntimeError("a raw-transfer client failed; rerun to see its traceback")
    return max(finished) - started


def _raw_client(port: int, pki: Path | None) -> None:
    """One raw client: connect, receive the model, send an update, wait for the receipt."""
    update = memoryview(bytes(PAYLOAD_BYTES))
    model = memoryview(bytearray(PAYLOAD_BYTES))
    connection = socket.create_connection(("127.0.0.1", port))
    if pki is not None:
        client_kit = pki / "clients" / "client"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(client_kit / "ca.crt")
        context.load_cert_chain(client_kit / "tls.crt", client_kit / "tls.key")
        connection = context.wrap_socket(connection, server_hostname="127.0.0.1")
    _receive_exactly(connection, model)
    connection.sendall(update)
    _receive_exactly(connection, memoryview(bytearray(1)))
    connection.close()


def _receive_exactly(connection: socket.socket, buffer: memoryview) -> None:
    """Fill ``buffer`` from ``connection``."""
    filled = 0
    while filled < len(buffer):
        count = connection.recv_into(buffer[filled:], min(RAW_CHUNK, len(buffer) - filled))
        if count == 0:
            raise ConnectionError(f"peer closed after {filled} of {len(buffer)} bytes")
        filled += count


BARE_SERVICE: Final = "benchmark.Bare"
"""The two calls of the bare gRPC round: ``Download`` (the model's chunks) and ``Upload``."""


def bare_grpc_round(pki: Path) -> RawRound:
    """One round's bytes over gRPC and mutual TLS with no protocol: what gRPC alone costs.

    The runtime's transport without its protocol: a ``grpc.aio`` server with the
    runtime's channel options and TLS kit, 10 client processes; each client
    downloads the 40 MB vector as the runtime's framed 1 MiB chunks into a
    buffer, then uploads 40 MB the same way, which the server copies into a
    buffer. No hashing, signing, spooling or aggregation. Each client moves the
    bytes twice over the same connection and the second time is measured (as the
    fedwarden rounds after the first are: HTTP/2's flow-control windows have
    grown by then). Wall time from the clients' start signal to the last upload
    received; CPU time of this process (the server) and the clients over the
    same span.
    """
    processes = multiprocessing.get_context("spawn")
    started, finished = threading.Event(), threading.Event()
    port: list[int] = []
    upload_ends: list[float] = []
    server_thread = threading.Thread(
        target=asyncio.run,
        args=(_bare_server(pki, port, started, finished, upload_ends),),
        daemon=True,
    )
    server_thread.start()
    started.wait()
    barrier = processes.Barrier(NUM_CLIENTS + 1)
    client_cpu = processes.Queue()
    clients = [
        processes.Process(target=_bare_client, args=(port[0], pki, barrier, client_cpu))
        for _ in range(NUM_CLIENTS)
    ]
    for client in clients:
        client.start()
    barrier.wait()  # connected: the untimed first transfer starts
    barrier.wait()  # the measured one starts
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    barrier.wait()
    server_cpu = time.process_time() - cpu_before
    clients_cpu = sum(client_cpu.get(timeout=60) for _ in clients)
    for client in clients:
        client.join()
    finished.set()
    server_thread.join()
    if len(upload_ends) != 2 * NUM_CLIENTS or any(client.exitcode != 0 for client in clients):
        raise RuntimeError("a bare gRPC client failed; rerun to see its traceback")
    return RawRound(max(upload_ends) - wall_before, server_cpu + clients_cpu)


async def _bare_server(
    pki: Path,
    port: list[int],
    started: threading.Event,
    finished: threading.Event,
    upload_ends: list[float],
) -> None:
    """Serve the bare round's two calls until ``finished`` is set."""
    frames = [framed(CHUNK_DATA_TAG, piece) for piece in chunks(memoryview(bytes(PAYLOAD_BYTES)))]

    async def download(request: bytes, context: Any) -> None:
        for frame in frames:
            await context.write(frame)

    async def upload(stream: Any, context: Any) -> bytes:
        received = memoryview(bytearray(PAYLOAD_BYTES))
        filled = 0
        async for message in stream:
            data = read_upload_chunk(message)
            assert isinstance(data, memoryview)
            received[filled : filled + len(data)] = data
            filled += len(data)
        upload_ends.append(time.perf_counter())
        return b""

    server = grpc.aio.server(options=grpc_options())
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                BARE_SERVICE,
                {
                    "Download": grpc.unary_stream_rpc_method_handler(download),
                    "Upload": grpc.stream_unary_rpc_method_handler(upload),
                },
            ),
        )
    )
    kit = TlsKit.from_dir(pki / "servers" / "server")
    port.append(server.add_secure_port("127.0.0.1:0", kit.server_credentials()))
    await server.start()
    started.set()
    while not finished.is_set():
        await asyncio.sleep(0.05)
    await server.stop(None)


def _bare_client(port: int, pki: Path, barrier: Any, cpu: Any) -> None:
    """One bare client: connect, wait for the start, download into a buffer, upload."""
    kit = TlsKit.from_dir(pki / "clients" / "client")
    update = memoryview(bytes(PAYLOAD_BYTES))
    model = memoryview(bytearray(PAYLOAD_BYTES))
    with grpc.secure_channel(
        f"127.0.0.1:{port}", kit.channel_credentials(), options=grpc_options()
    ) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        download = channel.unary_stream(
            f"/{BARE_SERVICE}/Download", response_deserializer=read_chunk
        )
        upload = channel.stream_unary(f"/{BARE_SERVICE}/Upload")
        barrier.wait()
        for _transfer in range(2):
            started = time.process_time()
            filled = 0
            for data in download(b""):
                model[filled : filled + len(data)] = data
                filled += len(data)
            upload(framed(UPLOAD_DATA_TAG, piece) for piece in chunks(update))
            barrier.wait()
        cpu.put(time.process_time() - started)


def spool_fsync_seconds(directory: Path) -> float:
    """Seconds to write one 40 MB update to a file and ``fsync`` it, as the server spools it."""
    payload = memoryview(bytes(PAYLOAD_BYTES))
    path = directory / "spool-probe.bin"

    def spool() -> None:
        with open(path, "wb") as spool_file:
            for piece in chunks(payload, CHUNK_BYTES):
                spool_file.write(piece)
            spool_file.flush()
            os.fsync(spool_file.fileno())
        path.unlink()

    return best_seconds(spool)


def fedwarden_rounds(workdir: Path, *, durable: bool = True) -> FedwardenRounds:
    """Run ``ROUNDS`` rounds of the grpc runtime with the zero-cost 10M-parameter trainer.

    ``durable=False`` measures what the spool's fsync costs: ``os.fsync`` is a
    no-op in this (server) process for the run. The product always fsyncs.
    """
    if not durable:
        with unittest.mock.patch("os.fsync", lambda descriptor: None):
            return fedwarden_rounds(workdir, durable=True)
    round_cpu: list[tuple[float, float]] = []
    run_round, checkpoint = Server.run_round, Server._checkpoint

    def timed_round(server: Server, round_index: int) -> Any:
        round_cpu.append(cpu_seconds())
        return run_round(server, round_index)

    def checkpoint_ends_the_round(server: Server) -> None:
        # round_seconds stops just before the checkpoint; so does the round's CPU time.
        (server_start, clients_start), (server_end, clients_end) = round_cpu[-1], cpu_seconds()
        round_cpu[-1] = (server_end - server_start, clients_end - clients_start)
        checkpoint(server)

    # LocalClients' `fedwarden client` processes import the trainer factory by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    config = RunConfig.from_mapping(
        {
            "name": "grpc-round",
            "rounds": ROUNDS,
            "evaluate_every": 10_000,
            "runs_dir": str(workdir / "runs"),
            "data": {"source": "digits", "num_clients": NUM_CLIENTS},
            "model": {
                "kind": "custom",
                "factory": "benchmarks.peers._constant_update:constant_update",
            },
            "sampling": {"scheme": "uniform", "cohort_size": NUM_CLIENTS},
            "runtime": {"kind": "grpc"},
        }
    )
    with (
        unittest.mock.patch.object(Server, "run_round", timed_round),
        unittest.mock.patch.object(Server, "_checkpoint", checkpoint_ends_the_round),
    ):
        result = run(config)
    if len(result.history) != ROUNDS or any(
        record.participants != NUM_CLIENTS for record in result.history
    ):
        raise RuntimeError(
            "a fedwarden round did not get all 10 updates; see the client logs under "
            f"{workdir / 'runs'}"
        )
    return FedwardenRounds(
        round_seconds=tuple(record.round_seconds for record in result.history),
        round_cpu_seconds=tuple(server + clients for server, clients in round_cpu),
        round_server_cpu_seconds=tuple(server for server, _clients in round_cpu),
        spool_fsync_s=spool_fsync_seconds(workdir),
    )


def main() -> None:
    """Run every measurement, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="fedwarden runs, each between two raw TLS rounds (default: 2)",
    )
    parser.add_argument(
        "--without-fsync",
        action="store_true",
        help="also run once with the server's os.fsync a no-op (what durability costs)",
    )
    parser.add_argument("--flower-rounds", type=int, default=FLOWER_ROUNDS)
    parser.add_argument("--skip-flower", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the runs, PKI and logs here (default: a temporary folder)",
    )
    arguments = parser.parse_args()

    with contextlib.ExitStack() as cleanup:
        if arguments.workdir is None:
            workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="grpc-round-")))
        else:
            workdir = arguments.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        # Raw rounds fork their clients, which use plain sockets only (never gRPC).
        pki = workdir / "pki"
        init_ca(pki, "benchmark", force=True)
        issue(pki, "server", "server", force=True)
        issue(pki, "client", "client", force=True)
        tcp = raw_round(None)
        tls, bare = [raw_round(pki)], [bare_grpc_round(pki)]
        runs = []
        for repeat in range(arguments.repeats):
            runs.append(fedwarden_rounds(workdir / f"fedwarden-{repeat}"))
            tls.append(raw_round(pki))
            bare.append(bare_grpc_round(pki))
        raw = RawTransfer(tcp, tuple(tls), tuple(bare))
        ours = pooled(runs)
        ours_without_fsync = None
        if arguments.without_fsync:
            ours_without_fsync = fedwarden_rounds(workdir / "fedwarden-no-fsync", durable=False)
        vector = np.random.default_rng(0).standard_normal(MODEL_SIZE, dtype=np.float32)
        ours_wire = fedwarden_wire(vector)
        flowers_wire = flower_wire(vector)
        del vector
        flower: dict[str, Any] = {"measured": False, "reason": "skipped (--skip-flower)"}
        flower_commands: tuple[str, ...] = ()
        if not arguments.skip_flower:
            try:
                deployment = run_flower_deployment(
                    workdir=workdir / "flower",
                    num_nodes=NUM_CLIENTS,
                    rounds=arguments.flower_rounds,
                    model_size=MODEL_SIZE,
                    timeout_s=400.0,
                )
            except FlowerDeploymentFailed as error:
                flower = {"measured": False, "reason": str(error)}
            else:
                flower_median = statistics.median(deployment.round_seconds[1:])
                flower = {
                    "measured": True,
                    "flwr_version": deployment.flwr_version,
                    "round_seconds": deployment.round_seconds,
                    "median_round_s": flower_median,
                    "ratio_to_fedwarden": flower_median / ours.median_s,
                }
                flower_commands = deployment.commands
    report(ours_wire, flowers_wire, raw, ours, ours_without_fsync, flower, flower_commands)


def report(
    ours_wire: WireThroughput,
    flowers_wire: WireThroughput | str,
    raw: RawTransfer,
    ours: FedwardenRounds,
    ours_without_fsync: FedwardenRounds | None,
    flower: dict[str, Any],
    flower_commands: tuple[str, ...],
) -> None:
    """Print the machine, the commands, the table and one JSON line with every figure."""
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    print(
        f"machine: {machine['cpu_count']} CPUs, {machine['platform']}, Python {machine['python']}"
    )
    print(f"command: {COMMAND} {shlex.join(sys.argv[1:])}".rstrip())
    for command in flower_commands:
        print(f"flower:  {command}")
    megabytes = PAYLOAD_BYTES / 1e6
    print(f"\nmodel {MODEL_SIZE:,} float32 parameters ({megabytes:.0f} MB), {NUM_CLIENTS} clients")
    rows = [
        ("wire: fedwarden serialize up/down (GB/s)", _pair(ours_wire, serialized=True)),
        ("wire: fedwarden + SHA-256 up/down (GB/s)", _pair(ours_wire, serialized=False)),
        (
            "wire: flwr ArrayRecord push (GB/s)",
            f"{flowers_wire.upload_gb_s:.2f}"
            if isinstance(flowers_wire, WireThroughput)
            else f"not measured ({flowers_wire})",
        ),
        ("raw round over TCP: wall / CPU (s)", f"{raw.tcp.wall_s:.3f} / {raw.tcp.cpu_s:.3f}"),
        (
            "raw rounds over mutual TLS: wall (s)",
            " ".join(f"{round_.wall_s:.3f}" for round_ in raw.tls),
        ),
        ("raw rounds over mutual TLS: CPU (s)", " ".join(f"{r.cpu_s:.3f}" for r in raw.tls)),
        (
            "raw TLS median: wall / CPU (s)",
            f"{raw.tls_median.wall_s:.3f} / {raw.tls_median.cpu_s:.3f}",
        ),
        ("bare gRPC rounds: wall (s)", " ".join(f"{r.wall_s:.3f}" for r in raw.grpc)),
        ("bare gRPC rounds: CPU (s)", " ".join(f"{r.cpu_s:.3f}" for r in raw.grpc)),
        (
            "bare gRPC median: wall / CPU (s)",
            f"{raw.grpc_median.wall_s:.3f} / {raw.grpc_median.cpu_s:.3f}",
        ),
        (
            "bare gRPC round / raw TLS round: wall / CPU",
            _ratios(raw.grpc_median, raw.tls_median),
        ),
        ("fedwarden rounds 2..5: wall (s)", " ".join(f"{s:.3f}" for s in ours.round_seconds[1:])),
        (
            "fedwarden rounds 2..5: CPU (s)",
            " ".join(f"{s:.3f}" for s in ours.round_cpu_seconds[1:]),
        ),
        (
            "fedwarden median: wall / CPU (server) (s)",
            f"{ours.median_s:.3f} / {ours.median_cpu_s:.3f} ({ours.median_server_cpu_s:.3f})",
        ),
        (
            "fedwarden round / raw TLS round: wall / CPU",
            _ratios(ours.median, raw.tls_median),
        ),
        (
            "fedwarden round / bare gRPC round: wall / CPU",
            _ratios(ours.median, raw.grpc_median),
        ),
        ("spool 40 MB + fsync, one update (s)", f"{ours.spool_fsync_s:.3f}"),
    ]
    if ours_without_fsync is not None:
        rows.append(
            (
                "without the spool's fsync: median (s)",
                f"{ours_without_fsync.median_s:.3f} = "
                f"{ours_without_fsync.median_s / raw.tls_median.wall_s:.2f}x raw TLS",
            )
        )
    if flower["measured"]:
        rows += [
            ("flower rounds (s)", " ".join(f"{s:.3f}" for s in flower["round_seconds"])),
            (
                f"flower median round 2..{len(flower['round_seconds'])} (s)",
                f"{flower['median_round_s']:.3f}",
            ),
            ("flower round / fedwarden round", f"{flower['ratio_to_fedwarden']:.2f}x"),
        ]
    else:
        rows.append(("flower", f"not measured ({flower['reason']})"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    figures = {
        "machine": machine,
        "model_parameters": MODEL_SIZE,
        "clients": NUM_CLIENTS,
        "wire_fedwarden": asdict(ours_wire),
        "wire_flower": asdict(flowers_wire)
        if isinstance(flowers_wire, WireThroughput)
        else {"measured": False, "reason": flowers_wire},
        "raw_transfer": asdict(raw),
        "fedwarden": {
            "round_seconds": ours.round_seconds[1:],
            "round_cpu_seconds": ours.round_cpu_seconds[1:],
            "median_round_s": ours.median_s,
            "median_round_cpu_s": ours.median_cpu_s,
            "median_round_server_cpu_s": ours.median_server_cpu_s,
            "ratio_to_raw_tls": ours.median_s / raw.tls_median.wall_s,
            "cpu_ratio_to_raw_tls": ours.median_cpu_s / raw.tls_median.cpu_s,
            "ratio_to_bare_grpc": ours.median_s / raw.grpc_median.wall_s,
            "cpu_ratio_to_bare_grpc": ours.median_cpu_s / raw.grpc_median.cpu_s,
            "spool_fsync_s": ours.spool_fsync_s,
            "median_round_without_fsync_s": None
            if ours_without_fsync is None
            else ours_without_fsync.median_s,
        },
        "flower": flower,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
