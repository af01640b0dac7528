"""Appending to the audit log: signed, hash-chained entries, serialised across processes.

Appends are serialised by the store's write lock and made in one transaction that reads the
last entry and inserts the next; the database refuses a second entry with the same
``sequence``. The log is append-only: this module has no way to update or delete an entry.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import fields
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert
from sqlalchemy.exc import IntegrityError, OperationalError

from fedwarden.governance.audit.entries import (
    GENESIS_HASH,
    AuditEntry,
    content_problem,
    entry_hash,
    select_entries,
)
from fedwarden.governance.audit.events import (
    ROOT_ONLY_KINDS,
    AuditError,
    AuditEvent,
    canonical_json,
)
from fedwarden.governance.audit.signers import Signers
from fedwarden.governance.store import RunStore, audit_log

logger = logging.getLogger(__name__)

_APPEND_PATIENCE_S = 30.0
"""How long :meth:`AuditLog.append` keeps retrying appends that collide with another writer's."""
_APPEND_BACKOFF_S = 0.2
"""Longest pause between two attempts (each pause is random, so two writers fall out of step)."""


class AuditLog:
    """Appends signed, hash-chained entries to the store's audit log; never changes one.

    The log's root key (the server kit's ``audit.key``) may append every kind of event; a key
    it delegated (:class:`SignerDelegated`) only the kinds it was delegated, until the root key
    revokes it (:class:`SignerRevoked`). Open the log with the root key alone, or with a
    delegated key and ``root_public_key``, the root's public key, which must come from outside
    the database (the kit's ``audit.pub``): the delegations count only because it signed them.

    A new ``AuditLog`` on a store that already holds entries (a restarted server) continues
    its chain. It refuses to open when its key is neither the root key nor a delegated key
    that is not revoked, when the last entry was signed neither by the root key nor by a key
    delegated that entry's kind at that point, or when a delegation or revocation entry does
    not match its hash or was not signed by the root key. Each append first reads, in its
    own transaction, the delegations and revocations committed since, and refuses a kind this
    key may not sign: a key revoked while its process runs appends nothing afterwards.

    These checks read only the delegation and revocation entries and the last entry. They stop
    a writer holding the wrong, a revoked or an under-delegated key; they do not stop someone
    who can write to the database (who could, say, delete a revocation): :func:`verify`, which
    walks the whole chain from the root public key, detects that.
    """

    def __init__(
        self,
        store: RunStore,
        signing_key: Ed25519PrivateKey,
        *,
        root_public_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.store = store
        self._signing_key = signing_key
        self.signer_public_key = signing_key.public_key()
        self.public_key = self.signer_public_key if root_public_key is None else root_public_key
        """The log's root public key, which verifies it."""
        self._signers = Signers(self.public_key)
        self._read_from = 0
        with store.reading() as connection:
            last = self._catch_up(connection)
        problem = None if last is None else self._signers.signer_problem(last)
        if last is not None and problem is not None:
            raise AuditError(
                f"the audit log's last entry ({last.sequence}) was not signed with this key or "
                f"a key it delegated ({problem}); continue the log with its root key, or with "
                "a delegated key and the root public key"
            )
        problem = self._signers.permission_problem(self.signer_public_key, None)
        if problem is not None:
            raise AuditError(f"cannot write to the audit log with this key: {problem}")

    def append(self, event: AuditEvent) -> AuditEntry:
        """Record ``event`` as the next entry, committed before this returns.

        Several processes may append to one store's log (a server and a prediction service).
        When another process commits an entry between this one's read of the last entry and
        its insert, the database refuses the insert (PostgreSQL: the duplicate ``sequence``;
        SQLite in WAL mode: the stale read snapshot, "database is locked"), and the append is
        tried again on the new last entry after a short random pause, for up to
        ``_APPEND_PATIENCE_S`` seconds. A collision means another entry was committed, so the
        writers together always progress.
        """
        attempt = 1
        deadline = time.monotonic() + _APPEND_PATIENCE_S
        while True:
            try:
                with self.store.transaction() as connection:
                    return self.append_within(connection, event)
            except (IntegrityError, OperationalError) as error:
                if time.monotonic() >= deadline:
                    raise AuditError(
                        f"could not append {event.kind} to the audit log in {attempt} attempts "
                        f"over {_APPEND_PATIENCE_S:g} s ({error.orig}); check that the store is "
                        "reachable and that no process holds its write lock, and retry"
                    ) from error
                logger.debug("audit append of %s collided (attempt %d)", event.kind, attempt)
                time.sleep(secrets.SystemRandom().uniform(0.0, _APPEND_BACKOFF_S))
                attempt += 1

    def append_within(self, connection: Connection, event: AuditEvent) -> AuditEntry:
        """Record ``event`` in the caller's open write transaction of this log's store.

        The caller's change and its audit entry then commit, or fail, together. An event this
        log's key may not sign now (see the class) is refused with AuditError.
        """
        last = self._catch_up(connection)
        problem = self._signers.permission_problem(
            self.signer_public_key, event.kind
        ) or self._signers.event_problem(event)
        if problem is not None:
            raise AuditError(f"cannot append {event.kind} to the audit log: {problem}")
        sequence = 0 if last is None else last.sequence + 1
        previous_hash = GENESIS_HASH if last is None else last.entry_hash
        timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
        payload = canonical_json(event.payload())
        digest = entry_hash(previous_hash, sequence, timestamp, event.kind, payload)
        entry = AuditEntry(
            sequence=sequence,
            timestamp=timestamp,
            kind=event.kind,
            payload=payload,
            previous_hash=previous_hash,
            entry_hash=digest,
            signature=self._signing_key.sign(bytes.fromhex(digest)).hex(),
        )
        connection.execute(
            insert(audit_log).values(
                **{field.name: getattr(entry, field.name) for field in fields(entry)}
            )
        )
        logger.debug("audit entry %d: %s", sequence, event.kind)
        return entry

    def _catch_up(self, connection: Connection) -> AuditEntry | None:
        """Apply the delegations and revocations appended since the last call; the last entry.

        Each must match its hash and be signed by the root key, or AuditError is raised.
        """
        last = self._last_entry(connection)
        if last is None:
            return None
        rows = connection.execute(
            select_entries()
            .where(
                audit_log.c.kind.in_(sorted(ROOT_ONLY_KINDS)),
                audit_log.c.sequence >= self._read_from,
                audit_log.c.sequence <= last.sequence,
            )
            .order_by(audit_log.c.sequence, audit_log.c.entry_id)
        ).all()
        for row in rows:
            entry = AuditEntry(**row._asdict())
            problem = (
                content_problem(entry)
                or self._signers.signer_problem(entry)
                or self._signers.record(entry)
            )
            if problem is not None:
                raise AuditError(
                    f"the audit log's delegations cannot be trusted: {problem}; run "
                    "`fedwarden audit verify` and repair the store before writing to it"
                )
        self._read_from = last.sequence + 1
        return last

    @staticmethod
    def _last_entry(connection: Connection) -> AuditEntry | None:
        """The entry with the highest sequence, if any."""
        row = connection.execute(
            select_entries()
            .order_by(audit_log.c.sequence.desc(), audit_log.c.entry_id.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else AuditEntry(**row._asdict())
