"""The ``fedwarden`` command. The only module that writes to the console."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.errors import FedwardenError
from fedwarden.core.records import RoundRecord, RunResult
from fedwarden.server.integrity import BudgetChange
from fedwarden.server.launch import resumed
from fedwarden.server.launch import run as run_config

if TYPE_CHECKING:
    from fedwarden.governance.registry import ModelRegistry
    from fedwarden.governance.store import RunStore
    from fedwarden.runtime.grpc.credentials import TlsKit

app = typer.Typer(
    help="fedwarden: privacy-preserving federated learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COLUMNS = (
    ("round", 5),
    ("loss", 8),
    ("accuracy", 8),
    ("clients", 7),
    ("dropped", 7),
    ("rejected", 8),
    ("seconds", 8),
    ("MB up", 8),
    ("MB down", 8),
    ("compress", 8),
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


class ConsoleObserver:
    """Progress bars (rounds; clients within the round) and one table row per round.

    On a terminal a row is cut to the terminal's width; elsewhere (a log, CI) each row is
    one plain line, never wrapped, whatever its length.
    """

    def __init__(self, console: Console, rounds: int, start: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.rounds_task = self.progress.add_task("rounds", total=rounds, completed=start)
        self.clients_task = self.progress.add_task("clients", total=0)
        self._print(" ".join(f"{name:>{width}}" for name, width in _COLUMNS))

    def round_started(self, round_index: int, cohort_size: int) -> None:
        self.progress.reset(self.clients_task, total=cohort_size)
        self.progress.update(self.clients_task, description=f"round {round_index + 1} clients")

    def client_finished(self, round_index: int) -> None:
        self.progress.advance(self.clients_task)

    def round_finished(self, record: RoundRecord) -> None:
        self.progress.advance(self.rounds_task)
        self._print(_format_row(record))

    def _print(self, line: str) -> None:
        if self.console.is_terminal:
            self.progress.console.print(line, no_wrap=True, overflow="ellipsis", crop=True)
        else:
            self.progress.console.print(line, soft_wrap=True)

    def __enter__(self) -> ConsoleObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _format_row(record: RoundRecord) -> str:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    cells = (
        str(record.round_index + 1),
        number(record.loss, 4),
        number(record.accuracy, 4),
        f"{record.participants}/{record.sampled}",
        str(record.dropped),
        str(record.rejected),
        f"{record.round_seconds:.2f}",
        f"{record.bytes_up / 1e6:.2f}",
        f"{record.bytes_down / 1e6:.2f}",
        "-" if record.compression_ratio is None else f"{record.compression_ratio:.1f}x",
    )
    row = " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    if record.flagged:
        row += f"  [yellow]flagged: {', '.join(record.flagged)}[/yellow]"
    if record.quarantined:
        row += f"  [red]quarantined: {', '.join(record.quarantined)}[/red]"
    if record.backdoor_success is not None:
        row += f"  backdoor success {record.backdoor_success:.3f}"
    if record.epsilon is not None:
        row += f"  epsilon {record.epsilon:.3f}"
        if record.epsilon_projected is not None:
            row += f" (planned rounds: {record.epsilon_projected:.3f})"
    return row if not record.note else f"{row}  [yellow]{escape(record.note)}[/yellow]"


_PRIVACY_FIELDS = (
    "privacy_unit",
    "neighboring",
    "epsilon",
    "delta",
    "accountant",
    "epsilon_rdp",
    "budget_epsilon",
    "budget_remaining",
    "noise_multiplier",
    "clip_norm",
    "sampling_rate",
    "client_epsilon_round",
    "max_client_epsilon",
)


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary_lines(result: RunResult) -> list[str]:
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.2f}%"

    lines = [
        f"rounds: {result.rounds}   central accuracy: {percent(result.accuracy)}   "
        f"client accuracy (example-weighted): {percent(result.client_accuracy)}",
    ]
    if result.personalized_accuracy is not None:
        lines.append(
            f"personalized (fine-tuned) client accuracy: {percent(result.personalized_accuracy)}"
            f"   global: {percent(result.client_accuracy)}"
        )
    privacy = result.extras.get("privacy")
    if privacy:
        shown = ", ".join(
            f"{name} {_number(privacy[name])}"
            for name in _PRIVACY_FIELDS
            if privacy.get(name) is not None
        )
        lines.append(f"privacy: {privacy.get('mechanism', 'none')}; {shown}")
        for release in privacy.get("releases", ()):
            cost = "" if release["epsilon"] is None else f" (epsilon {_number(release['epsilon'])})"
            lines.append(f"  release {release['release']}: {release['protection']}{cost}")
    attack = result.extras.get("attack")
    if attack:
        lines.append(
            f"[yellow]simulated attack: {attack['kind']} by "
            f"{len(attack['malicious_clients'])} malicious client(s)[/yellow]"
        )
    secure = result.extras.get("secure_aggregation")
    if secure:
        shown = ", ".join(f"{name} {value}" for name, value in secure.items() if name != "protocol")
        lines.append(f"secure aggregation: {secure['protocol']}; {shown}")
    if result.stopped_early is not None:
        lines.append(f"[yellow]stopped early: {escape(result.stopped_early)}[/yellow]")
    if "label_chi2" in result.extras:
        lines.append(
            f"label heterogeneity across clients: chi2 = {result.extras['label_chi2']:.1f} "
            f"(p = {result.extras['label_chi2_p_value']:.3g})"
        )
    lines.append(
        f"{result.client_rounds_per_s:.1f} client-rounds/s, wall {result.wall_s:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB"
    )
    if result.run_dir is not None:
        lines.append(f"run directory: {result.run_dir}")
    return lines + _governance_lines(result.extras)


def _governance_lines(extras: dict[str, Any]) -> list[str]:
    """Where a governed run left its audit log, model, report, and how to look at them."""
    governance = extras.get("governance")
    if not governance:
        return []
    store = shlex.quote(governance["store"])
    model = extras["registered_model"]
    lines = [f"model registry: {escape(model)} registered as a candidate"]
    pilot = extras.get("pilot")
    if pilot:
        production = (
            "no production version yet"
            if pilot["production"] is None
            else f"production {pilot['production']}: {_number(pilot['production_accuracy'])}"
        )
        lines.append(
            f"pilot on {len(pilot['clients'])} clients: accuracy "
            f"{_number(pilot['candidate_accuracy'])} ({escape(production)})"
        )
    lines.append(f"  fedwarden models show {escape(store)} {escape(model)}")
    key = governance["audit_public_key"]
    verify = f"fedwarden audit verify {store}"
    if key is not None:
        verify += f" --public-key {shlex.quote(key)}"
    anchor = governance.get("audit_anchor")
    if anchor is not None:
        verify += f" --anchor {shlex.quote(anchor)}"
    recompute = f"fedwarden audit recompute {store} {shlex.quote(model)}"
    if key is not None:
        recompute += f" --public-key {shlex.quote(key)}"
    lines += [
        f"audit log: in the run store {escape(governance['store'])}",
        f"  {escape(verify)}",
        f"  {escape(recompute)}",
        f"audit report (HTML): {escape(governance['audit_report'])}",
        "dashboard: FEDWARDEN_DASHBOARD_TOKEN=$(openssl rand -hex 16) "
        + escape(
            f"fedwarden dashboard {store}"
            + ("" if key is None else f" --public-key {shlex.quote(key)}")
        ),
    ]
    return lines


@app.command("run")
def run_command(
    config: Annotated[
        Path | None, typer.Argument(help="Run config (TOML). Omit with --resume.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the run in this run directory.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one final JSON object on stdout.")
    ] = False,
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Override the runtime: local, ray or grpc.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Override the number of workers.")] = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Where run directories are created.")
    ] = None,
    budget_epsilon: Annotated[
        float | None,
        typer.Option(help="With --resume: change the run's privacy budget to this epsilon."),
    ] = None,
    budget_changed_by: Annotated[
        str | None,
        typer.Option(help="Who changes the budget (recorded in the ledger and audit log)."),
    ] = None,
) -> None:
    """Train a federated model as described by CONFIG."""
    console = _logging_console(stderr=as_json)
    try:
        budget_change = _budget_change(budget_epsilon, budget_changed_by)
        if resume is not None:
            if config is not None:
                raise FedwardenError("give either CONFIG or --resume RUN_DIR, not both")
            settings, start = resumed(resume)
        else:
            settings, start = _config_for(config, rounds, runtime, workers, runs_dir), 0
        with ConsoleObserver(console, settings.rounds, start) as observer:
            result = run_config(
                settings, resume=resume, observer=observer, budget_change=budget_change
            )
    except FedwardenError as error:
        raise _error_exit(error) from None
    for line in _summary_lines(result):
        console.print(line, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")


def _budget_change(epsilon: float | None, changed_by: str | None) -> BudgetChange | None:
    """The explicit budget change the command line asks for, if any."""
    if epsilon is None and changed_by is None:
        return None
    if epsilon is None or changed_by is None:
        raise FedwardenError(
            "a budget change needs --budget-epsilon E and --budget-changed-by NAME together"
        )
    return BudgetChange(epsilon, changed_by)


def _config_for(
    path: Path | None,
    rounds: int | None,
    runtime: str | None,
    workers: int | None,
    runs_dir: Path | None,
) -> RunConfig:
    """The config file with the command line's overrides applied and re-validated."""
    if path is None:
        raise FedwardenError("give a run config: fedwarden run CONFIG.toml")
    config = load_config(path)
    overrides: dict[str, Any] = {}
    if rounds is not None:
        overrides["rounds"] = rounds
    if runs_dir is not None:
        overrides["runs_dir"] = runs_dir
    runtime_overrides = {
        key: value for key, value in (("kind", runtime), ("workers", workers)) if value is not None
    }
    values = config.model_dump()
    values.update(overrides)
    values["runtime"].update(runtime_overrides)
    return RunConfig.from_mapping(values, source=f"{path} with command-line overrides")


