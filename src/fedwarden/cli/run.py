"""``fedwarden run`` (train as a config says, or resume a run) and ``fedwarden query``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedwarden.build.run import resumed
from fedwarden.build.run import run as run_config
from fedwarden.cli.common import BudgetChangedBy, budget_change, error_exit
from fedwarden.cli.console import ConsoleObserver, logging_console, summary_lines
from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.errors import FedwardenError


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
        str | None, typer.Option(help="Override the runtime: local, inprocess, ray or grpc.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Override the number of workers.")] = None,
    runs_dir: Annotated[
        Path | None, typer.Option(help="Where run directories are created.")
    ] = None,
    budget_epsilon: Annotated[
        float | None,
        typer.Option(help="With --resume: change the run's privacy budget to this epsilon."),
    ] = None,
    budget_changed_by: BudgetChangedBy = None,
) -> None:
    """Train a federated model as described by CONFIG."""
    console = logging_console(stderr=as_json)
    try:
        change = budget_change(budget_epsilon, budget_changed_by)
        if resume is not None:
            if config is not None:
                raise FedwardenError("give either CONFIG or --resume RUN_DIR, not both")
            settings, start = resumed(resume)
        else:
            settings, start = _config_for(config, rounds, runtime, workers, runs_dir), 0
        with ConsoleObserver(console, settings.rounds, start) as observer:
            result = run_config(settings, resume=resume, observer=observer, budget_change=change)
    except FedwardenError as error:
        raise error_exit(error) from None
    for line in summary_lines(result):
        console.print(line, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")


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
    # Deferred: it adds about 10 ms to the start-up of every command, `--help` included.
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
        raise error_exit(error) from None
    summary = result.as_dict()
    for name, value in summary.items():
        console.print(f"{name}: {escape(str(value))}")
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
