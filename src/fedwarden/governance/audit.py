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

Signers
    The log has one root key (the server kit's ``audit.key``; its ``audit.pub`` verifies the
    log). The root key may delegate some event kinds to another Ed25519 key with a
    :class:`SignerDelegated` entry (a prediction service gets a key for ``alert_raised``
    only) and withdraw it with a :class:`SignerRevoked` entry; only the root key signs those
    two kinds. Whoever takes a delegated key can then forge entries of its kinds only, until
    it is revoked (:func:`delegate_signer`; ``fedwarden audit delegate`` and ``revoke``).

Verification
    :func:`verify` recomputes the chain in sequence order from the root public key and names
    the first entry that was modified (its hash does not match its content), deleted (a gap in
    the sequence), inserted (a duplicated sequence, or a link or signature no key holder made),
    reordered (it links to an entry other than its predecessor) or signed by a key not allowed
    it at that point (an unknown key, a kind not delegated, a revoked key, or a delegation or
    revocation not signed by the root key). A truncated tail leaves a valid shorter chain;
    compare :attr:`VerificationResult.entries` and the last entry hash with a copy kept
    elsewhere to detect it.

Reports
    :func:`audit_report` summarises the verified log: lineage (runs, rounds, models), privacy
    guarantees (epsilon and delta per run), participant integrity (refusals by reason,
    quarantines), the signers (root key, delegations and revocations) and the verification
    status. Client ids are pseudonymized as
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
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, Select, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from fedwarden.core import canonical
from fedwarden.core.errors import FedwardenError
from fedwarden.deploy.pki import write_private_file, write_public_file
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
    """``value`` as the audit log's canonical JSON (UTF-8 text kept); AuditError on NaN."""
    try:
        return canonical.canonical_json(value, ascii_only=False)
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
    """Round ``round_index`` sampled ``cohort``; ``dp`` holds its DP mechanism's parameters.

    When the run's guarantee is amplified by cohort sampling, ``cohort`` is
    empty and ``cohort_commitment`` holds :func:`commit_cohort`'s salted
    SHA-256 of it instead: a reader of the log cannot see who was sampled,
    and the operator, who keeps the salts, can still prove it.
    """

    kind: ClassVar[str] = "round_started"
    run_id: str
    round_index: int
    cohort: tuple[str, ...]
    dp: Mapping[str, Any] | None
    cohort_commitment: str | None = None


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
    """``by`` changed the run's privacy budget from ``old_epsilon`` to ``new_epsilon``.

    ``config_hash`` is the SHA-256 of the run's config after the change (None in entries
    written before it was recorded): a resumed run's config must match it.
    """

    kind: ClassVar[str] = "budget_changed"
    run_id: str
    old_epsilon: float
    new_epsilon: float
    by: str
    config_hash: str | None = None


@dataclass(frozen=True)
class RetentionDeletion(AuditEvent):
    """``by`` deleted ``what`` (e.g. ``model_weights``) of ``target`` (a version or a path)."""

    kind: ClassVar[str] = "retention_deletion"
    what: str
    target: str
    by: str


@dataclass(frozen=True)
class SignerDelegated(AuditEvent):
    """``by`` let the Ed25519 key ``public_key`` (raw, hex) sign entries of ``kinds``, as ``name``.

    Only the log's root key may append it (see :class:`AuditLog`). From this entry on, and
    until a :class:`SignerRevoked` of the same key, :func:`verify` accepts entries of those
    kinds signed by that key; a key is delegated once, never the root key itself, and never
    for delegating or revoking.
    """

    kind: ClassVar[str] = "signer_delegated"
    public_key: str
    kinds: tuple[str, ...]
    by: str
    name: str


@dataclass(frozen=True)
class SignerRevoked(AuditEvent):
    """``by`` withdrew the delegation of the key ``public_key`` (raw, hex), for ``reason``.

    Only the log's root key may append it; entries the key signs after it fail verification.
    """

    kind: ClassVar[str] = "signer_revoked"
    public_key: str
    by: str
    reason: str


ROOT_ONLY_KINDS = frozenset({SignerDelegated.kind, SignerRevoked.kind})
"""Kinds only the log's root key may sign, whatever a delegation says."""

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
        SignerDelegated,
        SignerRevoked,
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
            _select_entries().order_by(audit_log.c.sequence, audit_log.c.entry_id)
        ).all()
    return [AuditEntry(**row._asdict()) for row in rows]


