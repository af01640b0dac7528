"""The entries of the audit log: an event, its time, its link to the previous entry, signed.

Entry ``sequence`` = 0, 1, 2, ... (contiguous) of the ``audit_log`` table of the
:class:`~fedwarden.governance.store.RunStore` holds::

    entry_hash = SHA-256(previous_hash_bytes || canonical_json({sequence, timestamp,
                                                               kind, payload}))
    signature  = Ed25519_sign(signing_key, entry_hash_bytes)

where ``previous_hash`` is the hex ``entry_hash`` of entry ``sequence - 1`` (64 zeros for
entry 0) and ``timestamp`` is the UTC ISO 8601 instant of the append.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Select, select

from fedwarden.governance.audit.events import EVENT_TYPES, AuditError, AuditEvent, canonical_json
from fedwarden.governance.store import RunStore, audit_log

GENESIS_HASH = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the log: an event, when it was recorded, and its link and signature."""

    sequence: int
    timestamp: str
    kind: str
    payload: str
    previous_hash: str
    entry_hash: str
    signature: str

    def event(self) -> AuditEvent | None:
        """The entry's event, or None if its kind is unknown to this version of fedwarden."""
        event_type = EVENT_TYPES.get(self.kind)
        return None if event_type is None else event_type.from_payload(json.loads(self.payload))


def entry_hash(previous_hash: str, sequence: int, timestamp: str, kind: str, payload: str) -> str:
    """SHA-256 of the previous entry's hash bytes and the canonical JSON of this entry."""
    document = canonical_json(
        {"sequence": sequence, "timestamp": timestamp, "kind": kind, "payload": json.loads(payload)}
    )
    return hashlib.sha256(bytes.fromhex(previous_hash) + document.encode()).hexdigest()


def read_entries(store: RunStore) -> list[AuditEntry]:
    """Every stored entry, in sequence order (rows sharing a sequence in insertion order)."""
    with store.reading() as connection:
        rows = connection.execute(
            select_entries().order_by(audit_log.c.sequence, audit_log.c.entry_id)
        ).all()
    return [AuditEntry(**row._asdict()) for row in rows]


def select_entries() -> Select[Any]:
    """The query of every column of the ``audit_log`` rows that make an :class:`AuditEntry`."""
    return select(*(audit_log.c[field.name] for field in fields(AuditEntry)))


def content_problem(entry: AuditEntry) -> str | None:
    """Whether the entry's stored hash is not that of its content, and why."""
    try:
        canonical = canonical_json(json.loads(entry.payload)) == entry.payload
        recomputed = entry_hash(
            entry.previous_hash, entry.sequence, entry.timestamp, entry.kind, entry.payload
        )
    except (ValueError, AuditError):
        return f"entry {entry.sequence}'s payload is not valid JSON: it was modified"
    if not canonical or recomputed != entry.entry_hash:
        return f"entry {entry.sequence}'s content does not match its hash: it was modified"
    return None