@app.command("query")
def query_command(
    config: Annotated[Path, typer.Argument(help="Run config whose data the query reads.")],
    query: Annotated[
        str,
        typer.Argument(
            help='e.g. "count", "mean:feature=3,lower=0,upper=16", "histogram:feature=label,'
            'bins=0:5:10", "quantile:feature=3,q=0.5,lower=0,upper=16"'
        ),
    ],
    epsilon: Annotated[float, typer.Option(help="Epsilon this query may spend.")],
    ledger: Annotated[Path, typer.Option(help="Privacy ledger file (created if new).")],
    delta: Annotated[float, typer.Option(help="Delta this query may spend.")] = 1e-5,
    privacy_unit: Annotated[str, typer.Option(help="client (user-level) or example.")] = "client",
    neighboring: Annotated[str, typer.Option(help="add_remove or replace_one.")] = "add_remove",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    budget_changed_by: Annotated[
        str | None,
        typer.Option(help="Who changes the ledger's budget to the config's (recorded in it)."),
    ] = None,
) -> None:
    """Answer one federated analytics query with differential privacy, charged to the ledger."""
    from fedwarden.privacy.analytics import query_command as answer

    console = Console(stderr=as_json)
    try:
        if privacy_unit not in ("client", "example"):
            raise FedwardenError(f"--privacy-unit {privacy_unit!r}: use client or example")
        if neighboring not in ("add_remove", "replace_one"):
            raise FedwardenError(f"--neighboring {neighboring!r}: use add_remove or replace_one")
        result = answer(
            config,
            query,
            epsilon=epsilon,
            delta=delta,
            ledger_path=ledger,
            privacy_unit=privacy_unit,  # type: ignore[arg-type]
            neighboring=neighboring,  # type: ignore[arg-type]
            budget_changed_by=budget_changed_by,
        )
    except FedwardenError as error:
        raise _error_exit(error) from None
    summary = result.as_dict()
    for name, value in summary.items():
        console.print(f"{name}: {escape(str(value))}")
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")


