"""What a run shows on the console: progress, one row per round, the summary, log lines.

``ConsoleObserver`` follows a run (``fedwarden run``, ``fedwarden server``); ``summary_lines``
says what the run did and where its governance records are; ``logging_console`` is where
log lines go.
"""

from __future__ import annotations

import logging
import shlex
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fedwarden.core.records import RoundRecord, RunResult, round_number

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
# On a narrow terminal these columns go first, in this order; round, accuracy and clients stay.
_DROPPED_FIRST = ("compress", "MB down", "MB up", "rejected", "dropped", "seconds", "loss")
# The notes (epsilon, flagged clients, the round's note) fold within at least this width.
_NOTES_MIN_WIDTH = 20


class ConsoleObserver:
    """Progress bars (rounds; clients within the round) and one table row per round.

    On a terminal a round in flight shows how many of its cohort have replied, how long it
    has run and, from the replies so far, how long it has left; once every client replied
    it says the round is aggregating (secure aggregation's unmasking, noise, the central
    evaluation and the checkpoint come then). Elsewhere no progress is drawn at all.

    On a terminal the table fits its width: the columns that matter least are left out
    until the rest leave room for the notes, which fold onto further lines. Elsewhere (a
    log, CI) each row is one plain line with every column, never wrapped, whatever its
    length.
    """

    def __init__(self, console: Console, rounds: int, start: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.rounds_task = self.progress.add_task("rounds", total=rounds, completed=start)
        self.clients_task = self.progress.add_task("clients", total=0)
        self.shown = (
            columns_for_width(console.width) if console.is_terminal else tuple(range(len(_COLUMNS)))
        )
        header = tuple(name for name, _ in _COLUMNS)
        self._print(header, notes=())

    def round_started(self, round_index: int, cohort_size: int) -> None:
        self.progress.reset(
            self.clients_task,
            total=cohort_size,
            description=f"round {round_number(round_index)}: clients replied",
        )

    def client_finished(self, round_index: int) -> None:
        self.progress.advance(self.clients_task)
        if self.progress.tasks[self.clients_task].finished:
            self.progress.update(
                self.clients_task, description=f"round {round_number(round_index)}: aggregating"
            )

    def round_finished(self, record: RoundRecord) -> None:
        self.progress.advance(self.rounds_task)
        self._print(_cells(record), _notes(record))

    def _print(self, cells: tuple[str, ...], notes: tuple[str, ...]) -> None:
        row = " ".join(f"{cells[index]:>{_COLUMNS[index][1]}}" for index in self.shown)
        if not self.console.is_terminal:
            self.progress.console.print(
                row + "".join(f"  {note}" for note in notes), soft_wrap=True
            )
            return
        if not notes:
            self.progress.console.print(row, no_wrap=True, overflow="ellipsis", crop=True)
            return
        line = Table.grid(padding=(0, 2))
        line.add_column(no_wrap=True)
        line.add_column(overflow="fold")
        line.add_row(row, "  ".join(notes))
        self.progress.console.print(line, crop=True)

    def __enter__(self) -> ConsoleObserver:
        if self.console.is_terminal:  # a log or CI gets the plain lines only
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.console.is_terminal:
            self.progress.stop()


def columns_for_width(width: int) -> tuple[int, ...]:
    """The columns (indices into the table's) a terminal ``width`` wide shows beside the notes."""
    shown = list(_COLUMNS)
    for name in _DROPPED_FIRST:
        row_width = sum(column_width for _, column_width in shown) + len(shown) - 1
        if row_width + 2 + _NOTES_MIN_WIDTH <= width:
            break
        shown = [column for column in shown if column[0] != name]
    return tuple(_COLUMNS.index(column) for column in shown)


def _cells(record: RoundRecord) -> tuple[str, ...]:
    """The round's table cells, one per column of ``_COLUMNS``."""

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        str(round_number(record.round_index)),
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


def _notes(record: RoundRecord) -> tuple[str, ...]:
    """What else the round says, as rich markup: flagged clients, backdoor success, epsilon."""
    notes = []
    if record.flagged:
        notes.append(f"[yellow]flagged: {', '.join(record.flagged)}[/yellow]")
    if record.quarantined:
        notes.append(f"[red]quarantined: {', '.join(record.quarantined)}[/red]")
    if record.backdoor_success is not None:
        notes.append(f"backdoor success {record.backdoor_success:.3f}")
    if record.epsilon is not None:
        spent = f"epsilon {record.epsilon:.3f}"
        if record.epsilon_projected is not None:
            spent += f" (planned rounds: {record.epsilon_projected:.3f})"
        notes.append(spent)
    if record.note:
        notes.append(f"[yellow]{escape(record.note)}[/yellow]")
    return tuple(notes)


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


def summary_lines(result: RunResult) -> list[str]:
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
    return lines + governance_lines(result.extras)


def governance_lines(extras: dict[str, Any]) -> list[str]:
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


def logging_console(level: int = logging.WARNING, stderr: bool = True) -> Console:
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
