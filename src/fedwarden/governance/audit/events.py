"""The events of the audit log: each a frozen dataclass that completely documents one thing.

Each event documents one thing that happened (a run created, a round started or completed, an
update refused, a client quarantined, a model registered, promoted or rolled back, a privacy
budget changed, data deleted under retention, a signer delegated or revoked), in the manner of
``dp_accounting``'s ``dp_event.py``. Its ``kind`` names it in the log and its fields are its
payload, serialized as canonical JSON (sorted keys, no whitespace, UTF-8, no NaN or infinity).

How events may evolve: a field may be added at the end, with a default, so that older payloads
still read; a field may be widened to accept None, when a new case of the same event lacks it
(``AlertRaised.round_index`` became ``int | None`` for drift alerts of a served model, which
has no round), so readers must accept None in any field; a field is otherwise never renamed,
retyped or removed, and a ``kind`` string is never reused for another meaning. Readers skip
kinds they do not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from fedwarden.core import canonical
from fedwarden.core.alerts import Alert
from fedwarden.core.errors import FedwardenError


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

    ``dp_events`` are the releases the round charged to the run's privacy ledger, each
    ``{"release": kind, "client_id": whose data (None: run-level), "event": the
    dp-accounting event as :func:`~fedwarden.privacy.accounting.event_to_json` writes it}``,
    and ``neighboring`` the relation they are accounted under: with ``delta`` they are all an
    auditor needs to recompute ``epsilon_spent`` (:mod:`.recompute`). Entries written before
    they were recorded lack them (empty, None).
    """

    kind: ClassVar[str] = "round_completed"
    run_id: str
    round_index: int
    participants: int
    epsilon_spent: float | None
    delta: float | None
    applied: bool
    dp_events: tuple[Mapping[str, Any], ...] | None = ()
    neighboring: str | None = None


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
