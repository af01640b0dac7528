"""Refusals are recorded against the peer who sent them, and a flood of them stays a count.

Issue 17, finding 2: an authenticated peer sending headers that claim to be
another client once had 50 "impersonation" rejections signed into the audit
log against the client it named, and 50 replies queued for the round loop.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from fedwarden.build.listeners import Audited
from fedwarden.governance.audit import AuditLog, ServerAuditTrail, UpdateRejected, read_entries
from fedwarden.governance.store import RunStore, rejections
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.uploads import MAX_RECORDED_REFUSALS
from grpc_deployment import RUN_ID, deployment_at

CLAIMS = 50


def recorded_against(store: RunStore) -> dict[str, int]:
    """The store's refusal rows, counted by the client each names."""
    with store.reading() as connection:
        rows = connection.execute(
            select(rejections.c.client_id, func.count()).group_by(rejections.c.client_id)
        ).all()
    return {client_id: count for client_id, count in rows}


def audited_against(store: RunStore) -> list[str]:
    """The clients named by the audit log's rejection entries."""
    events = [entry.event() for entry in read_entries(store)]
    return [event.client_id for event in events if isinstance(event, UpdateRejected)]


def test_headers_naming_another_client_are_recorded_against_the_sender_not_the_named(
    tmp_path: Path,
) -> None:
    with deployment_at(tmp_path) as deployment:
        store = deployment.store
        trail = ServerAuditTrail(AuditLog(store, Ed25519PrivateKey.generate()), RUN_ID)
        deployment.server.listeners.append(Audited(trail))
        attacker, victim = deployment.site("client_0"), deployment.site("client_1")
        done = deployment.round_in_background(0)
        victim_task = victim.next_task()
        header, body = victim.honest_upload(victim_task)
        for _ in range(CLAIMS):
            claim = pb.UploadHeader()
            claim.CopyFrom(header)
            receipt = attacker.send(claim, body)
            assert (receipt.accepted, receipt.reason) == (False, "impersonation")
        assert victim.send(header, body).accepted
        assert attacker.answer().accepted
        record = done.get(timeout=30)
        assert record.participants == 2
        assert record.rejection_reasons == {}
        assert "client_1" not in recorded_against(store)
        assert recorded_against(store) == {"client_0": MAX_RECORDED_REFUSALS}
        assert "client_1" not in audited_against(store)
        assert deployment.runtime.uploads.refusals_by_peer == {
            "client_0": {"impersonation": CLAIMS}
        }
        deployment.runtime.close()
        assert recorded_against(store) == {"client_0": MAX_RECORDED_REFUSALS + 1}
        assert store.rejection_counts(RUN_ID) == {
            "impersonation": MAX_RECORDED_REFUSALS,
            "rate_limited": 1,
        }


def test_a_refused_upload_for_the_senders_own_open_task_is_audited_under_its_certificate(
    tmp_path: Path,
) -> None:
    with deployment_at(tmp_path) as deployment:
        store = deployment.store
        trail = ServerAuditTrail(AuditLog(store, Ed25519PrivateKey.generate()), RUN_ID)
        deployment.server.listeners.append(Audited(trail))
        first, second = deployment.site("client_0"), deployment.site("client_1")
        done = deployment.round_in_background(0)
        header, body = first.honest_upload(first.next_task())
        assert first.send(header, body[:-4] + b"\0\0\0\0").reason == "corrupted"
        assert first.send(header, body).accepted
        assert second.answer().accepted
        assert done.get(timeout=30).rejection_reasons == {"corrupted": 1}
        assert recorded_against(store) == {"client_0": 1}
        assert audited_against(store) == ["client_0"]
