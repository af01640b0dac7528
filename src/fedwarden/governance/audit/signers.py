"""Which keys may sign which entries: the log's root key and the keys it delegated.

The log has one root key (the server kit's ``audit.key``; its ``audit.pub`` verifies the log).
The root key may delegate some event kinds to another Ed25519 key with a
:class:`~fedwarden.governance.audit.events.SignerDelegated` entry (a prediction service gets a
key for ``alert_raised`` only) and withdraw it with a
:class:`~fedwarden.governance.audit.events.SignerRevoked` entry; only the root key signs those
two kinds. Whoever takes a delegated key can then forge entries of its kinds only, until it is
revoked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.governance.audit.entries import AuditEntry
from fedwarden.governance.audit.events import (
    EVENT_TYPES,
    ROOT_ONLY_KINDS,
    AuditError,
    AuditEvent,
    SignerDelegated,
    SignerRevoked,
)


def _signature_is_valid(public_key: Ed25519PublicKey, entry: AuditEntry) -> bool:
    """Whether the entry's signature is the key holder's over its stored entry hash."""
    try:
        public_key.verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    """The raw 32 bytes of an Ed25519 public key in hex: how delegation entries name a key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


@dataclass(frozen=True)
class _Delegation:
    """A key delegated by ``event`` at entry ``sequence``; revoked at entry ``revoked_at``."""

    public_key: Ed25519PublicKey
    event: SignerDelegated
    sequence: int
    revoked_at: int | None = None

    def describe(self) -> str:
        """How messages name the key: its delegated name and the start of its hex."""
        return f"delegated key {self.event.name!r} ({self.event.public_key[:16]}...)"


class Signers:
    """Which keys may sign which entries at one point of the chain: the root key and delegates.

    The root public key is the trust anchor and must come from outside the log; a delegation
    or revocation counts only because the root key signed its entry, so :meth:`record` is
    given only entries whose hash was recomputed and whose signer :meth:`signer_problem`
    accepted.
    """

    def __init__(self, root: Ed25519PublicKey) -> None:
        self.root = root
        self.root_hex = public_key_hex(root)
        self.delegations: dict[str, _Delegation] = {}

    def signer_problem(self, entry: AuditEntry) -> str | None:
        """Why ``entry``'s signature is not acceptable at this point of the chain, or None."""
        if _signature_is_valid(self.root, entry):
            return None
        signer = next(
            (
                delegation
                for delegation in self.delegations.values()
                if _signature_is_valid(delegation.public_key, entry)
            ),
            None,
        )
        where = f"entry {entry.sequence} ({entry.kind})"
        if signer is None:
            return (
                f"{where}'s signature was not made with the log's key or any key it delegated "
                "before it (unknown key): it was forged (inserted or rewritten by someone "
                "without a signing key)"
            )
        if signer.revoked_at is not None:
            return (
                f"{where} was signed by {signer.describe()}, revoked at entry "
                f"{signer.revoked_at}: a revoked key signs nothing"
            )
        if entry.kind in ROOT_ONLY_KINDS:
            return (
                f"{where} was signed by {signer.describe()}: wrong signer, only the log's "
                "root key may delegate or revoke"
            )
        if entry.kind not in signer.event.kinds:
            return (
                f"{where} was signed by {signer.describe()}, which may sign only "
                f"{', '.join(signer.event.kinds)}: kind not delegated"
            )
        return None

    def event_problem(self, event: AuditEvent) -> str | None:
        """Why ``event`` (a delegation or a revocation) cannot take effect now, or None."""
        if isinstance(event, SignerDelegated):
            return self._delegation_problem(event)
        if isinstance(event, SignerRevoked):
            revoked = self.delegations.get(event.public_key)
            if revoked is None:
                return (
                    f"key {event.public_key} was never delegated; give the public key of a "
                    "delegated signer"
                )
            if revoked.revoked_at is not None:
                return f"{revoked.describe()} was already revoked at entry {revoked.revoked_at}"
        return None

    def _delegation_problem(self, event: SignerDelegated) -> str | None:
        """Why ``event`` cannot delegate its key, or None."""
        try:
            canonical = bytes.fromhex(event.public_key).hex() == event.public_key
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(event.public_key))
        except (ValueError, TypeError):
            canonical = False
        if not canonical:
            return (
                f"{event.public_key!r} is not a raw Ed25519 public key in lowercase hex (64 digits)"
            )
        if event.public_key == self.root_hex:
            return "the log's root key cannot be delegated: it already signs every kind"
        earlier = self.delegations.get(event.public_key)
        if earlier is not None:
            return (
                f"{earlier.describe()} was already delegated at entry {earlier.sequence}; a "
                "key is delegated once: create a new key"
            )
        allowed = sorted(EVENT_TYPES.keys() - ROOT_ONLY_KINDS)
        if not event.kinds or not set(event.kinds) <= set(allowed):
            return f"kinds {list(event.kinds)} cannot be delegated; give some of {allowed}"
        return None

    def record(self, entry: AuditEntry) -> str | None:
        """Apply ``entry`` if it delegates or revokes a key; why it cannot apply, or None."""
        if entry.kind not in ROOT_ONLY_KINDS:
            return None
        try:
            event = entry.event()
        except (ValueError, AuditError) as error:
            return f"entry {entry.sequence}'s {entry.kind} payload cannot be read: {error}"
        problem = None if event is None else self.event_problem(event)
        if problem is not None:
            return f"entry {entry.sequence} ({entry.kind}): {problem}"
        if isinstance(event, SignerDelegated):
            self.delegations[event.public_key] = _Delegation(
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(event.public_key)),
                event,
                entry.sequence,
            )
        elif isinstance(event, SignerRevoked):
            revoked = self.delegations[event.public_key]
            self.delegations[event.public_key] = replace(revoked, revoked_at=entry.sequence)
        return None

    def permission_problem(self, signer: Ed25519PublicKey, kind: str | None) -> str | None:
        """Why ``signer`` may not append an entry of ``kind`` (None: of any kind) now, or None."""
        key = public_key_hex(signer)
        if key == self.root_hex:
            return None
        delegation = self.delegations.get(key)
        if delegation is None:
            return (
                "this key is neither the log's root key nor a key it delegated; sign with the "
                "root key, or delegate this key (`fedwarden audit delegate`) and give the root "
                "public key"
            )
        if delegation.revoked_at is not None:
            return (
                f"this key ({delegation.describe()}) was revoked at entry "
                f"{delegation.revoked_at}; have the root key's holder delegate a new key"
            )
        if kind is not None and kind not in delegation.event.kinds:
            return (
                f"this key ({delegation.describe()}) may sign only "
                f"{', '.join(delegation.event.kinds)}, not {kind}; append {kind} with the "
                "log's root key"
            )
        return None
