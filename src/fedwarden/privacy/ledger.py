"""The privacy ledger: every private release charged to one budgeted, persisted account.

DESIGN idea 5.

Every release that touches private data (a round's noisy model update, the
noisy count of adaptive clipping, a metrics or analytics query, a silo's
DP-SGD steps) is a ``dp_accounting`` DpEvent appended to the ledger. The spend
is recomputed from all entries by :func:`~fedwarden.privacy.accounting.compute_spend`
(dp-accounting's PLD accountant reported, RDP alongside). ``check`` refuses a
release that would overspend the run budget before anyone trains; ``charge``
records a release that has happened.

The ledger is a JSON file rewritten atomically on every charge (temporary file,
fsync, ``os.replace``, fsync of the directory), so a crash leaves either the
old or the new ledger, never a partial one, and a restarted run (``--resume``)
continues from what was spent instead of from zero. The file fixes the privacy
unit and the neighbouring relation. The budget changes only when the caller
says who changes it (``budget_changed_by``); a ledger opened with another
budget and no name is refused, and every change is kept, with its author, in
the file's ``budget_history``.

Three kinds of entries share the file: run-level entries (``client_id`` None),
whose composition is the run's guarantee; per-client entries, a silo's
own releases (e.g. DP-SGD on its examples) against ``client_budget``, composed
per client and never with other clients' (their data are disjoint); and
per-row entries (``rows`` set), a party's passes over rows of its own table
(a vertical feature party's released activations), each row composing only
the entries that released it (parallel composition: rows are distinct
examples) and checked against ``client_budget`` before the pass
(:meth:`PrivacyLedger.charge_rows`).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.core.files import write_atomic
from fedwarden.privacy.accounting import (
    Neighboring,
    PrivacySpend,
    compute_spend,
    event_from_json,
    event_to_json,
)
from fedwarden.privacy.accounting.library import dp_event

logger = logging.getLogger(__name__)

PrivacyUnit = Literal["client", "example"]

_FORMAT = "fedwarden.privacy_ledger"
_VERSION = 1


@dataclass(frozen=True)
class PrivacyBudget:
    """A run's (epsilon, delta) budget: the guarantee it must not exceed."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and self.epsilon > 0):
            raise ConfigError(
                f"privacy budget epsilon must be > 0, got {self.epsilon!r}; typical values "
                "are 1 to 10"
            )
        if not (isinstance(self.delta, int | float) and 0 < self.delta < 1):
            raise ConfigError(
                f"privacy budget delta must be in (0, 1), got {self.delta!r}; choose it below "
                "1 / (number of privacy units), e.g. 1e-5"
            )


@dataclass(frozen=True)
class LedgerEntry:
    """One release charged to the ledger: when, what kind, and the DpEvent that describes it.

    ``kind`` names the release (``"model_update"``, ``"clip_count"``,
    ``"metrics_query"``, ``"analytics"``, ``"dp_sgd"``); ``client_id`` is set
    for a silo's own releases, None for run-level ones.
    """

    round_index: int
    kind: str
    event: dp_event.DpEvent
    note: str = ""
    client_id: str | None = None
    rows: tuple[int, ...] | None = None
    """A per-row entry's rows of ``client_id``'s table, each released once by ``event``."""


class BudgetExceeded(FedwardenError):
    """A release would spend more than the budget has left; it was refused before it happened."""

    def __init__(
        self, what: str, spent: PrivacySpend, would_spend: PrivacySpend, budget: PrivacyBudget
    ) -> None:
        self.what = what
        self.spent = spent
        self.would_spend = would_spend
        self.budget = budget
        cost = would_spend.epsilon - spent.epsilon
        remaining = max(budget.epsilon - spent.epsilon, 0.0)
        super().__init__(
            f"{what} would spend epsilon={cost:.4g} (delta={budget.delta:g}) but only "
            f"{remaining:.4g} of the budget epsilon={budget.epsilon:g} remains (spent so far: "
            f"epsilon={spent.epsilon:.4g}); it would bring the total to "
            f"epsilon={would_spend.epsilon:.4g} ({would_spend.accountant.upper()}). Stop here, "
            "or plan fewer rounds, more noise or a lower sampling rate."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.spent, self.would_spend, self.budget))


