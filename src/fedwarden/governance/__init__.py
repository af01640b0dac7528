"""Governance of a deployed server: its durable store, a signed audit log, a model registry."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_AUDIT = "fedwarden.governance.audit"
_REGISTRY = "fedwarden.governance.registry"
_STORE = "fedwarden.governance.store"

_EXPORTS = {
    "AuditEntry": _AUDIT,
    "AuditError": _AUDIT,
    "AuditEvent": _AUDIT,
    "AuditLog": _AUDIT,
    "BudgetChanged": _AUDIT,
    "ClientQuarantined": _AUDIT,
    "ModelPromoted": _AUDIT,
    "ModelRegistered": _AUDIT,
    "ModelRegistry": _REGISTRY,
    "ModelRolledBack": _AUDIT,
    "ModelVersion": _REGISTRY,
    "PilotEvaluated": _AUDIT,
    "PilotEvaluation": _REGISTRY,
    "RegistryError": _REGISTRY,
    "RetentionDeletion": _AUDIT,
    "RoundCompleted": _AUDIT,
    "RejectionRow": _STORE,
    "RoundConflict": _STORE,
    "RoundStarted": _AUDIT,
    "RunCreated": _AUDIT,
    "RunRow": _STORE,
    "RunStore": _STORE,
    "SignerDelegated": _AUDIT,
    "SignerRevoked": _AUDIT,
    "StoreError": _STORE,
    "UpdateRejected": _AUDIT,
    "VerificationResult": _AUDIT,
    "audit_report": _AUDIT,
    "delegate_signer": _AUDIT,
    "public_key_hex": _AUDIT,
    "verify": _AUDIT,
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
