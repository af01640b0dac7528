"""The tamper-evident audit log of a deployment: what happened, in order, signed.

Events
    Each event is a small frozen dataclass that completely documents one thing that happened
    (a run created, a round started or completed, an update refused, a client quarantined, a
    model registered, promoted or rolled back, a privacy budget changed, data deleted under
    retention), in the manner of ``dp_accounting``'s ``dp_event.py``. Its ``kind`` names it in
    the log and its fields are its payload, serialized as canonical JSON (sorted keys, no
    whitespace, UTF-8, no NaN or infinity).

    How events may evolve: a field may be added at the end, with a default, so that older
    payloads still read; a field may be widened to accept None, when a new case of the same
    event lacks it (``AlertRaised.round_index`` became ``int | None`` for drift alerts of a
    served model, which has no round), so readers must accept None in any field; a field is
    otherwise never renamed, retyped or removed, and a ``kind`` string is never reused for
    another meaning. Readers skip kinds they do not know.

Entries
    :class:`AuditLog` appends each event as entry ``sequence`` = 0, 1, 2, ... (contiguous) of
    the ``audit_log`` table of the :class:`~fedwarden.governance.store.RunStore`, with::

        entry_hash = SHA-256(previous_hash_bytes || canonical_json({sequence, timestamp,
                                                                   kind, payload}))
        signature  = Ed25519_sign(signing_key, entry_hash_bytes)

    where ``previous_hash`` is the hex ``entry_hash`` of entry ``sequence - 1`` (64 zeros for
    entry 0) and ``timestamp`` is the UTC ISO 8601 instant of the append. Appends are
    serialised by the store's write lock and made in one transaction that reads the last entry
    and inserts the next; the database refuses a second entry with the same ``sequence``. The
    log is append-only: this module has no way to update or delete an entry.

Verification
    :func:`verify` recomputes the chain in sequence order with the log's public key and names
    the first entry that was modified (its hash does not match its content), deleted (a gap in
    the sequence), inserted (a duplicated sequence, or a link or signature no key holder made)
    or reordered (it links to an entry other than its predecessor). A truncated tail leaves a
    valid shorter chain; compare :attr:`VerificationResult.entries` and the last entry hash
    with a copy kept elsewhere to detect it.

Reports
    :func:`audit_report` summarises the verified log: lineage (runs, rounds, models), privacy
    guarantees (epsilon and delta per run), participant integrity (refusals by reason,
    quarantines) and the verification status. Client ids are pseudonymized as
    ``client-`` + the first 12 hex digits of HMAC-SHA256(salt, client id), with a random salt
    kept in the store, unless an administrator asks for them. :func:`render_json`,
    :func:`render_html` (one self-contained page) and :func:`render_pdf` (needs the optional
    weasyprint library) render a report.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import importlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from fedwarden.core.errors import FedwardenError
from fedwarden.governance.store import RunStore, audit_log, governance_secrets
from fedwarden.monitor.alerts import Alert
from fedwarden.server.records import RoundRecord

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
PSEUDONYM_PREFIX = "client-"
PSEUDONYM_HEX_DIGITS = 12
_PSEUDONYM_SALT = "audit_pseudonym_salt"
_APPEND_PATIENCE_S = 30.0
"""How long :meth:`AuditLog.append` keeps retrying appends that collide with another writer's."""
_APPEND_BACKOFF_S = 0.2
"""Longest pause between two attempts (each pause is random, so two writers fall out of step)."""


class AuditError(FedwardenError):
    """The audit log cannot record, read or report what it was asked to."""


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no whitespace, no NaN or infinity."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except ValueError as error:
        raise AuditError(
            f"cannot record {value!r} in the audit log: {error}; "
            "replace NaN and infinite numbers by null or a finite value"
        ) from error


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and mappings as dicts, as JSON holds them."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# Events.


