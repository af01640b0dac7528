"""Per-row entries of the privacy ledger: a party's passes over the rows of its own table.

A vertical feature party releases rows of its table pass by pass; each row is
one example, so a row composes only the passes that released it (parallel
composition), and a pass that would take any row past the party's budget is
refused before it happens. These entries live in the one
:class:`~fedwarden.privacy.ledger.PrivacyLedger` (DESIGN idea 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting import compute_spend, event_to_json
from fedwarden.privacy.ledger import BudgetExceeded, LedgerEntry, PrivacyBudget, PrivacyLedger

DELTA = 1e-5
MESSAGE = dp_event.GaussianDpEvent(2.0)
TRAINING = dp_event.ComposedDpEvent([MESSAGE, MESSAGE])  # the message and the DP-SGD update


def gaussians(count: int) -> float:
    """The oracle: epsilon of ``count`` Gaussian mechanisms (z = 2) on one example."""
    event = dp_event.SelfComposedDpEvent(MESSAGE, count)
    return compute_spend([event], DELTA, "replace_one").epsilon


def party_ledger(path: Path | None = None) -> PrivacyLedger:
    """Room for three Gaussian mechanisms per row, not four."""
    budget = PrivacyBudget((gaussians(3) + gaussians(4)) / 2, DELTA)
    return PrivacyLedger(
        budget,
        privacy_unit="example",
        neighboring="replace_one",
        path=path,
        client_budget=budget.epsilon,
    )


def test_each_row_composes_only_the_passes_that_released_it() -> None:
    ledger = party_ledger()
    ledger.charge_rows("clinic", [0, 1, 2], 0, "training pass", TRAINING, what="pass 0")
    ledger.charge_rows("clinic", [2, 3], 1, "predict pass", MESSAGE, what="pass 1")
    assert ledger.row_spent("clinic", 0).epsilon == pytest.approx(gaussians(2), rel=1e-9)
    assert ledger.row_spent("clinic", 2).epsilon == pytest.approx(gaussians(3), rel=1e-9)
    assert ledger.row_spent("clinic", 3).epsilon == pytest.approx(gaussians(1), rel=1e-9)
    assert ledger.row_spent("clinic", 9).epsilon == 0.0  # never released
    assert ledger.row_spent("lab", 0).epsilon == 0.0  # another party's table
    assert ledger.spent().epsilon == 0.0  # rows are not run-level releases
    assert ledger.client_ids == ()  # nor a client's whole-data releases


def test_a_pass_past_any_rows_budget_is_refused_and_records_nothing() -> None:
    ledger = party_ledger()
    ledger.charge_rows("clinic", [0, 1], 0, "training pass", TRAINING, what="pass 0")
    ledger.charge_rows("clinic", [0], 1, "predict pass", MESSAGE, what="pass 1")
    entries = ledger.entries
    with pytest.raises(BudgetExceeded, match=r"pass 2 \(.*predict pass x1, training pass x1\)"):
        ledger.charge_rows("clinic", [1, 0], 2, "predict pass", MESSAGE, what="pass 2")
    assert ledger.entries == entries
    assert ledger.row_spent("clinic", 1).epsilon == pytest.approx(gaussians(2), rel=1e-9)
    ledger.charge_rows("clinic", [1], 2, "predict pass", MESSAGE, what="pass 2")  # row 1 has room


def test_rows_must_be_distinct_and_a_kind_keeps_its_event() -> None:
    ledger = party_ledger()
    with pytest.raises(ConfigError, match="distinct rows"):
        ledger.charge_rows("clinic", [4, 4], 0, "predict pass", MESSAGE, what="pass")
    ledger.charge_rows("clinic", [4], 0, "predict pass", MESSAGE, what="pass")
    with pytest.raises(ConfigError, match="its own name"):
        ledger.charge_rows("clinic", [5], 1, "predict pass", TRAINING, what="pass")
    unbudgeted = PrivacyLedger(PrivacyBudget(1.0, DELTA), privacy_unit="example")
    with pytest.raises(ConfigError, match="client_budget"):
        unbudgeted.charge_rows("clinic", [0], 0, "predict pass", MESSAGE, what="pass")


def test_row_entries_persist_and_reload_with_the_same_spends(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = party_ledger(path)
    ledger.charge_rows("clinic", np.array([3, 1]), 0, "training pass", TRAINING, what="pass")
    ledger.charge_rows("clinic", [1], 1, "predict pass", MESSAGE, what="pass")
    stored = json.loads(path.read_text())["entries"]
    assert [entry["rows"] for entry in stored] == [[3, 1], [1]]
    reopened = party_ledger(path)
    assert reopened.entries == ledger.entries
    assert reopened.entries[0] == LedgerEntry(
        0, "training pass", TRAINING, client_id="clinic", rows=(3, 1)
    )
    for row in range(4):
        assert reopened.row_spent("clinic", row) == ledger.row_spent("clinic", row)
    with pytest.raises(BudgetExceeded):  # row 1 holds three mechanisms: the reload remembers
        reopened.charge_rows("clinic", [1], 2, "predict pass", MESSAGE, what="pass")


def test_a_ledger_file_written_before_row_entries_loads_and_keeps_its_bytes(
    tmp_path: Path,
) -> None:
    """The version-1 file as earlier fedwarden wrote it: entries without a ``rows`` key."""
    path = tmp_path / "ledger.json"
    update = dp_event.GaussianDpEvent(1.0)
    earlier = {
        "format": "fedwarden.privacy_ledger",
        "version": 1,
        "privacy_unit": "client",
        "neighboring": "add_remove",
        "budget": {"epsilon": 5.0, "delta": DELTA, "client_budget": 3.0},
        "budget_history": [
            {
                "epsilon": 5.0,
                "delta": DELTA,
                "client_budget": 3.0,
                "changed_by": None,
                "from_entry": 0,
                "recorded_at": "2026-11-30T10:00:00+00:00",
            }
        ],
        "entries": [
            {
                "round_index": 0,
                "kind": "model_update",
                "client_id": None,
                "note": "",
                "event": event_to_json(update),
            },
            {
                "round_index": 0,
                "kind": "dp_sgd",
                "client_id": "silo-1",
                "note": "",
                "event": event_to_json(update),
            },
        ],
    }
    text = json.dumps(earlier, indent=1)
    path.write_text(text)
    ledger = PrivacyLedger(
        PrivacyBudget(5.0, DELTA), privacy_unit="client", path=path, client_budget=3.0
    )
    assert [entry.rows for entry in ledger.entries] == [None, None]
    assert ledger.spent() == compute_spend([update], DELTA)
    assert ledger.client_spent("silo-1") == compute_spend([update], DELTA)
    ledger.charge(1, "model_update", update)  # rewrites the file
    rewritten = json.loads(path.read_text())
    assert rewritten["entries"][:2] == earlier["entries"]  # no rows key added to them
    assert "rows" not in rewritten["entries"][2]
