"""The audit log's keys: loading the root key and creating delegated signing keys."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedwarden.deploy.pki import write_private_file, write_public_file
from fedwarden.governance.audit.chain import AuditLog
from fedwarden.governance.audit.events import AuditError, SignerDelegated
from fedwarden.governance.audit.signers import public_key_hex

logger = logging.getLogger(__name__)


def delegate_signer(
    log: AuditLog, key_path: Path, kinds: Sequence[str], *, name: str, by: str
) -> SignerDelegated:
    """Create an Ed25519 key and delegate ``kinds`` to it in ``log`` (opened with the root key).

    The key is written to ``key_path`` (PEM, mode 0600) and its public key beside it with the
    suffix ``.pub`` (PEM); neither may exist yet. If the log refuses the delegation, both files
    are removed again, so that a key file always stands for a recorded delegation.
    """
    public_path = key_path.with_suffix(".pub")
    for path in (key_path, public_path):
        if path.exists():
            raise AuditError(
                f"{path} exists; a delegated key is created once: choose another output or "
                "remove the old key (revoke it first if it was delegated)"
            )
    key = Ed25519PrivateKey.generate()
    event = SignerDelegated(public_key_hex(key.public_key()), tuple(kinds), by, name)
    try:
        write_private_file(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        write_public_file(
            public_path,
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        log.append(event)
    except (OSError, AuditError) as error:
        key_path.unlink(missing_ok=True)
        public_path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise AuditError(f"cannot write {error.filename}: {error.strerror}") from None
        raise
    logger.info("delegated %s to audit signer %r (%s)", ", ".join(kinds), name, event.public_key)
    return event


def load_signing_key(path: Path | str) -> Ed25519PrivateKey:
    """Load the audit log's Ed25519 signing key from an unencrypted PEM (PKCS#8) file."""
    key = _load_pem(
        path, "private", lambda data: serialization.load_pem_private_key(data, password=None)
    )
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Load the audit log's Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    key = _load_pem(path, "public", serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def _load_pem(path: Path | str, what: str, parse: Callable[[bytes], object]) -> object:
    """Read a PEM key file with ``parse``, or raise AuditError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise AuditError(f"cannot read the {what} key file {path}: {error.strerror}") from None
    try:
        return parse(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuditError(
            f"{path} is not an unencrypted PEM {what} key ({error}); give an Ed25519 key in PEM"
        ) from None
