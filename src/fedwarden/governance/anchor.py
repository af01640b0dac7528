"""Root-signed checkpoints of the audit log, kept outside the store: a deleted tail shows.

A hash chain proves that no entry was changed, inserted or reordered, but not
that none was removed from the end: a log cut after entry 2 of 5 is a valid
chain of 3. Someone with write access to the store (a compromised prediction
service, an administrator) could so delete a revocation that is the latest
entry. An *anchor* records the log's entry count and head hash at one moment,
signed by the log's root key, in a file outside the database (the run
directory); the server writes one after every round and at the end of a run,
in the spirit of Certificate Transparency's signed tree heads (RFC 6962, 3.5).
:func:`verify_anchored` then requires the store's verified chain to reach the
anchor and to pass through its head hash, and names the anchor when it does
not. Entries after the anchor are checked by the chain alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedwarden.core.files import write_atomic
from fedwarden.core.records import RoundRecord
from fedwarden.governance.audit import (
    GENESIS_HASH,
    AuditError,
    VerificationResult,
    canonical_json,
    read_entries,
    verify,
)
from fedwarden.governance.store import RunStore

ANCHOR_FILE = "audit-anchor.json"
"""The latest anchor's file name in a run directory."""
_PURPOSE = "fedwarden audit anchor v1"


@dataclass(frozen=True)
class AuditAnchor:
    """The audit log's length and head hash at ``anchored_at``, signed by its root key."""

    entries: int
    head_hash: str
    anchored_at: str
    signature: str = ""

    def document(self) -> bytes:
        """The bytes the signature covers: the fields but the signature, and their purpose."""
        fields = {key: value for key, value in asdict(self).items() if key != "signature"}
        return canonical_json({**fields, "purpose": _PURPOSE}).encode()

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """Whether the anchor's signature is ``public_key``'s."""
        try:
            public_key.verify(bytes.fromhex(self.signature), self.document())
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def read(cls, path: Path) -> AuditAnchor:
        """The anchor in ``path``; AuditError naming the file if it is not one."""
        try:
            fields: dict[str, Any] = json.loads(path.read_text())
            return cls(
                entries=int(fields["entries"]),
                head_hash=str(fields["head_hash"]),
                anchored_at=str(fields["anchored_at"]),
                signature=str(fields["signature"]),
            )
        except FileNotFoundError:
            raise AuditError(f"no audit anchor at {path}") from None
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"{path} is not an audit anchor (JSON with entries, head_hash, "
                "anchored_at, signature)"
            ) from None


def write_anchor(store: RunStore, root_key: Ed25519PrivateKey, path: Path) -> AuditAnchor:
    """Sign the log's current length and head hash with its root key; write it to ``path``.

    The file is replaced atomically: a crash leaves the previous anchor whole.
    """
    entries = read_entries(store)
    anchor = AuditAnchor(
        entries=len(entries),
        head_hash=entries[-1].entry_hash if entries else GENESIS_HASH,
        anchored_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    anchor = replace(anchor, signature=root_key.sign(anchor.document()).hex())
    write_atomic(path, (json.dumps(asdict(anchor), indent=2) + "\n").encode())
    return anchor


def verify_anchored(
    store: RunStore, public_key: Ed25519PublicKey, anchor_path: Path
) -> VerificationResult:
    """Verify the log's chain (:func:`verify`), and that it still holds the anchored entries.

    Fails naming the anchor when the anchor is not signed by ``public_key``,
    when the log has fewer entries than the anchor recorded (its tail was
    deleted), or when the entry at the anchor's head is not the anchored one.
    """
    anchor = AuditAnchor.read(anchor_path)
    where = f"the anchor {anchor_path} ({anchor.entries} entries, {anchor.anchored_at})"
    if not anchor.signed_by(public_key):
        return VerificationResult(False, 0, None, f"{where} is not signed by the log's root key")
    result = verify(store, public_key)
    if not result.ok:
        return result
    if result.entries < anchor.entries:
        return VerificationResult(
            False,
            result.entries,
            result.entries,
            f"the log ends after {result.entries} entries but {where} recorded "
            f"{anchor.entries}: entries {result.entries} to {anchor.entries - 1} were deleted "
            "(a truncated tail)",
            result.last_hash,
        )
    if anchor.entries:
        head = read_entries(store)[anchor.entries - 1]
        if head.entry_hash != anchor.head_hash:
            return VerificationResult(
                False,
                result.entries,
                head.sequence,
                f"entry {head.sequence} is not the head that {where} recorded: the log was "
                "rewritten up to it",
                result.last_hash,
            )
    return result


class AnchorEveryRound:
    """Writes the run's anchor after every round (a round monitor), and when asked."""

    def __init__(self, store: RunStore, root_key: Ed25519PrivateKey, path: Path) -> None:
        self.store = store
        self.root_key = root_key
        self.path = path

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        """Anchor the log as it stands after the round's audit entries."""
        self.anchor()

    def anchor(self) -> AuditAnchor:
        """Anchor the log as it stands now."""
        return write_anchor(self.store, self.root_key, self.path)
