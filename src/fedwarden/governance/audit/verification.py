"""Verifying the audit log from its root public key: the first entry anyone tampered with.

:func:`verify` recomputes the chain in sequence order from the root public key and names the
first entry that was modified (its hash does not match its content), deleted (a gap in the
sequence), inserted (a duplicated sequence, or a link or signature no key holder made),
reordered (it links to an entry other than its predecessor) or signed by a key not allowed it
at that point (an unknown key, a kind not delegated, a revoked key, or a delegation or
revocation not signed by the root key). A truncated tail leaves a valid shorter chain; compare
:attr:`VerificationResult.entries` and the last entry hash with a copy kept elsewhere to
detect it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.governance.audit.entries import (
    GENESIS_HASH,
    AuditEntry,
    content_problem,
    read_entries,
)
from fedwarden.governance.audit.signers import Signers
from fedwarden.governance.store import RunStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationResult:
    """Whether the log verified; if not, the first bad entry's sequence and what is wrong."""

    ok: bool
    entries: int
    first_bad: int | None
    problem: str
    last_hash: str = GENESIS_HASH


def verify(store: RunStore, public_key: Ed25519PublicKey) -> VerificationResult:
    """Recompute the log's chain in sequence order and name the first entry that breaks it.

    ``public_key`` is the log's root key, the trust anchor: take it from outside the database
    (the server kit's ``audit.pub``). Each entry must be signed by it, or by a key that a
    root-signed :class:`SignerDelegated` earlier in the chain allowed that entry's kind and no
    :class:`SignerRevoked` has withdrawn since; delegations and revocations must be signed by
    the root key.
    """
    entries = read_entries(store)
    sequence_of_hash = {entry.entry_hash: entry.sequence for entry in entries}
    signers = Signers(public_key)
    previous_hash = GENESIS_HASH
    for expected, entry in enumerate(entries):
        problem = (
            _problem_of(entry, expected, previous_hash, sequence_of_hash)
            or signers.signer_problem(entry)
            or signers.record(entry)
        )
        if problem is not None:
            bad = min(entry.sequence, expected)
            logger.warning("audit log fails verification at entry %d: %s", bad, problem)
            return VerificationResult(False, len(entries), bad, problem, previous_hash)
        previous_hash = entry.entry_hash
    return VerificationResult(True, len(entries), None, "", previous_hash)


def _problem_of(
    entry: AuditEntry,
    expected: int,
    previous_hash: str,
    sequence_of_hash: Mapping[str, int],
) -> str | None:
    """What is wrong with the place or content of the entry at position ``expected``, or None."""
    if entry.sequence < expected:
        return f"sequence {entry.sequence} appears twice: an entry was inserted"
    if entry.sequence > expected:
        return f"entry {expected} is missing (the next is {entry.sequence}): it was deleted"
    if entry.previous_hash != previous_hash:
        linked = sequence_of_hash.get(entry.previous_hash)
        if linked is not None:
            return (
                f"entry {expected} follows entry {linked}, not entry {expected - 1}: "
                "entries were reordered"
            )
        return (
            f"entry {expected} does not link to entry {expected - 1} or any entry of the log: "
            "it was inserted or the previous entry was replaced"
        )
    return content_problem(entry)
