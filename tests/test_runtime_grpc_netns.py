"""The grpc runtime across hosts: server and clients in separate network namespaces.

The server runs in its own namespace and listens on its veth address; the
clients run in two site namespaces and reach it over veth links with mutual
TLS, the server certificate naming that address. Cutting one site's link
mid-round checks what the runtime promises about a partition: the server
notices the silent clients within three heartbeats and records them as
dropped, the round goes on with the clients it hears from, and once the link
is back the clients rejoin the later rounds. The tests are skipped where
network namespaces cannot be created (no CAP_NET_ADMIN / CAP_SYS_ADMIN).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedwarden.core.records import round_number
from fedwarden.deploy.pki import issue
from grpc_federation import Federation, wait_for
from machine import unavailable
from netns import Network, NetworkUnavailable, inside, listening, network, probe

pytestmark = pytest.mark.slow

SITES = 5
FIRST_SITE = 3
"""Clients ``0 .. FIRST_SITE - 1`` run in site namespace 0, the others in site namespace 1."""
ROUNDS = 2
CUT_ROUNDS = 15
"""Rounds of the partition run: enough after the outage for the cut-off site to rejoin."""
CUT_ROUND = 1
HEARTBEAT_S = 1
DEADLINE_S = 20
OUTAGE_S = 4.0
"""How long a cut link stays down: more than three heartbeats, so the server notices."""


@dataclass
class NetworkedFederation:
    """A :class:`Federation` whose server and clients run in their own network namespaces."""

    federation: Federation
    network: Network

    @property
    def address(self) -> str:
        return f"{self.network.server_address}:{self.federation.port}"

    def site_of(self, client_id: str) -> int:
        """The site namespace ``client_id`` runs in."""
        return 0 if self.federation.sites.index(client_id) < FIRST_SITE else 1

    def start_server(self) -> None:
        """``fedwarden server`` in the server namespace, on the server's veth address.

        Returns once it listens, so the clients' first dial succeeds and their
        reconnection backoff starts from its shortest delay.
        """
        run = self.federation
        log = run.root / f"server-{len(run.server_logs)}.log"
        run.server_logs.append(log)
        command = [
            *_fedwarden("server", str(run.root / "run.toml")),
            *("--address", self.address),
            *("--identity", str(run.pki / "servers" / "netserver")),
            *("--store", f"sqlite:///{run.root / 'store.db'}"),
            *("--health-address", f"127.0.0.1:{run.health_port}"),
        ]
        with open(log, "wb") as output:
            run.server = subprocess.Popen(
                inside(self.network.server_namespace, command),
                stdout=output,
                stderr=subprocess.STDOUT,
                env=run.environment(),
            )
        server = run.server
        wait_for(
            lambda: listening(server.pid, run.port) or server.poll() is not None,
            60,
            "the server to listen",
        )
        assert server.poll() is None, run.server_output()

    def start_clients(self) -> None:
        """One ``fedwarden client`` per site, each in its site's namespace, dialing the server."""
        run = self.federation
        for client_id in run.sites:
            command = [
                *_fedwarden("client"),
                *("--server", self.address),
                *("--data", str(run.root / "data" / f"{client_id}.npz")),
                *("--identity", str(run.pki / "clients" / client_id)),
            ]
            namespace = self.network.sites[self.site_of(client_id)].namespace
            with open(run.client_log(client_id), "ab") as output:
                run.clients[client_id] = subprocess.Popen(
                    inside(namespace, command),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=run.environment(),
                )

    def client_output(self) -> str:
        return "\n".join(
            f"--- {client_id}\n{self.federation.client_log(client_id).read_text(errors='replace')}"
            for client_id in self.federation.sites
        )


def _fedwarden(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "fedwarden.cli", *arguments]


@contextmanager
def _across_namespaces(root: Path, rounds: int) -> Iterator[NetworkedFederation]:
    """A federation of ``SITES`` clients in two site namespaces and its server in a third."""
    try:
        probe()
    except NetworkUnavailable as error:
        unavailable(
            f"needs CAP_NET_ADMIN and CAP_SYS_ADMIN to create network namespaces (ip netns add); "
            f"run as root ({error})"
        )
    federation = Federation.create(
        root,
        sites=SITES,
        rounds=rounds,
        model={"kind": "custom", "factory": "fakes:sluggish_softmax"},
        sampling={"deadline_s": DEADLINE_S},
        runtime={"heartbeat_s": HEARTBEAT_S},
    )
    with network(sites=2) as built:
        issue(federation.pki, "server", "netserver", hosts=(built.server_address,))
        try:
            yield NetworkedFederation(federation, built)
        finally:
            federation.stop()


