"""The durable store of a deployed server: runs, rounds, enrolled clients, accepted updates.

A long-running ``fedwarden server`` must survive ``kill -9``: on restart it continues its run
from the last completed round, and no client update it acknowledged is lost. Everything it
must remember between rounds that is not a checkpoint or the privacy ledger (those stay in the
run directory, see :mod:`fedwarden.server.rundir`) is a row in one SQLAlchemy database:

``runs``
    one row per run: its name, validated config and the config's SHA-256, its run directory,
    and whether it is ``running``, ``completed`` or ``failed``.
``rounds``
    one row per started round: the sampled cohort and, once completed, its record (the
    figures the dashboard charts, written by :class:`RoundRows`).
``clients``
    every enrolment of a client's long-term Ed25519 identity key (raw 32 bytes); at most one
    per client is active (not revoked), and revoked enrolments stay on record.
``accepted_updates``
    each client update the server accepted, written and committed *before* the client is
    acknowledged; unique per (run, round, client). Once its round is checkpointed the spooled
    payload is deleted and the row stays, with the update's digest, example count and metrics:
    the run's per-client history.
``rejections``
    each refused update with its machine-readable reason.
``audit_log``
    the hash-chained, signed audit log of :mod:`fedwarden.governance.audit`: one row per entry,
    unique per ``sequence``; rows are only ever inserted.
``governance_secrets``
    named per-store secrets, such as the salt that pseudonymizes client ids in audit reports.
``model_versions`` and ``model_weights``
    the model registry of :mod:`fedwarden.governance.registry`: one row per registered version
    (its lineage, stage and metrics) and, until retention deletes them, its weights as the raw
    little-endian float32 bytes of the flat parameter vector (never pickled).
``pilot_evaluations``
    each candidate's federated evaluation on pilot clients, beside production's on the same.

The database is a SQLite file by default (``sqlite:///path/to/fedwarden.db``), opened in WAL
mode with ``synchronous=FULL`` so that a committed row survives a crash of the process or the
machine; a PostgreSQL URL (``postgresql+psycopg://...``) works as well, since every statement
is portable SQLAlchemy Core. All tables belong to the one :data:`metadata`, so later tables
(an audit log, a model registry) are added to it and created by the same ``create_all``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Row,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fedwarden.core.errors import FedwardenError
from fedwarden.runtime.grpc.journal import (
    AcceptedUpdate,
    DuplicateUpdate,
    EnrolledClient,
    EnrolmentConflict,
)

if TYPE_CHECKING:
    from fedwarden.server.records import RoundRecord

logger = logging.getLogger(__name__)

RunStatus = Literal["running", "completed", "failed"]
FinalStatus = Literal["completed", "failed"]
IDENTITY_KEY_BYTES = 32
_FINAL_STATUSES = ("completed", "failed")


class StoreError(FedwardenError):
    """The run store was asked for something its records do not allow."""


class RoundConflict(StoreError):
    """A round was started or completed again with a different cohort or record."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no offset, so add it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store the instant in UTC."""
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read the instant back as an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