def _signature_is_valid(public_key: Ed25519PublicKey, entry: AuditEntry) -> bool:
    """Whether the entry's signature is the key holder's over its stored entry hash."""
    try:
        public_key.verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    """The raw 32 bytes of an Ed25519 public key in hex: how delegation entries name a key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@dataclass(frozen=True)
class _Delegation:
    """A key delegated by ``event`` at entry ``sequence``; revoked at entry ``revoked_at``."""

    public_key: Ed25519PublicKey
    event: SignerDelegated
    sequence: int
    revoked_at: int | None = None

    def describe(self) -> str:
        """How messages name the key: its delegated name and the start of its hex."""
        return f"delegated key {self.event.name!r} ({self.event.public_key[:16]}...)"


class _Signers:
    """Which keys may sign which entries at one point of the chain: the root key and delegates.

    The root public key is the trust anchor and must come from outside the log; a delegation
    or revocation counts only because the root key signed its entry, so :meth:`record` is
    given only entries whose hash was recomputed and whose signer :meth:`signer_problem`
    accepted.
    """

    def __init__(self, root: Ed25519PublicKey) -> None:
        self.root = root
        self.root_hex = public_key_hex(root)
        self.delegations: dict[str, _Delegation] = {}

    def signer_problem(self, entry: AuditEntry) -> str | None:
        """Why ``entry``'s signature is not acceptable at this point of the chain, or None."""
        if _signature_is_valid(self.root, entry):
            return None
        signer = next(
            (
                delegation
                for delegation in self.delegations.values()
                if _signature_is_valid(delegation.public_key, entry)
            ),
            None,
        )
        where = f"entry {entry.sequence} ({entry.kind})"
        if signer is None:
            return (
                f"{where}'s signature was not made with the log's key or any key it delegated "
                "before it (unknown key): it was forged (inserted or rewritten by someone "
                "without a signing key)"
            )
        if signer.revoked_at is not None:
            return (
                f"{where} was signed by {signer.describe()}, revoked at entry "
                f"{signer.revoked_at}: a revoked key signs nothing"
            )
        if entry.kind in ROOT_ONLY_KINDS:
            return (
                f"{where} was signed by {signer.describe()}: wrong signer, only the log's "
                "root key may delegate or revoke"
            )
        if entry.kind not in signer.event.kinds:
            return (
                f"{where} was signed by {signer.describe()}, which may sign only "
                f"{', '.join(signer.event.kinds)}: kind not delegated"
            )
        return None

    def event_problem(self, event: AuditEvent) -> str | None:
        """Why ``event`` (a delegation or a revocation) cannot take effect now, or None."""
        if isinstance(event, SignerDelegated):
            return self._delegation_problem(event)
        if isinstance(event, SignerRevoked):
            revoked = self.delegations.get(event.public_key)
            if revoked is None:
                return (
                    f"key {event.public_key} was never delegated; give the public key of a "
                    "delegated signer"
                )
            if revoked.revoked_at is not None:
                return f"{revoked.describe()} was already revoked at entry {revoked.revoked_at}"
        return None

    def _delegation_problem(self, event: SignerDelegated) -> str | None:
        """Why ``event`` cannot delegate its key, or None."""
        try:
            canonical = bytes.fromhex(event.public_key).hex() == event.public_key
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(event.public_key))
        except (ValueError, TypeError):
            canonical = False
        if not canonical:
            return (
                f"{event.public_key!r} is not a raw Ed25519 public key in lowercase hex (64 digits)"
            )
        if event.public_key == self.root_hex:
            return "the log's root key cannot be delegated: it already signs every kind"
        earlier = self.delegations.get(event.public_key)
        if earlier is not None:
            return (
                f"{earlier.describe()} was already delegated at entry {earlier.sequence}; a "
                "key is delegated once: create a new key"
            )
        allowed = sorted(EVENT_TYPES.keys() - ROOT_ONLY_KINDS)
        if not event.kinds or not set(event.kinds) <= set(allowed):
            return f"kinds {list(event.kinds)} cannot be delegated; give some of {allowed}"
        return None

    def record(self, entry: AuditEntry) -> str | None:
        """Apply ``entry`` if it delegates or revokes a key; why it cannot apply, or None."""
        if entry.kind not in ROOT_ONLY_KINDS:
            return None
        try:
            event = entry.event()
        except (ValueError, AuditError) as error:
            return f"entry {entry.sequence}'s {entry.kind} payload cannot be read: {error}"
        problem = None if event is None else self.event_problem(event)
        if problem is not None:
            return f"entry {entry.sequence} ({entry.kind}): {problem}"
        if isinstance(event, SignerDelegated):
            self.delegations[event.public_key] = _Delegation(
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(event.public_key)),
                event,
                entry.sequence,
            )
        elif isinstance(event, SignerRevoked):
            revoked = self.delegations[event.public_key]
            self.delegations[event.public_key] = replace(revoked, revoked_at=entry.sequence)
        return None

    def permission_problem(self, signer: Ed25519PublicKey, kind: str | None) -> str | None:
        """Why ``signer`` may not append an entry of ``kind`` (None: of any kind) now, or None."""
        key = public_key_hex(signer)
        if key == self.root_hex:
            return None
        delegation = self.delegations.get(key)
        if delegation is None:
            return (
                "this key is neither the log's root key nor a key it delegated; sign with the "
                "root key, or delegate this key (`fedwarden audit delegate`) and give the root "
                "public key"
            )
        if delegation.revoked_at is not None:
            return (
                f"this key ({delegation.describe()}) was revoked at entry "
                f"{delegation.revoked_at}; have the root key's holder delegate a new key"
            )
        if kind is not None and kind not in delegation.event.kinds:
            return (
                f"this key ({delegation.describe()}) may sign only "
                f"{', '.join(delegation.event.kinds)}, not {kind}; append {kind} with the "
                "log's root key"
            )
        return None


