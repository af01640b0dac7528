"""What travels between a fedwarden server and client, and how it is signed and chunked.

The protocol itself is ``federation.proto`` beside this module (generated
``federation_pb2``; regenerate with ``make proto``). This module holds the
rules both ends share:

- **Service**: :data:`SERVICE` and the channel options (:func:`grpc_options`)
  both ends use.
- **Versions**: :data:`PROTOCOL` is this build's version; peers with another
  major version are refused with a sentence naming both.
- **Chunks**: a vector travels as its raw ``float32`` buffer cut into
  :data:`CHUNK_BYTES` pieces; :func:`chunks` slices without copying the
  vector, and :class:`Assembly` writes arriving chunks straight into a
  preallocated file-backed buffer, so neither side ever holds a whole
  protobuf message of the model.
- **Signatures**: a client signs every upload with its long-term Ed25519
  identity over :func:`signed_bytes`: the run, round, task, client, payload
  kind, example count and the SHA-256 of the payload and of the metadata. The
  server verifies before anything is aggregated, so an update cannot be
  forged, moved to another run or round, or altered in transit or at rest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedwarden.core import canonical
from fedwarden.core.errors import FedwardenError
from fedwarden.runtime.grpc import federation_pb2 as pb

SERVICE: Final = "fedwarden.v1.Federation"
"""The gRPC service ``federation.proto`` declares."""

PROTOCOL: Final = (1, 0)
"""(major, minor) of the protocol this build speaks."""

CHUNK_BYTES: Final = 1 << 20
"""Bytes per chunk of a streamed vector: 1 MiB keeps HTTP/2 frames full and memory flat."""

MAX_MESSAGE_BYTES: Final = 4 << 20
"""Largest single gRPC message either side accepts (a chunk plus its framing, or a header)."""

MAX_METADATA_BYTES: Final = 64 << 10
"""Largest metadata JSON (metrics and a compression header) an upload may carry."""

PAYLOAD_KINDS: Final = ("update", "encoded", "evaluation", "protocol")
"""An upload carries a float32 update vector, a pipeline stage's bytes, only metrics, or the
answer to a protocol step."""

_DOMAIN: Final = b"fedwarden/v1 upload"


def grpc_options() -> list[tuple[str, Any]]:
    """Channel and server options both ends use: message size caps and keepalive pings."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class ProtocolError(FedwardenError):
    """A peer sent a message that breaks the protocol (version, size, order or content)."""


class VersionMismatch(ProtocolError):
    """Client and server speak incompatible protocol versions."""


def check_version(theirs: pb.ProtocolVersion, who: str) -> None:
    """Refuse a peer whose major version differs from :data:`PROTOCOL`'s."""
    if theirs.major != PROTOCOL[0]:
        raise VersionMismatch(
            f"{who} speaks fedwarden protocol {theirs.major}.{theirs.minor} but this build speaks "
            f"{PROTOCOL[0]}.{PROTOCOL[1]}; install the same major version of fedwarden on both "
            "ends"
        )


def version_message() -> pb.ProtocolVersion:
    """This build's :data:`PROTOCOL` as a message."""
    return pb.ProtocolVersion(major=PROTOCOL[0], minor=PROTOCOL[1])


def canonical_json(value: Mapping[str, Any]) -> str:
    """The wire's canonical JSON (non-ASCII escaped, no NaN): the same value, the same bytes."""
    return canonical.canonical_json(value, ascii_only=True)


def signed_bytes(header: pb.UploadHeader) -> bytes:
    """The bytes a client signs for an upload (every header field except the signature)."""
    parts: list[bytes] = [
        _DOMAIN,
        header.run_id.encode(),
        struct.pack(">I", header.round_index),
        header.task_id.encode(),
        header.client_id.encode(),
        header.payload_kind.encode(),
        struct.pack(">QQ", header.num_examples, header.payload_bytes),
        bytes(header.payload_sha256),
        hashlib.sha256(header.metadata_json.encode()).digest(),
    ]
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def sign(header: pb.UploadHeader, identity: Ed25519PrivateKey) -> None:
    """Set ``header.signature`` with the client's identity key."""
    header.signature = identity.sign(signed_bytes(header))


