"""The dashboard application: its routes over the run store, and serving it."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials

from fedwarden.core.errors import FedwardenError
from fedwarden.governance.audit import AuditLog
from fedwarden.governance.registry import ModelRegistry, RegistryError
from fedwarden.governance.store import RunStore
from fedwarden.monitor.dashboard.auth import BEARER, bearer_check, check_token
from fedwarden.monitor.dashboard.bodies import (
    AuditView,
    ErrorBody,
    HealthStatus,
    ModelView,
    PromoteRequest,
    RegistryView,
    RollbackRequest,
    RunClients,
    RunRounds,
    RunSummary,
)
from fedwarden.monitor.dashboard.views import (
    DashboardError,
    VerificationCache,
    audit_view,
    client_statuses,
    model_view,
    one_run,
    read_round_points,
    read_runs,
)

logger = logging.getLogger(__name__)


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
    check_token(token)
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

    require_token = bearer_check(token)

    def require_change_allowed(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
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
        return HealthStatus(status="ok", runs=store.run_count())

    @app.get("/api/runs", tags=["runs"], dependencies=[Depends(require_token)], responses=_DENIED)
    def list_runs() -> list[RunSummary]:
        """Every run of the store, newest first."""
        return read_runs(store)

    @app.get(
        "/api/runs/{run_id}/rounds",
        tags=["runs"],
        dependencies=[Depends(require_token)],
        responses={**_DENIED, 404: {"model": ErrorBody, "description": "No such run."}},
    )
    def run_rounds(run_id: str) -> RunRounds:
        """The run's completed rounds: accuracy, loss, epsilon against budget, traffic."""
        run = one_run(store, run_id)
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
        one_run(store, run_id)
        try:
            points = read_round_points(store, run_id)
        except DashboardError as error:
            logger.warning("run %s: %s", run_id, error)
            points = []
        return RunClients(run_id=run_id, clients=client_statuses(store, run_id, points))

    @app.get("/api/audit", tags=["audit"], dependencies=[Depends(require_token)], responses=_DENIED)
    def audit_log(
        limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_ENTRIES)] = DEFAULT_AUDIT_ENTRIES,
    ) -> AuditView:
        """The latest ``limit`` audit entries, newest first, and whether the log verifies."""
        return audit_view(store, verified, limit)

    @app.get(
        "/api/models", tags=["registry"], dependencies=[Depends(require_token)], responses=_DENIED
    )
    def list_models() -> RegistryView:
        """Every registered version with its stage, and whether stages may be changed here."""
        return RegistryView(
            can_change=audit is not None,
            cannot_change_because="" if audit is not None else _READ_ONLY,
            models=[model_view(version) for version in registry.list()],
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
        return model_view(promoted)

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
        return model_view(restored)

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
