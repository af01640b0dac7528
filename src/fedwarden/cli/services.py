"""Long-running services over a run store: ``fedwarden dashboard`` and ``fedwarden serve``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fedwarden.cli.common import error_exit
from fedwarden.cli.console import logging_console
from fedwarden.core.errors import FedwardenError


def dashboard_command(
    store: Annotated[str, typer.Argument(help="SQLAlchemy URL of the run store.")],
    token: Annotated[
        str,
        typer.Option(
            envvar="FEDWARDEN_DASHBOARD_TOKEN",
            help="Bearer token that every API request (reads, promote, rollback) must carry "
            "(16 characters or more); the page asks for it.",
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
    public_key: Annotated[
        Path | None, typer.Option(help="Audit public key (audit.pub) to verify the log with.")
    ] = None,
    audit_key: Annotated[
        Path | None,
        typer.Option(help="Audit signing key (audit.key): needed for registry changes."),
    ] = None,
    refresh_seconds: Annotated[float, typer.Option(help="How often the page refreshes.")] = 10.0,
) -> None:
    """Serve the monitoring dashboard: runs, rounds, clients, the audit log, the registry."""
    # Deferred: FastAPI is optional (the serve extra), and SQLAlchemy would slow
    # `fedwarden --help`.
    from fedwarden.governance.audit import load_public_key, load_signing_key
    from fedwarden.monitor.dashboard import serve_dashboard

    logging_console(level=logging.INFO)
    try:
        serve_dashboard(
            store,
            host=host,
            port=port,
            token=token,
            audit_public_key=None if public_key is None else load_public_key(public_key),
            audit_signing_key=None if audit_key is None else load_signing_key(audit_key),
            refresh_seconds=refresh_seconds,
        )
    except FedwardenError as error:
        raise error_exit(error) from None


def serve_command(
    reference: Annotated[
        str, typer.Argument(help="The model to serve: MODEL@production or MODEL@X.Y.Z.")
    ],
    store: Annotated[str, typer.Option(help="SQLAlchemy URL of the run store (the registry).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    shadow: Annotated[
        str | None, typer.Option(help="A candidate (MODEL@X.Y.Z) that sees shadow traffic.")
    ] = None,
    shadow_share: Annotated[
        float, typer.Option(help="Share of requests also sent to the shadow (0 to 1).")
    ] = 0.0,
    drift_reference: Annotated[
        Path | None,
        typer.Option(help="Reference histograms (JSON) to watch the served inputs' drift against."),
    ] = None,
    audit_key: Annotated[
        Path | None,
        typer.Option(
            help="Audit signing key that records drift alerts in the audit log: a key from "
            "`fedwarden audit delegate --kind alert_raised` (with --root-public-key), so that "
            "whoever takes over the service can forge alert entries only. The root audit.key "
            "also works but lets them sign any audit entry."
        ),
    ] = None,
    root_public_key: Annotated[
        Path | None,
        typer.Option(
            help="The audit log's root public key (the server kit's audit.pub): the served "
            "weights must match their audited registration, and --audit-key may be a "
            "delegated key."
        ),
    ] = None,
    webhook: Annotated[
        str | None, typer.Option(help="URL that each drift alert is POSTed to as JSON.")
    ] = None,
) -> None:
    """Serve a registered model: POST /predict, GET /health, /metrics, /shadow (FastAPI)."""
    # Deferred: FastAPI is optional (the serve extra), and SQLAlchemy would slow
    # `fedwarden --help`.
    from fedwarden.serve.app import serve_model

    logging_console(level=logging.INFO)
    try:
        serve_model(
            store,
            reference,
            host,
            port,
            shadow,
            shadow_share,
            drift_reference,
            audit_key=audit_key,
            root_public_key=root_public_key,
            webhook_url=webhook,
        )
    except FedwardenError as error:
        raise error_exit(error) from None