@dataclass(frozen=True)
class AuditEvent:
    """Something that happened, completely documented by its fields; ``kind`` names it."""

    kind: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        """The event's fields as JSON values."""
        return {field.name: _plain(getattr(self, field.name)) for field in fields(self)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        """Read an event back from its payload; fields unknown to this version are skipped."""
        known = {field.name for field in fields(cls)}
        values = {
            name: tuple(value) if isinstance(value, list) else value
            for name, value in payload.items()
            if name in known
        }
        try:
            return cls(**values)
        except TypeError as error:
            raise AuditError(f"{cls.kind} payload {dict(payload)} is incomplete: {error}") from None


@dataclass(frozen=True)
class RunCreated(AuditEvent):
    """A run was created from the config whose SHA-256 is ``config_hash``."""

    kind: ClassVar[str] = "run_created"
    run_id: str
    config_hash: str
    package_version: str


@dataclass(frozen=True)
class RoundStarted(AuditEvent):
    """Round ``round_index`` sampled ``cohort``; ``dp`` holds its DP mechanism's parameters."""

    kind: ClassVar[str] = "round_started"
    run_id: str
    round_index: int
    cohort: tuple[str, ...]
    dp: Mapping[str, Any] | None


@dataclass(frozen=True)
class RoundCompleted(AuditEvent):
    """Round ``round_index`` ended with ``participants`` updates aggregated.

    ``epsilon_spent`` and ``delta`` are the run's cumulative (epsilon, delta) guarantee after
    this round as its accountant reports it (None without differential privacy); ``applied``
    says whether the aggregate changed the model (False when the round was aborted).
    """

    kind: ClassVar[str] = "round_completed"
    run_id: str
    round_index: int
    participants: int
    epsilon_spent: float | None
    delta: float | None
    applied: bool


@dataclass(frozen=True)
class UpdateRejected(AuditEvent):
    """The update of ``client_id`` was refused for ``reason`` (a machine-readable tag).

    ``round_index`` is None for a request that belonged to no round.
    """

    kind: ClassVar[str] = "update_rejected"
    run_id: str
    round_index: int | None
    client_id: str
    reason: str


@dataclass(frozen=True)
class AlertRaised(AuditEvent):
    """Monitoring rule ``rule`` fired for run ``run_id`` (a :class:`~fedwarden.monitor.Alert`).

    A training rule fired after round ``round_index`` (``client_id``: whose). A drift rule
    fired on the inputs served to ``model_version`` (``MODEL@X.Y.Z``, trained by ``run_id``):
    ``round_index`` is None, and ``statistic`` crossed ``threshold`` for input ``feature``.
    Entries written before drift alerts were recorded lack the last four fields (None).
    """

    kind: ClassVar[str] = "alert_raised"
    run_id: str
    round_index: int | None
    rule: str
    message: str
    client_id: str | None
    model_version: str | None = None
    feature: int | None = None
    statistic: float | None = None
    threshold: float | None = None

    @classmethod
    def of(cls, alert: Alert, run_id: str) -> AlertRaised:
        """The audit event of ``alert``, which concerns run ``run_id``."""
        return cls(
            run_id,
            alert.round_index,
            alert.rule,
            alert.message,
            alert.client_id,
            alert.model_version,
            alert.feature,
            alert.statistic,
            alert.threshold,
        )


@dataclass(frozen=True)
class ClientQuarantined(AuditEvent):
    """``client_id`` was excluded from the run's later rounds, for ``reason``."""

    kind: ClassVar[str] = "client_quarantined"
    run_id: str
    client_id: str
    reason: str


@dataclass(frozen=True)
class ModelRegistered(AuditEvent):
    """Version ``version`` of model ``model`` was registered as a candidate from run ``run_id``.

    ``parent`` is the ``model@version`` it was trained from, if any; ``weights_sha256`` is the
    SHA-256 of its flat little-endian float32 parameter vector.
    """

    kind: ClassVar[str] = "model_registered"
    model: str
    version: str
    run_id: str
    parent: str | None
    weights_sha256: str
    config_hash: str
    rounds: int
    participants: int
    dp: Mapping[str, Any] | None
    metrics: Mapping[str, Any]
    data_description: str


@dataclass(frozen=True)
class PilotEvaluated(AuditEvent):
    """Candidate ``model@version`` was evaluated on the test data of the pilot ``clients``.

    ``accuracy`` is the candidate's example-weighted accuracy over them; ``production`` is the
    version in production at the time and ``production_accuracy`` its accuracy on the same
    clients (None without a production version, or when its parameters do not fit the model).
    """

    kind: ClassVar[str] = "pilot_evaluated"
    model: str
    version: str
    clients: tuple[str, ...]
    accuracy: float
    production: str | None
    production_accuracy: float | None
    by: str


@dataclass(frozen=True)
class ModelPromoted(AuditEvent):
    """``model@version`` moved from ``from_stage`` to ``to_stage`` on the decision of ``by``.

    ``replaced`` is the production version it demoted to deprecated, if any;
    ``pilot_accuracy`` and ``baseline_accuracy`` are the figures the staged-rollout check
    compared with ``threshold``; ``override`` says the check was overruled, for ``reason``.
    """

    kind: ClassVar[str] = "model_promoted"
    model: str
    version: str
    from_stage: str
    to_stage: str
    by: str
    override: bool
    reason: str
    replaced: str | None
    pilot_accuracy: float | None
    baseline_accuracy: float | None
    threshold: float


@dataclass(frozen=True)
class ModelRolledBack(AuditEvent):
    """``by`` withdrew production version ``from_version`` and restored ``to_version``."""

    kind: ClassVar[str] = "model_rolled_back"
    model: str
    from_version: str
    to_version: str
    by: str


@dataclass(frozen=True)
class BudgetChanged(AuditEvent):
    """``by`` changed the run's privacy budget from ``old_epsilon`` to ``new_epsilon``."""

    kind: ClassVar[str] = "budget_changed"
    run_id: str
    old_epsilon: float
    new_epsilon: float
    by: str


@dataclass(frozen=True)
class RetentionDeletion(AuditEvent):
    """``by`` deleted ``what`` (e.g. ``model_weights``) of ``target`` (a version or a path)."""

    kind: ClassVar[str] = "retention_deletion"
    what: str
    target: str
    by: str


EVENT_TYPES: dict[str, type[AuditEvent]] = {
    event_type.kind: event_type
    for event_type in (
        RunCreated,
        RoundStarted,
        RoundCompleted,
        UpdateRejected,
        AlertRaised,
        ClientQuarantined,
        ModelRegistered,
        PilotEvaluated,
        ModelPromoted,
        ModelRolledBack,
        BudgetChanged,
        RetentionDeletion,
    )
}


# Entries.


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log: an event, when it was recorded, and its link and signature."""

    sequence: int
    timestamp: str
    kind: str
    payload: str
    previous_hash: str
    entry_hash: str
    signature: str

    def event(self) -> AuditEvent | None:
        """The entry's event, or None if its kind is unknown to this version of fedwarden."""
        event_type = EVENT_TYPES.get(self.kind)
        return None if event_type is None else event_type.from_payload(json.loads(self.payload))


def entry_hash(previous_hash: str, sequence: int, timestamp: str, kind: str, payload: str) -> str:
    """SHA-256 of the previous entry's hash bytes and the canonical JSON of this entry."""
    document = canonical_json(
        {"sequence": sequence, "timestamp": timestamp, "kind": kind, "payload": json.loads(payload)}
    )
    return hashlib.sha256(bytes.fromhex(previous_hash) + document.encode()).hexdigest()


def read_entries(store: RunStore) -> list[AuditEntry]:
    """Every stored entry, in sequence order (rows sharing a sequence in insertion order)."""
    with store.reading() as connection:
        rows = connection.execute(
            select(*(audit_log.c[field.name] for field in fields(AuditEntry))).order_by(
                audit_log.c.sequence, audit_log.c.entry_id
            )
        ).all()
    return [AuditEntry(**row._asdict()) for row in rows]


def _signature_is_valid(public_key: Ed25519PublicKey, entry: AuditEntry) -> bool:
    """Whether the entry's signature is the key holder's over its stored entry hash."""
    try:
        public_key.verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


class AuditLog:
    """Appends signed, hash-chained entries to the store's audit log; never changes one.

    A new ``AuditLog`` on a store that already holds entries (a restarted server) continues
    its chain; it refuses a signing key other than the one the last entry was signed with.
    """

    def __init__(self, store: RunStore, signing_key: Ed25519PrivateKey) -> None:
        self.store = store
        self._signing_key = signing_key
        self.public_key = signing_key.public_key()
        with store.reading() as connection:
            last = self._last_entry(connection)
        if last is not None and not _signature_is_valid(self.public_key, last):
            raise AuditError(
                f"the audit log's last entry ({last.sequence}) was not signed with this key; "
                "continue the log with the key it was started with"
            )

    def append(self, event: AuditEvent) -> AuditEntry:
        """Record ``event`` as the next entry, committed before this returns.

        Several processes may append to one store's log (a server and a prediction service).
        When another process commits an entry between this one's read of the last entry and
        its insert, the database refuses the insert (PostgreSQL: the duplicate ``sequence``;
        SQLite in WAL mode: the stale read snapshot, "database is locked"), and the append is
        tried again on the new last entry after a short random pause, for up to
        ``_APPEND_PATIENCE_S`` seconds. A collision means another entry was committed, so the
        writers together always progress.
        """
        attempt = 1
        deadline = time.monotonic() + _APPEND_PATIENCE_S
        while True:
            try:
                with self.store.transaction() as connection:
                    return self.append_within(connection, event)
            except (IntegrityError, OperationalError) as error:
                if time.monotonic() >= deadline:
                    raise AuditError(
                        f"could not append {event.kind} to the audit log in {attempt} attempts "
                        f"over {_APPEND_PATIENCE_S:g} s ({error.orig}); check that the store is "
                        "reachable and that no process holds its write lock, and retry"
                    ) from error
                logger.debug("audit append of %s collided (attempt %d)", event.kind, attempt)
                time.sleep(secrets.SystemRandom().uniform(0.0, _APPEND_BACKOFF_S))
                attempt += 1

    def append_within(self, connection: Connection, event: AuditEvent) -> AuditEntry:
        """Record ``event`` in the caller's open write transaction of this log's store.

        The caller's change and its audit entry then commit, or fail, together.
        """
        last = self._last_entry(connection)
        sequence = 0 if last is None else last.sequence + 1
        previous_hash = GENESIS_HASH if last is None else last.entry_hash
        timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
        payload = canonical_json(event.payload())
        digest = entry_hash(previous_hash, sequence, timestamp, event.kind, payload)
        entry = AuditEntry(
            sequence=sequence,
            timestamp=timestamp,
            kind=event.kind,
            payload=payload,
            previous_hash=previous_hash,
            entry_hash=digest,
            signature=self._signing_key.sign(bytes.fromhex(digest)).hex(),
        )
        connection.execute(
            insert(audit_log).values(
                **{field.name: getattr(entry, field.name) for field in fields(entry)}
            )
        )
        logger.debug("audit entry %d: %s", sequence, event.kind)
        return entry

    @staticmethod
    def _last_entry(connection: Connection) -> AuditEntry | None:
        """The entry with the highest sequence, if any."""
        row = connection.execute(
            select(*(audit_log.c[field.name] for field in fields(AuditEntry)))
            .order_by(audit_log.c.sequence.desc(), audit_log.c.entry_id.desc())
            .limit(1)
        ).one_or_none()
        return None if row is None else AuditEntry(**row._asdict())


# Verification.


@dataclass(frozen=True)
class VerificationResult:
    """Whether the log verified; if not, the first bad entry's sequence and what is wrong."""

    ok: bool
    entries: int
    first_bad: int | None
    problem: str
    last_hash: str = GENESIS_HASH


def verify(store: RunStore, public_key: Ed25519PublicKey) -> VerificationResult:
    """Recompute the log's chain in sequence order and name the first entry that breaks it."""
    entries = read_entries(store)
    sequence_of_hash = {entry.entry_hash: entry.sequence for entry in entries}
    previous_hash = GENESIS_HASH
    for expected, entry in enumerate(entries):
        problem = _problem_of(entry, expected, previous_hash, public_key, sequence_of_hash)
        if problem is not None:
            bad = min(entry.sequence, expected)
            logger.warning("audit log fails verification at entry %d: %s", bad, problem)
            return VerificationResult(False, len(entries), bad, problem, previous_hash)
        previous_hash = entry.entry_hash
    return VerificationResult(True, len(entries), None, "", previous_hash)


def _problem_of(
    entry: AuditEntry,
    expected: int,
    previous_hash: str,
    public_key: Ed25519PublicKey,
    sequence_of_hash: Mapping[str, int],
) -> str | None:
    """What is wrong with the entry found at position ``expected`` of the chain, if anything."""
    if entry.sequence < expected:
        return f"sequence {entry.sequence} appears twice: an entry was inserted"
    if entry.sequence > expected:
        return f"entry {expected} is missing (the next is {entry.sequence}): it was deleted"
    if entry.previous_hash != previous_hash:
        linked = sequence_of_hash.get(entry.previous_hash)
        if linked is not None:
            return (
                f"entry {expected} follows entry {linked}, not entry {expected - 1}: "
                "entries were reordered"
            )
        return (
            f"entry {expected} does not link to entry {expected - 1} or any entry of the log: "
            "it was inserted or the previous entry was replaced"
        )
    try:
        canonical = canonical_json(json.loads(entry.payload)) == entry.payload
        recomputed = entry_hash(
            entry.previous_hash, entry.sequence, entry.timestamp, entry.kind, entry.payload
        )
    except (ValueError, AuditError):
        return f"entry {expected}'s payload is not valid JSON: it was modified"
    if not canonical or recomputed != entry.entry_hash:
        return f"entry {expected}'s content does not match its hash: it was modified"
    if not _signature_is_valid(public_key, entry):
        return (
            f"entry {expected}'s signature was not made with the log's key: it was forged "
            "(inserted or rewritten by someone without the signing key)"
        )
    return None


# Reports.


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
                "privacy": {"epsilon": None, "delta": None, "budget_changes": []},
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
                "round_index": event.round_index,
                "started_at": entry.timestamp,
                "cohort": sorted(client(member) for member in event.cohort),
                "dp": None if event.dp is None else dict(event.dp),
                "participants": None,
                "applied": None,
            }
        elif isinstance(event, RoundCompleted):
            record = run(event.run_id)
            record["rounds"].setdefault(event.round_index, {"round_index": event.round_index})
            record["rounds"][event.round_index].update(
                participants=event.participants, applied=event.applied
            )
            privacy = record["privacy"]
            privacy["epsilon"] = _largest(privacy["epsilon"], event.epsilon_spent)
            privacy["delta"] = _largest(privacy["delta"], event.delta)
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


