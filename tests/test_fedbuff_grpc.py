"""FedBuff over the grpc runtime on loopback, driven by hand: nothing accepted is lost on a crash.

The sites speak the protocol themselves (:mod:`grpc_deployment`), so the test
chooses exactly which upload the server has acknowledged when it dies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fakes import BufferRecordingMean
from fedwarden.core.messages import ClientFailure, ClientUpdate, TrainConfig, UpdateRefused
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.governance.store import RunStore
from fedwarden.models.numpy import softmax_regression
from fedwarden.pipeline import Pipeline, ValidateUpdate
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import signed_upload
from fedwarden.runtime.grpc.server import GrpcRuntime
from fedwarden.runtime.grpc.service import RunDescription
from fedwarden.server import ServerSettings
from fedwarden.server.fedbuff import FedBuffServer, staleness_weight
from fedwarden.server.rundir import RunDirectory
from fedwarden.strategies import FedAvg, UniformSampler
from grpc_deployment import RUN_ID, Deployment, Site
from grpc_federation import wait_for

CLIENTS = ("client_0", "client_1", "client_2")
FEATURES, CLASSES = 8, 2
TRAINER = softmax_regression(FEATURES, CLASSES)


class ServerKilled(Exception):
    """The server's loop dies here; what its runtime acknowledged must survive."""


@contextmanager
def fedbuff_over_grpc(root: Path) -> Iterator[tuple[Deployment, BufferRecordingMean]]:
    """A FedBuff server (buffers of 2, 3 clients training) on loopback, its run in ``root``.

    Called again on the same ``root``, it is the same server restarted: the
    same run directory, store and spool.
    """
    pki = root / "pki"
    if not pki.exists():
        init_ca(pki, "test")
        for client_id in CLIENTS:
            issue(pki, "client", client_id)
    store = RunStore.sqlite(root / "store.db")
    if store.run(RUN_ID) is None:
        store.create_run(RUN_ID, "test", "{}", str(root))
    runtime = GrpcRuntime(
        "127.0.0.1:0",
        tls=None,
        journal=store,
        run=RunDescription(RUN_ID, "{}", FEATURES, CLASSES),
        spool_dir=root / "spool",
        expected_clients=CLIENTS,
        heartbeat_s=1.0,
        join_timeout_s=0.1,
    )
    runtime.serve()
    mean = BufferRecordingMean()
    run_dir = RunDirectory(root / "run")
    run_dir.path.mkdir(exist_ok=True)
    server = FedBuffServer(
        buffer_size=2,
        concurrency=3,
        staleness_exponent=0.5,
        trainer=TRAINER,
        strategy=FedAvg(TrainConfig()),
        sampler=UniformSampler(1),
        pipeline=Pipeline([ValidateUpdate(TRAINER.spec.size)], mean),
        runtime=runtime,
        client_ids=CLIENTS,
        settings=ServerSettings(rounds=3, seed=0),
        run_dir=run_dir,
    )
    checkpoint = run_dir.load_checkpoint()
    if checkpoint is not None:
        server.restore(checkpoint)
    try:
        yield Deployment(server, runtime, store, pki), mean
    finally:
        runtime.close()
        store.close()


def upload(site: Site, task: pb.Task, value: float) -> None:
    """Answer ``task`` with the update ``value`` in every coordinate; the server acknowledges it."""
    update = ClientUpdate(
        task.round_index,
        site.kit.client_id,
        np.full(TRAINER.spec.size, value, VECTOR_DTYPE),
        num_examples=10,
    )
    header, body = signed_upload(task, site.kit.client_id, update, site.kit.identity)
    assert site.send(header, bytes(body)).accepted


