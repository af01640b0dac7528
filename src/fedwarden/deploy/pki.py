"""Provisioning for real deployments: a certificate authority, TLS certificates, client identities.

``init_ca`` makes a deployment's CA (ECDSA P-256, since TLS stacks such as gRPC's do not accept
Ed25519 certificates); ``issue`` makes a server or client startup kit signed by it, in the spirit
of NVIDIA FLARE's startup kits but as plain PEM files a user can read::

    DIR/ca.crt  DIR/ca.key
    DIR/servers/NAME/{tls.key, tls.crt, ca.crt, audit.key, audit.pub}
    DIR/clients/NAME/{tls.key, tls.crt, ca.crt, identity.key, identity.pub}

A client also gets a long-term Ed25519 identity key with which it signs its updates. Its public
key is embedded in the client's certificate (a non-critical extension holding the key's
SubjectPublicKeyInfo) and its SHA-256 fingerprint is named in the certificate's subject
alternative names as the URI ``fedwarden:identity:<hex>``, so a server that authenticated the
TLS peer also knows which key must have signed its updates. Private keys are written with mode
0600 and are never logged.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedwarden.core.errors import FedwardenError

logger = logging.getLogger(__name__)

Kind = Literal["server", "client"]
Purpose = Literal["server", "client"]

#: Private OID (under the UUID arc 2.25, ITU-T X.667) of the extension holding a client's
#: Ed25519 identity public key as DER SubjectPublicKeyInfo.
IDENTITY_EXTENSION_OID = x509.ObjectIdentifier("2.25.263512564910667314020272643026045037087")
IDENTITY_URI_PREFIX = "fedwarden:identity:"
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PURPOSE_USAGE = {
    "server": ExtendedKeyUsageOID.SERVER_AUTH,
    "client": ExtendedKeyUsageOID.CLIENT_AUTH,
}


class PkiError(FedwardenError):
    """A CA, certificate or key cannot be created, loaded or trusted as asked."""


@dataclass(frozen=True)
class CaPaths:
    """Where ``init_ca`` wrote the CA certificate and its private key."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class IssuedPaths:
    """Where ``issue`` wrote one server's or client's startup kit.

    ``identity_key`` and ``identity_public`` are set for clients only;
    ``audit_key`` and ``audit_public`` (the key that signs the audit log) for
    servers only.
    """

    directory: Path
    certificate: Path
    key: Path
    ca_certificate: Path
    identity_key: Path | None = None
    identity_public: Path | None = None
    audit_key: Path | None = None
    audit_public: Path | None = None


