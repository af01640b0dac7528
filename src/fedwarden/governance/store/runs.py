"""The store's runs: created, read, given a changed config, finished."""

from __future__ import annotations

import hashlib
import logging

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedwarden.governance.store.engine import StoreEngine
from fedwarden.governance.store.records import RunRow, StoreError, as_record, select_as
from fedwarden.governance.store.schema import FinalStatus, runs, utc_now

logger = logging.getLogger(__name__)

_FINAL_STATUSES = ("completed", "failed")


class RunRecords(StoreEngine):
    """Runs: one row each, ``running`` until finished ``completed`` or ``failed``."""

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
                        created_at=utc_now(),
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
                select_as(RunRow, runs).where(runs.c.run_id == run_id)
            ).one_or_none()
        return None if row is None else as_record(RunRow, row)

    def all_runs(self) -> list[RunRow]:
        """Every run of the store, newest first."""
        with self._read() as connection:
            rows = connection.execute(
                select_as(RunRow, runs).order_by(runs.c.created_at.desc(), runs.c.run_id)
            ).all()
        return [as_record(RunRow, row) for row in rows]

    def run_count(self) -> int:
        """How many runs the store holds."""
        with self._read() as connection:
            count: int = connection.execute(select(func.count()).select_from(runs)).scalar_one()
        return count

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
                select_as(RunRow, runs)
                .where(runs.c.name == name, runs.c.status == "running")
                .order_by(runs.c.created_at.desc(), runs.c.run_id.desc())
                .limit(1)
            ).one_or_none()
        return None if row is None else as_record(RunRow, row)

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
                .values(status=status, message=message, finished_at=utc_now())
            )
        logger.info("run %s %s %s", run_id, status, message)
