"""The grpc runtime's service: the four calls of ``federation.proto`` and what each checks.

``Join`` negotiates the version, authenticates and enrols the client and
describes the run; ``Connect`` is the session stream; ``Download`` streams a
served model, paced so a peer that stops reading is cut off; ``Upload``
takes a signed result. Every call is admitted by the peer limits and every
stream is watched (:mod:`fedwarden.runtime.grpc.limits`): one that stalls is
ended. The handlers are coroutines on the server's event loop: a call that
waits on its peer holds no thread, and blocking work goes to the worker pool
(:class:`~fedwarden.runtime.grpc.serving.Workers`). The work behind each call lives with
:class:`~fedwarden.runtime.grpc.sessions.Sessions` and
:class:`~fedwarden.runtime.grpc.uploads.Uploads`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError

from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.limits import (
    CallRefused,
    PeerLimiter,
    ServerLimits,
    StreamDeadlines,
    StreamStalled,
    peer_name,
)
from fedwarden.runtime.grpc.serving import Workers
from fedwarden.runtime.grpc.sessions import Caller, Sessions
from fedwarden.runtime.grpc.tasks import TaskBoard
from fedwarden.runtime.grpc.uploads import Uploads
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    SERVICE,
    read_upload_chunk,
    version_message,
)

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


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
        limiter: PeerLimiter,
        workers: Workers,
        board: TaskBoard,
        sessions: Sessions,
        uploads: Uploads,
    ) -> None:
        self.run = run
        self.heartbeat_s = heartbeat_s
        self.limits = limits
        self.limiter = limiter
        self.workers = workers
        self.board = board
        self.sessions = sessions
        self.uploads = uploads
        self.deadlines = StreamDeadlines()
        """Ends streams that stall."""

    def handlers(self) -> grpc.GenericRpcHandler:
        """The four calls; requests arrive as bytes, parsed by the handlers (:func:`parse`)."""
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Join": grpc.unary_unary_rpc_method_handler(
                    self._bounded(self._join, streaming=False),
                    response_serializer=pb.JoinReply.SerializeToString,
                ),
                "Connect": grpc.stream_stream_rpc_method_handler(
                    self._bounded(self._connect, streaming=True),
                    response_serializer=pb.Task.SerializeToString,
                ),
                "Download": grpc.unary_stream_rpc_method_handler(
                    self._bounded(self._download, streaming=True),
                ),
                "Upload": grpc.stream_unary_rpc_method_handler(
                    self._bounded(self._upload, streaming=True),
                    response_serializer=pb.UploadReceipt.SerializeToString,
                ),
            },
        )

    def _bounded(
        self, handler: Callable[[Request, Context], Awaitable[Response]], *, streaming: bool
    ) -> Callable[[Request, Context], Awaitable[Response | None]]:
        """``handler`` admitted by the peer limits, its refusals and stalls ending the call."""

        async def bounded(request: Request, context: Context) -> Response | None:
            peer = peer_name(context)
            try:
                self.limiter.admit(peer, streaming)
            except CallRefused as refusal:
                await context.abort(refusal.code, str(refusal))
            try:
                return await handler(request, context)
            except CallRefused as refusal:
                await context.abort(refusal.code, str(refusal))
            except StreamStalled as stalled:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(stalled))
            finally:
                self.limiter.give_back(peer, streaming)
            return None

        return bounded

    async def _join(self, raw: bytes, context: Context) -> pb.JoinReply:
        """Negotiate the version, authenticate and enrol the client, and describe the run."""
        request = parse(pb.JoinRequest.FromString, raw)
        client_id = await self.workers.run(self.sessions.authenticate, request, Caller.of(context))
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

    async def _connect(self, signals: AsyncIterator[bytes], context: Context) -> None:
        """The session stream, its first message under the stream deadline."""
        parsed = parse_each(pb.ClientSignal.FromString, signals)
        watched = self._watched(parsed, context, "session", chunks_bounded=False)
        async for task in self.sessions.connect(watched, Caller.of(context), self.workers):
            await context.write(task)

    async def _download(self, raw: bytes, context: Context) -> None:
        """Stream the requested global vector; a peer that stops reading is cut off."""
        request = parse(pb.DownloadRequest.FromString, raw)
        await self.workers.run(self.sessions.peer_id, Caller.of(context))
        with self.board.lock:
            model = self.board.models.get(request.version)
        if model is None or request.run_id != self.run.run_id:
            raise CallRefused(
                grpc.StatusCode.NOT_FOUND,
                f"model {request.version!r} is not being served (the round may have ended)",
            )
        what = f"download by {context.peer()}"
        for frame in model.frames:
            await self.deadlines.send(context, frame, self.limits.stream_deadline_s, what)

    async def _upload(self, stream: AsyncIterator[bytes], context: Context) -> pb.UploadReceipt:
        """Authenticate the peer, then receive its upload under the stream deadlines."""
        caller = Caller.of(context)
        peer = await self.workers.run(self.sessions.peer_id, caller)
        parsed = parse_each(read_upload_chunk, stream)
        watched = self._watched(parsed, context, "upload", chunks_bounded=True)
        return await self.uploads.receive_upload(peer, caller.address, watched)

    def _watched(
        self,
        messages: AsyncIterator[Request],
        context: Context,
        what: str,
        *,
        chunks_bounded: bool,
    ) -> AsyncIterator[Request]:
        """``messages`` with the stream deadline on the first (and, if bounded, every next)."""
        deadline = self.limits.stream_deadline_s
        return self.deadlines.watch(
            messages,
            deadline,
            deadline if chunks_bounded else None,
            f"{what} from {context.peer()}",
        )


def parse(parser: Callable[[bytes], Request], raw: bytes) -> Request:
    """A request parsed from its bytes; a malformed one refuses the call (``INVALID_ARGUMENT``)."""
    try:
        return parser(raw)
    except DecodeError as error:
        raise CallRefused(
            grpc.StatusCode.INVALID_ARGUMENT, f"a malformed request message: {error}"
        ) from None


async def parse_each(
    parser: Callable[[bytes], Request], stream: AsyncIterator[bytes]
) -> AsyncIterator[Request]:
    """Each message of a request stream, parsed as :func:`parse` does."""
    async for raw in stream:
        yield parse(parser, raw)
