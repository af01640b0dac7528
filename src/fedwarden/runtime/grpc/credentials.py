"""TLS material of a server or client startup kit, as gRPC credentials.

A kit is the folder ``fedwarden pki issue`` writes: ``tls.crt``, ``tls.key`` and
the deployment's ``ca.crt``; a client kit also holds its Ed25519
``identity.key``. Both ends authenticate each other (mutual TLS) against the
kit's CA: a certificate from any other CA is refused during the handshake.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from fedwarden.deploy.pki import PkiError, load_identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsKit:
    """One party's certificate chain, private key and the CA it trusts (PEM bytes)."""

    certificate: bytes
    private_key: bytes
    root_certificate: bytes
    name: str
    """The certificate's common name: the server's or client's name in the deployment."""

    @classmethod
    def from_dir(cls, directory: Path) -> TlsKit:
        """Read ``tls.crt``, ``tls.key`` and ``ca.crt`` from a startup kit folder."""
        files = {name: directory / name for name in ("tls.crt", "tls.key", "ca.crt")}
        missing = [name for name, path in files.items() if not path.is_file()]
        if missing:
            raise PkiError(
                f"{directory} is not a startup kit: {', '.join(missing)} missing; make one with "
                "`fedwarden pki issue server|client NAME --dir PKI`"
            )
        certificate = files["tls.crt"].read_bytes()
        try:
            subject = x509.load_pem_x509_certificate(certificate).subject
            name = str(subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        except (ValueError, IndexError):
            raise PkiError(f"{files['tls.crt']} is not a certificate with a common name") from None
        return cls(certificate, files["tls.key"].read_bytes(), files["ca.crt"].read_bytes(), name)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server side of mutual TLS: clients must present a certificate from our CA."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.root_certificate,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client side of mutual TLS: the server must present a certificate from our CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificate,
            private_key=self.private_key,
            certificate_chain=self.certificate,
        )


@dataclass(frozen=True)
class ClientKit:
    """A client's TLS kit and its long-term Ed25519 identity key (which signs its updates)."""

    tls: TlsKit
    identity: Ed25519PrivateKey

    @classmethod
    def from_dir(cls, directory: Path) -> ClientKit:
        """Read a client startup kit folder (``fedwarden pki issue client NAME``)."""
        return cls(TlsKit.from_dir(directory), load_identity(directory))

    @property
    def client_id(self) -> str:
        """The client's id: its certificate's common name."""
        return self.tls.name


def check_insecure_address(address: str) -> None:
    """Refuse to serve without TLS anywhere but loopback, and warn even there."""
    host = address.rsplit(":", 1)[0].strip("[]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise PkiError(
            f"--insecure serves without TLS and so binds loopback only, not {address!r}; use "
            "127.0.0.1:PORT, or give --identity with a server kit from `fedwarden pki issue`"
        )
    logger.warning(
        "serving WITHOUT TLS on %s: updates are signed but not encrypted, and clients are not "
        "authenticated by certificate; use only for local testing",
        address,
    )
