"""The store's journal of uploads: each accepted update, each refusal and why."""

from __future__ import annotations

import logging

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedwarden.core.records import round_number
from fedwarden.governance.store.engine import StoreEngine
from fedwarden.governance.store.records import (
    RejectionRow,
    as_record,
    select_as,
)
from fedwarden.governance.store.schema import accepted_updates, rejections, utc_now
from fedwarden.runtime.grpc.journal import AcceptedUpdate, DuplicateUpdate

logger = logging.getLogger(__name__)


class UploadJournal(StoreEngine):
    """Accepted updates (recorded before the client is acknowledged) and refusals."""

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
                        accepted_at=utc_now(),
                    )
                )
        except IntegrityError as error:
            raise DuplicateUpdate(
                f"an update of client {client_id!r} for round {round_number(round_index)} of run "
                f"{run_id!r} was already accepted; a client contributes at most once per round"
            ) from error
        logger.debug(
            "accepted update of %s for round %d of run %s",
            client_id,
            round_number(round_index),
            run_id,
        )

    def accepted_updates(self, run_id: str, round_index: int) -> list[AcceptedUpdate]:
        """The updates accepted for a round, in the order they were accepted."""
        with self._read() as connection:
            rows = connection.execute(
                select_as(AcceptedUpdate, accepted_updates)
                .where(
                    accepted_updates.c.run_id == run_id,
                    accepted_updates.c.round_index == round_index,
                )
                .order_by(accepted_updates.c.update_id)
            ).all()
        return [as_record(AcceptedUpdate, row) for row in rows]

    def accepted_update_rounds(self, run_id: str) -> list[tuple[str, int]]:
        """(client id, round index) of every update accepted in the run, in acceptance order."""
        with self._read() as connection:
            rows = connection.execute(
                select(accepted_updates.c.client_id, accepted_updates.c.round_index)
                .where(accepted_updates.c.run_id == run_id)
                .order_by(accepted_updates.c.update_id)
            ).all()
        return [(client_id, round_index) for client_id, round_index in rows]

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
            round_number(round_index),
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
                    rejected_at=utc_now(),
                )
            )

    def rejection_rows(self, run_id: str) -> list[RejectionRow]:
        """Every refusal the run recorded, in the order they were recorded."""
        with self._read() as connection:
            rows = connection.execute(
                select_as(RejectionRow, rejections)
                .where(rejections.c.run_id == run_id)
                .order_by(rejections.c.rejection_id)
            ).all()
        return [as_record(RejectionRow, row) for row in rows]

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