def render_json(report: Mapping[str, Any]) -> str:
    """The report as indented JSON with sorted keys."""
    return json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.4em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #eee; }
.ok { color: #176317; font-weight: bold; }
.bad { color: #a31515; font-weight: bold; }
"""

_SECTIONS = (
    ("lineage", "Lineage"),
    ("privacy", "Privacy guarantees"),
    ("participant_integrity", "Participant integrity"),
    ("retention_deletions", "Retention deletions"),
    ("unknown_event_kinds", "Event kinds this version does not know"),
)


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (no external assets; every value escaped)."""
    verification = report["verification"]
    if verification["ok"]:
        status = (
            f'<p class="ok">Audit log verified: {verification["entries"]} entries, '
            f"last hash {html.escape(str(verification['last_hash']))}.</p>"
        )
    else:
        status = (
            f'<p class="bad">Audit log FAILED verification at entry '
            f"{html.escape(str(verification['first_bad']))}: "
            f"{html.escape(str(verification['problem']))}</p>"
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>fedwarden audit report</title>",
        f"<style>{_HTML_STYLE}</style></head><body>",
        "<h1>fedwarden audit report</h1>",
        f"<p>Generated {html.escape(str(report['generated_at']))}; client ids: "
        f"{html.escape(str(report['client_ids']))}.</p>",
        "<h2>Verification</h2>",
        status,
    ]
    for key, title in _SECTIONS:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(_html_value(report[key]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_value(value: Any) -> str:
    """A JSON value as HTML: objects as two-column tables, lists of objects as tables."""
    if isinstance(value, Mapping):
        if not value:
            return "<p>none</p>"
        rows = "".join(
            f"<tr><th>{html.escape(str(key))}</th><td>{_html_value(item)}</td></tr>"
            for key, item in value.items()
        )
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if not value:
            return "<p>none</p>"
        if all(isinstance(item, Mapping) for item in value):
            columns = list(dict.fromkeys(key for item in value for key in item))
            header = "".join(f"<th>{html.escape(str(column))}</th>" for column in columns)
            body = "".join(
                "<tr>"
                + "".join(f"<td>{_html_value(item.get(column))}</td>" for column in columns)
                + "</tr>"
                for item in value
            )
            return f"<table><tr>{header}</tr>{body}</table>"
        return html.escape(", ".join(str(item) for item in value))
    if value is None:
        return "&mdash;"
    return html.escape(str(value))


def render_pdf(report: Mapping[str, Any]) -> bytes:
    """The HTML report printed to PDF with weasyprint, if that library is installed.

    The pages are A4 landscape and long values (hashes, timestamps, cohorts) wrap inside their
    cells, so that every column of the report stays on the page.
    """
    try:
        weasyprint = importlib.import_module("weasyprint")
    except ImportError:
        raise AuditError(
            "PDF reports need the weasyprint library, which is not installed; write the "
            "report with --format html (and print it to PDF from a browser), or install "
            "it with `pip install 'fedwarden[report]'`"
        ) from None
    page_style = weasyprint.CSS(
        string="@page { size: A4 landscape; margin: 1cm; } "
        "body { margin: 0 !important; font-size: 6.5pt; } "
        "th, td { overflow-wrap: anywhere; padding: 0.15em 0.3em !important; }"
    )
    pdf: bytes = weasyprint.HTML(string=render_html(report)).write_pdf(stylesheets=[page_style])
    return pdf


# Keys.


class ServerAuditTrail:
    """The events of one run's rounds, appended to the audit log as the server reports them.

    ``dp`` is the run's DP mechanism description (noise multiplier, clip norm,
    sampling; None without DP) recorded with every round start; each completed
    round records the run's cumulative epsilon after it and ``delta``;
    quarantined clients are recorded as they are quarantined.
    """

    def __init__(
        self,
        log: AuditLog,
        run_id: str,
        *,
        dp: Mapping[str, Any] | None = None,
        delta: float | None = None,
    ) -> None:
        self.log = log
        self.run_id = run_id
        self.dp = dp
        self.delta = delta

    def run_created(self, config_json: str, package_version: str) -> None:
        """Record a new run with the SHA-256 of its configuration."""
        config_hash = hashlib.sha256(config_json.encode()).hexdigest()
        self.log.append(RunCreated(self.run_id, config_hash, package_version))

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        self.log.append(RoundStarted(self.run_id, round_index, tuple(cohort), self.dp))

    def alert_raised(self, alert: Alert) -> None:
        """Record a monitoring alert of this run: the alert sink of training and of serving.

        The training server hands it the rules' alerts after each round; the prediction
        service (:mod:`fedwarden.serve.app`) the drift alerts of a model this run trained.
        """
        self.log.append(AlertRaised.of(alert, self.run_id))

    def update_rejected(self, round_index: int, client_id: str, reason: str) -> None:
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
            )
        )


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Load the audit log's Ed25519 signing key from an unencrypted PEM (PKCS#8) file."""
    key = _load_pem(
        path, "private", lambda data: serialization.load_pem_private_key(data, password=None)
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load the audit log's Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    key = _load_pem(path, "public", serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def _load_pem(path: Path | str, what: str, parse: Callable[[bytes], object]) -> object:
    """Read a PEM key file with ``parse``, or raise AuditError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AuditError(f"cannot read the {what} key file {path}: {error.strerror}") from None
    try:
        return parse(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuditError(
            f"{path} is not an unencrypted PEM {what} key ({error}); give an Ed25519 key in PEM"
        ) from None