class PrivacyLedger:
    """Every private release of a run, its spend by dp-accounting, and the budget it must keep."""

    def __init__(
        self,
        budget: PrivacyBudget,
        *,
        privacy_unit: PrivacyUnit,
        neighboring: Neighboring = "add_remove",
        path: Path | None = None,
        client_budget: float | None = None,
        budget_changed_by: str | None = None,
    ) -> None:
        if privacy_unit not in get_args(PrivacyUnit):
            raise ConfigError(
                f"privacy_unit must be one of {list(get_args(PrivacyUnit))}, got "
                f"{privacy_unit!r}: 'client' protects all of a client's data (user-level DP), "
                "'example' one training example (DP-SGD)"
            )
        if neighboring not in get_args(Neighboring):
            raise ConfigError(
                f"neighboring must be one of {list(get_args(Neighboring))}, got {neighboring!r}: "
                "'add_remove' for Poisson sampling, 'replace_one' for fixed-size cohorts"
            )
        if client_budget is not None and not (
            isinstance(client_budget, int | float) and client_budget > 0
        ):
            raise ConfigError(f"client_budget must be an epsilon > 0, got {client_budget!r}")
        self._budget = budget
        self._privacy_unit: PrivacyUnit = privacy_unit
        self._neighboring: Neighboring = neighboring
        self._path = None if path is None else Path(path)
        self._client_budget = None if client_budget is None else float(client_budget)
        self._entries: list[LedgerEntry] = []
        self._run_events: list[dp_event.DpEvent] = []
        self._client_events: dict[str, list[dp_event.DpEvent]] = {}
        self._history: list[dict[str, Any]] = []
        self._spent: PrivacySpend | None = None
        self._client_spent: dict[str, PrivacySpend] = {}
        self._row_kinds: dict[str, dict[str, dp_event.DpEvent]] = {}
        """Per client with per-row entries: each kind's event (one kind, one event)."""
        self._row_counts: dict[str, dict[str, npt.NDArray[np.int64]]] = {}
        """Per client and kind: how many entries of that kind released each row."""
        self._row_spends: dict[tuple[str, tuple[tuple[str, int], ...]], PrivacySpend] = {}
        """Spend by client and (kind, count) history: a table's rows share a few histories."""
        if self._path is not None and self._path.exists():
            self._load(self._path)
        self._record_budget(budget_changed_by)

    @property
    def budget(self) -> PrivacyBudget:
        """The run budget every run-level release is checked against."""
        return self._budget

    @property
    def client_budget(self) -> float | None:
        """Each client's own epsilon budget (at the run's delta), or None."""
        return self._client_budget

    @property
    def privacy_unit(self) -> PrivacyUnit:
        """What one guarantee protects: a client's data or one example."""
        return self._privacy_unit

    @property
    def neighboring(self) -> Neighboring:
        """The neighbouring relation every release is accounted under."""
        return self._neighboring

    @property
    def path(self) -> Path | None:
        """The JSON file the ledger is kept in (None: in memory only)."""
        return self._path

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Every charged release, in charge order."""
        return tuple(self._entries)

    @property
    def next_round_index(self) -> int:
        """One past the largest round index charged so far (0 for an empty ledger)."""
        return max((entry.round_index for entry in self._entries), default=-1) + 1

    def spent(self) -> PrivacySpend:
        """The run-level guarantee of every release charged so far."""
        if self._spent is None:
            self._spent = self._compute(self._run_events)
        return self._spent

    def spent_with(self, events: Sequence[dp_event.DpEvent]) -> PrivacySpend:
        """The run-level guarantee if ``events`` were released next."""
        return self._compute([*self._run_events, *events])

    def check(self, events: Sequence[dp_event.DpEvent], what: str) -> PrivacySpend:
        """The spend after releasing ``events``; BudgetExceeded instead if that is over budget."""
        would_spend = self.spent_with(events)
        if would_spend.epsilon > self._budget.epsilon:
            raise BudgetExceeded(what, self.spent(), would_spend, self._budget)
        return would_spend

    def charge(
        self, round_index: int, kind: str, event: dp_event.DpEvent, note: str = ""
    ) -> PrivacySpend:
        """Record a run-level release that happened, persist the ledger, and return the new spend.

        The release is counted even if writing the file fails (the error is
        raised): the data were released, so the spend must not shrink.
        """
        spend = self.spent_with([event])
        self._append(LedgerEntry(round_index, kind, event, note))
        self._run_events.append(event)
        self._spent = spend
        self._persist()
        return spend

    def projection(self, per_round: Sequence[dp_event.DpEvent], rounds: int) -> PrivacySpend:
        """The run-level spend after ``rounds`` more rounds that each release ``per_round``."""
        if not (isinstance(rounds, int) and rounds >= 0):
            raise ConfigError(f"rounds to project must be a whole number >= 0, got {rounds!r}")
        if rounds == 0:
            return self.spent()
        return self.spent_with([dp_event.SelfComposedDpEvent(e, rounds) for e in per_round])

    def charge_client(
        self, client_id: str, round_index: int, event: dp_event.DpEvent, kind: str = "dp_sgd"
    ) -> PrivacySpend:
        """Record a release on one client's own data (e.g. its DP-SGD steps); return its spend."""
        events = self._client_events.get(client_id, [])
        spend = self._compute([*events, event])
        self._append(LedgerEntry(round_index, kind, event, client_id=client_id))
        self._client_events.setdefault(client_id, []).append(event)
        self._client_spent[client_id] = spend
        self._persist()
        return spend

    def charge_rows(
        self,
        client_id: str,
        rows: npt.ArrayLike,
        round_index: int,
        kind: str,
        event: dp_event.DpEvent,
        what: str,
    ) -> None:
        """Record one pass releasing each of the distinct table ``rows`` of ``client_id`` once.

        Each row composes the entries that released it, on its own; a pass
        that would take any of the rows past ``client_budget`` raises
        :class:`BudgetExceeded` (naming ``what`` and that row's history) and
        records nothing. Every entry of one ``kind`` must release the same ``event``.
        """
        if self._client_budget is None:
            raise ConfigError(
                f"per-row entries of {client_id!r} are checked against client_budget, which this "
                "ledger lacks; open it with client_budget=EPSILON"
            )
        released = np.asarray(rows, dtype=np.int64)
        if (
            released.ndim != 1
            or released.size == 0
            or len(np.unique(released)) != len(released)
            or released.min() < 0
        ):
            raise ConfigError(
                f"a pass over {client_id!r}'s table must name one or more distinct rows >= 0, "
                f"got {released!r}"
            )
        kinds = self._row_kinds.setdefault(client_id, {})
        if kinds.setdefault(kind, event) != event:
            raise ConfigError(
                f"per-row entries of kind {kind!r} released {kinds[kind]}, not {event}; give "
                "each kind of pass its own name"
            )
        counts = self._row_counts.setdefault(client_id, {})
        names = sorted(kinds)
        table = self._grown(client_id, int(released.max()) + 1)
        histories = np.stack([table[name][released] for name in names], axis=1)
        one_pass = np.array([name == kind for name in names], dtype=np.int64)
        budget = PrivacyBudget(self._client_budget, self._budget.delta)
        for before in np.unique(histories, axis=0):
            would_spend = self._row_spend(client_id, names, before + one_pass)
            if would_spend.epsilon > budget.epsilon:
                history = ", ".join(f"{n} x{c}" for n, c in zip(names, before, strict=True))
                raise BudgetExceeded(
                    f"{what} (one of its rows already released by {history})",
                    self._row_spend(client_id, names, before),
                    would_spend,
                    budget,
                )
        counts[kind][released] += 1
        entry = LedgerEntry(
            round_index, kind, event, client_id=client_id, rows=tuple(released.tolist())
        )
        self._append(entry)
        self._persist()

    def row_spent(self, client_id: str, row: int) -> PrivacySpend:
        """The guarantee of every per-row entry that released ``row`` of ``client_id``'s table."""
        names = sorted(self._row_kinds.get(client_id, {}))
        counts = self._row_counts.get(client_id, {})
        history = np.array(
            [counts[name][row] if row < len(counts[name]) else 0 for name in names],
            dtype=np.int64,
        )
        return self._row_spend(client_id, names, history)

    def _grown(self, client_id: str, rows: int) -> dict[str, npt.NDArray[np.int64]]:
        """``client_id``'s per-kind row counts, each at least ``rows`` long (new rows at zero)."""
        counts = self._row_counts.setdefault(client_id, {})
        for kind in self._row_kinds.get(client_id, {}):
            current = counts.get(kind, np.zeros(0, dtype=np.int64))
            if len(current) < rows:
                current = np.concatenate([current, np.zeros(rows - len(current), dtype=np.int64)])
            counts[kind] = current
        return counts

    def _row_spend(
        self, client_id: str, kinds: Sequence[str], counts: npt.NDArray[np.int64]
    ) -> PrivacySpend:
        """The spend of a row released by ``counts[i]`` entries of each of ``kinds``."""
        history = tuple((kind, int(count)) for kind, count in zip(kinds, counts, strict=True))
        key = (client_id, history)
        if key not in self._row_spends:
            events = self._row_kinds.get(client_id, {})
            self._row_spends[key] = self._compute(
                [
                    dp_event.SelfComposedDpEvent(events[kind], count)
                    for kind, count in history
                    if count
                ]
            )
        return self._row_spends[key]

    def spent_on(self, kind: str) -> float:
        """The epsilon of the releases of one ``kind`` alone (the largest client's, per client).

        What the privacy report's ``releases`` says each kind cost; 0.0 when none was charged.
        """
        run_events = [e.event for e in self._entries if e.kind == kind and e.client_id is None]
        client_events: dict[str, list[dp_event.DpEvent]] = {}
        for entry in self._entries:
            if entry.kind == kind and entry.client_id is not None and entry.rows is None:
                client_events.setdefault(entry.client_id, []).append(entry.event)
        groups = [run_events, *client_events.values()]
        return max((self._compute(events).epsilon for events in groups if events), default=0.0)

    @property
    def client_ids(self) -> tuple[str, ...]:
        """The clients charged for releases on their own data, sorted."""
        return tuple(sorted(self._client_events))

    def client_spent(self, client_id: str) -> PrivacySpend:
        """The guarantee of every release charged to ``client_id``'s own data (zero if none)."""
        spend = self._client_spent.get(client_id)
        if spend is None:
            spend = self._compute(self._client_events.get(client_id, []))
            self._client_spent[client_id] = spend
        return spend

    def client_would_exceed(self, client_id: str, event: dp_event.DpEvent) -> bool:
        """Whether releasing ``event`` on ``client_id``'s data takes it past ``client_budget``."""
        if self._client_budget is None:
            return False
        spend = self._compute([*self._client_events.get(client_id, []), event])
        return spend.epsilon > self._client_budget

    def report(self) -> dict[str, Any]:
        """The ledger's part of the privacy report, JSON-ready."""
        spent = self.spent()
        client_epsilons = {
            client_id: self.client_spent(client_id).epsilon for client_id in self.client_ids
        }
        return {
            "epsilon": spent.epsilon,
            "delta": spent.delta,
            "accountant": spent.accountant,
            "epsilon_rdp": spent.epsilon_rdp,
            "epsilon_pld": spent.epsilon_pld,
            "privacy_unit": self._privacy_unit,
            "neighboring": self._neighboring,
            "budget_epsilon": self._budget.epsilon,
            "budget_delta": self._budget.delta,
            "budget_remaining": max(self._budget.epsilon - spent.epsilon, 0.0),
            "client_budget": self._client_budget,
            "max_client_epsilon": max(client_epsilons.values(), default=None),
            "client_epsilons": client_epsilons,
            "entries": len(self._entries),
            "budget_history": list(self.budget_history),
        }

    def _compute(self, events: Sequence[dp_event.DpEvent]) -> PrivacySpend:
        return compute_spend(events, self._budget.delta, self._neighboring)

    def _append(self, entry: LedgerEntry) -> None:
        if not isinstance(entry.event, dp_event.DpEvent):
            raise ConfigError(
                f"a ledger entry needs a dp_accounting DpEvent, got {type(entry.event).__name__}"
            )
        self._entries.append(entry)

    @property
    def budget_history(self) -> tuple[dict[str, Any], ...]:
        """Every budget the ledger was kept under, from which entry, and who set it."""
        return tuple(dict(item) for item in self._history)

    def _record_budget(self, changed_by: str | None) -> None:
        """Start the budget history, or extend it with a change that ``changed_by`` asked for.

        A budget that differs from the file's without a name is refused: raising the budget
        in a config file must not silently extend what the run may spend.
        """
        current = {
            "epsilon": self._budget.epsilon,
            "delta": self._budget.delta,
            "client_budget": self._client_budget,
        }
        last = self._history[-1] if self._history else None
        if last is not None and all(last[key] == value for key, value in current.items()):
            return
        if last is not None:
            if not changed_by:
                raise ConfigError(
                    f"privacy ledger {self._path} was kept under the budget epsilon="
                    f"{last['epsilon']}, delta={last['delta']}, client_budget="
                    f"{last['client_budget']}, but this run declares epsilon={current['epsilon']},"
                    f" delta={current['delta']}, client_budget={current['client_budget']}; a "
                    "budget changes only explicitly, naming who changes it (`fedwarden run "
                    "--resume RUN_DIR --budget-epsilon E --budget-changed-by NAME`, or "
                    "`fedwarden query ... --budget-changed-by NAME`), never by editing a config"
                )
            logger.warning(
                "%s changed the privacy budget of %s from epsilon=%s, delta=%s, "
                "client_budget=%s to epsilon=%s, delta=%s, client_budget=%s after %d releases",
                changed_by,
                self._path,
                last["epsilon"],
                last["delta"],
                last["client_budget"],
                *current.values(),
                len(self._entries),
            )
        self._history.append(
            {
                **current,
                "changed_by": changed_by,
                "from_entry": len(self._entries),
                "recorded_at": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )
        self._persist()

    def _persist(self) -> None:
        if self._path is None:
            return
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "privacy_unit": self._privacy_unit,
            "neighboring": self._neighboring,
            "budget": {
                "epsilon": self._budget.epsilon,
                "delta": self._budget.delta,
                "client_budget": self._client_budget,
            },
            "budget_history": self._history,
            "entries": [_entry_to_json(entry) for entry in self._entries],
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self._path, json.dumps(payload, indent=1).encode(), private=True)

    def _load(self, path: Path) -> None:
        """Read the entries and budget history of an existing ledger file."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"privacy ledger {path} cannot be read ({error}); restore it from a backup. "
                "Deleting it would reset the privacy spent by this run."
            ) from error
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ConfigError(f"{path} is not a fedwarden privacy ledger (no format {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ConfigError(
                f"privacy ledger {path} has version {data.get('version')!r}; this fedwarden "
                f"reads version {_VERSION}"
            )
        for name, declared in (
            ("privacy_unit", self._privacy_unit),
            ("neighboring", self._neighboring),
        ):
            stored = data.get(name)
            if stored != declared:
                raise ConfigError(
                    f"privacy ledger {path} was kept with {name}={stored!r} but this run "
                    f"declares {name}={declared!r}; a run cannot change what its guarantee "
                    f"means midway: declare {name}={stored!r}, or start a new run directory"
                )
        try:
            entries = [_entry_from_json(item) for item in data["entries"]]
            history = [dict(item) for item in data["budget_history"]]
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"privacy ledger {path} is damaged ({error!r}); restore it from a backup"
            ) from error
        for entry in entries:
            self._entries.append(entry)
            if entry.client_id is None:
                self._run_events.append(entry.event)
            elif entry.rows is None:
                self._client_events.setdefault(entry.client_id, []).append(entry.event)
            else:
                self._row_kinds.setdefault(entry.client_id, {})[entry.kind] = entry.event
                counts = self._grown(entry.client_id, max(entry.rows) + 1)
                counts[entry.kind][list(entry.rows)] += 1
        self._history = history


def _entry_to_json(entry: LedgerEntry) -> dict[str, Any]:
    encoded = {
        "round_index": entry.round_index,
        "kind": entry.kind,
        "client_id": entry.client_id,
        "note": entry.note,
        "event": event_to_json(entry.event),
    }
    if entry.rows is not None:  # only per-row entries carry it: other entries keep their bytes
        encoded["rows"] = list(entry.rows)
    return encoded


def _entry_from_json(data: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        round_index=int(data["round_index"]),
        kind=str(data["kind"]),
        event=event_from_json(data["event"]),
        note=str(data.get("note", "")),
        client_id=None if data.get("client_id") is None else str(data["client_id"]),
        rows=None if data.get("rows") is None else tuple(int(row) for row in data["rows"]),
    )
