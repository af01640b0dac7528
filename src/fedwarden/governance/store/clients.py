"""The store's enrolled clients: each long-term identity key, at most one active per client."""

from __future__ import annotations

import logging

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedwarden.governance.store.engine import StoreEngine
from fedwarden.governance.store.records import (
    StoreError,
    as_record,
    select_as,
)
from fedwarden.governance.store.schema import IDENTITY_KEY_BYTES, clients, utc_now
from fedwarden.runtime.grpc.journal import EnrolledClient, EnrolmentConflict

logger = logging.getLogger(__name__)


class Enrolments(StoreEngine):
    """Enrolled clients: every enrolment kept, at most one active per client."""

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
                    enrolment = EnrolledClient(client_id, bytes(public_key), source, utc_now())
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
                .values(revoked_at=utc_now())
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
                select_as(EnrolledClient, clients)
                .where(clients.c.revoked_at.is_(None))
                .order_by(clients.c.client_id)
            ).all()
        return [as_record(EnrolledClient, row) for row in rows]

    @staticmethod
    def _active_enrolment(connection: Connection, client_id: str) -> EnrolledClient | None:
        """The client's enrolment that is not revoked, if any."""
        row = connection.execute(
            select_as(EnrolledClient, clients).where(
                clients.c.client_id == client_id, clients.c.revoked_at.is_(None)
            )
        ).one_or_none()
        return None if row is None else as_record(EnrolledClient, row)
