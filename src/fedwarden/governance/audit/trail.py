"""The server's audit trail: the events of one run's rounds, and hiding cohort commitments."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedwarden.core.alerts import Alert
from fedwarden.core.files import write_atomic
from fedwarden.core.records import RoundRecord
from fedwarden.governance.audit.chain import AuditLog
from fedwarden.governance.audit.events import (
    AlertRaised,
    BudgetChanged,
    ClientQuarantined,
    RoundCompleted,
    RoundStarted,
    RunCreated,
    UpdateRejected,
    canonical_json,
)
from fedwarden.privacy.accounting import event_to_json
from fedwarden.privacy.ledger import PrivacyLedger

COMMITTED_CLIENT_PREFIX = "committed:"
"""How a rejection names a client of a committed cohort: this prefix, then its commitment."""

COHORT_SALT_BYTES = 32
"""Bytes of secret salt per committed cohort: 256 bits, so no cohort can be guessed and checked."""


def commit_cohort(salt: bytes, cohort: Sequence[str]) -> str:
    """The hex SHA-256 of ``salt`` and the sorted cohort as canonical JSON: a hiding commitment.

    Hiding because the 256-bit salt is secret (a reader cannot test guessed
    cohorts against it), binding because SHA-256 is collision resistant.
    """
    return hashlib.sha256(salt + canonical_json(sorted(cohort)).encode()).hexdigest()


def _keep_cohort_opening(path: Path, round_index: int, salt: bytes, cohort: Sequence[str]) -> None:
    """Add round ``round_index``'s opening (salt and cohort) to the operator's file (0600)."""
    openings = json.loads(path.read_text()) if path.exists() else {}
    openings[str(round_index)] = {"salt": salt.hex(), "cohort": sorted(cohort)}
    write_atomic(path, canonical_json(openings).encode(), private=True)


def open_cohort(commitment: str, salt_hex: str, cohort: Sequence[str]) -> bool:
    """Whether ``cohort`` with ``salt_hex`` opens ``commitment``: the proof an admin can give."""
    return hmac.compare_digest(commit_cohort(bytes.fromhex(salt_hex), cohort), commitment)


class ServerAuditTrail:
    """The events of one run's rounds, appended to the audit log as the server reports them.

    ``dp`` is the run's DP mechanism description (noise multiplier, clip norm,
    sampling; None without DP) recorded with every round start; each completed
    round records the run's cumulative epsilon after it and ``delta`` and, with
    ``ledger`` (the run's privacy ledger), the DP events the round charged to it,
    so that the log alone lets an auditor recompute the epsilon; quarantined
    clients are recorded as they are quarantined. With
    ``cohort_openings`` (a file the operator keeps), every round start records
    a commitment to its cohort instead of the cohort, and the opening (salt and
    cohort) goes to that file only.
    """

    def __init__(
        self,
        log: AuditLog,
        run_id: str,
        *,
        dp: Mapping[str, Any] | None = None,
        delta: float | None = None,
        cohort_openings: Path | None = None,
        ledger: PrivacyLedger | None = None,
    ) -> None:
        self.log = log
        self.run_id = run_id
        self.dp = dp
        self.delta = delta
        self.cohort_openings = cohort_openings
        self.ledger = ledger
        self._round_salts: dict[int, bytes] = {}

    def run_created(self, config_json: str, package_version: str) -> None:
        """Record a new run with the SHA-256 of its configuration."""
        config_hash = hashlib.sha256(config_json.encode()).hexdigest()
        self.log.append(RunCreated(self.run_id, config_hash, package_version))

    def budget_changed(
        self, old_epsilon: float, new_epsilon: float, by: str, config_json: str
    ) -> None:
        """Record that ``by`` changed the budget, with the SHA-256 of the changed config."""
        config_hash = hashlib.sha256(config_json.encode()).hexdigest()
        self.log.append(BudgetChanged(self.run_id, old_epsilon, new_epsilon, by, config_hash))

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        if self.cohort_openings is None:
            self.log.append(RoundStarted(self.run_id, round_index, tuple(cohort), self.dp))
            return
        salt = secrets.token_bytes(COHORT_SALT_BYTES)
        self._round_salts = {round_index: salt}
        commitment = commit_cohort(salt, cohort)
        _keep_cohort_opening(self.cohort_openings, round_index, salt, cohort)
        self.log.append(RoundStarted(self.run_id, round_index, (), self.dp, commitment))

    def alert_raised(self, alert: Alert) -> None:
        """Record a monitoring alert of this run: the alert sink of training and of serving.

        The training server hands it the rules' alerts after each round; the prediction
        service (:mod:`fedwarden.serve.app`) the drift alerts of a model this run trained.
        """
        self.log.append(AlertRaised.of(alert, self.run_id))

    def update_rejected(self, round_index: int, client_id: str, reason: str) -> None:
        """Record a rejection; under committed cohorts, naming the client by its round commitment.

        A rejection names a client that was sampled, so where cohorts are
        secret it records ``commit_cohort(salt, [client_id])`` under the
        round's salt: unlinkable across rounds, and the operator opens it
        with the round's opening.
        """
        salt = self._round_salts.get(round_index)
        if salt is not None:
            client_id = COMMITTED_CLIENT_PREFIX + commit_cohort(salt, [client_id])
        self.log.append(UpdateRejected(self.run_id, round_index, client_id, reason))

    def round_completed(self, record: RoundRecord) -> None:
        for client_id in record.quarantined:
            self.log.append(
                ClientQuarantined(self.run_id, client_id, "flagged as an outlier repeatedly")
            )
        self.log.append(
            RoundCompleted(
                self.run_id,
                record.round_index,
                record.participants,
                record.epsilon,
                self.delta if record.epsilon is not None else None,
                record.applied,
                self._charged(record.round_index),
                None if self.ledger is None else self.ledger.neighboring,
            )
        )

    def _charged(self, round_index: int) -> tuple[dict[str, Any], ...]:
        """The releases charged to the ledger for round ``round_index``, as the log records them.

        A round re-run after a crash between its charge and its checkpoint was charged twice
        (both releases happened), and both are recorded. Per-row entries (a vertical party's
        passes) compose per row and are not a run's epsilon; they are left out.
        """
        if self.ledger is None:
            return ()
        return tuple(
            {
                "release": entry.kind,
                "client_id": entry.client_id,
                "event": event_to_json(entry.event),
            }
            for entry in self.ledger.entries
            if entry.round_index == round_index and entry.rows is None
        )
