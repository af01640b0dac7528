"""What a server tells the rest of a run about its rounds: one protocol, every method optional.

A listener (the audit trail, alert rules and metrics, the store's round rows,
the audit log's anchor, a progress display) subclasses :class:`RoundListener`
and overrides the events it cares about; the others do nothing. The server
calls its listeners in list order, so a listener that reads what an earlier
one wrote (the anchor, after the audit trail) comes after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fedwarden.core.records import RoundRecord


class RoundListener(Protocol):
    """Told of each round's events; every method does nothing unless overridden."""

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        """A synchronous round's cohort was sampled and is sent the global model."""
        return None

    def buffer_started(self, round_index: int, buffer_size: int) -> None:
        """A FedBuff server update started filling its buffer of ``buffer_size`` updates."""
        return None

    def client_finished(self, round_index: int) -> None:
        """One client of the current round replied (or was dropped)."""
        return None

    def update_rejected(self, round_index: int, client_id: str, reason: str, message: str) -> None:
        """An update was refused and not aggregated; ``message`` says why."""
        return None

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """A round was aggregated (or not), recorded and checkpointed.

        ``silent_clients`` were sampled and did not deliver.
        """
        return None
