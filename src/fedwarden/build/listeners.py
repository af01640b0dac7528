"""The run's round listeners: progress display, audit trail and monitors, as the server calls them.

The server tells one list of :class:`~fedwarden.server.listeners.RoundListener`;
the parts of a run that listen speak their own dialects, adapted here: the
command line's progress display (:class:`RoundObserver`), the audit trail
(:class:`RoundAudit`, :class:`~fedwarden.governance.audit.ServerAuditTrail`)
and the monitors told of completed rounds (:class:`RoundMonitor`: alert
rules and metrics, the store's round rows, the audit log's anchor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fedwarden.core.records import RoundRecord
from fedwarden.server.listeners import RoundListener


class RoundObserver(Protocol):
    """Progress callbacks (the CLI draws progress bars and the round table from these)."""

    def round_started(self, round_index: int, cohort_size: int) -> None:
        """A cohort of ``cohort_size`` clients was sent the global model."""

    def client_finished(self, round_index: int) -> None:
        """One client of the current round replied (or was dropped)."""

    def round_finished(self, record: RoundRecord) -> None:
        """The round is aggregated, evaluated and checkpointed."""


class RoundAudit(Protocol):
    """What the server tells the audit trail."""

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        """A round's cohort was sampled."""

    def update_rejected(self, round_index: int, client_id: str, reason: str) -> None:
        """An update was refused and not aggregated."""

    def round_completed(self, record: RoundRecord) -> None:
        """A round was aggregated (or not), recorded and checkpointed."""


class RoundMonitor(Protocol):
    """Told of every completed round: alert rules and metrics, the store's round rows."""

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """A round finished; ``silent_clients`` were sampled and did not deliver."""


class Progress(RoundListener):
    """A progress display told of cohorts (or FedBuff buffers), replies and finished rounds."""

    def __init__(self, observer: RoundObserver) -> None:
        self.observer = observer

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        self.observer.round_started(round_index, len(cohort))

    def buffer_started(self, round_index: int, buffer_size: int) -> None:
        self.observer.round_started(round_index, buffer_size)

    def client_finished(self, round_index: int) -> None:
        self.observer.client_finished(round_index)

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        self.observer.round_finished(record)


class Audited(RoundListener):
    """The audit trail, told of synchronous cohorts, refusals and completed rounds."""

    def __init__(self, audit: RoundAudit) -> None:
        self.audit = audit

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        self.audit.round_started(round_index, cohort)

    def update_rejected(self, round_index: int, client_id: str, reason: str, message: str) -> None:
        self.audit.update_rejected(round_index, client_id, reason)

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        self.audit.round_completed(record)


class Monitored(RoundListener):
    """A monitor, told of completed rounds only."""

    def __init__(self, monitor: RoundMonitor) -> None:
        self.monitor = monitor

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        self.monitor.round_completed(record, silent_clients)


def round_listeners(
    observer: RoundObserver | None,
    audit: RoundAudit | None = None,
    monitors: Sequence[RoundMonitor] = (),
    recorders: Sequence[RoundListener] = (),
) -> list[RoundListener]:
    """The server's listeners in the order they must hear: audit, recorders, monitors, progress.

    ``recorders`` keep the run's durable record of cohorts and refusals (the
    run store's :class:`~fedwarden.governance.listener.StoreListener`). The
    anchor (a monitor) signs the audit log's head after the audit trail wrote the round.
    """
    listeners: list[RoundListener] = [] if audit is None else [Audited(audit)]
    listeners += recorders
    listeners += [Monitored(monitor) for monitor in monitors]
    if observer is not None:
        listeners.append(Progress(observer))
    return listeners
