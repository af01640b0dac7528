"""The grpc runtime's transport checks, with this test playing the client over real mTLS.

The server half runs in this process (``Server`` over ``GrpcRuntime`` on
loopback); the test speaks the protocol itself, so it can send what an honest
client never would: tampered signatures, replays, duplicates, altered bytes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.client import FederationClient, _Stubs
from fedwarden.runtime.grpc.tasks import ServedModel
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    CHUNK_DATA_TAG,
    MAX_MESSAGE_BYTES,
    UPLOAD_DATA_TAG,
    ProtocolError,
    UploadMetadata,
    check_version,
    chunks,
    data_view,
    framed,
    read_chunk,
    read_upload_chunk,
    sign,
    signature_valid,
)
from grpc_deployment import RUN_ID, Deployment, deployment_at


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with deployment_at(tmp_path) as running:
        yield running


def test_tampered_signature_is_refused_counted_and_never_aggregated(deployment) -> None:
    first, second = deployment.site("client_0"), deployment.site("client_1")
    before = deployment.server.vector.copy()
    done = deployment.round_in_background(0)
    task = first.next_task()
    header, body = first.honest_upload(task)
    tampered = pb.UploadHeader()
    tampered.CopyFrom(header)
    tampered.signature = bytes([header.signature[0] ^ 1]) + header.signature[1:]
    refused = first.send(tampered, body)
    assert (refused.accepted, refused.reason) == (False, "forged")
    forged_body = np.frombuffer(body, dtype=VECTOR_DTYPE) * 100
    altered = pb.UploadHeader()
    altered.CopyFrom(header)
    altered.payload_sha256 = hashlib.sha256(forged_body.tobytes()).digest()
    assert first.send(altered, forged_body.tobytes()).reason == "forged"
    assert first.send(header, body[:-4] + b"\0\0\0\0").reason == "corrupted"
    assert first.send(header, body).accepted
    other = second.next_task()
    assert second.send(*second.honest_upload(other)).accepted
    record = done.get(timeout=30)
    assert record.participants == 2
    assert record.rejection_reasons == {"forged": 2, "corrupted": 1}
    assert deployment.runtime.uploads.rejections == {"forged": 2, "corrupted": 1}
    assert deployment.store.rejection_counts(RUN_ID) == {"forged": 2, "corrupted": 1}
    np.testing.assert_allclose(deployment.server.vector - before, 0.01, rtol=1e-5)


def test_replayed_and_duplicate_updates_are_refused_and_counted(deployment) -> None:
    first, second = deployment.site("client_0"), deployment.site("client_1")
    done = deployment.round_in_background(0)
    old_header, old_body = first.honest_upload(first.next_task())
    assert first.send(old_header, old_body).accepted
    assert first.send(old_header, old_body).reason == "duplicate"
    assert second.send(*second.honest_upload(second.next_task())).accepted
    # Refusals that answer no open task of the sender are counted, not brought to the round.
    assert done.get(timeout=30).rejection_reasons == {}
    done = deployment.round_in_background(1)
    task = first.next_task()
    assert first.send(old_header, old_body).reason == "replayed"
    moved = pb.UploadHeader()
    moved.CopyFrom(old_header)
    moved.round_index, moved.task_id = task.round_index, task.task_id
    assert first.send(moved, old_body).reason == "forged"
    other_run = pb.UploadHeader()
    other_run.CopyFrom(old_header)
    other_run.run_id = "another-run"
    sign(other_run, first.kit.identity)
    assert first.send(other_run, old_body).reason == "replayed"
    assert first.send(*first.honest_upload(task)).accepted
    assert second.send(*second.honest_upload(second.next_task())).accepted
    record = done.get(timeout=30)
    assert record.participants == 2
    assert record.rejection_reasons == {"forged": 1}
    assert deployment.runtime.uploads.rejections == {"duplicate": 1, "replayed": 2, "forged": 1}
    assert deployment.store.rejection_counts(RUN_ID) == {"duplicate": 1, "replayed": 2, "forged": 1}


def test_a_client_cannot_upload_as_another(deployment) -> None:
    first, second = deployment.site("client_0"), deployment.site("client_1")
    done = deployment.round_in_background(0)
    task = second.next_task()
    header, body = second.honest_upload(task)
    assert first.send(header, body).reason == "impersonation"
    assert second.send(header, body).accepted
    assert first.send(*first.honest_upload(first.next_task())).accepted
    assert done.get(timeout=30).rejection_reasons == {}
    assert deployment.runtime.uploads.refusals_by_peer == {"client_0": {"impersonation": 1}}


def once_released(upload: Callable[[], pb.UploadReceipt]) -> pb.UploadReceipt:
    """``upload()``, again while the server still holds the task for an aborted stream.

    A stream the transport aborts reaches the client before the server's handler has
    released its task; an upload in that moment is refused as a duplicate.
    """
    for _ in range(200):
        receipt = upload()
        if receipt.reason != "duplicate":
            return receipt
        time.sleep(0.05)
    return receipt


def test_oversized_and_mis_sized_uploads_are_refused_and_the_server_keeps_serving(
    deployment,
) -> None:
    first, second = deployment.site("client_0"), deployment.site("client_1")
    done = deployment.round_in_background(0)
    task = first.next_task()
    header, body = first.honest_upload(task)
    with pytest.raises(grpc.RpcError) as too_big:
        first.stubs.upload(
            iter([pb.UploadChunk(header=header), pb.UploadChunk(data=bytes(MAX_MESSAGE_BYTES))])
        )
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    short = pb.UploadHeader()
    short.CopyFrom(header)
    short.payload_bytes = 8
    with pytest.raises(grpc.RpcError) as wrong_size:
        once_released(lambda: first.send(short, body[:8]))
    assert wrong_size.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as headless:
        first.stubs.upload(iter([pb.UploadChunk(data=body[:16])]))
    assert headless.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert once_released(lambda: first.send(header, body)).accepted
    assert second.send(*second.honest_upload(second.next_task())).accepted
    assert done.get(timeout=30).participants == 2


def test_signature_covers_every_header_field() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    identity = Ed25519PrivateKey.generate()
    header = pb.UploadHeader(
        run_id="r",
        round_index=3,
        task_id="t",
        client_id="c",
        num_examples=7,
        metadata_json=UploadMetadata({"loss": 1.0}, {}).to_json(),
        payload_bytes=16,
        payload_sha256=b"\x01" * 32,
        payload_kind="update",
    )
    sign(header, identity)
    assert signature_valid(header, identity.public_key())
    changes = {
        "run_id": "r2",
        "round_index": 4,
        "task_id": "t2",
        "client_id": "c2",
        "num_examples": 8,
        "metadata_json": UploadMetadata({"loss": 2.0}, {}).to_json(),
        "payload_bytes": 20,
        "payload_sha256": b"\x02" * 32,
        "payload_kind": "encoded",
    }
    for name, value in changes.items():
        changed = pb.UploadHeader()
        changed.CopyFrom(header)
        setattr(changed, name, value)
        assert not signature_valid(changed, identity.public_key()), name
    assert not signature_valid(header, Ed25519PrivateKey.generate().public_key())


def test_chunks_are_views_that_cover_the_buffer_exactly() -> None:
    vector = np.arange(1000, dtype=VECTOR_DTYPE)
    pieces = list(chunks(memoryview(vector.data), chunk_bytes=1024))
    assert [len(piece) for piece in pieces] == [1024, 1024, 1024, 928]
    assert b"".join(bytes(piece) for piece in pieces) == vector.tobytes()
    assert all(piece.obj is pieces[0].obj for piece in pieces)


def test_a_served_model_is_framed_once_and_is_the_vector_as_published() -> None:
    """Every download writes the same frames; they carry the vector's bytes, hash and size."""
    vector = np.arange(2 * CHUNK_BYTES // 4 + 5, dtype=VECTOR_DTYPE)
    published = vector.copy()
    served = ServedModel.of("v1", vector)
    vector += 1  # the server moves on; what it serves does not
    received = [bytes(read_chunk(frame)) for frame in served.frames]
    assert [len(data) for data in received] == [CHUNK_BYTES, CHUNK_BYTES, 20]
    assert b"".join(received) == published.tobytes()
    assert served.num_bytes == published.nbytes
    assert served.sha256 == hashlib.sha256(published.tobytes()).digest()


def test_upload_metadata_refuses_what_is_not_metrics() -> None:
    assert UploadMetadata.from_json('{"metrics":{"loss":1},"payload_header":{}}').metrics == {
        "loss": 1.0
    }
    for text in (
        "not json",
        "[]",
        '{"metrics":{}}',
        '{"metrics":{"loss":"high"},"payload_header":{}}',
        '{"metrics":{"loss":true},"payload_header":{}}',
        '{"metrics":{},"payload_header":[]}',
        '{"metrics":{"x":' + "1" * 70000 + '},"payload_header":{}}',
    ):
        with pytest.raises(ProtocolError):
            UploadMetadata.from_json(text)


def test_peers_of_another_major_version_are_refused_with_both_versions_named() -> None:
    check_version(pb.ProtocolVersion(major=1, minor=7), "client x")
    with pytest.raises(ProtocolError, match=r"protocol 2\.0 but this build speaks 1\.0"):
        check_version(pb.ProtocolVersion(major=2, minor=0), "client x")


@pytest.mark.parametrize("size", [1, 127, 128, 16383, 16384, 1 << 20])
def test_hand_framed_chunks_are_the_protobuf_messages_they_claim_to_be(size: int) -> None:
    piece = memoryview(np.random.default_rng(size).bytes(size))
    chunk = framed(CHUNK_DATA_TAG, piece)
    upload = framed(UPLOAD_DATA_TAG, piece)
    assert pb.Chunk.FromString(chunk).data == bytes(piece)
    assert pb.UploadChunk.FromString(upload).data == bytes(piece)
    assert bytes(read_chunk(chunk)) == bytes(piece)
    parsed = read_upload_chunk(upload)
    assert isinstance(parsed, memoryview) and bytes(parsed) == bytes(piece)


def test_an_upload_header_is_parsed_not_mistaken_for_data() -> None:
    header = pb.UploadChunk(header=pb.UploadHeader(run_id="r", client_id="c")).SerializeToString()
    parsed = read_upload_chunk(header)
    assert isinstance(parsed, pb.UploadChunk) and parsed.header.client_id == "c"
    truncated = framed(UPLOAD_DATA_TAG, memoryview(b"abcdef"))[:-1]
    assert data_view(truncated, UPLOAD_DATA_TAG) is None


def _downloading_client(served: bytes) -> tuple[FederationClient, _Stubs]:
    """A client whose server streams ``served`` in 1000-byte chunks for any download."""
    client = FederationClient(
        "127.0.0.1:1",
        SimpleNamespace(client_id="site-1"),  # type: ignore[arg-type]
        Path("unused"),
        build=lambda config, dataset, site: (None, ()),  # type: ignore[arg-type,return-value]
    )

    def download(request: pb.DownloadRequest) -> Iterator[memoryview]:
        return chunks(memoryview(served), chunk_bytes=1000)

    return client, _Stubs(None, None, download, None)  # type: ignore[arg-type]


def _model_task(vector: np.ndarray, sha256: bytes) -> pb.Task:
    reference = pb.ModelRef(version="v1", num_bytes=vector.nbytes, sha256=sha256)
    return pb.Task(task_id="t", run_id=RUN_ID, round_index=0, model=reference)


def test_a_downloaded_model_is_hashed_as_it_arrives_and_kept_only_if_it_matches() -> None:
    vector = np.arange(2500, dtype=VECTOR_DTYPE)
    client, stubs = _downloading_client(vector.tobytes())
    task = _model_task(vector, hashlib.sha256(vector.tobytes()).digest())
    np.testing.assert_array_equal(client._model(stubs, task), vector)

    altered = vector.copy()
    altered[1234] += 1
    client, stubs = _downloading_client(altered.tobytes())
    with pytest.raises(ProtocolError, match="does not match its announced size and hash"):
        client._model(stubs, task)
    assert client._models == {}

    client, stubs = _downloading_client(vector.tobytes()[:-4])
    with pytest.raises(ProtocolError, match="does not match its announced size and hash"):
        client._model(stubs, task)