@pytest.fixture
def networked(tmp_path: Path) -> Iterator[NetworkedFederation]:
    """A ``ROUNDS``-round federation across namespaces, torn down even if the test fails."""
    with _across_namespaces(tmp_path, ROUNDS) as made:
        yield made


def _round_started(federation: Federation, client_id: str, round_index: int) -> bool:
    log = federation.client_log(client_id)
    logged = f"round {round_number(round_index)}: fit task"
    return log.exists() and logged in log.read_text(errors="replace")


def _exit_status(process: subprocess.Popen[bytes]) -> int | None:
    """The process's exit status, or None if it is still running after 30 s."""
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        return None


@dataclass(frozen=True)
class PartitionedRun:
    """What a run did whose second site lost its link for ``OUTAGE_S`` in round ``CUT_ROUND``."""

    cut_off: list[str]
    server_status: int
    client_statuses: dict[str, int | None]
    records: list[dict[str, Any]]
    server_output: str
    client_output: str


@pytest.fixture(scope="module")
def partitioned_run(tmp_path_factory: pytest.TempPathFactory) -> PartitionedRun:
    """Cut site 1's link once its clients have started round ``CUT_ROUND``; restore it later."""
    with _across_namespaces(tmp_path_factory.mktemp("partition"), CUT_ROUNDS) as networked:
        run = networked.federation
        site = networked.network.sites[1]
        cut_off = [client_id for client_id in run.sites if networked.site_of(client_id) == 1]
        networked.start_server()
        networked.start_clients()
        wait_for(
            lambda: all(_round_started(run, client_id, CUT_ROUND) for client_id in cut_off),
            60,
            f"the second site's clients to start round {round_number(CUT_ROUND)}",
        )
        networked.network.cut(site)
        time.sleep(OUTAGE_S)
        networked.network.restore(site)
        server_status = run.wait_server(timeout=80)
        return PartitionedRun(
            cut_off=cut_off,
            server_status=server_status,
            client_statuses={
                client_id: _exit_status(process) for client_id, process in run.clients.items()
            },
            records=run.completed_rounds(),
            server_output=run.server_output(),
            client_output=networked.client_output(),
        )


def test_clients_in_another_network_namespace_complete_rounds(
    networked: NetworkedFederation,
) -> None:
    run = networked.federation
    networked.start_server()
    networked.start_clients()
    assert run.wait_server(timeout=80) == 0, run.server_output()
    records = run.completed_rounds()
    assert [record["round"] for record in records] == list(range(1, ROUNDS + 1))
    assert [record["participants"] for record in records] == [SITES] * ROUNDS
    assert all(record["applied"] and record["dropped"] == 0 for record in records)
    statuses = {client_id: _exit_status(process) for client_id, process in run.clients.items()}
    assert statuses == dict.fromkeys(run.sites, 0), networked.client_output()


def test_cutting_the_link_mid_round(partitioned_run: PartitionedRun) -> None:
    run = partitioned_run
    assert run.server_status == 0, run.server_output
    records = run.records
    assert [record["round"] for record in records] == list(range(1, CUT_ROUNDS + 1))
    lost = len(run.cut_off)
    for record in records:
        assert record["sampled"] == SITES
        assert record["participants"] + record["dropped"] == SITES, record
        assert record["failed"] == 0 and record["applied"], record
    participants = [record["participants"] for record in records]
    assert participants[:CUT_ROUND] == [SITES] * CUT_ROUND
    assert participants[CUT_ROUND] == SITES - lost, participants
    server_output = " ".join(run.server_output.split())
    for client_id in run.cut_off:
        assert (
            f"round {round_number(CUT_ROUND)}: client {client_id} is not connected" in server_output
        )
    assert "did not reply within" not in server_output, "a silent client waited for the deadline"
    rejoined = participants[CUT_ROUND:]
    assert rejoined == sorted(rejoined), f"a site rejoined, then dropped again: {participants}"
    assert participants[-1] == SITES, f"the cut-off site never rejoined: {participants}"
    client_output = " ".join(run.client_output.split())
    assert client_output.count("the server refused the upload") == lost, run.client_output
    assert run.client_statuses == dict.fromkeys(run.client_statuses, 0), run.client_output


def test_a_late_upload_from_a_cut_off_site_is_not_counted_as_a_rejection_in_a_later_round(
    partitioned_run: PartitionedRun,
) -> None:
    rejections = {
        record["round"]: record["rejection_reasons"]
        for record in partitioned_run.records
        if record["rejected"]
    }
    assert rejections == {}, f"rounds counting rejected uploads: {rejections}"
    assert "upload refused (late)" in " ".join(partitioned_run.server_output.split())