pki_app = typer.Typer(
    help="Provisioning: a CA, and TLS certificates and identity keys signed by it.",
    no_args_is_help=True,
)
app.add_typer(pki_app, name="pki")


@pki_app.command("init")
def pki_init_command(
    directory: Annotated[Path, typer.Argument(help="Directory for ca.crt and ca.key.")],
    name: Annotated[str, typer.Option(help="Deployment name in the CA's subject.")] = "deployment",
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Create a deployment CA (ECDSA P-256, 10 years); the private key is never printed."""
    from fedwarden.deploy.pki import init_ca

    try:
        paths = init_ca(directory, name, force=force)
    except FedwardenError as error:
        raise _error_exit(error) from None
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
    from fedwarden.deploy.pki import issue

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
        raise _error_exit(error) from None
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
    from fedwarden.deploy.revocation import revoke

    try:
        written = revoke(directory, name)
    except FedwardenError as error:
        raise _error_exit(error) from None
    console = Console()
    console.print(f"revoked client {escape(name)}'s certificate; revocation list written to:")
    for path in written:
        console.print(f"  {escape(str(path))}")


audit_app = typer.Typer(
    help="The signed, hash-chained audit log of a run store: verify it, report on it, "
    "delegate and revoke signing keys.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

models_app = typer.Typer(
    help="The model registry of a run store: versions, their lineage and which one serves.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")

_STORE_URL_HELP = "SQLAlchemy URL of the run store, e.g. sqlite:///runs/fedwarden.db."
_AUDIT_KEY_HELP = "PEM Ed25519 private key that signs the audit log (required for changes)."


def _error_exit(error: FedwardenError) -> typer.Exit:
    """Print ``error: ...`` on stderr; the exit (status 2) for the caller to raise."""
    Console(stderr=True, soft_wrap=True).print("[red]error:[/red]", escape(str(error)))
    return typer.Exit(2)


def _existing_store(url: str) -> RunStore:
    """Open the run store at ``url``, refusing a SQLite file that does not exist yet."""
    from fedwarden.governance.store import RunStore

    return RunStore.existing(url)


def _registry(store: RunStore, audit_key: Path | None) -> ModelRegistry:
    """The store's model registry, audited with the key in ``audit_key`` if given."""
    from fedwarden.governance.audit import AuditLog, load_signing_key
    from fedwarden.governance.registry import ModelRegistry

    audit = None if audit_key is None else AuditLog(store, load_signing_key(audit_key))
    return ModelRegistry(store, audit)


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
    from fedwarden.attacks.dp_audit import audit_privacy

    console = _logging_console()
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
        raise _error_exit(error) from None
    console.print(escape(result.summary()))
    if result.exceeds_claim:
        raise typer.Exit(1)


@audit_app.command("verify")
def audit_verify_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
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
    from fedwarden.governance.anchor import verify_anchored
    from fedwarden.governance.audit import load_public_key, verify

    try:
        key = load_public_key(public_key)
        with _existing_store(store_url) as store:
            result = verify(store, key) if anchor is None else verify_anchored(store, key, anchor)
    except FedwardenError as error:
        raise _error_exit(error) from None
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
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    public_key: Annotated[Path, typer.Option(help="PEM Ed25519 public key of the audit log.")],
    output: Annotated[Path, typer.Option(help="File the report is written to.")],
    report_format: Annotated[str, typer.Option("--format", help="json, html or pdf.")] = "json",
    admin: Annotated[
        bool, typer.Option(help="Show client ids instead of their pseudonyms.")
    ] = False,
) -> None:
    """Write the lineage, privacy and participant-integrity report of the audit log."""
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
        with _existing_store(store_url) as store:
            report = audit_report(store, key, admin=admin)
        if report_format == "pdf":
            output.write_bytes(render_pdf(report))
        else:
            output.write_text(
                render_json(report) if report_format == "json" else render_html(report)
            )
    except FedwardenError as error:
        raise _error_exit(error) from None
    except OSError as error:
        raise _error_exit(FedwardenError(f"cannot write {output}: {error.strerror}")) from None
    console = Console()
    console.print(f"{report_format} report: {escape(str(output))}")
    if not report["verification"]["ok"]:
        console.print(
            f"[yellow]the audit log fails verification at entry "
            f"{report['verification']['first_bad']}[/yellow]"
        )