def killable(
    poll: Callable[[float, float | None], list[ClientUpdate | ClientFailure | UpdateRefused]],
    killed: threading.Event,
) -> Callable[[float, float | None], list[ClientUpdate | ClientFailure | UpdateRefused]]:
    """``poll``, until ``killed`` is set: then the server's loop dies at its next poll."""

    def poll_until_killed(
        timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        if killed.is_set():
            raise ServerKilled("the server is killed")
        return poll(timeout, deadline_s)

    return poll_until_killed


@pytest.mark.parametrize("when", ["acknowledged, not yet polled", "in the unreleased buffer"])
def test_an_update_acknowledged_before_a_crash_enters_the_first_buffer_after_it_once(
    tmp_path: Path, when: str
) -> None:
    values = {"client_0": 0.25, "client_1": 0.75, "client_2": -0.5}
    with fedbuff_over_grpc(tmp_path) as (deployment, mean):
        server = deployment.server
        sites = {client_id: deployment.site(client_id) for client_id in CLIENTS}
        start = server.vector.copy()
        # Buffer 0: client_0 and client_1; client_2 trains on version 0 meanwhile.
        buffer_0 = threading.Thread(target=server.run_round, args=(0,))
        buffer_0.start()
        tasks = {client_id: site.next_task() for client_id, site in sites.items()}
        assert {task.round_index for task in tasks.values()} == {0}
        for client_id in ("client_0", "client_1"):
            upload(sites[client_id], tasks[client_id], values[client_id])
        buffer_0.join(timeout=30)
        assert not buffer_0.is_alive()
        version_1 = start + np.float32((0.25 + 0.75) / 2)
        np.testing.assert_array_equal(server.vector, version_1)

        # Buffer 1: client_0 and client_1 train on version 1; client_2's update of version 0
        # is acknowledged, and the server dies before it releases buffer 1.
        killed = threading.Event()
        server.clients.poll = killable(server.clients.poll, killed)
        died: list[ServerKilled] = []

        def run_until_killed() -> None:
            try:
                server.run_round(1)
            except ServerKilled as death:
                died.append(death)

        buffer_1 = threading.Thread(target=run_until_killed)
        buffer_1.start()
        assert {sites[c].next_task().round_index for c in ("client_0", "client_1")} == {1}
        if when == "acknowledged, not yet polled":
            killed.set()
            buffer_1.join(timeout=30)
            upload(sites["client_2"], tasks["client_2"], values["client_2"])
        else:
            upload(sites["client_2"], tasks["client_2"], values["client_2"])
            wait_for(lambda: mean.buffers[-1] == ["client_2"], 10, "client_2 in buffer 1")
            killed.set()
            buffer_1.join(timeout=30)
        assert died and not buffer_1.is_alive()
        (spooled,) = deployment.store.accepted_updates(RUN_ID, 0)[2:]
        assert spooled.client_id == "client_2" and Path(spooled.payload_path).is_file()

    with fedbuff_over_grpc(tmp_path) as (deployment, mean):
        server = deployment.server
        assert server.next_round == 1
        sites = {client_id: deployment.site(client_id) for client_id in CLIENTS}
        buffer_1 = threading.Thread(target=server.run_round, args=(1,))
        buffer_1.start()
        # client_0's and client_1's tasks on version 1 are sent again; client_2 is not asked.
        resumed = sites["client_0"].next_task()
        assert resumed.round_index == 1
        np.testing.assert_array_equal(sites["client_0"].model(resumed), version_1)
        upload(sites["client_0"], resumed, 1.0)
        buffer_1.join(timeout=30)
        assert not buffer_1.is_alive()
        assert sites["client_2"].tasks.empty()

        # Buffer 1 holds client_2's read-back update, weighted by its staleness against
        # version 0 (one server update), and client_0's: applied once, its spool released.
        assert mean.buffers == [["client_2", "client_0"]]
        weight = np.float32(staleness_weight(1, 0.5))
        expected = version_1 + (np.float32(-0.5) * weight + np.float32(1.0)) / 2
        np.testing.assert_allclose(server.vector, expected, rtol=1e-6)
        assert [record.participants for record in server.history] == [2, 2]
        rows = deployment.store.accepted_updates(RUN_ID, 0)
        assert [(row.client_id, row.payload_path) for row in rows] == [
            ("client_0", ""),
            ("client_1", ""),
            ("client_2", ""),
        ]
        assert not Path(spooled.payload_path).exists()
