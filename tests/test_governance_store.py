"""The server's durable run store: what it keeps across a restart or a kill -9, and what it refuses.

Every store test runs on SQLite and, where the PostgreSQL server binaries and psycopg are
installed, on a throwaway PostgreSQL cluster started for the session.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from fedwarden.core.errors import FedwardenError
from fedwarden.governance import RoundConflict, RunStore, StoreError
from fedwarden.runtime.grpc.journal import DuplicateUpdate, EnrolmentConflict
from machine import unavailable

POSTGRES_MISSING = "PostgreSQL server binaries not installed (Debian package postgresql)"
RUN_ID = "run-1"
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl, if the PostgreSQL server is installed."""
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None and (Path(pg_ctl).resolve().parent / "initdb").exists():
        return Path(pg_ctl).resolve().parent
    installed = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not installed:
        return None
    newest = max(installed, key=lambda path: int(Path(path).parts[-3].split(".")[0]))
    return Path(newest).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def throwaway_postgres(bin_dir: Path, base: Path) -> Iterator[str]:
    """Start a PostgreSQL cluster under ``base`` on 127.0.0.1; yield its URL without a database.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user and
    lives in a fresh folder that user may enter.
    """
    as_user: list[str] = []
    own_folder = os.geteuid() == 0
    if own_folder:
        owner = pwd.getpwnam("postgres")
        base = Path(tempfile.mkdtemp(prefix="fedwarden-pg-"))
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = free_port()

    def pg(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "fedwarden", "--auth=trust", "--no-sync")
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -F"
    pg(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(base / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg://fedwarden@127.0.0.1:{port}/"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        if own_folder:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (without a database) of a PostgreSQL cluster started for this test session."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        unavailable(POSTGRES_MISSING)
    with throwaway_postgres(bin_dir, tmp_path_factory.mktemp("postgres")) as url:
        yield url


_database_numbers = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fedwarden.db'}"
    server: str = request.getfixturevalue("postgres_server")
    database = f"store_{next(_database_numbers)}"
    admin = create_engine(server + "postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    return server + database


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:
    """An open store holding one running run, ``run-1``."""
    with RunStore(store_url) as opened:
        opened.create_run(RUN_ID, "mnist", '{"rounds": 3}', "/runs/mnist-1")
        yield opened


def accept(store: RunStore, client_id: str, round_index: int = 0) -> None:
    """Accept an update of ``client_id`` whose fields are all derived from its id."""
    store.accept_update(
        RUN_ID,
        round_index,
        client_id,
        digest=f"sha256:{client_id}",
        num_examples=len(client_id) * 10,
        metrics_json=f'{{"loss": {len(client_id)}}}',
        payload_path=f"/runs/mnist-1/updates/{round_index}/{client_id}.npz",
        header_json=f'{{"client": "{client_id}"}}',
    )


# Runs.


def test_created_run_is_running_with_the_sha256_of_its_config(store: RunStore) -> None:
    run = store.run(RUN_ID)
    assert run is not None
    assert run.status == "running"
    assert run.name == "mnist"
    assert run.run_dir == "/runs/mnist-1"
    assert run.config_json == '{"rounds": 3}'
    assert run.config_hash == hashlib.sha256(b'{"rounds": 3}').hexdigest()
    assert run.created_at.tzinfo is not None
    assert run.created_at.utcoffset() == UTC.utcoffset(None)


def test_unknown_run_is_none(store: RunStore) -> None:
    assert store.run("no-such-run") is None


def test_run_id_cannot_be_created_twice(store: RunStore) -> None:
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(RUN_ID, "other", "{}", "/runs/other")
    run = store.run(RUN_ID)
    assert run is not None and run.name == "mnist"


def test_find_unfinished_run_returns_the_latest_running_run_of_that_name(store: RunStore) -> None:
    store.create_run("run-2", "mnist", "{}", "/runs/mnist-2")
    store.create_run("run-3", "cifar", "{}", "/runs/cifar-3")
    latest = store.find_unfinished_run("mnist")
    assert latest is not None and latest.run_id == "run-2"


def test_find_unfinished_run_skips_finished_runs(store: RunStore) -> None:
    store.create_run("run-2", "mnist", "{}", "/runs/mnist-2")
    store.finish_run("run-2", "failed", "out of memory")
    unfinished = store.find_unfinished_run("mnist")
    assert unfinished is not None and unfinished.run_id == RUN_ID
    store.finish_run(RUN_ID, "completed")
    assert store.find_unfinished_run("mnist") is None


def test_finished_run_keeps_its_status_and_message(store: RunStore) -> None:
    store.finish_run(RUN_ID, "failed", "client pool exhausted")
    run = store.run(RUN_ID)
    assert run is not None
    assert (run.status, run.message) == ("failed", "client pool exhausted")
    assert run.finished_at is not None and run.finished_at >= run.created_at


def test_finished_run_cannot_be_finished_again(store: RunStore) -> None:
    store.finish_run(RUN_ID, "completed")
    with pytest.raises(StoreError, match="already completed"):
        store.finish_run(RUN_ID, "failed")


def test_finishing_an_unknown_run_is_refused(store: RunStore) -> None:
    with pytest.raises(StoreError, match="no run 'ghost'"):
        store.finish_run("ghost", "completed")


# Enrolled clients.


def test_enrolment_is_kept_with_its_key_and_source(store: RunStore) -> None:
    enrolment = store.enroll("alice", KEY_A, "certificate")
    assert store.enrolled("alice") == enrolment
    assert (enrolment.client_id, enrolment.public_key, enrolment.source) == (
        "alice",
        KEY_A,
        "certificate",
    )
    assert store.enrolled("bob") is None


def test_enrolling_the_same_key_again_returns_the_first_enrolment(store: RunStore) -> None:
    first = store.enroll("alice", KEY_A, "certificate")
    assert store.enroll("alice", KEY_A, "command") == first
    assert store.enrolled_clients() == [first]


def test_enrolling_a_different_key_is_a_conflict_until_revoked(store: RunStore) -> None:
    first = store.enroll("alice", KEY_A, "certificate")
    with pytest.raises(EnrolmentConflict, match="revoke") as conflict:
        store.enroll("alice", KEY_B, "command")
    assert isinstance(conflict.value, FedwardenError)
    assert store.enrolled("alice") == first


def test_revoked_client_is_not_enrolled_and_may_enrol_a_new_key(store: RunStore) -> None:
    store.enroll("alice", KEY_A, "certificate")
    store.enroll("bob", KEY_A, "certificate")
    store.revoke("alice")
    assert store.enrolled("alice") is None
    assert [client.client_id for client in store.enrolled_clients()] == ["bob"]
    renewed = store.enroll("alice", KEY_B, "command")
    assert store.enrolled("alice") == renewed
    assert renewed.public_key == KEY_B


def test_revoking_a_client_that_is_not_enrolled_is_refused(store: RunStore) -> None:
    with pytest.raises(StoreError, match="not enrolled"):
        store.revoke("mallory")


def test_identity_key_must_be_32_raw_bytes(store: RunStore) -> None:
    with pytest.raises(StoreError, match="32 raw bytes"):
        store.enroll("alice", b"\x00" * 44, "command")
    assert store.enrolled("alice") is None


# Rounds.


def test_round_started_again_with_the_same_cohort_is_a_no_op(store: RunStore) -> None:
    store.round_started(RUN_ID, 0, ["alice", "bob"])
    store.round_started(RUN_ID, 0, ["alice", "bob"])
    store.round_started(RUN_ID, 0, ["bob", "alice"])
    assert store.round_cohort(RUN_ID, 0) == ["alice", "bob"]


def test_round_started_with_a_different_cohort_is_refused(store: RunStore) -> None:
    store.round_started(RUN_ID, 0, ["alice", "bob"])
    with pytest.raises(RoundConflict, match="same cohort"):
        store.round_started(RUN_ID, 0, ["alice", "carol"])
    assert store.round_cohort(RUN_ID, 0) == ["alice", "bob"]


def test_cohort_naming_a_client_twice_is_refused(store: RunStore) -> None:
    with pytest.raises(StoreError, match="twice"):
        store.round_started(RUN_ID, 0, ["alice", "alice"])
    assert store.round_cohort(RUN_ID, 0) is None


def test_round_of_an_unknown_run_is_refused(store: RunStore) -> None:
    with pytest.raises(StoreError, match="create_run first"):
        store.round_started("ghost", 0, ["alice"])


def test_completed_rounds_counts_only_completed_rounds(store: RunStore) -> None:
    for round_index in range(3):
        store.round_started(RUN_ID, round_index, ["alice"])
    store.round_completed(RUN_ID, 0, '{"round": 0}')
    store.round_completed(RUN_ID, 1, '{"round": 1}')
    store.round_completed(RUN_ID, 1, '{"round": 1}')
    assert store.completed_rounds(RUN_ID) == 2
    assert store.completed_rounds("ghost") == 0


def test_round_cannot_complete_before_it_started(store: RunStore) -> None:
    with pytest.raises(StoreError, match="never started"):
        store.round_completed(RUN_ID, 4, "{}")
    assert store.completed_rounds(RUN_ID) == 0


def test_completed_round_cannot_be_rewritten(store: RunStore) -> None:
    store.round_started(RUN_ID, 0, ["alice"])
    store.round_completed(RUN_ID, 0, '{"accuracy": 0.9}')
    with pytest.raises(RoundConflict, match="already completed"):
        store.round_completed(RUN_ID, 0, '{"accuracy": 0.1}')


# Accepted updates.


def test_accepted_updates_are_listed_in_acceptance_order_with_every_field(store: RunStore) -> None:
    for client_id in ["carol", "alice", "bob"]:
        accept(store, client_id)
    accept(store, "dave", round_index=1)
    updates = store.accepted_updates(RUN_ID, 0)
    assert [update.client_id for update in updates] == ["carol", "alice", "bob"]
    carol = updates[0]
    assert (carol.run_id, carol.round_index, carol.digest, carol.num_examples) == (
        RUN_ID,
        0,
        "sha256:carol",
        50,
    )
    assert carol.metrics_json == '{"loss": 5}'
    assert carol.payload_path == "/runs/mnist-1/updates/0/carol.npz"
    assert carol.header_json == '{"client": "carol"}'
    assert carol.accepted_at.tzinfo is not None
    assert [update.client_id for update in store.accepted_updates(RUN_ID, 1)] == ["dave"]


def test_second_accept_of_a_client_in_a_round_is_a_duplicate_and_keeps_one_row(
    store: RunStore,
) -> None:
    accept(store, "alice")
    with pytest.raises(DuplicateUpdate, match="already accepted"):
        store.accept_update(
            RUN_ID,
            0,
            "alice",
            digest="sha256:other",
            num_examples=1,
            metrics_json="{}",
            payload_path="/elsewhere.npz",
            header_json="{}",
        )
    updates = store.accepted_updates(RUN_ID, 0)
    assert [(update.client_id, update.digest) for update in updates] == [("alice", "sha256:alice")]
    accept(store, "alice", round_index=1)
    assert len(store.accepted_updates(RUN_ID, 1)) == 1


def test_update_for_an_unknown_run_is_refused(store: RunStore) -> None:
    with pytest.raises(StoreError, match="no run 'ghost'") as refusal:
        store.accept_update(
            "ghost",
            0,
            "alice",
            digest="d",
            num_examples=1,
            metrics_json="{}",
            payload_path="p",
            header_json="{}",
        )
    assert not isinstance(refusal.value, DuplicateUpdate)


def test_released_payloads_keep_each_updates_record_and_are_returned_once(
    store: RunStore,
) -> None:
    accept(store, "alice")
    accept(store, "bob")
    accept(store, "alice", round_index=1)
    assert store.release_payloads(RUN_ID, 0, "bob") == ["/runs/mnist-1/updates/0/bob.npz"]
    assert store.release_payloads(RUN_ID, 0) == ["/runs/mnist-1/updates/0/alice.npz"]
    assert store.release_payloads(RUN_ID, 0) == []
    kept = store.accepted_updates(RUN_ID, 0)
    assert [(row.client_id, row.payload_path, row.digest) for row in kept] == [
        ("alice", "", "sha256:alice"),
        ("bob", "", "sha256:bob"),
    ]
    assert store.accepted_updates(RUN_ID, 1)[0].payload_path != ""
    with pytest.raises(DuplicateUpdate):
        accept(store, "alice")


def test_concurrent_accepts_from_many_threads_are_all_recorded(store: RunStore) -> None:
    client_ids = [f"client-{number:02d}" for number in range(40)]
    failures: list[BaseException] = []

    def accept_from_thread(client_id: str) -> None:
        try:
            accept(store, client_id)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=accept_from_thread, args=(name,)) for name in client_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    recorded = store.accepted_updates(RUN_ID, 0)
    assert sorted(update.client_id for update in recorded) == client_ids


def test_concurrent_duplicate_accepts_record_exactly_one(store: RunStore) -> None:
    outcomes: list[str] = []

    def accept_from_thread() -> None:
        try:
            accept(store, "alice")
            outcomes.append("accepted")
        except DuplicateUpdate:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=accept_from_thread) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted"] + ["duplicate"] * 7
    assert len(store.accepted_updates(RUN_ID, 0)) == 1


# Rejections.


def test_rejection_counts_are_per_reason_and_per_run(store: RunStore) -> None:
    store.create_run("run-2", "mnist", "{}", "/runs/mnist-2")
    store.record_rejection(RUN_ID, 0, "alice", "norm_bound", "norm 12.0 above bound 10.0")
    store.record_rejection(RUN_ID, 1, "bob", "norm_bound", "norm 11.0 above bound 10.0")
    store.record_rejection(RUN_ID, None, "mallory", "not_enrolled", "unknown identity key")
    store.record_rejection("run-2", 0, "alice", "shape", "expected 10 values")
    assert store.rejection_counts(RUN_ID) == {"norm_bound": 2, "not_enrolled": 1}
    assert store.rejection_counts("run-2") == {"shape": 1}
    assert store.rejection_counts("ghost") == {}


def test_rejection_rows_list_each_refusal_of_the_run_in_order(store: RunStore) -> None:
    store.create_run("run-2", "mnist", "{}", "/runs/mnist-2")
    store.record_rejection(RUN_ID, 0, "alice", "norm_bound", "norm 12.0 above bound 10.0")
    store.record_rejection("run-2", 0, "bob", "shape", "expected 10 values")
    store.record_rejection(RUN_ID, None, "mallory", "not_enrolled", "unknown identity key")
    rows = store.rejection_rows(RUN_ID)
    assert [(row.client_id, row.round_index, row.reason, row.message) for row in rows] == [
        ("alice", 0, "norm_bound", "norm 12.0 above bound 10.0"),
        ("mallory", None, "not_enrolled", "unknown identity key"),
    ]
    assert all(row.run_id == RUN_ID and row.rejected_at.tzinfo is not None for row in rows)


def test_run_history_reads_cohorts_and_accepted_updates_of_one_run(store: RunStore) -> None:
    store.round_started(RUN_ID, 1, ["carol"])
    store.round_started(RUN_ID, 0, ["alice", "bob"])
    accept(store, "bob", round_index=0)
    accept(store, "carol", round_index=1)
    assert store.round_cohorts(RUN_ID) == {0: ["alice", "bob"], 1: ["carol"]}
    assert list(store.round_cohorts(RUN_ID)) == [0, 1]
    assert store.accepted_update_rounds(RUN_ID) == [("bob", 0), ("carol", 1)]
    assert store.round_cohorts("ghost") == {} and store.accepted_update_rounds("ghost") == []


def test_all_runs_lists_the_newest_first_and_run_count_counts_them(store: RunStore) -> None:
    store.create_run("run-2", "mnist", "{}", "/runs/mnist-2")
    assert [run.run_id for run in store.all_runs()] == ["run-2", RUN_ID]
    assert store.run_count() == 2


# Restarts.


def test_everything_committed_is_visible_from_a_store_reopened_on_the_same_database(
    store_url: str,
) -> None:
    with RunStore(store_url) as before:
        before.create_run(RUN_ID, "mnist", "{}", "/runs/mnist-1")
        before.enroll("alice", KEY_A, "certificate")
        before.round_started(RUN_ID, 0, ["alice", "bob"])
        accept(before, "alice")
        before.round_completed(RUN_ID, 0, '{"round": 0}')
        before.round_started(RUN_ID, 1, ["alice", "bob"])
        accept(before, "bob", round_index=1)
        before.record_rejection(RUN_ID, 1, "carol", "signature", "bad signature")
        expected_updates = before.accepted_updates(RUN_ID, 1)
    with RunStore(store_url) as after:
        unfinished = after.find_unfinished_run("mnist")
        assert unfinished is not None and unfinished.run_id == RUN_ID
        assert after.completed_rounds(RUN_ID) == 1
        assert after.round_cohort(RUN_ID, 1) == ["alice", "bob"]
        assert after.accepted_updates(RUN_ID, 1) == expected_updates
        enrolment = after.enrolled("alice")
        assert enrolment is not None and enrolment.public_key == KEY_A
        assert after.rejection_counts(RUN_ID) == {"signature": 1}
        with pytest.raises(DuplicateUpdate):
            accept(after, "bob", round_index=1)


CHILD_ACCEPTS_THEN_HANGS = """
import sys, time
from fedwarden.governance import RunStore
store = RunStore(sys.argv[1])
store.accept_update(
    "run-1", 0, "alice", digest="sha256:alice", num_examples=7, metrics_json="{}",
    payload_path="/runs/mnist-1/updates/0/alice.npz", header_json="{}",
)
print("committed", flush=True)
time.sleep(120)
"""


def test_update_committed_by_a_process_killed_with_sigkill_survives(store_url: str) -> None:
    with RunStore(store_url) as before:
        before.create_run(RUN_ID, "mnist", "{}", "/runs/mnist-1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_ACCEPTS_THEN_HANGS, store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    line = child.stdout.readline()
    child.kill()
    child.wait(timeout=60)
    assert line == "committed\n", child.stderr.read()
    assert child.returncode == -signal.SIGKILL
    if store_url.startswith("sqlite"):
        database = Path(store_url.removeprefix("sqlite:///"))
        # The row is still only in the write-ahead log: recovering it is what is tested.
        assert Path(f"{database}-wal").stat().st_size > 0
    with RunStore(store_url) as restarted:
        [update] = restarted.accepted_updates(RUN_ID, 0)
    assert (update.client_id, update.digest, update.num_examples) == ("alice", "sha256:alice", 7)


def test_sqlite_store_is_in_write_ahead_log_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "fedwarden.db"
    RunStore.sqlite(path).close()
    with closing(sqlite3.connect(path)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(StoreError, match="in-memory"):
        RunStore("sqlite://")
