"""How a process opens the run store: its access mode, enforced by the database, and transactions.

``access`` narrows what a process may do, enforced by the database, not by this code:
``read_only`` opens a SQLite file ``mode=ro`` (PostgreSQL: read-only session transactions);
``audit_append`` lets a SQLite connection read and insert into ``audit_log``, nothing else (an
authorizer refuses every other write). On PostgreSQL, connect such a process as a role with
only those grants (:func:`postgres_grants`); the database enforces them. Neither creates
tables.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from sqlalchemy import Connection, create_engine, event, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from fedwarden.governance.store.records import StoreError
from fedwarden.governance.store.schema import metadata, runs

logger = logging.getLogger(__name__)


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


class StoreEngine:
    """The store's database: its engine, its access mode and its serialised write transactions.

    Safe to call from several threads (the gRPC server's): every write is one transaction,
    serialised by a lock, and commits before the method returns.
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
    def sqlite(cls, path: Path) -> Self:
        """A store in the SQLite file ``path``, creating the file and its folder if missing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str(path)))

    @classmethod
    def existing(cls, url: str) -> Self:
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

    def __enter__(self) -> Self:
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

    @staticmethod
    def _require_run(connection: Connection, run_id: str) -> None:
        """Refuse a write that names a run the store does not know."""
        known = connection.execute(
            select(runs.c.run_id).where(runs.c.run_id == run_id)
        ).scalar_one_or_none()
        if known is None:
            raise StoreError(f"there is no run {run_id!r} in the store; call create_run first")
