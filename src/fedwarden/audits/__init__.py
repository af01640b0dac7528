"""Tools that drive whole runs to measure what they leak: DP audits, membership, inversion."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "MembershipResult": "fedwarden.audits.membership",
    "attack_global_model": "fedwarden.audits.membership",
    "lira_attack": "fedwarden.audits.membership",
    "loss_threshold_attack": "fedwarden.audits.membership",
    "InversionResult": "fedwarden.audits.inversion",
    "invert": "fedwarden.audits.inversion",
    "reconstruct": "fedwarden.audits.inversion",
    "AuditResult": "fedwarden.audits.results",
    "audit_privacy": "fedwarden.audits.dp_audit",
    "CanaryTrainer": "fedwarden.audits.canary_clients",
    "canary_client_audit": "fedwarden.audits.canary_clients",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
