"""What the dashboard shows, read from the run store through its methods only."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
from collections import Counter
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import HTTPException

from fedwarden.core.errors import FedwardenError
from fedwarden.core.records import round_number
from fedwarden.governance.audit import (
    AuditEntry,
    VerificationResult,
    canonical_json,
    read_entries,
    verify,
)
from fedwarden.governance.registry import ModelVersion
from fedwarden.governance.store import RunRow, RunStore
from fedwarden.monitor.dashboard.bodies import (
    AuditEntryView,
    AuditView,
    ClientRejection,
    ClientStatus,
    ModelView,
    RoundPoint,
    RunSummary,
    Verification,
)


class DashboardError(FedwardenError):
    """The dashboard cannot be started, or cannot read a run, as configured."""


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats (which JSON cannot carry) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _budget(config_json: str) -> tuple[float | None, float | None]:
    """The (epsilon, delta) budget of a run's config; (None, None) without differential privacy."""
    try:
        privacy = json.loads(config_json).get("privacy") or {}
    except (ValueError, AttributeError):
        return None, None
    if privacy.get("mechanism", "none") == "none":
        return None, None
    epsilon, delta = privacy.get("epsilon"), privacy.get("delta")
    return (
        float(epsilon) if isinstance(epsilon, int | float) else None,
        float(delta) if isinstance(delta, int | float) else None,
    )


def _summary(run: RunRow) -> RunSummary:
    """A run of the store as the API shows it, with the privacy budget of its config."""
    budget_epsilon, budget_delta = _budget(run.config_json)
    return RunSummary(
        run_id=run.run_id,
        name=run.name,
        status=run.status,
        message=run.message,
        run_dir=run.run_dir,
        created_at=run.created_at,
        finished_at=run.finished_at,
        budget_epsilon=budget_epsilon,
        budget_delta=budget_delta,
    )


def read_runs(store: RunStore) -> list[RunSummary]:
    """Every run of the store, newest first."""
    return [_summary(run) for run in store.all_runs()]


def one_run(store: RunStore, run_id: str) -> RunSummary:
    """The run ``run_id``, or a 404 naming it."""
    run = store.run(run_id)
    if run is None:
        raise HTTPException(
            404, f"there is no run {run_id!r} in the store; GET /api/runs lists them"
        )
    return _summary(run)


def read_round_points(store: RunStore, run_id: str) -> list[RoundPoint]:
    """The completed rounds of ``run_id`` as the run store recorded them (none yet: empty)."""
    try:
        content = store.round_records(run_id)
    except ValueError as error:
        raise DashboardError(
            f"a round record of run {run_id} in the store is not JSON ({error}); the store's "
            "rounds table was damaged"
        ) from None
    if not all(isinstance(row, dict) for row in content):
        raise DashboardError(f"a round record of run {run_id} in the store is not an object")
    try:
        return [RoundPoint.model_validate(_finite(row)) for row in content]
    except ValueError as error:
        raise DashboardError(
            f"run {run_id} has a round record this dashboard cannot read: {error}"
        ) from None


def client_statuses(store: RunStore, run_id: str, points: list[RoundPoint]) -> list[ClientStatus]:
    """Each client the run sampled, heard from, refused or flagged, and each enrolled client."""
    cohorts = store.round_cohorts(run_id)
    uploads = store.accepted_update_rounds(run_id)
    refused = store.rejection_rows(run_id)
    enrolled = {client.client_id for client in store.enrolled_clients()}
    sampled: dict[str, list[int]] = {}
    for round_index, cohort in cohorts.items():
        for client_id in cohort:
            sampled.setdefault(str(client_id), []).append(round_number(round_index))
    refusals: dict[str, list[ClientRejection]] = {}
    for row in refused:
        refusals.setdefault(row.client_id, []).append(
            ClientRejection(
                round=None if row.round_index is None else round_number(row.round_index),
                reason=row.reason,
                message=row.message,
                rejected_at=row.rejected_at,
            )
        )
    # An upload the server's checks refused after the transport accepted it has both rows.
    refused_uploads = {(row.client_id, row.round_index) for row in refused}
    accepted = Counter(
        client_id
        for client_id, round_index in uploads
        if (client_id, round_index) not in refused_uploads
    )
    flagged: dict[str, list[int]] = {}
    quarantined: set[str] = set()
    for point in points:
        for client_id in point.flagged:
            flagged.setdefault(client_id, []).append(point.round)
        quarantined.update(point.quarantined)
    client_ids = sorted(enrolled | set(sampled) | set(accepted) | set(refusals) | set(flagged))
    return [
        ClientStatus(
            client_id=client_id,
            enrolled=client_id in enrolled,
            sampled_rounds=sampled.get(client_id, []),
            accepted_updates=accepted.get(client_id, 0),
            rejections=refusals.get(client_id, []),
            flagged_rounds=flagged.get(client_id, []),
            quarantined=client_id in quarantined,
        )
        for client_id in client_ids
    ]


class VerificationCache:
    """The log's verification, recomputed only when a stored entry changed (or was added).

    The key is the SHA-256 of every stored entry's fields, so any change to the
    rows (not only a new head) verifies again; an unchanged log costs one hash
    pass instead of one Ed25519 check per entry on every request.
    """

    def __init__(self, public_key: Ed25519PublicKey | None) -> None:
        self.public_key = public_key
        self.computed = 0
        """How many times the log was verified (not answered from the cache)."""
        self._lock = threading.Lock()
        self._cached: tuple[str, VerificationResult] | None = None

    def result(self, store: RunStore, entries: list[AuditEntry]) -> VerificationResult | None:
        """The verification of ``store``'s log as ``entries`` read it (None without a key)."""
        if self.public_key is None:
            return None
        digest = hashlib.sha256()
        for entry in entries:
            digest.update(canonical_json(dataclasses.asdict(entry)).encode())
        key = digest.hexdigest()
        with self._lock:
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            result = verify(store, self.public_key)
            self.computed += 1
            self._cached = (key, result)
        return result


def audit_view(store: RunStore, verified: VerificationCache, limit: int) -> AuditView:
    """The latest ``limit`` entries, newest first, and the verification of the whole log."""
    entries = read_entries(store)
    result = verified.result(store, entries)
    if result is None:
        verification = Verification(
            checked=False,
            ok=None,
            entries=len(entries),
            first_bad=None,
            problem="not verified: the dashboard was started without the audit public key",
            last_hash=None,
        )
    else:
        verification = Verification(
            checked=True,
            ok=result.ok,
            entries=result.entries,
            first_bad=result.first_bad,
            problem=result.problem,
            last_hash=result.last_hash,
        )
    latest = entries[-limit:][::-1]
    return AuditView(
        verification=verification,
        total_entries=len(entries),
        entries=[
            AuditEntryView(
                sequence=entry.sequence,
                timestamp=entry.timestamp,
                kind=entry.kind,
                payload=entry.payload,
                entry_hash=entry.entry_hash,
            )
            for entry in latest
        ],
    )


def model_view(version: ModelVersion) -> ModelView:
    """A registered version as the API shows it."""
    return ModelView(
        reference=version.reference,
        model=version.model,
        version=version.version,
        run_id=version.run_id,
        parent=version.parent,
        stage=version.stage,
        rounds=version.rounds,
        participants=version.participants,
        metrics=_finite(dict(version.metrics)),
        recorded_accuracy=version.recorded_accuracy,
        pilot_accuracy=version.pilot_accuracy,
        rolled_back=version.rolled_back,
        weights_deleted=version.weights_deleted,
        registered_at=version.registered_at,
        promoted_at=version.promoted_at,
    )
