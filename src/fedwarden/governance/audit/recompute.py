"""Recomputing a model version's privacy claim from the signed audit log alone.

The registry says what a model version's training spent (``epsilon_spent`` in its ``dp``
claim). :func:`recompute` checks that claim without trusting the operator who wrote it:

1. it verifies the audit log's chain from its root public key, and refuses a log that fails
   (an edited DP event fails here, at the entry that records it);
2. it collects the DP events of the runs behind ``MODEL@VERSION`` (its run and the runs of
   the versions it was trained from) from their :class:`~.events.RoundCompleted` entries,
   each the exact dp-accounting event the run's privacy ledger charged;
3. it composes them with the run's own accountant
   (:func:`~fedwarden.privacy.accounting.compute_spend`: dp-accounting's PLD accountant,
   RDP as a cross-check) at the logged delta and neighbouring relation; run-level releases
   compose together, a client's own releases (DP-SGD at a silo, local DP) compose per client,
   and the run's epsilon is the largest, as the ledger reports it;
4. it compares the result with the registry's claim, within a relative tolerance of
   :data:`RELATIVE_TOLERANCE`, and records which dp-accounting version computed it.

Nothing but the store and the root public key is read: no ledger file, no run directory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from fedwarden.core.errors import ConfigError
from fedwarden.core.records import round_number
from fedwarden.governance.audit.entries import AuditEntry, read_entries
from fedwarden.governance.audit.events import RoundCompleted
from fedwarden.governance.audit.verification import VerificationResult, verify
from fedwarden.governance.store import RunStore, model_versions
from fedwarden.privacy.accounting import Neighboring, compute_spend, event_from_json

RELATIVE_TOLERANCE = 1e-9
"""How far, relative to the claim, a recomputed epsilon may fall from it and still agree."""

ACCOUNTING_PACKAGE = "dp-accounting"
"""The distribution whose accountants recompute the epsilon; its version is recorded."""

CLAIM_FIELD = "epsilon_spent"
"""The key of a registered version's ``dp`` claim that :func:`recompute` checks."""


def recompute_command(store_url: str, reference: str, public_key: str = "audit.pub") -> str:
    """The command an auditor runs to recompute ``reference``'s privacy claim."""
    return f"fedwarden audit recompute {store_url} {reference} --public-key {public_key}"


@dataclass(frozen=True)
class AuditedRelease:
    """One DP event the audit log records: which entry holds it, which round charged it."""

    sequence: int
    round_index: int
    release: str
    client_id: str | None
    event: Mapping[str, Any]
    """The dp-accounting event as :func:`~fedwarden.privacy.accounting.event_to_json` wrote it."""

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values (``round`` counted from 1)."""
        return {
            "sequence": self.sequence,
            "round": round_number(self.round_index),
            "release": self.release,
            "client_id": self.client_id,
            "event": dict(self.event),
        }


@dataclass(frozen=True)
class RecomputedRun:
    """One run behind the version: its audited DP events, recomputed and claimed epsilon."""

    reference: str
    """The ``MODEL@VERSION`` the run registered, whose claim it is checked against."""
    run_id: str
    releases: tuple[AuditedRelease, ...]
    delta: float | None
    neighboring: str | None
    recomputed_epsilon: float | None
    claimed_epsilon: float | None
    problem: str | None
    """Why the claim does not stand (None: it does)."""

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values."""
        return {
            "reference": self.reference,
            "run_id": self.run_id,
            "delta": self.delta,
            "neighboring": self.neighboring,
            "recomputed_epsilon": self.recomputed_epsilon,
            "claimed_epsilon": self.claimed_epsilon,
            "problem": self.problem,
            "releases": [release.to_json() for release in self.releases],
        }


