"""The local runtime: worker processes, ordering, faults, deadlines, client state.

A client that raises is tested on the inprocess runtime too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from fakes import ScriptedTrainer
from fedwarden.core.config import DataConfig
from fedwarden.core.messages import ClientFailure, ClientUpdate, FitInstruction
from fedwarden.data import FederatedDataset, load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.runtime import ClientEngine, InProcessRuntime, LocalRuntime, Runtime, Workload
from harness import TRAIN, start_server

pytestmark = pytest.mark.slow


def test_updates_from_workers_equal_in_process_training_in_cohort_order(
    digits_clients: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer()
    workload = Workload(digits_clients, trainer, (), run_seed=5)
    engine = ClientEngine(workload)
    vector = trainer.initial_vector(0)
    cohort = digits_clients.client_ids[::-1]
    instructions = [FitInstruction(0, cid, TRAIN) for cid in cohort]
    with LocalRuntime(workers=3) as runtime:
        runtime.start(workload)
        replies = list(runtime.fit(vector, instructions))
    assert [reply.client_id for reply in replies] == cohort
    for reply, instruction in zip(replies, instructions, strict=True):
        assert isinstance(reply, ClientUpdate)
        expected = engine.fit(vector, instruction)
        np.testing.assert_array_equal(reply.update, expected.update)
        assert reply.num_examples == digits_clients.clients[reply.client_id].num_train


def test_seeded_run_is_bit_identical_whatever_the_number_of_workers(
    digits_clients: FederatedDataset,
) -> None:
    finals = []
    for workers in (1, 3):
        with LocalRuntime(workers) as runtime:
            server = start_server(digits_clients, ScriptedTrainer(), runtime, cohort_size=5, seed=9)
            server.run()
            finals.append(server.vector)
    np.testing.assert_array_equal(finals[0], finals[1])


def test_seeded_run_on_on_demand_synthetic_clients_is_bit_identical_with_1_or_2_workers() -> None:
    dataset = load_dataset(DataConfig(source="synthetic", num_clients=60), seed=4)
    finals = []
    for workers in (1, 2):
        with LocalRuntime(workers) as runtime:
            trainer = softmax_regression(60, 10)
            server = start_server(dataset, trainer, runtime, cohort_size=10, seed=9)
            server.run()
            finals.append(server.vector)
    np.testing.assert_array_equal(finals[0], finals[1])


def test_a_killed_worker_costs_its_clients_that_round_and_is_restarted(
    digits_clients: FederatedDataset,
) -> None:
    victim = digits_clients.client_ids[0]
    trainer = ScriptedTrainer(exit=frozenset({victim}), rounds=frozenset({1}))
    with LocalRuntime(workers=2) as runtime:
        server = start_server(digits_clients, trainer, runtime, rounds=3)
        result = server.run()
    first, second, third = result.history
    assert first.participants == first.sampled == 8
    assert second.dropped >= 1
    assert second.participants == second.sampled - second.dropped
    assert second.applied
    assert third.participants == third.sampled == 8


def test_clients_past_the_round_deadline_are_dropped_and_counted(
    digits_clients: FederatedDataset,
) -> None:
    slow = digits_clients.client_ids[1]
    # The deadline leaves a loaded 2-core machine time for the fast clients; the slow
    # one sleeps well past it.
    trainer = ScriptedTrainer(slow=frozenset({slow}), sleep_s=5.0)
    with LocalRuntime(workers=2) as runtime:
        server = start_server(digits_clients, trainer, runtime, rounds=1, deadline_s=2.5)
        record = server.run_round(0)
    assert record.dropped >= 1
    assert record.participants == record.sampled - record.dropped
    assert record.participants >= 4


@pytest.mark.parametrize(
    "hosting", [partial(LocalRuntime, workers=2), InProcessRuntime], ids=["local", "inprocess"]
)
def test_a_client_that_raises_is_counted_as_failed_and_the_round_goes_on(
    digits_clients: FederatedDataset, hosting: Callable[[], Runtime]
) -> None:
    broken = digits_clients.client_ids[2]
    with hosting() as runtime:
        start_server(digits_clients, ScriptedTrainer(error=frozenset({broken})), runtime)
        replies = list(
            runtime.fit(
                ScriptedTrainer().initial_vector(0),
                [FitInstruction(0, cid, TRAIN) for cid in digits_clients.client_ids],
            )
        )
    failures = [r for r in replies if isinstance(r, ClientFailure)]
    assert [(f.client_id, f.reason) for f in failures] == [(broken, "error")]
    assert "scripted failure" in failures[0].message
    assert len(replies) == 8


def test_client_state_persists_between_rounds_on_its_worker(
    digits_clients: FederatedDataset,
) -> None:
    with LocalRuntime(workers=2) as runtime:
        server = start_server(digits_clients, ScriptedTrainer(), runtime, rounds=3)
        vector = server.vector
        for round_index in range(3):
            replies = list(
                runtime.fit(
                    vector,
                    [FitInstruction(round_index, cid, TRAIN) for cid in digits_clients.client_ids],
                )
            )
    assert all(isinstance(r, ClientUpdate) and r.metrics["fits"] == 3.0 for r in replies)


def _workers() -> list[int]:
    """The process ids of this process's local-runtime workers (Linux /proc).

    Other children (a fixture's database server, say) are left out.
    """
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == os.getpid() and b"_worker_main" in command:
            workers.append(int(stat.parent.name))
    return workers


def _socket_inodes(pid: int) -> set[str]:
    links = (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def _addresses(table: str) -> dict[str, str]:
    """``/proc/net/<table>`` as inode -> the row (for unix: its path, empty if unnamed)."""
    rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    if table == "unix":
        return {row.split()[6]: " ".join(row.split()[7:]) for row in rows}
    return {row.split()[9]: row for row in rows}


def test_a_worker_unpickles_only_what_comes_over_a_socket_no_other_process_can_reach(
    digits_clients: FederatedDataset,
) -> None:
    """An attacker on the machine needs an address to send a worker a pickle: there is none."""
    with LocalRuntime(workers=1) as runtime:
        runtime.start(Workload(digits_clients, ScriptedTrainer(), (), run_seed=1))
        (worker,) = _workers()
        sockets = _socket_inodes(worker)
        unix = _addresses("unix")
        inet = {
            inode
            for table in ("tcp", "tcp6", "udp", "udp6")
            if Path(f"/proc/net/{table}").exists()
            for inode in _addresses(table)
        }
    assert len(sockets) == 1, "the worker's one socket is its end of the pipe to the parent"
    (inode,) = sockets
    assert unix[inode] == "", "the pipe is an unnamed socket pair: no path to connect to"
    assert inode not in inet
