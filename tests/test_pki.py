"""Provisioning: the CA, server and client kits, identity binding, chain verification, CLI."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.core.errors import FedwardenError
from fedwarden.deploy.pki import (
    PkiError,
    identity_from_certificate,
    identity_uri,
    init_ca,
    issue,
    load_identity,
    verify_chain,
)


def mode(path: Path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


def extended_usages(certificate: x509.Certificate) -> list[x509.ObjectIdentifier]:
    """The certificate's extended key usages."""
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with one server kit (custom hosts) and one client kit."""
    root = tmp_path_factory.mktemp("pki")
    init_ca(root, "test")
    issue(root, "server", "aggregator", hosts=("fl.example.org", "10.0.0.7"))
    issue(root, "client", "site-1")
    return root


def test_init_writes_a_self_signed_ca_with_private_key_readable_by_owner_only(
    tmp_path: Path,
) -> None:
    paths = init_ca(tmp_path, "acme")
    assert mode(paths.key) == 0o600
    assert mode(paths.certificate) == 0o644
    certificate = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    assert certificate.subject == certificate.issuer
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "fedwarden CA acme"
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=3650)
    certificate.verify_directly_issued_by(certificate)


def test_init_refuses_to_overwrite_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    paths = init_ca(tmp_path, "acme")
    original = paths.key.read_bytes()
    with pytest.raises(FedwardenError, match=r"already holds a CA.*--force"):
        init_ca(tmp_path, "acme")
    assert paths.key.read_bytes() == original
    init_ca(tmp_path, "acme", force=True)
    assert paths.key.read_bytes() != original


def test_server_certificate_verifies_against_its_ca_and_carries_sans_and_server_auth(
    pki: Path,
) -> None:
    kit = pki / "servers" / "aggregator"
    assert mode(kit / "tls.key") == 0o600
    assert (kit / "ca.crt").read_bytes() == (pki / "ca.crt").read_bytes()
    certificate = verify_chain(
        (kit / "tls.crt").read_bytes(), (pki / "ca.crt").read_bytes(), purpose="server"
    )
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    assert extended_usages(certificate) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    tls_key = serialization.load_pem_private_key((kit / "tls.key").read_bytes(), password=None)
    assert tls_key.public_key() == certificate.public_key()


def test_server_certificate_names_loopback_by_default(tmp_path: Path) -> None:
    init_ca(tmp_path, "acme")
    paths = issue(tmp_path, "server", "local")
    certificate = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_client_certificate_carries_client_auth_and_binds_identity_pub(pki: Path) -> None:
    kit = pki / "clients" / "site-1"
    assert mode(kit / "tls.key") == 0o600
    assert mode(kit / "identity.key") == 0o600
    cert_pem = (kit / "tls.crt").read_bytes()
    certificate = verify_chain(cert_pem, (pki / "ca.crt").read_bytes(), purpose="client")
    assert extended_usages(certificate) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "site-1"
    bound = identity_from_certificate(cert_pem)
    on_disk = serialization.load_pem_public_key((kit / "identity.pub").read_bytes())
    assert isinstance(on_disk, Ed25519PublicKey)
    assert bound == on_disk
    assert load_identity(kit).public_key() == on_disk
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [identity_uri(on_disk)]


def test_identity_signature_verifies_with_certificate_key_and_tampered_message_does_not(
    pki: Path,
) -> None:
    kit = pki / "clients" / "site-1"
    message = b"run-1|round-3|site-1|" + bytes(32)
    signature = load_identity(kit / "identity.key").sign(message)
    public_key = identity_from_certificate((kit / "tls.crt").read_bytes())
    public_key.verify(signature, message)
    with pytest.raises(InvalidSignature):
        public_key.verify(signature, message[:-1] + b"\x01")


def test_server_certificate_has_no_identity(pki: Path) -> None:
    cert_pem = (pki / "servers" / "aggregator" / "tls.crt").read_bytes()
    with pytest.raises(PkiError, match="no fedwarden identity key"):
        identity_from_certificate(cert_pem)


@pytest.mark.parametrize("other_name", ["other", "test"])
def test_certificate_from_another_ca_is_refused(pki: Path, tmp_path: Path, other_name: str) -> None:
    init_ca(tmp_path, other_name)
    stranger = issue(tmp_path, "client", "site-1")
    with pytest.raises(PkiError, match="'site-1' was not issued by CA 'fedwarden CA test'"):
        verify_chain(stranger.certificate.read_bytes(), (pki / "ca.crt").read_bytes())


def test_certificate_is_refused_outside_its_validity(pki: Path) -> None:
    cert_pem = (pki / "servers" / "aggregator" / "tls.crt").read_bytes()
    ca_pem = (pki / "ca.crt").read_bytes()
    certificate = verify_chain(cert_pem, ca_pem)
    expired = certificate.not_valid_after_utc + datetime.timedelta(seconds=1)
    with pytest.raises(PkiError, match=r"'aggregator' is valid from .* issue a new one"):
        verify_chain(cert_pem, ca_pem, at=expired)
    verify_chain(cert_pem, ca_pem, at=certificate.not_valid_after_utc)


def test_certificate_is_refused_for_the_wrong_purpose(pki: Path) -> None:
    ca_pem = (pki / "ca.crt").read_bytes()
    client_pem = (pki / "clients" / "site-1" / "tls.crt").read_bytes()
    server_pem = (pki / "servers" / "aggregator" / "tls.crt").read_bytes()
    with pytest.raises(PkiError, match="not for TLS server authentication"):
        verify_chain(client_pem, ca_pem, purpose="server")
    with pytest.raises(PkiError, match="not for TLS client authentication"):
        verify_chain(server_pem, ca_pem, purpose="client")


def test_issue_refuses_unsafe_names_a_missing_ca_and_reissue(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no CA in"):
        issue(tmp_path, "client", "site-1")
    init_ca(tmp_path, "acme")
    with pytest.raises(PkiError, match=r"name '\.\./escape'"):
        issue(tmp_path, "client", "../escape")
    issue(tmp_path, "client", "site-1")
    with pytest.raises(PkiError, match="already exists"):
        issue(tmp_path, "client", "site-1")


def test_cli_provisions_end_to_end_without_printing_private_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["pki", "init", str(tmp_path), "--name", "acme"])
    assert created.exit_code == 0, created.output
    server = runner.invoke(
        app, ["pki", "issue", "server", "hub", "--dir", str(tmp_path), "--host", "hub.internal"]
    )
    assert server.exit_code == 0, server.output
    client = runner.invoke(app, ["pki", "issue", "client", "site-9", "--dir", str(tmp_path)])
    assert client.exit_code == 0, client.output
    again = runner.invoke(app, ["pki", "init", str(tmp_path)])
    assert again.exit_code == 2
    assert "already holds a CA" in again.output

    ca_pem = (tmp_path / "ca.crt").read_bytes()
    server_pem = (tmp_path / "servers" / "hub" / "tls.crt").read_bytes()
    names = verify_chain(server_pem, ca_pem, purpose="server").extensions
    alternative = names.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alternative.get_values_for_type(x509.DNSName) == ["hub.internal"]
    client_kit = tmp_path / "clients" / "site-9"
    verify_chain((client_kit / "tls.crt").read_bytes(), ca_pem, purpose="client")
    assert identity_from_certificate((client_kit / "tls.crt").read_bytes()) == (
        load_identity(client_kit).public_key()
    )
    output = created.output + server.output + client.output + again.output
    assert "PRIVATE KEY" not in output
    for secret in (
        tmp_path / "ca.key",
        tmp_path / "servers" / "hub" / "tls.key",
        client_kit / "tls.key",
        client_kit / "identity.key",
    ):
        body = b"".join(secret.read_bytes().splitlines()[1:-1]).decode()
        assert body[:40] not in output
