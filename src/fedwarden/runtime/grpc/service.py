"""The grpc runtime's service: the four calls of ``federation.proto`` and what each checks.

``Join`` negotiates the version, authenticates and enrols the client and
describes the run; ``Connect`` is the session stream; ``Download`` streams a
served model, paced so a peer that stops reading is cut off; ``Upload``
takes a signed result. Every stream is watched (:mod:`fedwarden.runtime.grpc.limits`):
one that stalls is cancelled. The work behind each call lives with
:class:`~fedwarden.runtime.grpc.sessions.Sessions` and
:class:`~fedwarden.runtime.grpc.uploads.Uploads`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.limits import ServerLimits, StreamWatchdog
from fedwarden.runtime.grpc.sessions import Sessions
from fedwarden.runtime.grpc.tasks import TaskBoard
from fedwarden.runtime.grpc.uploads import Uploads
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    CHUNK_DATA_TAG,
    SERVICE,
    chunks,
    framed,
    read_upload_chunk,
    version_message,
)

logger = logging.getLogger(__name__)

Message = TypeVar("Message")


@dataclass(frozen=True)
class RunDescription:
    """What a joining client is told about the run: its id and calibrated config."""

    run_id: str
    config_json: str
    num_features: int
    num_classes: int | None


class FederationService:
    """Serves ``Join``, ``Connect``, ``Download`` and ``Upload`` for one run."""

    def __init__(
        self,
        run: RunDescription,
        heartbeat_s: float,
        limits: ServerLimits,
        board: TaskBoard,
        sessions: Sessions,
        uploads: Uploads,
    ) -> None:
        self.run = run
        self.heartbeat_s = heartbeat_s
        self.limits = limits
        self.board = board
        self.sessions = sessions
        self.uploads = uploads
        self.watchdog = StreamWatchdog()
        """Cancels streams that stall."""

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Join": grpc.unary_unary_rpc_method_handler(
                    self._join,
                    request_deserializer=pb.JoinRequest.FromString,
                    response_serializer=pb.JoinReply.SerializeToString,
                ),
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self._connect,
                    request_deserializer=pb.ClientSignal.FromString,
                    response_serializer=pb.Task.SerializeToString,
                ),
                "Download": grpc.unary_stream_rpc_method_handler(
                    self._download,
                    request_deserializer=pb.DownloadRequest.FromString,
                ),
                "Upload": grpc.stream_unary_rpc_method_handler(
                    self._upload,
                    request_deserializer=read_upload_chunk,
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
            },
        )

    def _join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        """Negotiate the version, authenticate and enrol the client, and describe the run."""
        client_id = self.sessions.authenticate(request, context)
        logger.info("client %s joined (fedwarden %s)", client_id, request.software_version)
        run = self.run
        return pb.JoinReply(
            version=version_message(),
            run_id=run.run_id,
            run_config_json=run.config_json,
            num_features=run.num_features,
            num_classes=run.num_classes or 0,
            heartbeat_seconds=max(1, round(self.heartbeat_s)),
            chunk_bytes=CHUNK_BYTES,
        )

    def _connect(
        self, signals: Iterator[pb.ClientSignal], context: grpc.ServicerContext
    ) -> Iterator[pb.Task]:
        """The session stream, its first message under the stream deadline."""
        watched = self._watched(signals, context, "session", chunks_bounded=False)
        return self.sessions.connect(watched, context)

    def _download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Stream the requested global vector; a peer that stops reading is cut off."""
        self.sessions.peer_id(context)
        pieces = self._model_chunks(request, context)
        yield from self.watchdog.pace(
            pieces, context, self.limits.stream_deadline_s, f"download by {context.peer()}"
        )

    def _model_chunks(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """The requested global vector, one ``Chunk`` message (framed bytes) at a time."""
        with self.board.lock:
            model = self.board.models.get(request.version)
        if model is None or request.run_id != self.run.run_id:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {request.version!r} is not being served (the round may have ended)",
            )
        assert model is not None
        for piece in chunks(memoryview(model.vector.data)):
            yield framed(CHUNK_DATA_TAG, piece)

    def _upload(
        self, stream: Iterator[pb.UploadChunk | memoryview], context: grpc.ServicerContext
    ) -> pb.UploadReceipt:
        """Authenticate the peer, then receive its upload under the stream deadlines."""
        peer = self.sessions.peer_id(context)
        watched = self._watched(stream, context, "upload", chunks_bounded=True)
        return self.uploads.receive_upload(peer, watched, context)

    def _watched(
        self,
        messages: Iterator[Message],
        context: grpc.ServicerContext,
        what: str,
        *,
        chunks_bounded: bool,
    ) -> Iterator[Message]:
        """``messages`` with the stream deadline on the first (and, if bounded, every next)."""
        deadline = self.limits.stream_deadline_s
        return self.watchdog.watch(
            messages,
            context,
            deadline,
            deadline if chunks_bounded else None,
            f"{what} from {context.peer()}",
        )
