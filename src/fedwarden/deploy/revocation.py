"""Certificate revocation: a CA-signed X.509 CRL the server checks on every call.

Client certificates last a year; a client whose site is decommissioned, or
whose kit leaked, must be shut out before then. ``fedwarden pki revoke NAME``
adds the serial number of client NAME's certificate to the deployment's
revocation list (RFC 5280 CRL, signed by the CA) and copies it into each
server kit in the PKI directory::

    DIR/revoked.pem  DIR/servers/NAME/revoked.pem

The server reads its kit's ``revoked.pem`` (:class:`RevocationList`) and
re-reads it when the file changes, so a revocation takes effect on a running
server without a restart: a revoked certificate is refused at ``Join`` and on
every later call, and the enrolment of its identity key is revoked in the
store, which never enrols that key again.
"""

from __future__ import annotations

import datetime
import logging
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedwarden.deploy.pki import (
    LEAF_VALIDITY,
    PkiError,
    _load_ca,
    _load_certificate,
    _now,
    write_public_file,
)

logger = logging.getLogger(__name__)

REVOCATION_LIST = "revoked.pem"
"""The CRL's file name, in the PKI directory and in each server kit."""


def revoke(directory: Path | str, name: str) -> list[Path]:
    """Revoke client ``name``'s certificate: add it to the CA's CRL; the files written.

    The CRL is re-signed by the CA in ``directory`` and copied into every
    server kit there; copy it to servers provisioned elsewhere.
    """
    root = Path(directory)
    ca_certificate, ca_key = _load_ca(root)
    path = root / "clients" / name / "tls.crt"
    if not path.is_file():
        raise PkiError(
            f"no client kit {name!r} in {root}: the CA revokes the certificates it issued "
            f"(`fedwarden pki issue client {name} --dir {root}`)"
        )
    certificate = _load_certificate(path.read_bytes(), str(path))
    revoked = _read_revoked(root / REVOCATION_LIST, ca_certificate)
    revoked.setdefault(certificate.serial_number, _now())
    crl = _sign(revoked, ca_certificate, ca_key).public_bytes(serialization.Encoding.PEM)
    written = [root / REVOCATION_LIST]
    written += sorted(kit / REVOCATION_LIST for kit in (root / "servers").glob("*") if kit.is_dir())
    for target in written:
        write_public_file(target, crl)
    logger.info("revoked client %r (certificate serial %x)", name, certificate.serial_number)
    return written


class RevocationList:
    """The revoked certificate serials of one CA, read from ``path`` again when it changes.

    A missing file means nothing is revoked yet. A file that is not a CRL
    signed by ``ca_certificate`` is refused at start; if it turns bad later the
    last good list stays in force (deleting or corrupting the file revokes
    nothing back) and the problem is logged.
    """

    def __init__(self, path: Path, ca_certificate: bytes) -> None:
        self.path = path
        self._ca = _load_certificate(ca_certificate, "the CA certificate")
        self._lock = threading.Lock()
        self._serials: frozenset[int] = frozenset()
        self._read_at: tuple[int, int] | None = None
        self._refresh(strict=True)

    def is_revoked(self, certificate_pem: bytes) -> bool:
        """Whether the certificate's serial number is on the list."""
        self._refresh(strict=False)
        certificate = _load_certificate(certificate_pem, "the peer's certificate")
        return certificate.serial_number in self._serials

    def _refresh(self, *, strict: bool) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (status.st_mtime_ns, status.st_size)
        with self._lock:
            if stamp == self._read_at:
                return
            try:
                serials = frozenset(_read_revoked(self.path, self._ca))
            except PkiError as error:
                if strict:
                    raise
                logger.error("%s; the revocations read before stay in force", error)
                return
            self._serials, self._read_at = serials, stamp
        logger.info("%d certificate(s) revoked by %s", len(serials), self.path)


def _read_revoked(path: Path, ca_certificate: x509.Certificate) -> dict[int, datetime.datetime]:
    """The serials (and revocation dates) of the CRL at ``path``, checked to be the CA's."""
    if not path.is_file():
        return {}
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate revocation list") from None
    public_key = ca_certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        raise PkiError(
            f"{path} is not signed by this deployment's CA; copy revoked.pem from the PKI "
            "directory again"
        )
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def _sign(
    revoked: dict[int, datetime.datetime],
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.CertificateRevocationList:
    """A CRL of ``revoked`` serials, valid until the longest a certificate lives."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now)
        .next_update(now + LEAF_VALIDITY)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())
