"""The round table: it fits a terminal's width, and stays one plain line per round elsewhere."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from rich.console import Console

from fedwarden.cli.console import ConsoleObserver
from fedwarden.core.records import RoundRecord

HEADER = "round     loss accuracy clients dropped rejected  seconds    MB up  MB down compress"


def _round(round_index: int, **notes: Any) -> RoundRecord:
    return RoundRecord(
        round_index=round_index,
        sampled=10,
        participants=9,
        dropped=1,
        failed=0,
        rejected=0,
        rejection_reasons={},
        applied=True,
        loss=0.5,
        accuracy=0.9,
        train_loss=0.4,
        round_seconds=1.5,
        bytes_up=2_000_000,
        bytes_down=1_000_000,
        **notes,
    )


LOUD_ROUND = _round(
    1,
    epsilon=1.234,
    epsilon_projected=3.5,
    flagged=["client_001", "client_002", "client_003"],
    note="applied with fewer updates than the minimum cohort",
)


def _table(width: int, terminal: bool) -> list[str]:
    """The lines the observer prints for a quiet round and a round with many notes."""
    output = StringIO()
    console = Console(file=output, width=width, force_terminal=terminal, color_system=None)
    observer = ConsoleObserver(console, rounds=2, start=0)
    observer.round_finished(_round(0))
    observer.round_finished(LOUD_ROUND)
    return output.getvalue().splitlines()


@pytest.mark.parametrize("width", [40, 60, 80, 100, 140])
def test_on_a_terminal_no_line_of_the_table_is_wider_than_the_terminal(width: int) -> None:
    lines = _table(width, terminal=True)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    first = lines[1].split()
    assert first[0] == "1" and "0.9000" in first and "9/10" in first  # round, accuracy, clients
    notes = " ".join(" ".join(lines[2:]).split())  # the notes, folded onto further lines
    assert "epsilon 1.234 (planned rounds: 3.500)" in notes


def test_a_narrow_terminal_drops_the_transfer_columns_before_accuracy_and_clients() -> None:
    header = _table(60, terminal=True)[0].split()
    assert header == ["round", "loss", "accuracy", "clients"]


def test_a_wide_terminal_shows_every_column_and_the_notes_on_the_rounds_line() -> None:
    lines = _table(240, terminal=True)
    assert lines[0].rstrip() == HEADER
    assert len(lines) == 3
    assert "flagged: client_001, client_002, client_003  epsilon 1.234" in lines[2]


def test_outside_a_terminal_each_round_is_one_plain_line_with_every_column() -> None:
    lines = _table(60, terminal=False)
    assert lines[0] == HEADER
    assert lines[2] == (
        "    2   0.5000   0.9000    9/10       1        0     1.50     2.00     1.00        -"
        "  flagged: client_001, client_002, client_003  epsilon 1.234 (planned rounds: 3.500)"
        "  applied with fewer updates than the minimum cohort"
    )
    assert len(lines) == 3


def _round_in_flight(terminal: bool) -> tuple[str, str]:
    """What the console shows three replies into a cohort of ten, and once all replied."""
    output = StringIO()
    console = Console(file=output, width=120, force_terminal=terminal, color_system=None)
    with ConsoleObserver(console, rounds=2, start=0) as observer:
        observer.round_started(0, 10)
        for _ in range(3):
            observer.client_finished(0)
        observer.progress.refresh()
        in_flight = output.getvalue()
        for _ in range(7):
            observer.client_finished(0)
        observer.progress.refresh()
        aggregating = output.getvalue()[len(in_flight) :]
        observer.round_finished(_round(0))
    return in_flight, aggregating + output.getvalue()[len(in_flight) + len(aggregating) :]


def test_on_a_terminal_a_round_in_flight_shows_its_replies_then_that_it_aggregates() -> None:
    in_flight, later = _round_in_flight(terminal=True)
    drawn = in_flight.split("\x1b[2K")[-1]  # the progress as last redrawn
    assert re.search(r"round 1: clients replied .*━.* 3/10 ", drawn), drawn
    assert re.search(r"rounds .* 0/2 ", in_flight)
    assert "round 1: aggregating" in later and "10/10" in later
    assert "    1   0.5000   0.9000    9/10" in later  # the round's row, printed above


def test_outside_a_terminal_a_round_in_flight_prints_nothing_but_the_plain_lines() -> None:
    in_flight, later = _round_in_flight(terminal=False)
    assert in_flight == HEADER + "\n"
    assert later == (
        "    1   0.5000   0.9000    9/10       1        0     1.50     2.00     1.00        -\n"
    )