@audit_app.command("recompute")
def audit_recompute_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
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
    from fedwarden.governance.audit import load_public_key, recompute

    try:
        key = load_public_key(public_key)
        with _existing_store(store_url) as store:
            result = recompute(store, key, reference)
    except FedwardenError as error:
        raise _error_exit(error) from None
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
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
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
    from fedwarden.governance.audit import AuditLog, delegate_signer, load_signing_key

    try:
        root = load_signing_key(audit_key)
        with _existing_store(store_url) as store:
            event = delegate_signer(AuditLog(store, root), output, kind, name=name, by=by)
    except FedwardenError as error:
        raise _error_exit(error) from None
    console = Console()
    console.print(f"delegated {escape(', '.join(event.kinds))} to {escape(event.name)}")
    console.print(f"private key: {escape(str(output))}")
    console.print(f"public key:  {escape(str(output.with_suffix('.pub')))}")


@audit_app.command("revoke")
def audit_revoke_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    audit_key: Annotated[
        Path, typer.Option(help="The log's root signing key (the server kit's audit.key).")
    ],
    public_key: Annotated[Path, typer.Option(help="PEM public key of the delegated signer.")],
    reason: Annotated[str, typer.Option(help="Why the key is revoked (recorded in the audit).")],
    by: Annotated[str, typer.Option(help="Who revokes (recorded in the audit).")] = "operator",
) -> None:
    """Revoke a delegated signer: entries it signs after this fail verification."""
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
        with _existing_store(store_url) as store:
            entry = AuditLog(store, root).append(SignerRevoked(revoked, by, reason))
    except FedwardenError as error:
        raise _error_exit(error) from None
    Console().print(f"revoked {revoked} at audit entry {entry.sequence}")


