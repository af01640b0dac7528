"""``fedwarden audit``: verify a run store's audit log, report on it, delegate and revoke keys.

Also ``audit privacy``, which measures a lower bound on epsilon with canaries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.cli.common import STORE_URL_HELP, error_exit, existing_store
from fedwarden.cli.console import logging_console
from fedwarden.core.config import load_config
from fedwarden.core.errors import FedwardenError

audit_app = typer.Typer(
    help="The signed, hash-chained audit log of a run store: verify it, report on it, "
    "delegate and revoke signing keys.",
    no_args_is_help=True,
)


@audit_app.command("privacy")
def audit_privacy_command(
    config: Annotated[
        Path,
        typer.Argument(help="Run config (TOML) with privacy.mechanism dp_sgd or user_level."),
    ],
    method: Annotated[
        str, typer.Option(help="one_run (Steinke et al. 2023) or multi_run (Nasr et al. 2021).")
    ] = "one_run",
    canaries: Annotated[
        int, typer.Option(help="Canaries planted (one_run), canary clients for user_level.")
    ] = 500,
    runs: Annotated[
        int, typer.Option(help="Trainings with and without a canary (multi_run).")
    ] = 64,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound.")] = 0.95,
    statistic: Annotated[
        str,
        typer.Option(help="user_level: cosine with the final_model or all_iterates deltas."),
    ] = "final_model",
) -> None:
    """Measure a lower bound on epsilon with canaries and print it beside the accountant's claim.

    user_level configs are audited with canary clients (Andrew et al. 2024), which also
    gives an epsilon estimate. Exits 1 when the measured bound exceeds the claim: that is
    a bug in the accounting.
    """
    # Deferred: it adds about 10 ms to the start-up of every command, `--help` included.
    from fedwarden.audits.dp_audit import audit_privacy

    console = logging_console()
    try:
        if method not in ("one_run", "multi_run"):
            raise FedwardenError(f"--method {method!r}: use one_run or multi_run")
        if statistic not in ("final_model", "all_iterates"):
            raise FedwardenError(f"--statistic {statistic!r}: use final_model or all_iterates")
        result = audit_privacy(
            load_config(config),
            method="one_run" if method == "one_run" else "multi_run",
            num_canaries=canaries,
            num_runs=runs,
            confidence=confidence,
            statistic="final_model" if statistic == "final_model" else "all_iterates",
        )
    except FedwardenError as error:
        raise error_exit(error) from None
    console.print(escape(result.summary()))
    if result.exceeds_claim:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    public_key: Annotated[Path, typer.Option(help="PEM Ed25519 public key of the audit log.")],
    anchor: Annotated[
        Path | None,
        typer.Option(
            help="A root-signed anchor (audit-anchor.json of a run directory): the log must "
            "still hold the entries it recorded, so a deleted tail is detected."
        ),
    ] = None,
) -> None:
    """Check every entry's hash, link and signature; exit 1 naming the first bad entry.

    Without --anchor, deleting the newest entries leaves a valid, shorter chain.
    """
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.anchor import verify_anchored
    from fedwarden.governance.audit import load_public_key, verify

    try:
        key = load_public_key(public_key)
        with existing_store(store_url) as store:
            result = verify(store, key) if anchor is None else verify_anchored(store, key, anchor)
    except FedwardenError as error:
        raise error_exit(error) from None
    if not result.ok:
        Console(stderr=True, soft_wrap=True).print(
            f"[red]FAILED[/red] at entry {result.first_bad} of {result.entries}:",
            escape(result.problem),
        )
        raise typer.Exit(1)
    console = Console(soft_wrap=True)
    console.print(f"OK: {result.entries} audit entries verified, last hash {result.last_hash}")
    if anchor is None:
        console.print("(no --anchor: a deleted tail of newest entries would not show)")
    else:
        console.print(f"every entry anchored in {escape(str(anchor))} is there")


@audit_app.command("report")
def audit_report_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    public_key: Annotated[Path, typer.Option(help="PEM Ed25519 public key of the audit log.")],
    output: Annotated[Path, typer.Option(help="File the report is written to.")],
    report_format: Annotated[str, typer.Option("--format", help="json, html or pdf.")] = "json",
    admin: Annotated[
        bool, typer.Option(help="Show client ids instead of their pseudonyms.")
    ] = False,
) -> None:
    """Write the lineage, privacy and participant-integrity report of the audit log."""
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.audit import (
        audit_report,
        load_public_key,
        render_html,
        render_json,
        render_pdf,
    )

    try:
        if report_format not in ("json", "html", "pdf"):
            raise FedwardenError(f"--format {report_format!r}: use json, html or pdf")
        key = load_public_key(public_key)
        with existing_store(store_url) as store:
            report = audit_report(store, key, admin=admin)
        if report_format == "pdf":
            output.write_bytes(render_pdf(report))
        else:
            output.write_text(
                render_json(report) if report_format == "json" else render_html(report)
            )
    except FedwardenError as error:
        raise error_exit(error) from None
    except OSError as error:
        raise error_exit(FedwardenError(f"cannot write {output}: {error.strerror}")) from None
    console = Console()
    console.print(f"{report_format} report: {escape(str(output))}")
    if not report["verification"]["ok"]:
        console.print(
            f"[yellow]the audit log fails verification at entry "
            f"{report['verification']['first_bad']}[/yellow]"
        )


@audit_app.command("recompute")
def audit_recompute_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    reference: Annotated[str, typer.Argument(help="The model version, MODEL@X.Y.Z.")],
    public_key: Annotated[Path, typer.Option(help="PEM Ed25519 public key of the audit log.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the events and figures as JSON.")
    ] = False,
) -> None:
    """Recompute a version's epsilon from the DP events in the signed audit log; check its claim.

    Exit 1 with the reason when the log fails verification (an edited DP event names its
    entry) or the registry's claim is not what the audited events give.
    """
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.audit import load_public_key, recompute

    try:
        key = load_public_key(public_key)
        with existing_store(store_url) as store:
            result = recompute(store, key, reference)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console(soft_wrap=True)
    if as_json:
        console.print_json(data=result.to_json())
    else:
        for run in result.runs:
            console.print(
                f"{escape(run.reference)}: run {escape(run.run_id)}, "
                f"{len(run.releases)} audited DP events, epsilon recomputed "
                f"{run.recomputed_epsilon!r}, claimed {run.claimed_epsilon!r} "
                f"(delta={run.delta!r}, {run.neighboring})"
            )
        console.print(f"accountant: dp-accounting {result.accounting_version}")
    if not result.ok:
        Console(stderr=True, soft_wrap=True).print("[red]FAILED[/red]:", escape(result.reason))
        raise typer.Exit(1)
    if not as_json:
        console.print(f"OK: the privacy claim of {escape(reference)} is what the audit log gives")


@audit_app.command("delegate")
def audit_delegate_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    audit_key: Annotated[
        Path, typer.Option(help="The log's root signing key (the server kit's audit.key).")
    ],
    kind: Annotated[
        list[str], typer.Option(help="Event kind the new key may sign, e.g. alert_raised.")
    ],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. serving.")],
    output: Annotated[
        Path, typer.Option(help="New private key file (PEM, 0600); its .pub is written beside.")
    ],
    by: Annotated[str, typer.Option(help="Who delegates (recorded in the audit).")] = "operator",
) -> None:
    """Create a key that may sign only the given event kinds, and record its delegation.

    Give the key to a less trusted writer (the prediction service: --kind alert_raised) instead
    of the root key: whoever takes it can forge entries of those kinds only, until revoked.
    """
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.audit import AuditLog, delegate_signer, load_signing_key

    try:
        root = load_signing_key(audit_key)
        with existing_store(store_url) as store:
            event = delegate_signer(AuditLog(store, root), output, kind, name=name, by=by)
    except FedwardenError as error:
        raise error_exit(error) from None
    console = Console()
    console.print(f"delegated {escape(', '.join(event.kinds))} to {escape(event.name)}")
    console.print(f"private key: {escape(str(output))}")
    console.print(f"public key:  {escape(str(output.with_suffix('.pub')))}")


@audit_app.command("revoke")
def audit_revoke_command(
    store_url: Annotated[str, typer.Argument(help=STORE_URL_HELP)],
    audit_key: Annotated[
        Path, typer.Option(help="The log's root signing key (the server kit's audit.key).")
    ],
    public_key: Annotated[Path, typer.Option(help="PEM public key of the delegated signer.")],
    reason: Annotated[str, typer.Option(help="Why the key is revoked (recorded in the audit).")],
    by: Annotated[str, typer.Option(help="Who revokes (recorded in the audit).")] = "operator",
) -> None:
    """Revoke a delegated signer: entries it signs after this fail verification."""
    # Deferred so that SQLAlchemy does not slow `fedwarden --help`.
    from fedwarden.governance.audit import (
        AuditLog,
        SignerRevoked,
        load_public_key,
        load_signing_key,
        public_key_hex,
    )

    try:
        root = load_signing_key(audit_key)
        revoked = public_key_hex(load_public_key(public_key))
        with existing_store(store_url) as store:
            entry = AuditLog(store, root).append(SignerRevoked(revoked, by, reason))
    except FedwardenError as error:
        raise error_exit(error) from None
    Console().print(f"revoked {revoked} at audit entry {entry.sequence}")
