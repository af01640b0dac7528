"""``fedwarden models``: a run store's model registry (versions, lineage, promotion, retention)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.cli.common import AUDIT_KEY_HELP, STORE_URL_HELP, error_exit, existing_store
from fedwarden.core.errors import FedwardenError

if TYPE_CHECKING:
    from fedwarden.governance.registry import ModelRegistry
    from fedwarden.governance.store import RunStore

models_app = typer.Typer(
    help="The model registry of a run store: versions, their lineage and which one serves.",
    no_args_is_help=True,
)


def _registry(store: RunStore, audit_key: Path | None) -> ModelRegistry:
    """The store's model registry, audited with the key in ``audit_key`` if given."""
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.audit import AuditLog, load_signing_key
    from fedwarden.governance.registry import ModelRegistry

    audit = None if audit_key is None else AuditLog(store, load_signing_key(audit_key))
    return ModelRegistry(store, audit)


@models_app.command("list")
def models_list_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    name: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
) -> None:
    """List the registered versions with their stage, run and accuracy."""
    try:
        with existing_store(store_url) as store:
            versions = _registry(store, None).list(name)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    if not versions:
        console.print("no model versions registered")
    for version in versions:
        accuracy = version.recorded_accuracy
        console.print(
            f"{escape(version.reference)}  {version.stage}  run {escape(version.run_id)}  "
            f"accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}"
            f"{'  (weights deleted)' if version.weights_deleted else ''}"
        )


@models_app.command("show")
def models_show_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    version: Annotated[str, typer.Argument(help="MODEL@X.Y.Z, or X.Y.Z if unambiguous.")],
) -> None:
    """Print one version's record (lineage, training, metrics, stage) as JSON."""
    try:
        with existing_store(store_url) as store:
            registry = _registry(store, None)
            found = registry.show(version)
            pilot = registry.pilot(version)
    except FedwardenError as error:
        raise error_exit(error) from None
    record = {**found.to_json(), "pilot": None if pilot is None else pilot.to_json()}
    sys.stdout.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


@models_app.command("promote")
def models_promote_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    version: Annotated[str, typer.Argument(help="The candidate: MODEL@X.Y.Z.")],
    by: Annotated[str, typer.Option(help="Who decides the promotion (recorded in the audit).")],
    pilot_accuracy: Annotated[
        float | None,
        typer.Option(help="The candidate's pilot accuracy; default: its recorded pilot."),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="How far below production the pilot accuracy may be.")
    ] = 0.02,
    override: Annotated[
        bool, typer.Option(help="Promote despite the staged-rollout check (needs --reason).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why the check is overridden.")] = "",
    audit_key: Annotated[Path | None, typer.Option(help=AUDIT_KEY_HELP)] = None,
) -> None:
    """Put a candidate into production; the production version becomes deprecated."""
    try:
        with existing_store(store_url) as store:
            promoted = _registry(store, audit_key).promote(
                version,
                by,
                pilot_accuracy=pilot_accuracy,
                threshold=threshold,
                override=override,
                reason=reason,
            )
    except FedwardenError as error:
        raise error_exit(error) from None
    Console().print(f"{escape(promoted.reference)} is in production")


@models_app.command("rollback")
def models_rollback_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    by: Annotated[str, typer.Option(help="Who decides the rollback (recorded in the audit).")],
    name: Annotated[
        str | None, typer.Option("--model", help="The model (if several are in production).")
    ] = None,
    audit_key: Annotated[Path | None, typer.Option(help=AUDIT_KEY_HELP)] = None,
) -> None:
    """Withdraw the production version and restore the one that served before it."""
    try:
        with existing_store(store_url) as store:
            restored = _registry(store, audit_key).rollback(by, name)
    except FedwardenError as error:
        raise error_exit(error) from None
    Console().print(f"{escape(restored.reference)} is in production again")


@models_app.command("retain")
def models_retain_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    keep_last: Annotated[
        int, typer.Option(help="Deprecated versions per model that keep their weights.")
    ],
    by: Annotated[str, typer.Option(help="Who applies the retention (recorded in the audit).")],
    audit_key: Annotated[Path | None, typer.Option(help=AUDIT_KEY_HELP)] = None,
) -> None:
    """Delete the weights of all but the last KEEP_LAST deprecated versions of each model.

    Production versions, candidates and every version's metadata are kept; each deletion is
    recorded in the audit log.
    """
    try:
        with existing_store(store_url) as store:
            deleted = _registry(store, audit_key).apply_retention(keep_last, by)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    for reference in deleted:
        console.print(f"deleted the weights of {escape(reference)}")
    console.print(f"{len(deleted)} version(s) lost their weights; their metadata is kept")


@models_app.command("export")
def models_export_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    version: Annotated[str, typer.Argument(help="MODEL@X.Y.Z, or X.Y.Z if unambiguous.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the .npz and lineage JSON.")],
) -> None:
    """Write a version's arrays (.npz, no pickle) and its lineage (JSON) into OUT_DIR."""
    try:
        with existing_store(store_url) as store:
            arrays, lineage = _registry(store, None).export(version, out_dir)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    console.print(f"arrays: {escape(str(arrays))}")
    console.print(f"lineage: {escape(str(lineage))}")
