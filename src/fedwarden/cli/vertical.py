"""``fedwarden vertical``: vertical federated learning over gRPC (feature and label parties)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fedwarden.cli.common import error_exit, raise_keyboard_interrupt
from fedwarden.cli.console import logging_console
from fedwarden.core.errors import FedwardenError
from fedwarden.privacy.ledger import PrivacyBudget

if TYPE_CHECKING:
    from fedwarden.runtime.grpc.credentials import TlsKit

vertical_app = typer.Typer(
    help="Vertical federated learning over gRPC: serve a feature party, or drive training.",
    no_args_is_help=True,
)


@vertical_app.command("party")
def vertical_party_command(
    data: Annotated[Path, typer.Option(help="This party's table: an .npz with ids and features.")],
    identity: Annotated[
        Path | None,
        typer.Option(help="Server startup kit (tls.crt, tls.key, ca.crt) from `pki issue`."),
    ] = None,
    address: Annotated[str, typer.Option(help="Where the party listens (HOST:PORT).")] = (
        "0.0.0.0:8470"
    ),
    insecure: Annotated[
        bool, typer.Option(help="Serve without TLS (loopback addresses only).")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="The party's name (default: its certificate's name).")
    ] = None,
    driver: Annotated[
        str | None,
        typer.Option(
            help="Answer only the label party whose certificate bears this name (required "
            "with --identity)."
        ),
    ] = None,
    clip_norm: Annotated[
        float | None, typer.Option(help="DP release: clip each activation row to this L2 norm.")
    ] = None,
    noise_multiplier: Annotated[
        float | None, typer.Option(help="DP release: Gaussian noise std over the clip norm.")
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(help="DP release: this party's own epsilon budget per row (required)."),
    ] = None,
    delta: Annotated[
        float | None, typer.Option(help="DP release: the delta of that budget (required).")
    ] = None,
    bottom_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of this party's bottom model (default: a secret one; the label party's "
            "proposed seed is never used)."
        ),
    ] = None,
) -> None:
    """Serve a feature party (its columns and bottom model) to the label party over gRPC.

    With a DP release the party enforces its own (--epsilon, --delta) budget on
    every row it releases, whatever the label party asks for.
    """
    # Deferred: the vertical models need PyTorch, an optional package.
    from fedwarden.vertical.release import GaussianRelease
    from fedwarden.vertical.remote import FeaturePartyServer, load_party_table

    console = logging_console(level=logging.INFO, stderr=False)
    try:
        tls, party_name = _vertical_identity(identity, insecure, name, "SERVER_KIT")
        release_options = (clip_norm, noise_multiplier, epsilon, delta)
        if any(option is None for option in release_options) and any(
            option is not None for option in release_options
        ):
            raise FedwardenError(
                "a DP release needs --clip-norm, --noise-multiplier, --epsilon and --delta (the "
                "party's own budget); give all four or none"
            )
        table = load_party_table(data)
        release, budget = None, None
        if clip_norm is not None and noise_multiplier is not None:
            release = GaussianRelease(clip_norm=clip_norm, noise_multiplier=noise_multiplier)
        if epsilon is not None and delta is not None:
            budget = PrivacyBudget(epsilon, delta)
        server = FeaturePartyServer(
            party_name,
            table.identifiers,
            table.features,
            address=address,
            tls=tls,
            driver=driver,
            release=release,
            budget=budget,
            bottom_seed=bottom_seed,
        )
        port = server.serve()
    except FedwardenError as error:
        raise error_exit(error) from None
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    console.print(f"feature party {escape(party_name)} listening on port {port}")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop(grace=1.0)


@vertical_app.command("train")
def vertical_train_command(
    data: Annotated[
        Path, typer.Option(help="The label party's table: an .npz with ids, features, labels.")
    ],
    party: Annotated[
        list[str], typer.Option(help="A feature party's HOST:PORT (repeatable, in model order).")
    ],
    identity: Annotated[
        Path | None,
        typer.Option(help="Client startup kit (tls.crt, tls.key, ca.crt) from `pki issue`."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Plaintext channels (loopback --insecure parties only).")
    ] = False,
    name: Annotated[
        str | None, typer.Option(help="The label party's name (default: its certificate's name).")
    ] = None,
    architecture: Annotated[
        str, typer.Option(help="mlp (split neural network) or logistic (vertical LR).")
    ] = "mlp",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam's learning rate.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Public seed of the batch order.")] = 0,
    test_share: Annotated[float, typer.Option(help="Share of aligned rows held out.")] = 0.3,
    epsilon: Annotated[
        float | None,
        typer.Option(help="Epsilon each DP-releasing party may spend (required with DP)."),
    ] = None,
    delta: Annotated[float, typer.Option(help="The delta of every epsilon.")] = 1e-5,
    label_epsilon: Annotated[
        float,
        typer.Option(
            help="Label DP epsilon: the labels are randomized (randomized response) before "
            "training, so the cut gradients do not give them to the feature parties."
        ),
    ] = 2.0,
    no_label_dp: Annotated[
        bool,
        typer.Option(
            "--no-label-dp",
            help="Turn label DP off: every feature party can then read the training labels "
            "from the gradients (logged as a warning and reported).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for one call; PSI over about 700,000 ids needs more than "
            "the default."
        ),
    ] = 120.0,
) -> None:
    """Align with the feature parties by PSI, train split learning as the label party, test it.

    Parties that release under DP are charged to a ledger with the budget
    (--epsilon, --delta); training that would exceed it is refused before it starts.
    The labels are protected by label DP (--label-epsilon) unless --no-label-dp.
    """
    # Deferred: the vertical models need PyTorch, an optional package.
    from fedwarden.vertical.remote import (
        RemoteFeatureParty,
        load_party_table,
        train_label_party,
    )
    from fedwarden.vertical.split import TrainingPlan

    console = logging_console(stderr=False)
    try:
        tls, label_name = _vertical_identity(identity, insecure, name, "CLIENT_KIT")
        if architecture not in ("mlp", "logistic"):
            raise FedwardenError(f"--architecture {architecture!r}: use mlp or logistic")
        table = load_party_table(data)
        plan = TrainingPlan(
            epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed
        )
        budget = None if epsilon is None else PrivacyBudget(epsilon, delta)
        parties = [RemoteFeatureParty.connect(address, tls, timeout_s=timeout) for address in party]
        try:
            result = train_label_party(
                label_name,
                table,
                parties,
                kind="mlp" if architecture == "mlp" else "logistic",
                plan=plan,
                test_share=test_share,
                budget=budget,
                label_epsilon=None if no_label_dp else label_epsilon,
            )
        finally:
            for remote in parties:
                remote.close()
    except FedwardenError as error:
        raise error_exit(error) from None
    console.print(f"aligned entities: {result.aligned_rows}")
    console.print(f"final training loss: {result.losses[-1]:.4f}")
    console.print(f"test accuracy: {result.accuracy:.4f}")
    for party_name, spent in result.epsilon.items():
        console.print(
            f"epsilon charged to {escape(party_name)}: {spent:.4f} (delta {result.delta:g})"
        )
    if result.label_epsilon is None:
        console.print(
            "label DP: OFF (--no-label-dp): the feature parties could read the training labels"
        )
    else:
        console.print(
            f"label DP epsilon charged to {escape(label_name)}: {result.label_epsilon:.4f} "
            f"(delta {result.delta:g})"
        )


def _vertical_identity(
    identity: Path | None, insecure: bool, name: str | None, kit: str
) -> tuple[TlsKit | None, str]:
    """A vertical command's TLS kit (None with --insecure) and party name (--name or the kit's)."""
    # Deferred so that grpc does not slow `fedwarden --help`.
    from fedwarden.runtime.grpc.credentials import TlsKit

    if (identity is None) != insecure:
        raise FedwardenError(f"give --identity {kit}, or --insecure (loopback only)")
    tls = None if identity is None else TlsKit.from_dir(identity)
    party_name = name or (None if tls is None else tls.name)
    if party_name is None:
        raise FedwardenError("give --name: with --insecure no certificate names the party")
    return tls, party_name
