"""Governance of a deployed server: its durable store of runs, rounds, clients and updates."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "AcceptedUpdate": "fedwarden.governance.store",
    "DuplicateUpdate": "fedwarden.governance.store",
    "EnrolledClient": "fedwarden.governance.store",
    "EnrolmentConflict": "fedwarden.governance.store",
    "RoundConflict": "fedwarden.governance.store",
    "RunRow": "fedwarden.governance.store",
    "RunStore": "fedwarden.governance.store",
    "StoreError": "fedwarden.governance.store",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
