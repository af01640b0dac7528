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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from fedwarden.core.errors import FedwardenError
from fedwarden.governance.audit import (
    AuditEntry,
    AuditLog,
    VerificationResult,
    canonical_json,
    read_entries,
    verify,
)
from fedwarden.governance.registry import (
    DEFAULT_THRESHOLD,
    ModelRegistry,
    ModelVersion,
    RegistryError,
)
from fedwarden.governance.store import (
    RunStore,
    accepted_updates,
    rejections,
    rounds,
    runs,
)

logger = logging.getLogger(__name__)

MIN_TOKEN_CHARACTERS = 16
DEFAULT_AUDIT_ENTRIES = 100
MAX_AUDIT_ENTRIES = 1000
_STATIC = resources.files("fedwarden.monitor") / "static"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_READ_ONLY = (
    "registry changes need the audit signing key, since every change is audited; restart "
    "the dashboard with the audit key (--audit-key FILE)"
)


class DashboardError(FedwardenError):
    """The dashboard cannot be started, or cannot read a run, as configured."""


# Response and request bodies.


class _Body(BaseModel):
    """A JSON body of the API: immutable, and unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorBody(_Body):
    """Why a request was refused."""

    detail: str


class HealthStatus(_Body):
    """The dashboard is up and its store answers."""

    status: Literal["ok"]
    runs: int


class RunSummary(_Body):
    """One run of the store: its name, status, run directory and privacy budget."""

    run_id: str
    name: str
    status: str
    message: str
    run_dir: str
    created_at: datetime
    finished_at: datetime | None
    budget_epsilon: float | None = Field(description="The run's epsilon budget; None without DP.")
    budget_delta: float | None


class RoundPoint(_Body):
    """The figures of one completed round, as the run store's round record holds them."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    round_index: int
    accuracy: float | None = None
    loss: float | None = None
    epsilon: Annotated[
        float | None, Field(description="Cumulative epsilon spent after the round.")
    ] = None
    epsilon_projected: float | None = None
    sampled: int = 0
    participants: int = 0
    dropped: int = 0
    failed: int = 0
    rejected: int = 0
    rejection_reasons: dict[str, int] = Field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0
    applied: bool = True
    flagged: list[str] = Field(default_factory=list)
    quarantined: list[str] = Field(default_factory=list)
    note: str = ""


class RunRounds(_Body):
    """A run's rounds so far, with the budget its epsilon is spent against."""

    run_id: str
    budget_epsilon: float | None
    budget_delta: float | None
    rounds: list[RoundPoint]
    problem: Annotated[
        str | None, Field(description="Why the rounds could not be read (then none are listed).")
    ] = None


class ClientRejection(_Body):
    """One update of a client that the server refused."""

    round_index: int | None
    reason: str
    message: str
    rejected_at: datetime


class ClientStatus(_Body):
    """What one client did in a run: sampled, accepted, refused, flagged, quarantined."""

    client_id: str
    enrolled: bool
    sampled_rounds: list[int]
    accepted_updates: int
    rejections: list[ClientRejection]
    flagged_rounds: list[int]
    quarantined: bool


class RunClients(_Body):
    """The clients of one run."""

    run_id: str
    clients: list[ClientStatus]


class Verification(_Body):
    """Whether the whole audit log verified with its public key."""

    checked: bool = Field(description="False when the dashboard was given no public key.")
    ok: bool | None
    entries: int
    first_bad: int | None
    problem: str
    last_hash: str | None


class AuditEntryView(_Body):
    """One audit entry; ``payload`` is the canonical JSON of its event."""

    sequence: int
    timestamp: str
    kind: str
    payload: str
    entry_hash: str


class AuditView(_Body):
    """The latest audit entries (newest first) and the verification of the whole log."""

    verification: Verification
    total_entries: int
    entries: list[AuditEntryView]


