"""The audit report: what the verified log says about runs, models, privacy and participants.

:func:`audit_report` summarises the verified log: lineage (runs, rounds, models), privacy
guarantees (epsilon and delta per run, with the DP events the log records, and for each model
version the command that recomputes its claim from them), participant integrity (refusals by reason,
quarantines), the signers (root key, delegations and revocations) and the verification status.
Client ids are pseudonymized as ``client-`` + the first 12 hex digits of HMAC-SHA256(salt,
client id), with a random salt kept in the store, unless an administrator asks for them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from fedwarden.core.records import round_number
from fedwarden.governance.audit.entries import AuditEntry, read_entries
from fedwarden.governance.audit.events import (
    BudgetChanged,
    ClientQuarantined,
    ModelPromoted,
    ModelRegistered,
    ModelRolledBack,
    PilotEvaluated,
    RetentionDeletion,
    RoundCompleted,
    RoundStarted,
    RunCreated,
    SignerDelegated,
    SignerRevoked,
    UpdateRejected,
)
from fedwarden.governance.audit.recompute import recompute_command
from fedwarden.governance.audit.signers import public_key_hex
from fedwarden.governance.audit.verification import verify
from fedwarden.governance.store import RunStore, governance_secrets

PSEUDONYM_PREFIX = "client-"
PSEUDONYM_HEX_DIGITS = 12
_PSEUDONYM_SALT = "audit_pseudonym_salt"


def pseudonym_salt(store: RunStore) -> bytes:
    """The store's random salt for pseudonymizing client ids, created on first use."""
    query = select(governance_secrets.c.value).where(governance_secrets.c.name == _PSEUDONYM_SALT)
    with store.reading() as connection:
        salt = connection.execute(query).scalar_one_or_none()
    if salt is not None:
        return bytes(salt)
    try:
        with store.transaction() as connection:
            salt = connection.execute(query).scalar_one_or_none()
            if salt is None:
                salt = secrets.token_bytes(32)
                connection.execute(
                    insert(governance_secrets).values(name=_PSEUDONYM_SALT, value=salt)
                )
    except IntegrityError:
        # Another process created the salt first; use theirs.
        with store.reading() as connection:
            salt = connection.execute(query).scalar_one()
    return bytes(salt)


def pseudonym(salt: bytes, client_id: str) -> str:
    """``client-`` and the first 12 hex digits of HMAC-SHA256(salt, client id)."""
    digest = hmac.new(salt, client_id.encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX_DIGITS]


@dataclass(frozen=True)
class RecordedRun:
    """What the audit log holds about one run that a resume must agree with."""

    config_hash: str | None
    """The SHA-256 of the config the run was created with, or changed to by a budget change."""
    epsilon_spent: float | None
    """The largest cumulative epsilon any of its completed rounds recorded."""


def recorded_run(store: RunStore, run_id: str) -> RecordedRun:
    """The config hash and the largest epsilon spent that the audit log records for ``run_id``."""
    config_hash: str | None = None
    epsilon: float | None = None
    for entry in read_entries(store):
        event = entry.event()
        if isinstance(event, RunCreated | BudgetChanged) and event.run_id == run_id:
            config_hash = event.config_hash or config_hash
        elif isinstance(event, RoundCompleted) and event.run_id == run_id:
            epsilon = _largest(epsilon, event.epsilon_spent)
    return RecordedRun(config_hash, epsilon)


