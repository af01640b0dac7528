"""``fedwarden keyholder``: the CKKS key holder of homomorphic aggregation, as its own process."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedwarden.cli.common import error_exit, raise_keyboard_interrupt
from fedwarden.cli.console import logging_console
from fedwarden.core.errors import FedwardenError

keyholder_app = typer.Typer(
    help="The CKKS key holder: the only party that can decrypt, and only verified sums.",
    no_args_is_help=True,
)


@keyholder_app.command("serve")
def keyholder_serve_command(
    state: Annotated[
        Path,
        typer.Option(
            help="Folder of the key holder's key and decrypted rounds (made on first use; "
            "public_context.bin in it is what clients need)."
        ),
    ],
    client: Annotated[
        list[Path],
        typer.Option(
            help="Certificate (tls.crt) of a client whose contributions count; repeat for each. "
            "Never the aggregation server's own.",
            exists=True,
            dir_okay=False,
        ),
    ],
    identity: Annotated[
        Path | None,
        typer.Option(help="Server startup kit (tls.crt, tls.key, ca.crt) from `pki issue`."),
    ] = None,
    aggregator: Annotated[
        str | None,
        typer.Option(
            help="Answer only the aggregation server whose certificate bears this name "
            "(required with --identity)."
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            help="CA certificate of the clients (default: the kit's ca.crt).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    min_updates: Annotated[
        int, typer.Option(help="Fewest distinct clients a decrypted sum must hold.")
    ] = 2,
    address: Annotated[str, typer.Option(help="Where the key holder listens (HOST:PORT).")] = (
        "0.0.0.0:8471"
    ),
    insecure: Annotated[
        bool, typer.Option(help="Serve without TLS (loopback addresses only).")
    ] = False,
) -> None:
    """Serve the key holder to the aggregation server over mutual TLS.

    It decrypts a round only when the listed clients' signed contributions add
    up to the sum it is sent, at least --min-updates distinct clients
    contributed, and the round was never decrypted before.
    """
    # Deferred so that grpc and TenSEAL do not slow `fedwarden --help`.
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.keyholder import KeyHolderServer
    from fedwarden.secure.he_keyholder import CkksKeyHolder, authorized_clients

    console = logging_console(level=logging.INFO, stderr=False)
    try:
        if (identity is None) != insecure:
            raise FedwardenError("give --identity SERVER_KIT, or --insecure (loopback only)")
        tls = None if identity is None else TlsKit.from_dir(identity)
        ca_file = ca if ca is not None else (None if identity is None else identity / "ca.crt")
        if ca_file is None:
            raise FedwardenError("give --ca: with --insecure no kit names the clients' CA")
        clients = authorized_clients([path.read_bytes() for path in client], ca_file.read_bytes())
        if aggregator is not None and aggregator in clients:
            raise FedwardenError(
                f"--client names the aggregation server {aggregator!r} as a contributor: it "
                "could then sign contributions of its own; list only the clients"
            )
        holder = CkksKeyHolder.open(state, min_updates=min_updates, clients=clients)
        server = KeyHolderServer(holder, address=address, tls=tls, aggregator=aggregator)
        port = server.serve()
    except FedwardenError as error:
        raise error_exit(error) from None
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    console.print(
        f"key holder {escape(holder.key_id[:12])} for {len(clients)} clients listening on "
        f"port {port}"
    )
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop(grace=1.0)