class ModelView(_Body):
    """One registered model version and its stage."""

    reference: str
    model: str
    version: str
    run_id: str
    parent: str | None
    stage: str
    rounds: int
    participants: int
    metrics: dict[str, Any]
    recorded_accuracy: float | None
    pilot_accuracy: float | None
    rolled_back: bool
    weights_deleted: bool
    registered_at: datetime
    promoted_at: datetime | None


class RegistryView(_Body):
    """Every registered version, and whether this dashboard may change stages."""

    can_change: bool
    cannot_change_because: str
    models: list[ModelView]


class PromoteRequest(_Body):
    """Promote a candidate: who decides, its pilot accuracy, or an override with a reason."""

    by: Annotated[str, Field(min_length=1, max_length=200)]
    pilot_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = DEFAULT_THRESHOLD
    override: bool = False
    reason: Annotated[str, Field(max_length=2000)] = ""


class RollbackRequest(_Body):
    """Roll back the production version of ``model`` (optional when only one model serves)."""

    by: Annotated[str, Field(min_length=1, max_length=200)]
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None


# Reading the store and run directories.


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


def _read_runs(store: RunStore, run_id: str | None = None) -> list[RunSummary]:
    """Every run of the store (or only ``run_id``), newest first."""
    query = select(
        runs.c.run_id,
        runs.c.name,
        runs.c.status,
        runs.c.message,
        runs.c.run_dir,
        runs.c.created_at,
        runs.c.finished_at,
        runs.c.config_json,
    ).order_by(runs.c.created_at.desc(), runs.c.run_id)
    if run_id is not None:
        query = query.where(runs.c.run_id == run_id)
    with store.reading() as connection:
        rows = connection.execute(query).all()
    summaries = []
    for row in rows:
        budget_epsilon, budget_delta = _budget(row.config_json)
        summaries.append(
            RunSummary(
                run_id=row.run_id,
                name=row.name,
                status=row.status,
                message=row.message,
                run_dir=row.run_dir,
                created_at=row.created_at,
                finished_at=row.finished_at,
                budget_epsilon=budget_epsilon,
                budget_delta=budget_delta,
            )
        )
    return summaries


def _one_run(store: RunStore, run_id: str) -> RunSummary:
    """The run ``run_id``, or a 404 naming it."""
    found = _read_runs(store, run_id)
    if not found:
        raise HTTPException(
            404, f"there is no run {run_id!r} in the store; GET /api/runs lists them"
        )
    return found[0]


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


def _client_statuses(store: RunStore, run_id: str, points: list[RoundPoint]) -> list[ClientStatus]:
    """Each client the run sampled, heard from, refused or flagged, and each enrolled client."""
    with store.reading() as connection:
        cohorts = connection.execute(
            select(rounds.c.round_index, rounds.c.cohort_json)
            .where(rounds.c.run_id == run_id)
            .order_by(rounds.c.round_index)
        ).all()
        uploads = connection.execute(
            select(accepted_updates.c.client_id, accepted_updates.c.round_index).where(
                accepted_updates.c.run_id == run_id
            )
        ).all()
        refused = connection.execute(
            select(
                rejections.c.client_id,
                rejections.c.round_index,
                rejections.c.reason,
                rejections.c.message,
                rejections.c.rejected_at,
            )
            .where(rejections.c.run_id == run_id)
            .order_by(rejections.c.rejection_id)
        ).all()
    enrolled = {client.client_id for client in store.enrolled_clients()}
    sampled: dict[str, list[int]] = {}
    for round_index, cohort_json in cohorts:
        for client_id in json.loads(cohort_json):
            sampled.setdefault(str(client_id), []).append(round_index)
    refusals: dict[str, list[ClientRejection]] = {}
    for row in refused:
        refusals.setdefault(row.client_id, []).append(
            ClientRejection(
                round_index=row.round_index,
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
            flagged.setdefault(client_id, []).append(point.round_index)
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


def _audit_view(store: RunStore, verified: VerificationCache, limit: int) -> AuditView:
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


def _model_view(version: ModelVersion) -> ModelView:
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


# The application.


_BEARER = HTTPBearer(auto_error=False, description="The dashboard token.")
_DENIED: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Missing or wrong bearer token."}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not valid JSON."},
    403: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    409: {
        "model": ErrorBody,
        "description": "The registry refused the change, or cannot audit it.",
    },
}


