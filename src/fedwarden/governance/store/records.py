"""The run store's records and errors: frozen rows as the store hands them out."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Row, Select, Table, select

from fedwarden.core.errors import FedwardenError
from fedwarden.governance.store.schema import RunStatus
from fedwarden.runtime.grpc.journal import AcceptedUpdate, EnrolledClient


class StoreError(FedwardenError):
    """The run store was asked for something its records do not allow."""


class RoundConflict(StoreError):
    """A round was started or completed again with a different cohort or record."""


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


@dataclass(frozen=True)
class RejectionRow:
    """An update (or a request outside any round) the server refused, and why."""

    run_id: str
    round_index: int | None
    client_id: str
    reason: str
    message: str
    rejected_at: datetime


_Record = TypeVar("_Record", RunRow, EnrolledClient, AcceptedUpdate, RejectionRow)


def select_as(record: type[_Record], table: Table) -> Select[Any]:
    """Select the columns of ``table`` named as the fields of ``record``."""
    return select(*(table.c[field.name] for field in fields(record)))


def as_record(record: type[_Record], row: Row[Any]) -> _Record:
    """A row selected by :func:`select_as` as the dataclass it was selected for."""
    return record(**row._asdict())