def signature_valid(header: pb.UploadHeader, public_key: Ed25519PublicKey) -> bool:
    """Whether ``header.signature`` is the enrolled identity's signature of the header."""
    try:
        public_key.verify(bytes(header.signature), signed_bytes(header))
    except InvalidSignature:
        return False
    return True


CHUNK_DATA_TAG: Final = 0x0A
"""Key of ``Chunk.data`` (field 1, length-delimited) in protobuf's wire format."""
UPLOAD_DATA_TAG: Final = 0x12
"""Key of ``UploadChunk.data`` (field 2, length-delimited) in protobuf's wire format."""


def framed(tag: int, piece: memoryview) -> bytes:
    """A message whose only field is the bytes ``piece``, in protobuf's wire format.

    Written by hand so a chunk is copied once (into the frame) rather than
    three times (``bytes()``, the message object, its serialization); any
    protobuf parser reads it as ``Chunk`` or ``UploadChunk``.
    """
    length = len(piece)
    prefix = bytearray([tag])
    while True:
        byte, length = length & 0x7F, length >> 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(prefix) + piece


def data_view(raw: bytes, tag: int) -> memoryview | None:
    """The bytes of a message :func:`framed` with ``tag``, as a view (None: not such a message)."""
    if len(raw) < 2 or raw[0] != tag:
        return None
    length, shift, offset = 0, 0, 1
    while offset < len(raw) and shift < 64:
        byte = raw[offset]
        length |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return memoryview(raw)[offset:] if offset + length == len(raw) else None
        shift += 7
    return None


def read_upload_chunk(raw: bytes) -> pb.UploadChunk | memoryview:
    """An upload message: a data chunk as a view of the received bytes, or the parsed header."""
    view = data_view(raw, UPLOAD_DATA_TAG)
    return view if view is not None else pb.UploadChunk.FromString(raw)


def read_chunk(raw: bytes) -> memoryview:
    """A model chunk's bytes, as a view of the received message where possible."""
    view = data_view(raw, CHUNK_DATA_TAG)
    return view if view is not None else memoryview(pb.Chunk.FromString(raw).data)


def chunks(buffer: memoryview, chunk_bytes: int = CHUNK_BYTES) -> Iterator[memoryview]:
    """Consecutive slices of ``buffer`` of at most ``chunk_bytes`` (views, not copies)."""
    flat = buffer.cast("B")
    for start in range(0, len(flat), chunk_bytes):
        yield flat[start : start + chunk_bytes]


@dataclass(frozen=True)
class UploadMetadata:
    """The JSON-able part of an upload: the client's metrics and a compression header."""

    metrics: Mapping[str, float]
    payload_header: Mapping[str, Any]

    def to_json(self) -> str:
        """Canonical JSON (what is signed)."""
        return canonical_json(
            {"metrics": dict(self.metrics), "payload_header": dict(self.payload_header)}
        )

    @classmethod
    def from_json(cls, text: str) -> UploadMetadata:
        """Parse and check an upload's metadata; ``ProtocolError`` on anything unexpected."""
        if len(text.encode()) > MAX_METADATA_BYTES:
            raise ProtocolError(f"upload metadata exceeds {MAX_METADATA_BYTES} bytes")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProtocolError(f"upload metadata is not JSON: {error}") from None
        if not isinstance(value, dict) or set(value) != {"metrics", "payload_header"}:
            raise ProtocolError(
                "upload metadata must be {'metrics': {...}, 'payload_header': {...}}"
            )
        metrics, payload_header = value["metrics"], value["payload_header"]
        if not isinstance(metrics, dict) or not all(
            isinstance(name, str)
            and isinstance(number, int | float)
            and not isinstance(number, bool)
            for name, number in metrics.items()
        ):
            raise ProtocolError("upload metrics must map names to numbers")
        if not isinstance(payload_header, dict):
            raise ProtocolError("upload payload_header must be a JSON object")
        return cls({name: float(number) for name, number in metrics.items()}, payload_header)