@models_app.command("list")
def models_list_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    name: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
) -> None:
    """List the registered versions with their stage, run and accuracy."""
    try:
        with _existing_store(store_url) as store:
            versions = _registry(store, None).list(name)
    except FedwardenError as error:
        raise _error_exit(error) from None
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
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    version: Annotated[str, typer.Argument(help="MODEL@X.Y.Z, or X.Y.Z if unambiguous.")],
) -> None:
    """Print one version's record (lineage, training, metrics, stage) as JSON."""
    try:
        with _existing_store(store_url) as store:
            registry = _registry(store, None)
            found = registry.show(version)
            pilot = registry.pilot(version)
    except FedwardenError as error:
        raise _error_exit(error) from None
    record = {**found.to_json(), "pilot": None if pilot is None else pilot.to_json()}
    sys.stdout.write(json.dumps(record, indent=2, sort_keys=True) + "\n")


@models_app.command("promote")
def models_promote_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
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
    audit_key: Annotated[Path | None, typer.Option(help=_AUDIT_KEY_HELP)] = None,
) -> None:
    """Put a candidate into production; the production version becomes deprecated."""
    try:
        with _existing_store(store_url) as store:
            promoted = _registry(store, audit_key).promote(
                version,
                by,
                pilot_accuracy=pilot_accuracy,
                threshold=threshold,
                override=override,
                reason=reason,
            )
    except FedwardenError as error:
        raise _error_exit(error) from None
    Console().print(f"{escape(promoted.reference)} is in production")


@models_app.command("rollback")
def models_rollback_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    by: Annotated[str, typer.Option(help="Who decides the rollback (recorded in the audit).")],
    name: Annotated[
        str | None, typer.Option("--model", help="The model (if several are in production).")
    ] = None,
    audit_key: Annotated[Path | None, typer.Option(help=_AUDIT_KEY_HELP)] = None,
) -> None:
    """Withdraw the production version and restore the one that served before it."""
    try:
        with _existing_store(store_url) as store:
            restored = _registry(store, audit_key).rollback(by, name)
    except FedwardenError as error:
        raise _error_exit(error) from None
    Console().print(f"{escape(restored.reference)} is in production again")


@models_app.command("retain")
def models_retain_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    keep_last: Annotated[
        int, typer.Option(help="Deprecated versions per model that keep their weights.")
    ],
    by: Annotated[str, typer.Option(help="Who applies the retention (recorded in the audit).")],
    audit_key: Annotated[Path | None, typer.Option(help=_AUDIT_KEY_HELP)] = None,
) -> None:
    """Delete the weights of all but the last KEEP_LAST deprecated versions of each model.

    Production versions, candidates and every version's metadata are kept; each deletion is
    recorded in the audit log.
    """
    try:
        with _existing_store(store_url) as store:
            deleted = _registry(store, audit_key).apply_retention(keep_last, by)
    except FedwardenError as error:
        raise _error_exit(error) from None
    console = Console()
    for reference in deleted:
        console.print(f"deleted the weights of {escape(reference)}")
    console.print(f"{len(deleted)} version(s) lost their weights; their metadata is kept")


@models_app.command("export")
def models_export_command(
    store_url: Annotated[str, typer.Argument(help=_STORE_URL_HELP)],
    version: Annotated[str, typer.Argument(help="MODEL@X.Y.Z, or X.Y.Z if unambiguous.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for the .npz and lineage JSON.")],
) -> None:
    """Write a version's arrays (.npz, no pickle) and its lineage (JSON) into OUT_DIR."""
    try:
        with _existing_store(store_url) as store:
            arrays, lineage = _registry(store, None).export(version, out_dir)
    except FedwardenError as error:
        raise _error_exit(error) from None
    console = Console()
    console.print(f"arrays: {escape(str(arrays))}")
    console.print(f"lineage: {escape(str(lineage))}")