def _select_entries() -> Select[Any]:
    """The query of every column of the ``audit_log`` rows that make an :class:`AuditEntry`."""
    return select(*(audit_log.c[field.name] for field in fields(AuditEntry)))


class AuditLog:
    """Appends signed, hash-chained entries to the store's audit log; never changes one.

    The log's root key (the server kit's ``audit.key``) may append every kind of event; a key
    it delegated (:class:`SignerDelegated`) only the kinds it was delegated, until the root key
    revokes it (:class:`SignerRevoked`). Open the log with the root key alone, or with a
    delegated key and ``root_public_key``, the root's public key, which must come from outside
    the database (the kit's ``audit.pub``): the delegations count only because it signed them.

    A new ``AuditLog`` on a store that already holds entries (a restarted server) continues
    its chain. It refuses to open when its key is neither the root key nor a delegated key
    that is not revoked, when the last entry was signed neither by the root key nor by a key
    delegated that entry's kind at that point, or when a delegation or revocation entry does
    not match its hash or was not signed by the root key. Each append first reads, in its
    own transaction, the delegations and revocations committed since, and refuses a kind this
    key may not sign: a key revoked while its process runs appends nothing afterwards.

    These checks read only the delegation and revocation entries and the last entry. They stop
    a writer holding the wrong, a revoked or an under-delegated key; they do not stop someone
    who can write to the database (who could, say, delete a revocation): :func:`verify`, which
    walks the whole chain from the root public key, detects that.
    """

    def __init__(
        self,
        store: RunStore,
        signing_key: Ed25519PrivateKey,
        *,
        root_public_key: Ed25519PublicKey | None = None,
    ) -> None:
        self.store = store
        self._signing_key = signing_key
        self.signer_public_key = signing_key.public_key()
        self.public_key = self.signer_public_key if root_public_key is None else root_public_key
        """The log's root public key, which verifies it."""
        self._signers = _Signers(self.public_key)
        self._read_from = 0
        with store.reading() as connection:
            last = self._catch_up(connection)
        problem = None if last is None else self._signers.signer_problem(last)
        if last is not None and problem is not None:
            raise AuditError(
                f"the audit log's last entry ({last.sequence}) was not signed with this key or "
                f"a key it delegated ({problem}); continue the log with its root key, or with "
                "a delegated key and the root public key"
            )
        problem = self._signers.permission_problem(self.signer_public_key, None)
        if problem is not None:
            raise AuditError(f"cannot write to the audit log with this key: {problem}")

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

        The caller's change and its audit entry then commit, or fail, together. An event this
        log's key may not sign now (see the class) is refused with AuditError.
        """
        last = self._catch_up(connection)
        problem = self._signers.permission_problem(
            self.signer_public_key, event.kind
        ) or self._signers.event_problem(event)
        if problem is not None:
            raise AuditError(f"cannot append {event.kind} to the audit log: {problem}")
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

    def _catch_up(self, connection: Connection) -> AuditEntry | None:
        """Apply the delegations and revocations appended since the last call; the last entry.

        Each must match its hash and be signed by the root key, or AuditError is raised.
        """
        last = self._last_entry(connection)
        if last is None:
            return None
        rows = connection.execute(
            _select_entries()
            .where(
                audit_log.c.kind.in_(sorted(ROOT_ONLY_KINDS)),
                audit_log.c.sequence >= self._read_from,
                audit_log.c.sequence <= last.sequence,
            )
            .order_by(audit_log.c.sequence, audit_log.c.entry_id)
        ).all()
        for row in rows:
            entry = AuditEntry(**row._asdict())
            problem = (
                _content_problem(entry)
                or self._signers.signer_problem(entry)
                or self._signers.record(entry)
            )
            if problem is not None:
                raise AuditError(
                    f"the audit log's delegations cannot be trusted: {problem}; run "
                    "`fedwarden audit verify` and repair the store before writing to it"
                )
        self._read_from = last.sequence + 1
        return last

    @staticmethod
    def _last_entry(connection: Connection) -> AuditEntry | None:
        """The entry with the highest sequence, if any."""
        row = connection.execute(
            _select_entries()
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
    """Recompute the log's chain in sequence order and name the first entry that breaks it.

    ``public_key`` is the log's root key, the trust anchor: take it from outside the database
    (the server kit's ``audit.pub``). Each entry must be signed by it, or by a key that a
    root-signed :class:`SignerDelegated` earlier in the chain allowed that entry's kind and no
    :class:`SignerRevoked` has withdrawn since; delegations and revocations must be signed by
    the root key.
    """
    entries = read_entries(store)
    sequence_of_hash = {entry.entry_hash: entry.sequence for entry in entries}
    signers = _Signers(public_key)
    previous_hash = GENESIS_HASH
    for expected, entry in enumerate(entries):
        problem = (
            _problem_of(entry, expected, previous_hash, sequence_of_hash)
            or signers.signer_problem(entry)
            or signers.record(entry)
        )
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
    sequence_of_hash: Mapping[str, int],
) -> str | None:
    """What is wrong with the place or content of the entry at position ``expected``, or None."""
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
    return _content_problem(entry)


def _content_problem(entry: AuditEntry) -> str | None:
    """Whether the entry's stored hash is not that of its content, and why."""
    try:
        canonical = canonical_json(json.loads(entry.payload)) == entry.payload
        recomputed = entry_hash(
            entry.previous_hash, entry.sequence, entry.timestamp, entry.kind, entry.payload
        )
    except (ValueError, AuditError):
        return f"entry {entry.sequence}'s payload is not valid JSON: it was modified"
    if not canonical or recomputed != entry.entry_hash:
        return f"entry {entry.sequence}'s content does not match its hash: it was modified"
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
                "cohort_commitment": event.cohort_commitment,
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
    ("signers", "Signers (root key, delegated keys and their revocations)"),
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
    staged = path.with_name(path.name + ".tmp")
    write_private_file(staged, canonical_json(openings).encode())
    staged.replace(path)  # atomic: a crash leaves the old openings or the new, never neither


def open_cohort(commitment: str, salt_hex: str, cohort: Sequence[str]) -> bool:
    """Whether ``cohort`` with ``salt_hex`` opens ``commitment``: the proof an admin can give."""
    return hmac.compare_digest(commit_cohort(bytes.fromhex(salt_hex), cohort), commitment)


class ServerAuditTrail:
    """The events of one run's rounds, appended to the audit log as the server reports them.

    ``dp`` is the run's DP mechanism description (noise multiplier, clip norm,
    sampling; None without DP) recorded with every round start; each completed
    round records the run's cumulative epsilon after it and ``delta``;
    quarantined clients are recorded as they are quarantined. With
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
    ) -> None:
        self.log = log
        self.run_id = run_id
        self.dp = dp
        self.delta = delta
        self.cohort_openings = cohort_openings
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
            )
        )


def delegate_signer(
    log: AuditLog, key_path: Path, kinds: Sequence[str], *, name: str, by: str
) -> SignerDelegated:
    """Create an Ed25519 key and delegate ``kinds`` to it in ``log`` (opened with the root key).

    The key is written to ``key_path`` (PEM, mode 0600) and its public key beside it with the
    suffix ``.pub`` (PEM); neither may exist yet. If the log refuses the delegation, both files
    are removed again, so that a key file always stands for a recorded delegation.
    """
    public_path = key_path.with_suffix(".pub")
    for path in (key_path, public_path):
        if path.exists():
            raise AuditError(
                f"{path} exists; a delegated key is created once: choose another output or "
                "remove the old key (revoke it first if it was delegated)"
            )
    key = Ed25519PrivateKey.generate()
    event = SignerDelegated(public_key_hex(key.public_key()), tuple(kinds), by, name)
    try:
        write_private_file(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_public_file(
            public_path,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        log.append(event)
    except (OSError, AuditError) as error:
        key_path.unlink(missing_ok=True)
        public_path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise AuditError(f"cannot write {error.filename}: {error.strerror}") from None
        raise
    logger.info("delegated %s to audit signer %r (%s)", ", ".join(kinds), name, event.public_key)
    return event


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