def audit_report(
    store: RunStore, public_key: Ed25519PublicKey, *, admin: bool = False
) -> dict[str, Any]:
    """Lineage, privacy guarantees and participant integrity, as the verified log records them.

    Client ids are pseudonymized unless ``admin`` is True. A log that fails verification is
    still summarised, and its ``verification`` section says where it stops being trustworthy.
    """
    verification = verify(store, public_key)
    salt = pseudonym_salt(store)

    def client(client_id: str) -> str:
        """How the report names a client: its id for an administrator, else its pseudonym."""
        return client_id if admin else pseudonym(salt, client_id)

    runs: dict[str, dict[str, Any]] = {}
    models: dict[str, dict[str, Any]] = {}
    unknown_kinds: dict[str, int] = {}
    deletions: list[dict[str, Any]] = []
    delegations: dict[str, dict[str, Any]] = {}

    def run(run_id: str) -> dict[str, Any]:
        """The report's record of run ``run_id``, started empty when first seen."""
        return runs.setdefault(
            run_id,
            {
                "run_id": run_id,
                "config_hash": None,
                "package_version": None,
                "created_at": None,
                "rounds": {},
                "privacy": {
                    "epsilon": None,
                    "delta": None,
                    "budget_changes": [],
                    "dp_events": [],
                },
                "rejections_by_reason": {},
                "quarantined": [],
            },
        )

    for entry in read_entries(store):
        event = entry.event()
        if event is None:
            unknown_kinds[entry.kind] = unknown_kinds.get(entry.kind, 0) + 1
        elif isinstance(event, RunCreated):
            run(event.run_id).update(
                config_hash=event.config_hash,
                package_version=event.package_version,
                created_at=entry.timestamp,
            )
        elif isinstance(event, RoundStarted):
            run(event.run_id)["rounds"][event.round_index] = {
                "round": round_number(event.round_index),
                "started_at": entry.timestamp,
                "cohort": sorted(client(member) for member in event.cohort),
                "cohort_commitment": event.cohort_commitment,
                "dp": None if event.dp is None else dict(event.dp),
                "participants": None,
                "applied": None,
            }
        elif isinstance(event, RoundCompleted):
            record = run(event.run_id)
            record["rounds"].setdefault(
                event.round_index, {"round": round_number(event.round_index)}
            )
            record["rounds"][event.round_index].update(
                participants=event.participants, applied=event.applied
            )
            privacy = record["privacy"]
            privacy["epsilon"] = _largest(privacy["epsilon"], event.epsilon_spent)
            privacy["delta"] = _largest(privacy["delta"], event.delta)
            privacy["dp_events"].extend(
                {
                    "sequence": entry.sequence,
                    "round": round_number(event.round_index),
                    "release": item["release"],
                    "client_id": None if item["client_id"] is None else client(item["client_id"]),
                    "neighboring": event.neighboring,
                    "event": item["event"],
                }
                for item in event.dp_events or ()
            )
        elif isinstance(event, UpdateRejected):
            counts = run(event.run_id)["rejections_by_reason"]
            counts[event.reason] = counts.get(event.reason, 0) + 1
        elif isinstance(event, ClientQuarantined):
            run(event.run_id)["quarantined"].append(
                {"client": client(event.client_id), "reason": event.reason, "at": entry.timestamp}
            )
        elif isinstance(event, BudgetChanged):
            run(event.run_id)["privacy"]["budget_changes"].append(
                {
                    "old_epsilon": event.old_epsilon,
                    "new_epsilon": event.new_epsilon,
                    "by": event.by,
                    "at": entry.timestamp,
                }
            )
        elif isinstance(event, ModelRegistered):
            models[f"{event.model}@{event.version}"] = {
                "model": event.model,
                "version": event.version,
                "run_id": event.run_id,
                "parent": event.parent,
                "stage": "candidate",
                "weights_sha256": event.weights_sha256,
                "metrics": dict(event.metrics),
                "registered_at": entry.timestamp,
                "pilot_evaluations": [],
                "stage_changes": [],
                "recompute_privacy": recompute_command(store.url, f"{event.model}@{event.version}"),
            }
        elif isinstance(event, PilotEvaluated):
            _model_record(models, event.model, event.version)["pilot_evaluations"].append(
                {
                    "clients": sorted(client(member) for member in event.clients),
                    "accuracy": event.accuracy,
                    "production": event.production,
                    "production_accuracy": event.production_accuracy,
                    "by": event.by,
                    "at": entry.timestamp,
                }
            )
        elif isinstance(event, ModelPromoted):
            _stage_change(models, event.model, event.version, event.to_stage, entry, event.by)
            if event.replaced is not None:
                _stage_change(models, event.model, event.replaced, "deprecated", entry, event.by)
            if event.override:
                models[f"{event.model}@{event.version}"]["stage_changes"][-1].update(
                    override=True, reason=event.reason
                )
        elif isinstance(event, ModelRolledBack):
            _stage_change(models, event.model, event.from_version, "deprecated", entry, event.by)
            _stage_change(models, event.model, event.to_version, "production", entry, event.by)
        elif isinstance(event, RetentionDeletion):
            deletions.append(
                {"what": event.what, "target": event.target, "by": event.by, "at": entry.timestamp}
            )
        elif isinstance(event, SignerDelegated):
            delegations[event.public_key] = {
                "name": event.name,
                "public_key": event.public_key,
                "kinds": list(event.kinds),
                "by": event.by,
                "delegated_at": entry.timestamp,
                "sequence": entry.sequence,
                "revoked_at": None,
                "revoked_by": None,
                "reason": None,
            }
        elif isinstance(event, SignerRevoked):
            delegations.setdefault(event.public_key, {"public_key": event.public_key}).update(
                revoked_at=entry.timestamp, revoked_by=event.by, reason=event.reason
            )

    run_list = []
    for record in runs.values():
        rounds = [record["rounds"][index] for index in sorted(record["rounds"])]
        run_list.append({**record, "rounds": rounds})
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "client_ids": "administrator view" if admin else "pseudonymized (HMAC-SHA256, salted)",
        "verification": {
            "ok": verification.ok,
            "entries": verification.entries,
            "first_bad": verification.first_bad,
            "problem": verification.problem,
            "last_hash": verification.last_hash,
        },
        "lineage": {
            "runs": [
                {
                    key: record[key]
                    for key in ("run_id", "config_hash", "package_version", "created_at", "rounds")
                }
                for record in run_list
            ],
            "models": list(models.values()),
        },
        "privacy": [{"run_id": record["run_id"], **record["privacy"]} for record in run_list],
        "participant_integrity": [
            {
                "run_id": record["run_id"],
                "rejections_by_reason": dict(sorted(record["rejections_by_reason"].items())),
                "quarantined": record["quarantined"],
            }
            for record in run_list
        ],
        "retention_deletions": deletions,
        "signers": {
            "root_public_key": public_key_hex(public_key),
            "delegations": list(delegations.values()),
        },
        "unknown_event_kinds": unknown_kinds,
    }


def _largest(current: float | None, new: float | None) -> float | None:
    """The larger of two optional figures (a cumulative guarantee only grows)."""
    if new is None:
        return current
    return new if current is None else max(current, new)


def _model_record(models: dict[str, dict[str, Any]], model: str, version: str) -> dict[str, Any]:
    """The report's record of ``model@version``, started empty if its registration is missing."""
    return models.setdefault(
        f"{model}@{version}",
        {
            "model": model,
            "version": version,
            "stage": None,
            "pilot_evaluations": [],
            "stage_changes": [],
        },
    )


def _stage_change(
    models: dict[str, dict[str, Any]],
    model: str,
    version: str,
    stage: str,
    entry: AuditEntry,
    by: str,
) -> None:
    """Record in the report that ``model@version`` entered ``stage``."""
    record = _model_record(models, model, version)
    record["stage"] = stage
    record["stage_changes"].append(
        {"stage": stage, "by": by, "at": entry.timestamp, "sequence": entry.sequence}
    )
