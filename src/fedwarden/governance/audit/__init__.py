"""The tamper-evident audit log of a deployment: what happened, in order, signed.

========================  ===================================================================
module                    what it holds
========================  ===================================================================
:mod:`.events`            the events, frozen dataclasses, and the audit log's canonical JSON
:mod:`.entries`           an entry: its hash over the previous one, reading entries back
:mod:`.signers`           which keys may sign which kinds: the root key and its delegates
:mod:`.chain`             :class:`AuditLog`, which appends signed entries, never changes one
:mod:`.verification`      :func:`verify`: the first entry modified, deleted, inserted, ...
:mod:`.report`            :func:`audit_report`, pseudonyms, what a resume must agree with
:mod:`.recompute`         :func:`recompute`: a version's privacy claim, from the log alone
:mod:`.rendering`         a report as JSON, HTML or PDF
:mod:`.trail`             :class:`ServerAuditTrail` and the hiding cohort commitments
:mod:`.keys`              loading the root key, creating delegated keys
========================  ===================================================================

Each module's docstring says what it guarantees; :mod:`.events` says how events may evolve.
"""

from __future__ import annotations

from fedwarden.governance.audit.chain import AuditLog
from fedwarden.governance.audit.entries import GENESIS_HASH, AuditEntry, entry_hash, read_entries
from fedwarden.governance.audit.events import (
    EVENT_TYPES,
    ROOT_ONLY_KINDS,
    AlertRaised,
    AuditError,
    AuditEvent,
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
    canonical_json,
)
from fedwarden.governance.audit.keys import delegate_signer, load_public_key, load_signing_key
from fedwarden.governance.audit.recompute import (
    AuditedRelease,
    Recomputation,
    RecomputedRun,
    audited_releases,
    recompute,
    recompute_command,
)
from fedwarden.governance.audit.rendering import render_html, render_json, render_pdf
from fedwarden.governance.audit.report import (
    PSEUDONYM_HEX_DIGITS,
    PSEUDONYM_PREFIX,
    RecordedRun,
    audit_report,
    pseudonym,
    pseudonym_salt,
    recorded_run,
)
from fedwarden.governance.audit.signers import public_key_hex
from fedwarden.governance.audit.trail import (
    COHORT_SALT_BYTES,
    COMMITTED_CLIENT_PREFIX,
    ServerAuditTrail,
    commit_cohort,
    open_cohort,
)
from fedwarden.governance.audit.verification import VerificationResult, verify

__all__ = [
    "COHORT_SALT_BYTES",
    "COMMITTED_CLIENT_PREFIX",
    "EVENT_TYPES",
    "GENESIS_HASH",
    "PSEUDONYM_HEX_DIGITS",
    "PSEUDONYM_PREFIX",
    "ROOT_ONLY_KINDS",
    "AlertRaised",
    "AuditEntry",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditedRelease",
    "BudgetChanged",
    "ClientQuarantined",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRolledBack",
    "PilotEvaluated",
    "Recomputation",
    "RecomputedRun",
    "RecordedRun",
    "RetentionDeletion",
    "RoundCompleted",
    "RoundStarted",
    "RunCreated",
    "ServerAuditTrail",
    "SignerDelegated",
    "SignerRevoked",
    "UpdateRejected",
    "VerificationResult",
    "audit_report",
    "audited_releases",
    "canonical_json",
    "commit_cohort",
    "delegate_signer",
    "entry_hash",
    "load_public_key",
    "load_signing_key",
    "open_cohort",
    "pseudonym",
    "pseudonym_salt",
    "public_key_hex",
    "read_entries",
    "recompute",
    "recompute_command",
    "recorded_run",
    "render_html",
    "render_json",
    "render_pdf",
    "verify",
]
