"""What the grpc runtime writes down: enrolled identities and accepted uploads.

The runtime moves messages (DESIGN idea 3); the few facts it must not forget
across a crash are kept by a :class:`Journal` its caller hands it.
:class:`fedwarden.governance.store.RunStore` is one: it implements this
protocol structurally, and the runtime never imports it. Cohorts and
refusals the server sees are recorded by the server's listeners, not here;
the journal only takes the refusals the server never sees (uploads that
answer no open task).

The records below are frozen values; the errors are what the journal raises
when a write contradicts what it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fedwarden.core.errors import FedwardenError


class EnrolmentConflict(FedwardenError):
    """A client is already enrolled with a different identity key."""


class DuplicateUpdate(FedwardenError):
    """A client's update for this run and round was already accepted."""


@dataclass(frozen=True)
class EnrolledClient:
    """A client's active enrolment: the raw 32-byte Ed25519 key its updates are signed with."""

    client_id: str
    public_key: bytes
    source: str
    enrolled_at: datetime


@dataclass(frozen=True)
class AcceptedUpdate:
    """A client update the server accepted for a round, durably recorded before acknowledging it."""

    run_id: str
    round_index: int
    client_id: str
    digest: str
    num_examples: int
    metrics_json: str
    payload_path: str
    header_json: str
    accepted_at: datetime


class Journal(Protocol):
    """The durable record the grpc runtime keeps: enrolments, accepted uploads, stray refusals."""

    def enroll(self, client_id: str, public_key: bytes, source: str) -> EnrolledClient:
        """Enrol a client's identity key (the same key again is a no-op).

        Raises :class:`EnrolmentConflict` for another key, or a revoked one.
        """
        ...

    def enrolled(self, client_id: str) -> EnrolledClient | None:
        """The client's active enrolment, or None."""
        ...

    def revoke(self, client_id: str) -> None:
        """Revoke the client's active enrolment."""

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
        """Durably record an accepted update, before the client is acknowledged.

        Raises :class:`DuplicateUpdate` if the client's update for the round was accepted.
        """

    def accepted_updates(self, run_id: str, round_index: int) -> list[AcceptedUpdate]:
        """The updates accepted for a round, in the order they were accepted."""
        ...

    def release_payloads(
        self, run_id: str, round_index: int, client_id: str | None = None
    ) -> list[str]:
        """Mark a round's spooled payloads (or one client's) as deleted; the files to delete."""
        ...

    def record_rejection(
        self, run_id: str, round_index: int | None, client_id: str, reason: str, message: str
    ) -> None:
        """Record a refused upload (one the server never saw) and why."""