runs = Table(
    "runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("config_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("run_dir", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    CheckConstraint("status IN ('running', 'completed', 'failed')", name="status"),
)

rounds = Table(
    "rounds",
    metadata,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("round_index", Integer, primary_key=True),
    Column("cohort_json", Text, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("record_json", Text, nullable=True),
    Column("completed_at", UtcDateTime, nullable=True),
)

clients = Table(
    "clients",
    metadata,
    Column("enrolment_id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(200), nullable=False, index=True),
    Column("public_key", LargeBinary(IDENTITY_KEY_BYTES), nullable=False),
    Column("source", String(32), nullable=False),
    Column("enrolled_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
)
# At most one active enrolment per client, enforced by the database itself.
Index(
    "ux_clients_active_client_id",
    clients.c.client_id,
    unique=True,
    sqlite_where=clients.c.revoked_at.is_(None),
    postgresql_where=clients.c.revoked_at.is_(None),
)

accepted_updates = Table(
    "accepted_updates",
    metadata,
    Column("update_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    Column("round_index", Integer, nullable=False),
    Column("client_id", String(200), nullable=False),
    Column("digest", String(128), nullable=False),
    Column("num_examples", Integer, nullable=False),
    Column("metrics_json", Text, nullable=False),
    Column("payload_path", Text, nullable=False),
    Column("header_json", Text, nullable=False),
    Column("accepted_at", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "round_index", "client_id"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("rejection_id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("round_index", Integer, nullable=True),
    Column("client_id", String(200), nullable=False),
    Column("reason", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("rejected_at", UtcDateTime, nullable=False),
)


audit_log = Table(
    "audit_log",
    metadata,
    Column("entry_id", Integer, primary_key=True, autoincrement=True),
    Column("sequence", Integer, nullable=False, unique=True),
    Column("timestamp", String(40), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("previous_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

governance_secrets = Table(
    "governance_secrets",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("major", Integer, nullable=False),
    Column("minor", Integer, nullable=False),
    Column("patch", Integer, nullable=False),
    Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
    Column("parent", String(240), nullable=True),
    Column("stage", String(16), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("rounds", Integer, nullable=False),
    Column("participants", Integer, nullable=False),
    Column("dp_json", Text, nullable=True),
    Column("metrics_json", Text, nullable=False),
    Column("config_hash", String(64), nullable=False),
    Column("data_description", Text, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("weights_deleted", Boolean, nullable=False),
    Column("pilot_accuracy", Float, nullable=True),
    Column("production_order", Integer, nullable=True),
    Column("rolled_back", Boolean, nullable=False),
    Column("registered_at", UtcDateTime, nullable=False),
    Column("promoted_at", UtcDateTime, nullable=True),
    UniqueConstraint("model", "major", "minor", "patch"),
    CheckConstraint("stage IN ('candidate', 'production', 'deprecated')", name="stage"),
)

model_weights = Table(
    "model_weights",
    metadata,
    Column("model", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("weights", LargeBinary, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)

pilot_evaluations = Table(
    "pilot_evaluations",
    metadata,
    Column("evaluation_id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("version", String(32), nullable=False),
    Column("clients_json", Text, nullable=False),
    Column("accuracy", Float, nullable=False),
    Column("production", String(32), nullable=True),
    Column("production_accuracy", Float, nullable=True),
    Column("evaluated_at", UtcDateTime, nullable=False),
    ForeignKeyConstraint(["model", "version"], ["model_versions.model", "model_versions.version"]),
)


@dataclass(frozen=True)
class RunRow:
    """One run as recorded: its config, where its files are, and how it ended."""

    run_id: str
    name: str
    config_json: str
    config_hash: str
    run_dir: str
    status: RunStatus
    created_at: datetime
    message: str = ""
    finished_at: datetime | None = None


_Record = TypeVar("_Record", RunRow, EnrolledClient, AcceptedUpdate)


def _select_as(record: type[_Record], table: Table) -> Select[Any]:
    """Select the columns of ``table`` named as the fields of ``record``."""
    return select(*(table.c[field.name] for field in fields(record)))


def _as(record: type[_Record], row: Row[Any]) -> _Record:
    """A row selected by :func:`_select_as` as the dataclass it was selected for."""
    return record(**row._asdict())


def _now() -> datetime:
    """The current instant in UTC."""
    return datetime.now(UTC)


def _enable_sqlite_durability(dbapi_connection: Any, connection_record: Any) -> None:
    """Open each SQLite connection in WAL mode with full fsync on commit and foreign keys on.

    The driver's own transaction handling is turned off so that SQLAlchemy's ``begin`` emits a
    real ``BEGIN`` (the recipe of SQLAlchemy's SQLite dialect documentation).
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


StoreAccess = Literal["full", "read_only", "audit_append"]
"""What a process may do to the store: anything, read, or read and append audit entries."""

_READING_ACTIONS = frozenset(
    {
        sqlite3.SQLITE_READ,
        sqlite3.SQLITE_SELECT,
        sqlite3.SQLITE_TRANSACTION,
        sqlite3.SQLITE_FUNCTION,
        sqlite3.SQLITE_SAVEPOINT,
    }
)
_CONNECTION_PRAGMAS = frozenset({"journal_mode", "synchronous", "foreign_keys", "query_only"})


def _audit_appends_only(
    action: int, first: str | None, second: str | None, database: str | None, source: str | None
) -> int:
    """SQLite authorizer: reads, connection settings and inserts into ``audit_log``; no other."""
    if action in _READING_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_INSERT and first == "audit_log":
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (second is None or first in _CONNECTION_PRAGMAS):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _restrict_to_audit_appends(dbapi_connection: Any, connection_record: Any) -> None:
    """Install :func:`_audit_appends_only` on a new SQLite connection."""
    dbapi_connection.set_authorizer(_audit_appends_only)


def _open_sqlite_read_only(dbapi_connection: Any, connection_record: Any) -> None:
    """A SQLite connection opened ``mode=ro``: explicit transactions, and queries only."""
    dbapi_connection.isolation_level = None
    dbapi_connection.execute("PRAGMA query_only=ON")


def _open_postgres_read_only(dbapi_connection: Any, connection_record: Any) -> None:
    """A PostgreSQL session whose transactions are all read-only."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    dbapi_connection.commit()


def postgres_grants(role: str, access: StoreAccess) -> list[str]:
    """The SQL that gives a PostgreSQL ``role`` exactly ``access`` to the store's tables.

    Run it as the tables' owner, once the store exists; the role needs no other privilege.
    ``read_only`` may select from every table; ``audit_append`` may also insert audit entries
    (and draw their ids), and change nothing.
    """
    if access == "full" or not role.isidentifier():
        raise StoreError(
            f"grants are for a read_only or audit_append role with a plain name, not {access} "
            f"for {role!r}"
        )
    grants = [f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"]
    if access == "audit_append":
        grants += [
            f"GRANT INSERT ON audit_log TO {role}",
            f"GRANT USAGE ON SEQUENCE audit_log_entry_id_seq TO {role}",
        ]
    return grants


def _begin_sqlite_transaction(connection: Connection) -> None:
    """Start a SQLite transaction explicitly (the driver no longer does it)."""
    connection.exec_driver_sql("BEGIN")


class RunStore:
    """The server's durable record of runs, rounds, enrolled clients and accepted updates.

    Safe to call from several threads (the gRPC server's): every write is one transaction,
    serialised by a lock, and commits before the method returns.

    ``access`` narrows what this process may do, enforced by the database, not by this
    class: ``read_only`` opens a SQLite file ``mode=ro`` (PostgreSQL: read-only session
    transactions); ``audit_append`` lets a SQLite connection read and insert into
    ``audit_log``, nothing else (an authorizer refuses every other write). On PostgreSQL,
    connect such a process as a role with only those grants (:func:`postgres_grants`); the
    database enforces them. Neither creates tables.
    """

    def __init__(self, url: str | URL, access: StoreAccess = "full") -> None:
        database_url = make_url(url)
        self.access = access
        self._write_lock = threading.Lock()
        if database_url.get_backend_name() == "sqlite":
            if database_url.database in (None, "", ":memory:"):
                raise StoreError(
                    f"run store URL {database_url} names no database file; an in-memory "
                    "database would lose every run at exit. Use sqlite:///path/to/fedwarden.db."
                )
            if access == "read_only":
                database_url = database_url.set(
                    database=f"file:{database_url.database}", query={"mode": "ro", "uri": "true"}
                )
            self._engine = create_engine(
                database_url,
                connect_args={"check_same_thread": False, "timeout": 30.0},
                pool_pre_ping=True,
            )
            if access == "read_only":
                event.listen(self._engine, "connect", _open_sqlite_read_only)
            else:
                event.listen(self._engine, "connect", _enable_sqlite_durability)
            if access == "audit_append":
                event.listen(self._engine, "connect", _restrict_to_audit_appends)
            event.listen(self._engine, "begin", _begin_sqlite_transaction)
        else:
            self._engine = create_engine(database_url, pool_pre_ping=True)
            if access == "read_only":
                event.listen(self._engine, "connect", _open_postgres_read_only)
        if access == "full":
            metadata.create_all(self._engine)
        logger.info("opened run store %s", database_url.render_as_string(hide_password=True))

    @property
    def url(self) -> str:
        """The store's URL with any password hidden: what to give other commands."""
        return self._engine.url.render_as_string(hide_password=True)

    @classmethod
    def sqlite(cls, path: Path) -> RunStore:
        """A store in the SQLite file ``path``, creating the file and its folder if missing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(path)))

    @classmethod
    def existing(cls, url: str) -> RunStore:
        """Open the store at ``url``; a SQLite file that does not exist or a bad URL is refused."""
        try:
            database_url = make_url(url)
            database = database_url.database
            if (
                database_url.get_backend_name() == "sqlite"
                and database
                and not Path(database).exists()
            ):
                raise StoreError(f"there is no run store at {database}; check the store URL")
            return cls(database_url)
        except SQLAlchemyError as error:
            raise StoreError(
                f"cannot open the run store {url!r}: {error}; give a SQLAlchemy URL such as "
                "sqlite:///runs/fedwarden.db or postgresql+psycopg://user@host/database"
            ) from None

    def close(self) -> None:
        """Close every pooled database connection."""
        self._engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, committed on leaving the block, one writer at a time."""
        with self._write_lock, self._engine.begin() as connection:
            yield connection

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A connection for reading what is committed."""
        with self._engine.connect() as connection:
            yield connection

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction on the store's tables, for governance modules beside it.

        The audit log and the model registry write through it, so their writes are serialised
        with the store's own and an audited change commits together with its audit entry.
        """
        with self._write() as connection:
            yield connection

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reading what is committed, for governance modules beside the store."""
        with self._read() as connection:
            yield connection

    # Runs.

    def create_run(self, run_id: str, name: str, config_json: str, run_dir: str) -> None:
        """Record a new run as ``running``, with the SHA-256 of its config."""
        config_hash = hashlib.sha256(config_json.encode()).hexdigest()
        try:
            with self._write() as connection:
                connection.execute(
                    insert(runs).values(
                        run_id=run_id,
                        name=name,
                        config_json=config_json,
                        config_hash=config_hash,
                        run_dir=run_dir,
                        status="running",
                        message="",
                        created_at=_now(),
                    )
                )
        except IntegrityError as error:
            raise StoreError(
                f"a run with id {run_id!r} already exists; choose a new run id or resume it"
            ) from error
        logger.info("created run %s (%s) in %s", run_id, name, run_dir)

    def run(self, run_id: str) -> RunRow | None:
        """The run ``run_id``, or None if there is none."""
        with self._read() as connection:
            row = connection.execute(
                _select_as(RunRow, runs).where(runs.c.run_id == run_id)
            ).one_or_none()
        return None if row is None else _as(RunRow, row)

    def change_run_config(self, run_id: str, config_json: str) -> None:
        """Replace the config of run ``run_id`` and its hash: an explicit, audited budget change."""
        config_hash = hashlib.sha256(config_json.encode()).hexdigest()
        with self._write() as connection:
            self._require_run(connection, run_id)
            connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(config_json=config_json, config_hash=config_hash)
            )
        logger.info("run %s now has the config %s", run_id, config_hash)

    def find_unfinished_run(self, name: str) -> RunRow | None:
        """The latest run called ``name`` that is still ``running``, or None."""
        with self._read() as connection:
            row = connection.execute(
                _select_as(RunRow, runs)
                .where(runs.c.name == name, runs.c.status == "running")
                .order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
                .limit(1)
            ).one_or_none()
        return None if row is None else _as(RunRow, row)

    def finish_run(self, run_id: str, status: FinalStatus, message: str = "") -> None:
        """Mark a running run ``completed`` or ``failed``, with a message for the operator."""
        if status not in _FINAL_STATUSES:
            raise StoreError(
                f"cannot finish run {run_id!r} with status {status!r}; "
                f"use one of {', '.join(_FINAL_STATUSES)}"
            )
        with self._write() as connection:
            current = connection.execute(
                select(runs.c.status).where(runs.c.run_id == run_id)
            ).scalar_one_or_none()
            if current is None:
                raise StoreError(f"there is no run {run_id!r} to finish; check the run id")
            if current != "running":
                raise StoreError(
                    f"run {run_id!r} is already {current}; it cannot be finished again"
                )
            connection.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(status=status, message=message, finished_at=_now())
            )
        logger.info("run %s %s %s", run_id, status, message)

    # Enrolled clients.

    def enroll(self, client_id: str, public_key: bytes, source: str) -> EnrolledClient:
        """Enrol a client with its Ed25519 identity key; enrolling the same key again is a no-op.

        Raises :class:`EnrolmentConflict` if the client is enrolled with another key, or if
        this key's enrolment (of any client) was revoked: a revoked key stays revoked.
        """
        if len(public_key) != IDENTITY_KEY_BYTES:
            raise StoreError(
                f"identity key of client {client_id!r} has {len(public_key)} bytes; an Ed25519 "
                f"public key is {IDENTITY_KEY_BYTES} raw bytes"
            )
        try:
            with self._write() as connection:
                revoked_at = connection.execute(
                    select(func.max(clients.c.revoked_at)).where(
                        clients.c.public_key == bytes(public_key),
                        clients.c.revoked_at.is_not(None),
                    )
                ).scalar()
                if revoked_at is not None:
                    raise EnrolmentConflict(
                        f"client {client_id!r} presents an identity key whose enrolment was "
                        f"revoked {revoked_at:%Y-%m-%d %H:%M} UTC; a revoked key is never "
                        "enrolled again: issue the client a new kit (`fedwarden pki issue client "
                        f"{client_id} --force`)"
                    )
                existing = self._active_enrolment(connection, client_id)
                if existing is None:
                    enrolment = EnrolledClient(client_id, bytes(public_key), source, _now())
                    connection.execute(
                        insert(clients).values(
                            client_id=client_id,
                            public_key=enrolment.public_key,
                            source=source,
                            enrolled_at=enrolment.enrolled_at,
                        )
                    )
                    logger.info("enrolled client %s from %s", client_id, source)
                    return enrolment
        except IntegrityError:
            # Another process enrolled the client between our read and our insert.
            with self._read() as connection:
                existing = self._active_enrolment(connection, client_id)
            if existing is None:
                raise
        if existing.public_key != public_key:
            raise EnrolmentConflict(
                f"client {client_id!r} is already enrolled with another identity key "
                f"(enrolled {existing.enrolled_at:%Y-%m-%d %H:%M} UTC from {existing.source}); "
                f"an operator must `revoke` it before it can be enrolled with a new key"
            )
        return existing

    def revoke(self, client_id: str) -> None:
        """Revoke the client's active enrolment; it may then be enrolled again with a new key."""
        with self._write() as connection:
            revoked = connection.execute(
                update(clients)
                .where(clients.c.client_id == client_id, clients.c.revoked_at.is_(None))
                .values(revoked_at=_now())
            ).rowcount
        if revoked == 0:
            raise StoreError(f"client {client_id!r} is not enrolled; there is nothing to revoke")
        logger.info("revoked client %s", client_id)

    def enrolled(self, client_id: str) -> EnrolledClient | None:
        """The client's active enrolment, or None if it was never enrolled or was revoked."""
        with self._read() as connection:
            return self._active_enrolment(connection, client_id)

    def enrolled_clients(self) -> list[EnrolledClient]:
        """Every active enrolment, by client id."""
        with self._read() as connection:
            rows = connection.execute(
                _select_as(EnrolledClient, clients)
                .where(clients.c.revoked_at.is_(None))
                .order_by(clients.c.client_id)
            ).all()
        return [_as(EnrolledClient, row) for row in rows]

    @staticmethod
    def _active_enrolment(connection: Connection, client_id: str) -> EnrolledClient | None:
        """The client's enrolment that is not revoked, if any."""
        row = connection.execute(
            _select_as(EnrolledClient, clients).where(
                clients.c.client_id == client_id, clients.c.revoked_at.is_(None)
            )
        ).one_or_none()
        return None if row is None else _as(EnrolledClient, row)

    # Rounds.

    def round_started(self, run_id: str, round_index: int, cohort: Sequence[str]) -> None:
        """Record the cohort sampled for a round; a restarted server may record the same again.

        Raises :class:`RoundConflict` if the round was started with a different cohort.
        """
        members = list(cohort)
        if len(set(members)) != len(members):
            raise StoreError(
                f"cohort of round {round_index} of run {run_id!r} names a client twice: {members}"
            )
        with self._write() as connection:
            self._require_run(connection, run_id)
            stored = self._cohort(connection, run_id, round_index)
            if stored is None:
                connection.execute(
                    insert(rounds).values(
                        run_id=run_id,
                        round_index=round_index,
                        cohort_json=json.dumps(members),
                        started_at=_now(),
                    )
                )
                logger.info(
                    "round %d of run %s started: %d clients", round_index, run_id, len(members)
                )
                return
        if sorted(stored) != sorted(members):
            raise RoundConflict(
                f"round {round_index} of run {run_id!r} was started with cohort {stored}, not "
                f"{members}; a resumed run must sample the same cohort (same seed and config)"
            )

    def round_cohort(self, run_id: str, round_index: int) -> list[str] | None:
        """The cohort a round was started with, or None if it was not started."""
        with self._read() as connection:
            return self._cohort(connection, run_id, round_index)

    def round_completed(self, run_id: str, round_index: int, record_json: str) -> None:
        """Mark a started round completed with its record; the same record again is a no-op.

        Raises :class:`RoundConflict` if the round was already completed with another record.
        """
        with self._write() as connection:
            row = connection.execute(
                select(rounds.c.record_json).where(
                    rounds.c.run_id == run_id, rounds.c.round_index == round_index
                )
            ).one_or_none()
            if row is None:
                raise StoreError(
                    f"round {round_index} of run {run_id!r} was never started; "
                    "call round_started with its cohort first"
                )
            if row.record_json is None:
                connection.execute(
                    update(rounds)
                    .where(rounds.c.run_id == run_id, rounds.c.round_index == round_index)
                    .values(record_json=record_json, completed_at=_now())
                )
                logger.info("round %d of run %s completed", round_index, run_id)
                return
        if row.record_json != record_json:
            raise RoundConflict(
                f"round {round_index} of run {run_id!r} is already completed with another "
                "record; a completed round cannot be rewritten"
            )

    def round_records(self, run_id: str) -> list[dict[str, Any]]:
        """The records of the run's completed rounds, in round order."""
        with self._read() as connection:
            stored = connection.execute(
                select(rounds.c.record_json)
                .where(rounds.c.run_id == run_id, rounds.c.record_json.is_not(None))
                .order_by(rounds.c.round_index)
            ).scalars()
            return [json.loads(record) for record in stored]

    def completed_rounds(self, run_id: str) -> int:
        """How many rounds of the run are completed."""
        with self._read() as connection:
            return connection.execute(
                select(func.count())
                .select_from(rounds)
                .where(rounds.c.run_id == run_id, rounds.c.completed_at.is_not(None))
            ).scalar_one()

    @staticmethod
    def _cohort(connection: Connection, run_id: str, round_index: int) -> list[str] | None:
        """The stored cohort of a round, if it was started."""
        cohort_json = connection.execute(
            select(rounds.c.cohort_json).where(
                rounds.c.run_id == run_id, rounds.c.round_index == round_index
            )
        ).scalar_one_or_none()
        return None if cohort_json is None else list(json.loads(cohort_json))

    # Accepted updates.

    def accept_update(
        self,
        run_id: str,
        round_index: int,
        client_id: str,
        *,
        digest: str,
        num_examples: int,
        metrics_json: str,
        payload_path: str,
        header_json: str,
    ) -> None:
        """Durably record an accepted update; call it before acknowledging the client.

        Raises :class:`DuplicateUpdate` if the client's update for this round was already accepted.
        """
        try:
            with self._write() as connection:
                self._require_run(connection, run_id)
                connection.execute(
                    insert(accepted_updates).values(
                        run_id=run_id,
                        round_index=round_index,
                        client_id=client_id,
                        digest=digest,
                        num_examples=num_examples,
                        metrics_json=metrics_json,
                        payload_path=payload_path,
                        header_json=header_json,
                        accepted_at=_now(),
                    )
                )
        except IntegrityError as error:
            raise DuplicateUpdate(
                f"an update of client {client_id!r} for round {round_index} of run {run_id!r} "
                "was already accepted; a client contributes at most once per round"
            ) from error
        logger.debug("accepted update of %s for round %d of run %s", client_id, round_index, run_id)

    def accepted_updates(self, run_id: str, round_index: int) -> list[AcceptedUpdate]:
        """The updates accepted for a round, in the order they were accepted."""
        with self._read() as connection:
            rows = connection.execute(
                _select_as(AcceptedUpdate, accepted_updates)
                .where(
                    accepted_updates.c.run_id == run_id,
                    accepted_updates.c.round_index == round_index,
                )
                .order_by(accepted_updates.c.update_id)
            ).all()
        return [_as(AcceptedUpdate, row) for row in rows]

    def release_payloads(
        self, run_id: str, round_index: int, client_id: str | None = None
    ) -> list[str]:
        """Mark a round's spooled payloads (or one client's) as deleted; the files to delete.

        Each update's record (digest, example count, metrics) stays: the run's per-client
        history. A released payload is never read back (its round is checkpointed).
        """
        released = [
            accepted_updates.c.run_id == run_id,
            accepted_updates.c.round_index == round_index,
            accepted_updates.c.payload_path != "",
        ]
        if client_id is not None:
            released.append(accepted_updates.c.client_id == client_id)
        with self._write() as connection:
            payload_paths = list(
                connection.execute(
                    select(accepted_updates.c.payload_path)
                    .where(*released)
                    .order_by(accepted_updates.c.update_id)
                ).scalars()
            )
            connection.execute(update(accepted_updates).where(*released).values(payload_path=""))
        logger.info(
            "released %d spooled payloads of round %d of run %s",
            len(payload_paths),
            round_index,
            run_id,
        )
        return payload_paths

    # Rejections.

    def record_rejection(
        self, run_id: str, round_index: int | None, client_id: str, reason: str, message: str
    ) -> None:
        """Record an update (or a request outside any round) the server refused, and why."""
        with self._write() as connection:
            self._require_run(connection, run_id)
            connection.execute(
                insert(rejections).values(
                    run_id=run_id,
                    round_index=round_index,
                    client_id=client_id,
                    reason=reason,
                    message=message,
                    rejected_at=_now(),
                )
            )

    def rejection_counts(self, run_id: str) -> dict[str, int]:
        """How many refusals of each reason the run has recorded."""
        with self._read() as connection:
            rows = connection.execute(
                select(rejections.c.reason, func.count())
                .where(rejections.c.run_id == run_id)
                .group_by(rejections.c.reason)
                .order_by(rejections.c.reason)
            ).all()
        return {reason: count for reason, count in rows}

    @staticmethod
    def _require_run(connection: Connection, run_id: str) -> None:
        """Refuse a write that names a run the store does not know."""
        known = connection.execute(
            select(runs.c.run_id).where(runs.c.run_id == run_id)
        ).scalar_one_or_none()
        if known is None:
            raise StoreError(f"there is no run {run_id!r} in the store; call create_run first")


class RoundRows:
    """Writes each completed round's record into the run store (a server's round monitor).

    The record goes in after the server's checkpoint, so a round is never recorded twice;
    the dashboard reads these rows. FedBuff's server updates sample no cohort: their row
    gets an empty one.
    """

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """Record ``record`` as its round's figures."""
        if self.store.round_cohort(self.run_id, record.round_index) is None:
            self.store.round_started(self.run_id, record.round_index, [])
        self.store.round_completed(
            self.run_id, record.round_index, json.dumps(record.to_json(), sort_keys=True)
        )