@app.command("server")
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
    budget_changed_by: Annotated[
        str | None,
        typer.Option(help="Who changes the budget (recorded in the ledger and audit log)."),
    ] = None,
) -> None:
    """Serve a federated run to `fedwarden client` processes over gRPC with mutual TLS.

    Started again after a crash with the same config and store, it continues
    the unfinished run from its last completed round; with --budget-epsilon and
    --budget-changed-by (and that epsilon in CONFIG) it changes its budget first.
    """
    import signal

    from fedwarden.deploy.revocation import REVOCATION_LIST
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.health import serve_health
    from fedwarden.server.launch import Deployment, serve

    console = _logging_console(stderr=True)
    try:
        if (identity is None) != insecure:
            raise FedwardenError("give --identity SERVER_KIT, or --insecure (loopback only)")
        budget_change = _budget_change(budget_epsilon, budget_changed_by)
        settings = load_config(config).model_copy(
            update={"runtime": load_config(config).runtime.model_copy(update={"kind": "grpc"})}
        )
        audit_key = None
        audit_public_key = None
        if identity is not None and (identity / "audit.key").exists():
            from fedwarden.governance.audit import load_signing_key

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
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        with ConsoleObserver(console, settings.rounds, 0) as observer:
            result = serve(settings, deployment, observer=observer, budget_change=budget_change)
        health.shutdown()
    except FedwardenError as error:
        raise _error_exit(error) from None
    except KeyboardInterrupt:
        console.print("server stopped; start it again to continue the run")
        raise typer.Exit(130) from None
    for line in _summary_lines(result):
        console.print(line)


@app.command("client")
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
) -> None:
    """Join a fedwarden server and train on this site's data until the run ends."""
    import signal

    from fedwarden.runtime.grpc.client import FederationClient
    from fedwarden.runtime.grpc.credentials import ClientKit
    from fedwarden.secure.secagg_policy import SecAggPolicy

    _logging_console(level=logging.INFO)
    try:
        policy = SecAggPolicy(
            min_cohort_size=secagg_min_cohort, corrupted_clients=secagg_corrupted_clients
        )
        client = FederationClient(
            server,
            ClientKit.from_dir(identity),
            data,
            insecure=insecure,
            state_dir=state_dir,
            allow_test_mode_noise=allow_test_mode_noise,
            secagg_policy=policy,
        )
        signal.signal(signal.SIGTERM, lambda *_: client.shutdown())
        client.run()
    except FedwardenError as error:
        raise _error_exit(error) from None


@app.command("dashboard")
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
    from fedwarden.governance.audit import load_public_key, load_signing_key
    from fedwarden.monitor.dashboard import serve_dashboard

    _logging_console(level=logging.INFO)
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
        raise _error_exit(error) from None


@app.command("serve")
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
    from fedwarden.serve.app import serve_model

    _logging_console(level=logging.INFO)
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
        raise _error_exit(error) from None


vertical_app = typer.Typer(
    help="Vertical federated learning over gRPC: serve a feature party, or drive training.",
    no_args_is_help=True,
)
app.add_typer(vertical_app, name="vertical")


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
    import signal

    from fedwarden.privacy.ledger import PrivacyBudget
    from fedwarden.vertical.release import GaussianRelease
    from fedwarden.vertical.remote import FeaturePartyServer, load_party_table

    console = _logging_console(level=logging.INFO, stderr=False)
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
        raise _error_exit(error) from None
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
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
    from fedwarden.privacy.ledger import PrivacyBudget
    from fedwarden.vertical.remote import (
        RemoteFeatureParty,
        load_party_table,
        train_label_party,
    )
    from fedwarden.vertical.split import TrainingPlan

    console = _logging_console(stderr=False)
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
        raise _error_exit(error) from None
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
    from fedwarden.runtime.grpc.credentials import TlsKit

    if (identity is None) != insecure:
        raise FedwardenError(f"give --identity {kit}, or --insecure (loopback only)")
    tls = None if identity is None else TlsKit.from_dir(identity)
    party_name = name or (None if tls is None else tls.name)
    if party_name is None:
        raise FedwardenError("give --name: with --insecure no certificate names the party")
    return tls, party_name


def _logging_console(level: int = logging.WARNING, stderr: bool = True) -> Console:
    """The console that log lines (and progress) go to.

    On a terminal rich lays log lines out; elsewhere each record is one plain line.
    """
    console = Console(stderr=stderr)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # dp-accounting's RDP code logs, through absl, each Renyi order it drops for not
    # converging; the figure it returns already accounts for that.
    logging.getLogger("absl").setLevel(logging.ERROR)
    return console


def _raise_keyboard_interrupt(*_: object) -> None:
    """SIGTERM ends the server as Ctrl-C does: the run directory and store stay consistent."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    app()