@dataclass(frozen=True)
class Recomputation:
    """Whether ``reference``'s privacy claim is what the audited DP events give, and why not."""

    reference: str
    ok: bool
    reason: str
    """Empty when ``ok``; else what failed, naming the entry, run or claim."""
    accounting_version: str
    """The version of dp-accounting that recomputed the epsilon."""
    verification: VerificationResult
    runs: tuple[RecomputedRun, ...]

    def to_json(self) -> dict[str, Any]:
        """Its fields as JSON values."""
        return {
            "reference": self.reference,
            "ok": self.ok,
            "reason": self.reason,
            "accountant": f"{ACCOUNTING_PACKAGE} {self.accounting_version}",
            "relative_tolerance": RELATIVE_TOLERANCE,
            "verification": {
                "ok": self.verification.ok,
                "entries": self.verification.entries,
                "first_bad": self.verification.first_bad,
                "problem": self.verification.problem,
                "last_hash": self.verification.last_hash,
            },
            "runs": [run.to_json() for run in self.runs],
        }


@dataclass(frozen=True)
class _Registered:
    """What the registry says about one version: its run, its parent, its privacy claim."""

    reference: str
    run_id: str
    parent: str | None
    dp: Mapping[str, Any] | None


def recompute(store: RunStore, public_key: Ed25519PublicKey, reference: str) -> Recomputation:
    """Recompute the epsilon of the runs behind ``reference`` from the log; compare the claims.

    ``public_key`` is the log's root key, taken from outside the database. A log that fails
    verification is refused (nothing is recomputed), naming the first bad entry.
    """
    accounting_version = installed_version(ACCOUNTING_PACKAGE)
    verification = verify(store, public_key)
    entries = read_entries(store)
    if not verification.ok:
        return Recomputation(
            reference,
            False,
            f"the audit log fails verification at {_describe(entries, verification.first_bad)}:"
            f" {verification.problem}; its DP events cannot be trusted, so nothing was "
            "recomputed",
            accounting_version,
            verification,
            (),
        )
    # Only the entries verified: one appended since (a live server) is read next time.
    entries = [entry for entry in entries if entry.sequence < verification.entries]
    try:
        lineage = _lineage(store, reference)
    except LookupError as error:
        return Recomputation(reference, False, str(error), accounting_version, verification, ())
    runs = tuple(_recompute_run(registered, entries) for registered in lineage)
    problems = [run.problem for run in runs if run.problem is not None]
    return Recomputation(
        reference, not problems, "; ".join(problems), accounting_version, verification, runs
    )


def audited_releases(entries: Sequence[AuditEntry], run_id: str) -> list[AuditedRelease]:
    """Every DP event the log's round entries of ``run_id`` record, in log order."""
    releases: list[AuditedRelease] = []
    for entry in entries:
        event = entry.event()
        if isinstance(event, RoundCompleted) and event.run_id == run_id:
            releases.extend(
                AuditedRelease(
                    entry.sequence,
                    event.round_index,
                    str(item["release"]),
                    item.get("client_id"),
                    item["event"],
                )
                for item in event.dp_events or ()
            )
    return releases


def _recompute_run(registered: _Registered, entries: Sequence[AuditEntry]) -> RecomputedRun:
    """Recompute one run's epsilon from its logged DP events and check the version's claim."""
    rounds = [
        (entry, event)
        for entry in entries
        if isinstance(event := entry.event(), RoundCompleted) and event.run_id == registered.run_id
    ]
    releases = tuple(audited_releases(entries, registered.run_id))
    deltas = {event.delta for _, event in rounds if event.delta is not None}
    relations = {event.neighboring for _, event in rounds if event.neighboring is not None}
    delta = next(iter(deltas)) if len(deltas) == 1 else None
    neighboring = next(iter(relations)) if len(relations) == 1 else None
    claim = None if registered.dp is None else registered.dp.get(CLAIM_FIELD)
    claimed = float(claim) if isinstance(claim, int | float) else None

    def result(recomputed: float | None, problem: str | None) -> RecomputedRun:
        return RecomputedRun(
            registered.reference,
            registered.run_id,
            releases,
            delta,
            neighboring,
            recomputed,
            claimed,
            problem,
        )

    where = f"run {registered.run_id} (behind {registered.reference})"
    unrecorded = [
        entry.sequence
        for entry, event in rounds
        if event.epsilon_spent is not None and event.neighboring is None
    ]
    if unrecorded:
        return result(
            None,
            f"{where}: round entries {unrecorded} record an epsilon but not the DP events "
            "behind it (written before the log recorded them); it cannot be recomputed",
        )
    if not releases:
        if registered.dp is None or claimed is None:
            return result(None, None)
        return result(
            None,
            f"the registry claims {CLAIM_FIELD}={claimed!r} for {registered.reference}, but "
            f"the audit log records no DP event of {where}",
        )
    if len(deltas) > 1 or len(relations) > 1:
        return result(
            None,
            f"{where}: its round entries disagree on delta {sorted(deltas)} or the "
            f"neighbouring relation {sorted(map(str, relations))}",
        )
    recomputed = _epsilon(releases, delta, neighboring, where)
    if isinstance(recomputed, str):
        return result(None, recomputed)
    if claimed is None:
        return result(
            recomputed,
            f"the registry holds no privacy claim ({CLAIM_FIELD}) for {registered.reference},"
            f" whose run {registered.run_id} released {len(releases)} audited DP events "
            f"(epsilon={recomputed!r})",
        )
    if not math.isclose(recomputed, claimed, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0):
        return result(
            recomputed,
            f"the registry's claim for {registered.reference} ({CLAIM_FIELD}={claimed!r} in "
            f"its dp) is not what the {len(releases)} DP events the audit log records for "
            f"{where} give: epsilon={recomputed!r} at delta={delta!r} ({neighboring})",
        )
    return result(recomputed, None)


