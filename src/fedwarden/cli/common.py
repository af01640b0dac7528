"""What several command groups share: the error exit, opening a run store, help strings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.build.integrity import BudgetChange
from fedwarden.core.errors import FedwardenError

if TYPE_CHECKING:
    from fedwarden.governance.store import RunStore

STORE_URL_HELP = "SQLAlchemy URL of the run store, e.g. sqlite:///runs/fedwarden.db."
AUDIT_KEY_HELP = "PEM Ed25519 private key that signs the audit log (required for changes)."

BudgetChangedBy = Annotated[
    str | None,
    typer.Option(help="Who changes the budget (recorded in the ledger and audit log)."),
]
"""``--budget-changed-by``, which goes with a command's ``--budget-epsilon``."""


def error_exit(error: FedwardenError) -> typer.Exit:
    """Print ``error: ...`` on stderr; the exit (status 2) for the caller to raise."""
    Console(stderr=True, soft_wrap=True).print("[red]error:[/red]", escape(str(error)))
    return typer.Exit(2)


def existing_store(url: str) -> RunStore:
    """Open the run store at ``url``, refusing a SQLite file that does not exist yet."""
    # Not at the top: SQLAlchemy would slow every start-up, `fedwarden --help` included.
    from fedwarden.governance.store import RunStore

    return RunStore.existing(url)


def budget_change(epsilon: float | None, changed_by: str | None) -> BudgetChange | None:
    """The explicit budget change the command line asks for, if any."""
    if epsilon is None and changed_by is None:
        return None
    if epsilon is None or changed_by is None:
        raise FedwardenError(
            "a budget change needs --budget-epsilon E and --budget-changed-by NAME together"
        )
    return BudgetChange(epsilon, changed_by)


def raise_keyboard_interrupt(*_: object) -> None:
    """SIGTERM ends the server as Ctrl-C does: the run directory and store stay consistent."""
    raise KeyboardInterrupt
