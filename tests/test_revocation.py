"""A revoked client stays out: its still-valid certificate and its key are refused.

Issue 17, finding 3: certificates last a year and nothing denied them, so a
revoked client re-enrolled on its next Join. ``fedwarden pki revoke`` now
writes a CA-signed revocation list the server checks at Join and on every
call, and the store refuses to enrol a key whose enrolment was revoked.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.deploy.pki import PkiError, init_ca, issue
from fedwarden.deploy.revocation import REVOCATION_LIST, RevocationList, revoke
from fedwarden.runtime.grpc.journal import EnrolmentConflict
from grpc_deployment import deployment_at


def test_a_revoked_enrolment_is_not_re_enrolled_by_the_same_key(tmp_path: Path) -> None:
    with deployment_at(tmp_path) as deployment:
        deployment.site("client_1")
        enrolled = deployment.store.enrolled("client_1")
        assert enrolled is not None
        deployment.store.revoke("client_1")
        with pytest.raises(grpc.RpcError) as refused:
            deployment.site("client_1")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(refused.value.details())
        assert deployment.store.enrolled("client_1") is None
        with pytest.raises(EnrolmentConflict, match="revoked"):
            deployment.store.enroll("client_1", enrolled.public_key, "certificate")


def test_a_revoked_certificate_can_neither_join_nor_upload_and_the_round_goes_on(
    tmp_path: Path,
) -> None:
    with deployment_at(tmp_path) as deployment:
        honest, revoked = deployment.site("client_0"), deployment.site("client_1")
        done = deployment.round_in_background(0)
        task = revoked.next_task()
        header, body = revoked.honest_upload(task)
        written = revoke(deployment.pki, "client_1")
        assert deployment.pki / "servers" / "server" / REVOCATION_LIST in written
        with pytest.raises(grpc.RpcError) as upload:
            revoked.send(header, body)
        assert upload.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "revoked" in str(upload.value.details())
        with pytest.raises(grpc.RpcError) as join:
            revoked.stubs.join(deployment.join_request("client_1"), timeout=10)
        assert join.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert honest.answer().accepted
        record = done.get(timeout=30)
        assert record.participants == 1
        assert deployment.store.enrolled("client_1") is None
        assert "client_1" not in deployment.runtime.connected_clients()
        with pytest.raises(grpc.RpcError) as again:
            deployment.site("client_1")
        assert again.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_new_kit_for_a_revoked_client_joins_with_its_new_key(tmp_path: Path) -> None:
    with deployment_at(tmp_path) as deployment:
        deployment.site("client_1")
        old_key = deployment.store.enrolled("client_1")
        revoke(deployment.pki, "client_1")
        with pytest.raises(grpc.RpcError):
            deployment.site("client_1")
        issue(deployment.pki, "client", "client_1", force=True)
        deployment.site("client_1")
        enrolled = deployment.store.enrolled("client_1")
        assert enrolled is not None and old_key is not None
        assert enrolled.public_key != old_key.public_key


def test_a_revocation_list_not_signed_by_the_ca_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other, "other")
    issue(other, "client", "client_0")
    revoke(other, "client_0")
    init_ca(tmp_path / "ours", "ours")
    ca = (tmp_path / "ours" / "ca.crt").read_bytes()
    with pytest.raises(PkiError, match="not signed by this deployment's CA"):
        RevocationList(other / REVOCATION_LIST, ca)


def test_pki_revoke_writes_the_list_every_server_kit_reads(tmp_path: Path) -> None:
    init_ca(tmp_path, "acme")
    server = issue(tmp_path, "server", "server")
    client = issue(tmp_path, "client", "site-9")
    bystander = issue(tmp_path, "client", "site-8")
    runner = CliRunner()
    revoked = runner.invoke(app, ["pki", "revoke", "site-9", "--dir", str(tmp_path)])
    assert revoked.exit_code == 0, revoked.output
    kit_list = RevocationList(
        server.directory / REVOCATION_LIST, server.ca_certificate.read_bytes()
    )
    assert kit_list.is_revoked(client.certificate.read_bytes())
    assert not kit_list.is_revoked(bystander.certificate.read_bytes())
    unknown = runner.invoke(app, ["pki", "revoke", "site-7", "--dir", str(tmp_path)])
    assert unknown.exit_code != 0
    assert "no client kit 'site-7'" in unknown.output