def init_ca(directory: Path | str, name: str, force: bool = False) -> CaPaths:
    """Create a deployment CA (ECDSA P-256, self-signed, 10 years) as DIR/ca.crt and DIR/ca.key."""
    root = Path(directory)
    paths = CaPaths(certificate=root / "ca.crt", key=root / "ca.key")
    if not force and (paths.certificate.exists() or paths.key.exists()):
        raise PkiError(
            f"{root} already holds a CA ({paths.certificate.name}); every certificate it issued "
            "would stop being trusted if it were replaced. Use another directory, or pass "
            "--force (force=True) to replace it."
        )
    root.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedwarden CA {name}")])
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private_file(paths.key, _private_pem(key))
    write_public_file(paths.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    logger.info("created CA %r in %s", name, root)
    return paths


def issue(
    directory: Path | str,
    kind: Kind,
    name: str,
    hosts: Sequence[str] = (),
    force: bool = False,
) -> IssuedPaths:
    """Issue a server or client startup kit signed by the CA in DIR (1-year TLS certificate).

    A server certificate carries serverAuth and the ``hosts`` (DNS names or IP addresses; by
    default localhost, 127.0.0.1 and ::1) as subject alternative names. A client certificate
    carries clientAuth, CN=NAME, and the binding to a new Ed25519 identity key.
    """
    if kind not in ("server", "client"):
        raise PkiError(f"certificate kind {kind!r}: use server or client")
    if not _NAME.fullmatch(name):
        raise PkiError(
            f"name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit (it becomes a directory name)"
        )
    root = Path(directory)
    ca_certificate, ca_key = _load_ca(root)
    folder = root / f"{kind}s" / name
    paths = IssuedPaths(
        directory=folder,
        certificate=folder / "tls.crt",
        key=folder / "tls.key",
        ca_certificate=folder / "ca.crt",
        identity_key=folder / "identity.key" if kind == "client" else None,
        identity_public=folder / "identity.pub" if kind == "client" else None,
        audit_key=folder / "audit.key" if kind == "server" else None,
        audit_public=folder / "audit.pub" if kind == "server" else None,
    )
    if folder.exists() and not force:
        raise PkiError(
            f"{folder} already exists; re-issuing would replace its keys. Pick another name, or "
            "pass --force (force=True) to replace them."
        )
    folder.mkdir(parents=True, exist_ok=True)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName]
    identity: Ed25519PrivateKey | None = None
    if kind == "server":
        names = [_general_name(host) for host in (hosts or DEFAULT_HOSTS)]
    else:
        identity = Ed25519PrivateKey.generate()
        names = [x509.UniformResourceIdentifier(identity_uri(identity.public_key()))]
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([_PURPOSE_USAGE[kind]]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if identity is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(IDENTITY_EXTENSION_OID, _public_der(identity.public_key())),
            critical=False,
        )
    certificate = builder.sign(ca_key, hashes.SHA256())
    write_private_file(paths.key, _private_pem(tls_key))
    write_public_file(paths.certificate, certificate.public_bytes(serialization.Encoding.PEM))
    write_public_file(paths.ca_certificate, ca_certificate.public_bytes(serialization.Encoding.PEM))
    if identity is not None and paths.identity_key and paths.identity_public:
        write_private_file(paths.identity_key, _private_pem(identity))
        write_public_file(
            paths.identity_public,
            identity.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    if paths.audit_key is not None and paths.audit_public is not None:
        audit = Ed25519PrivateKey.generate()
        write_private_file(paths.audit_key, _private_pem(audit))
        write_public_file(
            paths.audit_public,
            audit.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    logger.info("issued %s certificate %r in %s", kind, name, folder)
    return paths


def identity_uri(public_key: Ed25519PublicKey) -> str:
    """The URI naming an identity key in a certificate: ``fedwarden:identity:<SHA-256 hex>``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return IDENTITY_URI_PREFIX + hashlib.sha256(raw).hexdigest()


def load_identity(path: Path | str) -> Ed25519PrivateKey:
    """Load a client's Ed25519 identity key from its kit directory or its identity.key file."""
    file = Path(path)
    if file.is_dir():
        file = file / "identity.key"
    try:
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(
            f"no identity key at {file}; issue one with: fedwarden pki issue client NAME --dir DIR"
        ) from None
    except ValueError:
        raise PkiError(f"{file} is not a PEM private key; re-issue the client's kit") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{file} holds a {type(key).__name__}, not an Ed25519 identity key")
    return key


def identity_from_certificate(cert_pem: bytes) -> Ed25519PublicKey:
    """The Ed25519 identity key a client certificate binds, checked against its fingerprint URI."""
    certificate = _load_certificate(cert_pem, "client certificate")
    subject = _common_name(certificate)
    try:
        extension = certificate.extensions.get_extension_for_oid(IDENTITY_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise PkiError(
            f"certificate {subject!r} carries no fedwarden identity key; only client certificates "
            "from `fedwarden pki issue client` do"
        ) from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise PkiError(f"certificate {subject!r}: identity extension cannot be read")
    try:
        public_key = serialization.load_der_public_key(value.value)
    except ValueError:
        raise PkiError(f"certificate {subject!r}: identity extension is not a public key") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise PkiError(f"certificate {subject!r}: identity key is not Ed25519")
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = alternative.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if identity_uri(public_key) not in uris:
        raise PkiError(
            f"certificate {subject!r}: its identity key does not match the fingerprint URI in its "
            "subject alternative names; do not trust it, re-issue the client's kit"
        )
    return public_key


def verify_chain(
    cert_pem: bytes,
    ca_pem: bytes,
    purpose: Purpose | None = None,
    at: datetime.datetime | None = None,
) -> x509.Certificate:
    """Check that a certificate was issued by this CA, is valid ``at`` (now) and fits ``purpose``.

    Returns the parsed certificate; raises :class:`PkiError` naming what failed.
    """
    certificate = _load_certificate(cert_pem, "certificate")
    ca_certificate = _load_certificate(ca_pem, "CA certificate")
    subject = _common_name(certificate)
    when = at or _now()
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(
            f"certificate {subject!r} was not issued by CA {_common_name(ca_certificate)!r} "
            f"(its issuer is {certificate.issuer.rfc4514_string()!r}); issue it from this "
            "deployment's CA with: fedwarden pki issue"
        ) from None
    for checked, label in ((certificate, "certificate"), (ca_certificate, "CA certificate")):
        if when < checked.not_valid_before_utc or when > checked.not_valid_after_utc:
            raise PkiError(
                f"{label} {_common_name(checked)!r} is valid from "
                f"{checked.not_valid_before_utc:%Y-%m-%d} to {checked.not_valid_after_utc:%Y-%m-%d}"
                f", not at {when:%Y-%m-%d %H:%M} UTC; issue a new one (and check the clock)"
            )
    if not _is_ca(ca_certificate):
        raise PkiError(
            f"{_common_name(ca_certificate)!r} is not a CA certificate (basic constraints)"
        )
    if purpose is not None:
        wanted = _PURPOSE_USAGE[purpose]
        try:
            usages = list(
                certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            )
        except x509.ExtensionNotFound:
            usages = []
        if wanted not in usages:
            raise PkiError(
                f"certificate {subject!r} is not for TLS {purpose} authentication (extended key "
                f"usage lacks {purpose}Auth); issue one with: fedwarden pki issue {purpose} NAME"
            )
    return certificate


def peer_identities(
    certificates: Mapping[str, bytes], ca_pem: bytes
) -> dict[str, Ed25519PublicKey]:
    """The identity keys of peers whose client certificates chain to ``ca_pem``, by client id.

    Each certificate must be issued by this CA for TLS client authentication,
    be valid now, name the client id as its common name and bind an identity
    key to its fingerprint URI; otherwise :class:`PkiError` names the peer and
    what failed. A client uses this on certificates a server relays, so it
    trusts its own CA and never the server's word.
    """
    identities = {}
    for client_id, pem in certificates.items():
        try:
            certificate = verify_chain(pem, ca_pem, "client")
            name = _common_name(certificate)
            if name != client_id:
                raise PkiError(f"the certificate relayed for {client_id!r} names {name!r}")
            identities[client_id] = identity_from_certificate(pem)
        except PkiError as error:
            raise PkiError(f"peer {client_id!r}: {error}") from None
    return identities


def _load_ca(root: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key in ``root``, checked to belong together."""
    try:
        certificate = _load_certificate((root / "ca.crt").read_bytes(), f"{root / 'ca.crt'}")
        key = serialization.load_pem_private_key((root / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise PkiError(
            f"no CA in {root}; create one first with: fedwarden pki init {root}"
        ) from None
    except ValueError:
        raise PkiError(f"{root / 'ca.key'} is not a PEM private key; recreate the CA") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != (
        certificate.public_key()
    ):
        raise PkiError(f"{root / 'ca.key'} does not belong to {root / 'ca.crt'}; recreate the CA")
    return certificate, key


def _load_certificate(pem: bytes, label: str) -> x509.Certificate:
    """Parse one PEM certificate, or raise PkiError naming ``label``."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise PkiError(f"{label} is not a PEM X.509 certificate") from None


def _common_name(certificate: x509.Certificate) -> str:
    """The subject's common name, or the whole subject when it has none."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def _is_ca(certificate: x509.Certificate) -> bool:
    """Whether the certificate's basic constraints mark it as a CA."""
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    """Key usage of a CA (certificate and CRL signing) or a TLS leaf (digital signature)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    """A subject alternative name for a host: an IP address when it parses as one, else DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        raise PkiError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host)


def _private_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (protected by its file mode)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_der(key: Ed25519PublicKey) -> bytes:
    """A public key as DER SubjectPublicKeyInfo."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600), created so from the start."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a public file (certificate or public key) readable by all (0644)."""
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _now() -> datetime.datetime:
    """The current time in UTC."""
    return datetime.datetime.now(datetime.UTC)
