"""The monitoring dashboard: runs, rounds, clients, the audit log and the model registry.

:func:`create_app` builds a FastAPI application over a
:class:`~fedwarden.governance.store.RunStore` that serves

``GET /api/runs``
    every run of the store, newest first, with its privacy budget;
``GET /api/runs/{run_id}/rounds``
    the run's per-round figures as the store recorded them (accuracy, loss, epsilon spent
    against the budget, participation, bytes);
``GET /api/runs/{run_id}/clients``
    each client of the run: cohorts, accepted updates, refusals, outlier flags, quarantine;
``GET /api/audit``
    the latest audit entries and whether the whole log verifies with its public key;
``GET /api/models``
    the model registry's versions and their stages;
``POST /api/models/{reference}/promote`` and ``POST /api/models/rollback``
    registry changes, allowed only with ``Authorization: Bearer <token>`` (403 otherwise) and
    only when the dashboard holds the audit signing key (409 otherwise), since every registry
    change is audited; a change the registry refuses is answered 409 with its reason;
``GET /healthz``
    whether the store answers;

every ``/api`` request needs ``Authorization: Bearer <token>`` (403 otherwise): the data
names clients, cohorts, run directories and audit payloads. The audit log's verification is
cached until a stored entry changes (:class:`VerificationCache`);

and one page at ``/`` (with its script and style sheet, no external assets) that draws the
charts as inline SVG from the JSON API. :func:`serve_dashboard` serves it with uvicorn.

==================  =========================================================================
module              what it holds
==================  =========================================================================
:mod:`.app`         :func:`create_app` (the routes) and :func:`serve_dashboard`
:mod:`.auth`        the bearer token: its length, and the check on every request
:mod:`.views`       what the API shows, read through the run store's methods only
:mod:`.bodies`      the JSON bodies of the API
==================  =========================================================================
"""

from __future__ import annotations

from fedwarden.monitor.dashboard.app import (
    DEFAULT_AUDIT_ENTRIES,
    MAX_AUDIT_ENTRIES,
    create_app,
    serve_dashboard,
)
from fedwarden.monitor.dashboard.auth import (
    MIN_TOKEN_CHARACTERS,
)
from fedwarden.monitor.dashboard.bodies import (
    AuditEntryView,
    AuditView,
    ClientRejection,
    ClientStatus,
    ErrorBody,
    HealthStatus,
    ModelView,
    PromoteRequest,
    RegistryView,
    RollbackRequest,
    RoundPoint,
    RunClients,
    RunRounds,
    RunSummary,
    Verification,
)
from fedwarden.monitor.dashboard.views import (
    DashboardError,
    VerificationCache,
    read_round_points,
)

__all__ = [
    "DEFAULT_AUDIT_ENTRIES",
    "MAX_AUDIT_ENTRIES",
    "MIN_TOKEN_CHARACTERS",
    "AuditEntryView",
    "AuditView",
    "ClientRejection",
    "ClientStatus",
    "DashboardError",
    "ErrorBody",
    "HealthStatus",
    "ModelView",
    "PromoteRequest",
    "RegistryView",
    "RollbackRequest",
    "RoundPoint",
    "RunClients",
    "RunRounds",
    "RunSummary",
    "Verification",
    "VerificationCache",
    "create_app",
    "read_round_points",
    "serve_dashboard",
]
