"""The run store: one class with every group of the store's records, and its round monitor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedwarden.governance.store.clients import Enrolments
from fedwarden.governance.store.rounds import RoundHistory
from fedwarden.governance.store.runs import RunRecords
from fedwarden.governance.store.updates import UploadJournal

if TYPE_CHECKING:
    from fedwarden.core.records import RoundRecord


class RunStore(RunRecords, Enrolments, RoundHistory, UploadJournal):
    """The server's durable record of runs, rounds, enrolled clients and accepted updates.

    Each group of records is its own class (:class:`RunRecords`, :class:`Enrolments`,
    :class:`RoundHistory`, :class:`UploadJournal`) over one :class:`StoreEngine`, which opens
    the database with an access mode the database enforces and serialises the writes.
    """


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
        """Record ``record`` as its round's figures, the row ``metrics.json`` holds (from 1).

        The table's key stays ``round_index`` (from 0); stores written before
        rounds were numbered from 1 hold ``round_index`` in the figures too,
        which their readers (the dashboard) tell apart by the key's name.
        """
        if self.store.round_cohort(self.run_id, record.round_index) is None:
            self.store.round_started(self.run_id, record.round_index, [])
        self.store.round_completed(
            self.run_id, record.round_index, json.dumps(record.to_row(), sort_keys=True)
        )