def create_app(
    store_url: str,
    *,
    token: str,
    audit_public_key: Ed25519PublicKey | None = None,
    audit_signing_key: Ed25519PrivateKey | None = None,
    refresh_seconds: float = 10.0,
) -> FastAPI:
    """The dashboard application over the run store at ``store_url``.

    ``token`` authorises registry changes (``Authorization: Bearer <token>``); it must have
    at least 16 characters. ``audit_public_key`` verifies the audit log (the signing key's own
    public key when only ``audit_signing_key`` is given); without ``audit_signing_key`` the
    registry is read-only, since every change is written to the audit log. The page reloads
    its data every ``refresh_seconds`` (0: never).
    """
    if len(token) < MIN_TOKEN_CHARACTERS:
        raise DashboardError(
            f"the dashboard token has {len(token)} characters; give at least "
            f"{MIN_TOKEN_CHARACTERS}, e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe())'`"
        )
    if not (math.isfinite(refresh_seconds) and refresh_seconds >= 0):
        raise DashboardError(f"refresh_seconds {refresh_seconds} must be a finite number >= 0")
    store = RunStore.existing(store_url)
    try:
        audit = None if audit_signing_key is None else AuditLog(store, audit_signing_key)
    except FedwardenError:
        store.close()
        raise
    registry = ModelRegistry(store, audit)
    public_key = audit_public_key
    if public_key is None and audit_signing_key is not None:
        public_key = audit_signing_key.public_key()
    page = (
        (_STATIC / "dashboard.html")
        .read_text(encoding="utf-8")
        .replace("{{refresh_seconds}}", f"{refresh_seconds:g}")
    )
    script = (_STATIC / "dashboard.js").read_text(encoding="utf-8")
    style = (_STATIC / "dashboard.css").read_text(encoding="utf-8")

    def require_token(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        """Refuse a request without the bearer token (403): reads show client ids and payloads."""
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), token.encode()
        ):
            raise HTTPException(
                403, "the dashboard's data needs its token: Authorization: Bearer <token>"
            )

    def require_change_allowed(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        """Refuse a registry change without the token (403) or the audit signing key (409)."""
        require_token(credentials)
        if audit is None:
            raise HTTPException(409, _READ_ONLY)

    verified = VerificationCache(public_key)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """Close the store when the server stops."""
        yield
        store.close()

    app = FastAPI(
        title="fedwarden dashboard",
        summary="Runs, rounds, clients, the audit log and the model registry of a run store.",
        version="1",
        lifespan=lifespan,
    )

    app.state.verification = verified

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Forbid every external asset, framing and content sniffing on every response."""
        response = await call_next(request)
        response.headers.update(_SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        """The dashboard page; its script fills it from the JSON API."""
        return HTMLResponse(page)

    @app.get("/static/dashboard.js", include_in_schema=False)
    def dashboard_script() -> Response:
        """The page's script: fetches the API and draws the charts as SVG."""
        return Response(script, media_type="text/javascript")

    @app.get("/static/dashboard.css", include_in_schema=False)
    def dashboard_style() -> Response:
        """The page's style sheet."""
        return Response(style, media_type="text/css")

    @app.get("/healthz", tags=["health"])
    def health() -> HealthStatus:
        """Whether the dashboard is up and its store answers."""
        with store.reading() as connection:
            count = connection.execute(select(func.count()).select_from(runs)).scalar_one()
        return HealthStatus(status="ok", runs=count)

    @app.get("/api/runs", tags=["runs"], dependencies=[Depends(require_token)], responses=_DENIED)
    def list_runs() -> list[RunSummary]:
        """Every run of the store, newest first."""
        return _read_runs(store)

    @app.get(
        "/api/runs/{run_id}/rounds",
        tags=["runs"],
        dependencies=[Depends(require_token)],
        responses={**_DENIED, 404: {"model": ErrorBody, "description": "No such run."}},
    )
    def run_rounds(run_id: str) -> RunRounds:
        """The run's completed rounds: accuracy, loss, epsilon against budget, traffic."""
        run = _one_run(store, run_id)
        try:
            points = read_round_points(store, run_id)
        except DashboardError as error:
            logger.warning("run %s: %s", run_id, error)
            return RunRounds(
                run_id=run_id,
                budget_epsilon=run.budget_epsilon,
                budget_delta=run.budget_delta,
                rounds=[],
                problem=str(error),
            )
        return RunRounds(
            run_id=run_id,
            budget_epsilon=run.budget_epsilon,
            budget_delta=run.budget_delta,
            rounds=points,
        )

    @app.get(
        "/api/runs/{run_id}/clients",
        tags=["runs"],
        dependencies=[Depends(require_token)],
        responses={**_DENIED, 404: {"model": ErrorBody, "description": "No such run."}},
    )
    def run_clients(run_id: str) -> RunClients:
        """Each client of the run with its cohorts, accepted updates, refusals and flags."""
        _one_run(store, run_id)
        try:
            points = read_round_points(store, run_id)
        except DashboardError as error:
            logger.warning("run %s: %s", run_id, error)
            points = []
        return RunClients(run_id=run_id, clients=_client_statuses(store, run_id, points))

    @app.get("/api/audit", tags=["audit"], dependencies=[Depends(require_token)], responses=_DENIED)
    def audit_log(
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_ENTRIES)] = DEFAULT_AUDIT_ENTRIES,
    ) -> AuditView:
        """The latest ``limit`` audit entries, newest first, and whether the log verifies."""
        return _audit_view(store, verified, limit)

    @app.get(
        "/api/models", tags=["registry"], dependencies=[Depends(require_token)], responses=_DENIED
    )
    def list_models() -> RegistryView:
        """Every registered version with its stage, and whether stages may be changed here."""
        return RegistryView(
            can_change=audit is not None,
            cannot_change_because="" if audit is not None else _READ_ONLY,
            models=[_model_view(version) for version in registry.list()],
        )

    @app.post(
        "/api/models/{reference}/promote",
        tags=["registry"],
        dependencies=[Depends(require_change_allowed)],
        responses=_ERRORS,
    )
    def promote(reference: str, request: PromoteRequest) -> ModelView:
        """Move the candidate ``reference`` (``MODEL@X.Y.Z``) into production."""
        try:
            promoted = registry.promote(
                reference,
                request.by,
                pilot_accuracy=request.pilot_accuracy,
                threshold=request.threshold,
                override=request.override,
                reason=request.reason,
            )
        except RegistryError as error:
            raise HTTPException(409, str(error)) from None
        return _model_view(promoted)

    @app.post(
        "/api/models/rollback",
        tags=["registry"],
        dependencies=[Depends(require_change_allowed)],
        responses=_ERRORS,
    )
    def rollback(request: RollbackRequest) -> ModelView:
        """Withdraw the production version and restore the one that served before it."""
        try:
            restored = registry.rollback(request.by, request.model)
        except RegistryError as error:
            raise HTTPException(409, str(error)) from None
        return _model_view(restored)

    return app


def serve_dashboard(
    store_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8050,
    token: str,
    audit_public_key: Ed25519PublicKey | None = None,
    audit_signing_key: Ed25519PrivateKey | None = None,
    refresh_seconds: float = 10.0,
) -> None:
    """Serve the dashboard of the run store at ``store_url`` on ``host:port`` until stopped."""
    import uvicorn

    app = create_app(
        store_url,
        token=token,
        audit_public_key=audit_public_key,
        audit_signing_key=audit_signing_key,
        refresh_seconds=refresh_seconds,
    )
    logger.info("dashboard of %s on http://%s:%d/", store_url, host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
