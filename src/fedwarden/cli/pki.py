"""``fedwarden pki``: a deployment CA, and the TLS certificates and keys it signs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.cli.common import error_exit
from fedwarden.core.errors import FedwardenError
from fedwarden.deploy.pki import init_ca, issue
from fedwarden.deploy.revocation import revoke

pki_app = typer.Typer(
    help="Provisioning: a CA, and TLS certificates and identity keys signed by it.",
    no_args_is_help=True,
)


@pki_app.command("init")
def pki_init_command(
    directory: Annotated[Path, typer.Argument(help="Directory for ca.crt and ca.key.")],
    name: Annotated[str, typer.Option(help="Deployment name in the CA's subject.")] = "deployment",
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Create a deployment CA (ECDSA P-256, 10 years); the private key is never printed."""
    try:
        paths = init_ca(directory, name, force=force)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    console.print(f"CA certificate: {escape(str(paths.certificate))}")
    console.print(f"CA key (keep secret, mode 0600): {escape(str(paths.key))}")


@pki_app.command("issue")
def pki_issue_command(
    kind: Annotated[str, typer.Argument(help="server or client.")],
    name: Annotated[str, typer.Argument(help="Server or client name (the certificate's CN).")],
    directory: Annotated[Path, typer.Option("--dir", help="Directory holding the CA.")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="DNS name or IP of a server (repeatable; default localhost, loopback)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing kit of this name.")] = False,
) -> None:
    """Issue a server or client TLS certificate (1 year); clients also get an Ed25519 identity."""
    try:
        if kind not in ("server", "client"):
            raise FedwardenError(f"kind {kind!r}: use server or client")
        if host and kind == "client":
            raise FedwardenError("--host applies to server certificates only")
        paths = issue(
            directory,
            "server" if kind == "server" else "client",
            name,
            hosts=tuple(host or ()),
            force=force,
        )
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    console.print(f"{kind} kit: {escape(str(paths.directory))}")
    for label, path in (
        ("certificate", paths.certificate),
        ("TLS key (keep secret, mode 0600)", paths.key),
        ("CA certificate", paths.ca_certificate),
        ("identity key (keep secret, mode 0600)", paths.identity_key),
        ("identity public key", paths.identity_public),
        ("audit signing key (keep secret, mode 0600)", paths.audit_key),
        ("audit public key (verifies the audit log)", paths.audit_public),
    ):
        if path is not None:
            console.print(f"  {label}: {escape(str(path))}")


@pki_app.command("revoke")
def pki_revoke_command(
    name: Annotated[str, typer.Argument(help="The client whose certificate is revoked.")],
    directory: Annotated[Path, typer.Option("--dir", help="Directory holding the CA.")],
) -> None:
    """Revoke a client's certificate: its serial joins the CA-signed revocation list.

    The list (revoked.pem) is written to DIR and to every server kit in DIR;
    a running server reads it again at once. Copy it to servers kept elsewhere.
    """
    try:
        written = revoke(directory, name)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    console.print(f"revoked client {escape(name)}'s certificate; revocation list written to:")
    for path in written:
        console.print(f"  {escape(str(path))}")
