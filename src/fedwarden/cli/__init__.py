"""The ``fedwarden`` command. The only package that writes to the console.

One module per command group: ``new`` (a starter project), ``run`` (run, query), ``pki``,
``audit``, ``models``, ``federation`` (server, client), ``services`` (dashboard, serve),
``vertical`` and ``keyholder``;
``console`` is what a run shows, ``common`` what the groups share.

Every command is registered when this package is imported, ``fedwarden --help`` included, so
what would slow that start-up is imported inside the commands that use it, each with its
reason: SQLAlchemy, grpc, the optional packages (PyTorch, FastAPI) and a few slower modules.
"""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

import typer
from rich.console import Console

from fedwarden.cli.audit import audit_app
from fedwarden.cli.federation import client_command, server_command
from fedwarden.cli.keyholder import keyholder_app
from fedwarden.cli.models import models_app
from fedwarden.cli.new import new_command
from fedwarden.cli.pki import pki_app
from fedwarden.cli.run import query_command, run_command
from fedwarden.cli.services import dashboard_command, serve_command
from fedwarden.cli.vertical import vertical_app

__all__ = ["app", "main"]

app = typer.Typer(
    help="fedwarden: privacy-preserving federated learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        Console().print(f"fedwarden {metadata.version('fedwarden')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """fedwarden: privacy-preserving federated learning."""


app.command("new")(new_command)
app.command("run")(run_command)
app.command("query")(query_command)
app.add_typer(pki_app, name="pki")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.command("server")(server_command)
app.command("client")(client_command)
app.command("dashboard")(dashboard_command)
app.command("serve")(serve_command)
app.add_typer(vertical_app, name="vertical")
app.add_typer(keyholder_app, name="keyholder")
