"""An in-process grpc server (``Server`` over ``GrpcRuntime`` on loopback) and hand-driven sites.

The test speaks the protocol itself, so it can send what an honest client
never would: tampered signatures, replays, headers naming someone else,
streams that never send a byte.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.core.records import RoundRecord
from fedwarden.data import load_dataset
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.deploy.revocation import REVOCATION_LIST, RevocationList
from fedwarden.governance.listener import StoreListener
from fedwarden.governance.store import RunStore
from fedwarden.models.numpy import softmax_regression
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import _Stubs, signed_upload, upload_stream
from fedwarden.runtime.grpc.credentials import ClientKit, TlsKit
from fedwarden.runtime.grpc.server import GrpcRuntime
from fedwarden.runtime.grpc.service import RunDescription
from fedwarden.runtime.grpc.wire import grpc_options, version_message
from fedwarden.server.server import Server
from grpc_federation import wait_for
from harness import start_server

RUN_ID = "run-under-test"


@dataclass
class Site:
    """One client session the test drives by hand: tasks arrive on a queue."""

    kit: ClientKit
    stubs: _Stubs
    tasks: queue.Queue[pb.Task]
    channel: grpc.Channel

    def next_task(self) -> pb.Task:
        return self.tasks.get(timeout=30)

    def model(self, task: pb.Task) -> np.ndarray:
        request = pb.DownloadRequest(run_id=task.run_id, version=task.model.version)
        data = b"".join(self.stubs.download(request))
        return np.frombuffer(data, dtype=VECTOR_DTYPE)

    def honest_upload(self, task: pb.Task) -> tuple[pb.UploadHeader, bytes]:
        vector = self.model(task)
        update = ClientUpdate(
            task.round_index, self.kit.client_id, np.full_like(vector, 0.01), num_examples=10
        )
        header, body = signed_upload(task, self.kit.client_id, update, self.kit.identity)
        return header, bytes(body)

    def send(self, header: pb.UploadHeader, body: bytes) -> pb.UploadReceipt:
        receipt: pb.UploadReceipt = self.stubs.upload(upload_stream(header, memoryview(body)))
        return receipt

    def answer(self) -> pb.UploadReceipt:
        """Answer the next task honestly."""
        return self.send(*self.honest_upload(self.next_task()))


@dataclass
class Deployment:
    server: Server
    runtime: GrpcRuntime
    store: RunStore
    pki: Path

    @property
    def insecure(self) -> bool:
        return self.runtime.tls is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.runtime.port}"

    def channel(self, client_id: str) -> grpc.Channel:
        """A connection of its own to the server as ``client_id`` (plaintext under --insecure).

        Channels in one process share connections unless told not to; each
        site here is a separate connection, as separate processes would be.
        """
        options = [*grpc_options(), ("grpc.use_local_subchannel_pool", 1)]
        if self.insecure:
            return grpc.insecure_channel(self.address, options=options)
        credentials = self.kit(client_id).tls.channel_credentials()
        return grpc.secure_channel(self.address, credentials, options=options)

    def kit(self, client_id: str) -> ClientKit:
        return ClientKit.from_dir(self.pki / "clients" / client_id)

    def join_request(self, client_id: str) -> pb.JoinRequest:
        """A Join as the honest client sends it (its identity key included, as in --insecure)."""
        public_key = self.kit(client_id).identity.public_key().public_bytes_raw()
        return pb.JoinRequest(
            version=version_message(), client_id=client_id, identity_public_key=public_key
        )

    def site(self, client_id: str) -> Site:
        kit = self.kit(client_id)
        channel = self.channel(client_id)
        stubs = _Stubs.on(channel)
        hello = self.join_request(client_id)
        stubs.join(hello, timeout=10)
        tasks: queue.Queue[pb.Task] = queue.Queue()

        def signals() -> Iterator[pb.ClientSignal]:
            yield pb.ClientSignal(hello=hello)
            while True:
                threading.Event().wait(0.5)
                yield pb.ClientSignal(heartbeat=pb.Heartbeat())

        call = stubs.connect(signals())

        def read() -> None:
            try:
                for task in call:
                    tasks.put(task)
            except grpc.RpcError:
                return

        threading.Thread(target=read, daemon=True).start()
        wait_for(
            lambda: client_id in self.runtime.connected_clients(), 10, f"{client_id}'s session"
        )
        return Site(kit, stubs, tasks, channel)

    def round_in_background(self, round_index: int) -> queue.Queue[RoundRecord]:
        done: queue.Queue[RoundRecord] = queue.Queue()
        thread = threading.Thread(
            target=lambda: done.put(self.server.run_round(round_index)), daemon=True
        )
        thread.start()
        return done


@contextmanager
def deployment_at(
    root: Path,
    *,
    insecure: bool = False,
    extra_clients: tuple[str, ...] = (),
    rounds: int = 3,
    **settings: Any,
) -> Iterator[Deployment]:
    """Two digits clients (``client_0``, ``client_1``) and a server waiting for them.

    ``extra_clients`` get certificates but are not in the federation's cohort
    (an attacker with a valid certificate); ``settings`` go to ``GrpcRuntime``.
    """
    dataset = load_dataset(DataConfig(source="digits", num_clients=2), seed=0)
    pki = root / "pki"
    init_ca(pki, "test")
    issue(pki, "server", "server")
    for client_id in [*dataset.client_ids, *extra_clients]:
        issue(pki, "client", client_id)
    store = RunStore.sqlite(root / "store.db")
    store.create_run(RUN_ID, "test", "{}", str(root))
    trainer = softmax_regression(dataset.num_features, 10)
    kit = pki / "servers" / "server"
    tls = None if insecure else TlsKit.from_dir(kit)
    runtime = GrpcRuntime(
        "127.0.0.1:0",
        tls=tls,
        revocations=None
        if tls is None
        else RevocationList(kit / REVOCATION_LIST, tls.root_certificate),
        journal=store,
        run=RunDescription(RUN_ID, "{}", dataset.num_features, 10),
        spool_dir=root / "spool",
        expected_clients=dataset.client_ids,
        heartbeat_s=1.0,
        join_timeout_s=0.1,
        **settings,
    )
    runtime.serve()
    server = start_server(dataset, trainer, runtime, rounds=rounds, deadline_s=20)
    server.listeners.append(StoreListener(store, RUN_ID))
    try:
        yield Deployment(server, runtime, store, pki)
    finally:
        runtime.close()
        store.close()
