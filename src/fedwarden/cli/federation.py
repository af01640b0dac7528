"""The processes of a gRPC federation: ``fedwarden server`` and ``fedwarden client``."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from fedwarden.build.deployment import Deployment
from fedwarden.build.run import serve
from fedwarden.cli.common import (
    BudgetChangedBy,
    budget_change,
    error_exit,
    raise_keyboard_interrupt,
)
from fedwarden.cli.console import ConsoleObserver, logging_console, summary_lines
from fedwarden.core.config import load_config
from fedwarden.core.errors import FedwardenError
from fedwarden.deploy.revocation import REVOCATION_LIST
from fedwarden.secure.secagg.policy import SecAggPolicy


def server_command(
    config: Annotated[Path, typer.Argument(help="Run config (TOML).")],
    address: Annotated[
        str, typer.Option(help="Where the federation service listens (HOST:PORT).")
    ] = "0.0.0.0:8443",
    identity: Annotated[
        Path | None,
        typer.Option(help="Server startup kit (tls.crt, tls.key, ca.crt) from `pki issue`."),
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL of the run store (default: RUNS_DIR/fedwarden.db)."),
    ] = None,
    health_address: Annotated[
        str, typer.Option(help="Where GET /healthz is served (plain HTTP).")
    ] = "0.0.0.0:8080",
    insecure: Annotated[
        bool, typer.Option(help="Serve without TLS (loopback addresses only).")
    ] = False,
    budget_epsilon: Annotated[
        float | None,
        typer.Option(help="Change the unfinished run's privacy budget to this epsilon."),
    ] = None,
    budget_changed_by: BudgetChangedBy = None,
) -> None:
    """Serve a federated run to `fedwarden client` processes over gRPC with mutual TLS.

    Started again after a crash with the same config and store, it continues
    the unfinished run from its last completed round; with --budget-epsilon and
    --budget-changed-by (and that epsilon in CONFIG) it changes its budget first.
    """
    # Deferred so that grpc, SQLAlchemy and http.server (health) do not slow `fedwarden --help`.
    from fedwarden.governance.audit import load_signing_key
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.health import serve_health

    console = logging_console(stderr=True)
    try:
        if (identity is None) != insecure:
            raise FedwardenError("give --identity SERVER_KIT, or --insecure (loopback only)")
        change = budget_change(budget_epsilon, budget_changed_by)
        loaded = load_config(config)
        settings = loaded.model_copy(
            update={"runtime": loaded.runtime.model_copy(update={"kind": "grpc"})}
        )
        audit_key = None
        audit_public_key = None
        if identity is not None and (identity / "audit.key").exists():
            audit_key = load_signing_key(identity / "audit.key")
            audit_public_key = identity / "audit.pub"
        deployment = Deployment(
            address,
            None if identity is None else TlsKit.from_dir(identity),
            store,
            audit_key=audit_key,
            audit_public_key=audit_public_key,
            revocation_list=None if identity is None else identity / REVOCATION_LIST,
        )
        health = serve_health(
            health_address, deployment.listening.is_set, deployment.metrics.exposition
        )
        signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        with ConsoleObserver(console, settings.rounds, 0) as observer:
            result = serve(settings, deployment, observer=observer, budget_change=change)
        health.shutdown()
    except FedwardenError as error:
        raise error_exit(error) from None
    except KeyboardInterrupt:
        console.print("server stopped; start it again to continue the run")
        raise typer.Exit(130) from None
    for line in summary_lines(result):
        console.print(line)


def client_command(
    server: Annotated[str, typer.Option(help="The server's HOST:PORT.")],
    data: Annotated[
        Path,
        typer.Option(
            help="This site's data: an .npz with x and y, a .csv or .parquet table "
            "(data.target names the label), an image folder (one subfolder per class) or a "
            "Hugging Face save_to_disk folder."
        ),
    ],
    identity: Annotated[
        Path, typer.Option(help="Client startup kit (tls.crt, tls.key, ca.crt, identity.key).")
    ],
    state_dir: Annotated[
        Path | None, typer.Option(help="Where per-round client state persists.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Plaintext channel (a loopback --insecure server only).")
    ] = False,
    allow_test_mode_noise: Annotated[
        bool,
        typer.Option(
            help="Accept a run config with privacy.reproducible_noise (seeded noise and "
            "sampling the server can recompute). Test federations only."
        ),
    ] = False,
    secagg_min_cohort: Annotated[
        int, typer.Option(help="Refuse secure-aggregation rounds with fewer clients.")
    ] = 3,
    secagg_corrupted_clients: Annotated[
        int,
        typer.Option(
            help="Clients that may collude with the server: refuse rounds whose threshold "
            "does not exceed (k + 1 + this) / 2."
        ),
    ] = 0,
    he_public_context: Annotated[
        Path | None,
        typer.Option(
            help="The CKKS key holder's public_context.bin, from the key holder itself (needed "
            "when the run uses secure.kind 'he').",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Join a fedwarden server and train on this site's data until the run ends."""
    # Deferred so that grpc and SQLAlchemy do not slow `fedwarden --help`.
    from fedwarden.build.client import build_client
    from fedwarden.runtime.grpc.client import FederationClient
    from fedwarden.runtime.grpc.credentials import ClientKit

    logging_console(level=logging.INFO)
    try:
        policy = SecAggPolicy(
            min_cohort_size=secagg_min_cohort, corrupted_clients=secagg_corrupted_clients
        )
        client = FederationClient(
            server,
            ClientKit.from_dir(identity),
            data,
            build_client,
            insecure=insecure,
            state_dir=state_dir,
            allow_test_mode_noise=allow_test_mode_noise,
            secagg_policy=policy,
            he_public_context=None if he_public_context is None else he_public_context.read_bytes(),
        )
        signal.signal(signal.SIGTERM, lambda *_: client.shutdown())
        client.run()
    except FedwardenError as error:
        raise error_exit(error) from None