def _epsilon(
    releases: Sequence[AuditedRelease], delta: float | None, neighboring: str | None, where: str
) -> float | str:
    """The run's epsilon: the largest of its run-level and per-client compositions.

    A string instead says why the events cannot be accounted.
    """
    if delta is None or neighboring not in ("add_remove", "replace_one"):
        return f"{where}: its round entries record no delta or neighbouring relation"
    relation: Neighboring = "add_remove" if neighboring == "add_remove" else "replace_one"
    groups: dict[str | None, list[Any]] = {}
    try:
        for release in releases:
            groups.setdefault(release.client_id, []).append(event_from_json(release.event))
        return max(compute_spend(events, delta, relation).epsilon for events in groups.values())
    except ConfigError as error:
        return f"{where}: its audited DP events cannot be accounted: {error}"


def _lineage(store: RunStore, reference: str) -> list[_Registered]:
    """``reference`` and the versions it was trained from, newest first; LookupError if absent."""
    lineage: list[_Registered] = []
    current: str | None = reference
    while current is not None and all(item.reference != current for item in lineage):
        model, _, version = current.partition("@")
        with store.reading() as connection:
            row = connection.execute(
                select(
                    model_versions.c.run_id, model_versions.c.parent, model_versions.c.dp_json
                ).where(model_versions.c.model == model, model_versions.c.version == version)
            ).one_or_none()
        if row is None:
            raise LookupError(
                f"the registry has no model version {current!r}; name one as MODEL@X.Y.Z "
                "(`fedwarden models list`)"
            )
        dp = None if row.dp_json is None else json.loads(row.dp_json)
        lineage.append(_Registered(current, row.run_id, row.parent, dp))
        current = row.parent
    return lineage


def _describe(entries: Sequence[AuditEntry], sequence: int | None) -> str:
    """Entry ``sequence`` named with what it records (its kind, run and round, if readable)."""
    entry = next((entry for entry in entries if entry.sequence == sequence), None)
    if entry is None:
        return f"entry {sequence}"
    try:
        payload = json.loads(entry.payload)
    except ValueError:
        return f"entry {sequence} ({entry.kind})"
    details = ", ".join(
        f"{label} {number(payload[name])}"
        for name, label, number in (
            ("run_id", "run_id", str),
            ("round_index", "round", _round_label),
        )
        if isinstance(payload, dict) and name in payload
    )
    held = " with its DP events" if isinstance(payload, dict) and payload.get("dp_events") else ""
    return f"entry {sequence} ({entry.kind}{held}{', ' + details if details else ''})"


def _round_label(round_index: Any) -> str:
    """A recorded ``round_index`` as people number rounds (from 1); as written if no number."""
    return str(round_number(round_index)) if isinstance(round_index, int) else str(round_index)
