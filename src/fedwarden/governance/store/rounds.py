"""The store's rounds: the cohort each round sampled and, once completed, its record."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from fedwarden.core.records import round_number
from fedwarden.governance.store.engine import StoreEngine
from fedwarden.governance.store.records import RoundConflict, StoreError
from fedwarden.governance.store.schema import rounds, utc_now

logger = logging.getLogger(__name__)


class RoundHistory(StoreEngine):
    """Rounds: the sampled cohort, then the completed round's record."""

    def round_started(self, run_id: str, round_index: int, cohort: Sequence[str]) -> None:
        """Record the cohort sampled for a round; a restarted server may record the same again.

        Raises :class:`RoundConflict` if the round was started with a different cohort.
        """
        members = list(cohort)
        if len(set(members)) != len(members):
            raise StoreError(
                f"cohort of round {round_number(round_index)} of run {run_id!r} names a client "
                f"twice: {members}"
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
                        started_at=utc_now(),
                    )
                )
                logger.info(
                    "round %d of run %s started: %d clients",
                    round_number(round_index),
                    run_id,
                    len(members),
                )
                return
        if sorted(stored) != sorted(members):
            raise RoundConflict(
                f"round {round_number(round_index)} of run {run_id!r} was started with cohort "
                f"{stored}, not {members}; a resumed run must sample the same cohort (same seed "
                "and config)"
            )

    def round_cohort(self, run_id: str, round_index: int) -> list[str] | None:
        """The cohort a round was started with, or None if it was not started."""
        with self._read() as connection:
            return self._cohort(connection, run_id, round_index)

    def round_cohorts(self, run_id: str) -> dict[int, list[str]]:
        """The cohort of each started round of the run, in round order."""
        with self._read() as connection:
            rows = connection.execute(
                select(rounds.c.round_index, rounds.c.cohort_json)
                .where(rounds.c.run_id == run_id)
                .order_by(rounds.c.round_index)
            ).all()
        return {round_index: list(json.loads(cohort_json)) for round_index, cohort_json in rows}

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
                    f"round {round_number(round_index)} of run {run_id!r} was never started; "
                    "call round_started with its cohort first"
                )
            if row.record_json is None:
                connection.execute(
                    update(rounds)
                    .where(rounds.c.run_id == run_id, rounds.c.round_index == round_index)
                    .values(record_json=record_json, completed_at=utc_now())
                )
                logger.info("round %d of run %s completed", round_number(round_index), run_id)
                return
        if row.record_json != record_json:
            raise RoundConflict(
                f"round {round_number(round_index)} of run {run_id!r} is already completed with "
                "another record; a completed round cannot be rewritten"
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
