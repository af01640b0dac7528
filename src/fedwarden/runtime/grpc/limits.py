"""Bounds that keep one peer from exhausting the grpc server (issue 17, finding 1).

The federation service runs on ``grpc.aio``: a call waiting on its peer is a
coroutine, not a thread, so connected-but-idle devices cost memory only, and
the blocking work (journal, spool, signatures) runs on a fixed pool of
threads (:class:`~fedwarden.runtime.grpc.serving.AsyncServer`). Unbounded, one
certified client (or, under ``--insecure``, any local process) that opens
Upload streams and never sends a header would still hold memory and stream
slots for ever. These bounds keep the server serving:

- **Global cap**: ``maximum_concurrent_rpcs`` is the streams plus the slots
  kept for ``Join``; an excess call is refused at once (``RESOURCE_EXHAUSTED``),
  not queued.
- **Stream and per-peer caps** (:class:`PeerLimiter`): streams never take the
  ``Join`` slots, and one peer holds at most ``calls_per_peer``.
- **Deadlines** (:class:`StreamDeadlines`): a stream's first message and each
  next chunk arrive within ``stream_deadline_s``, and a download's reader takes
  each chunk within it, or the call ends (``DEADLINE_EXCEEDED``).
- **Connections** (:meth:`ServerLimits.server_options`): streams per
  connection, and idle and age limits, so no connection lives for ever.

A *peer* is the authenticated certificate's common name under mutual TLS;
under ``--insecure`` nobody is authenticated, so a peer is one connection
(its address and port). A local process that opens many connections can
still fill the stream slots of an insecure server until the deadline frees
them: ``--insecure`` is for loopback tests only.

The vertical parties' service (a few unary calls between two or three
parties) stays on the thread-per-call ``grpc.server``
(:meth:`ServerLimits.server`), admitted by the same :class:`PeerLimiter`
through its interceptor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedwarden.core.errors import FedwardenError

logger = logging.getLogger(__name__)

Message = TypeVar("Message")


class StreamStalled(FedwardenError):
    """A stream's peer did not send (or take) its next message within the deadline."""


class CallRefused(FedwardenError):
    """A call is refused with a gRPC status; the service ends the call with it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServerLimits:
    """How much of the server one peer, one connection and all peers together may hold."""

    max_streams: int
    """Streaming calls (Connect, Download, Upload) in progress at once, all peers together."""
    join_slots: int = 16
    """Calls kept free of streams, so that a ``Join`` is answered while the streams are full."""
    calls_per_peer: int = 8
    """Calls in progress at once per peer (an honest client needs Connect, Download, Upload)."""
    stream_deadline_s: float = 30.0
    """Seconds a stream may wait for its first message, and for each next chunk."""
    streams_per_connection: int = 100
    """HTTP/2 streams one connection may have open (more wait on the client's side)."""
    connection_idle_s: float = 300.0
    """A connection without any call for this long is closed."""
    connection_age_s: float = 12 * 3600.0
    """A connection older than this is asked to reconnect (calls in progress get a grace)."""
    connection_grace_s: float = 600.0
    """How long calls on an aged-out connection may still run."""
    worker_threads: int = 8
    """Threads for the asynchronous server's blocking work (journal, spool, signatures),
    however many clients are connected."""

    def __post_init__(self) -> None:
        if min(self.max_streams, self.join_slots, self.calls_per_peer, self.worker_threads) < 1:
            raise ValueError("server limits must allow at least one call of each kind")

    @classmethod
    def for_clients(cls, clients: int, **overrides: Any) -> ServerLimits:
        """Limits for a federation of ``clients``: four streams each, and headroom."""
        return cls(max_streams=4 * clients + 32, **overrides)

    @property
    def max_concurrent_rpcs(self) -> int:
        """Calls in progress at once, all kinds: the streams and the slots kept for Join."""
        return self.max_streams + self.join_slots

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC core options: streams per connection, connection idle and age limits."""
        return [
            ("grpc.max_concurrent_streams", self.streams_per_connection),
            ("grpc.max_connection_idle_ms", int(self.connection_idle_s * 1000)),
            ("grpc.max_connection_age_ms", int(self.connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(self.connection_grace_s * 1000)),
        ]

    def server(
        self, options: list[tuple[str, Any]], limiter: PeerLimiter, thread_name: str
    ) -> grpc.Server:
        """A thread-per-call gRPC server bounded by these limits: one thread per call, no queue."""
        return grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_concurrent_rpcs, thread_name_prefix=thread_name
            ),
            interceptors=(limiter,),
            options=options + self.server_options(),
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
        )


def peer_name(context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a call comes from: its certificate's common name, else its connection's address."""
    names = context.auth_context().get("x509_common_name")
    if names:
        return str(names[0].decode())
    return str(context.peer())


class PeerLimiter(grpc.ServerInterceptor):
    """Refuses a call when its peer, or all streams together, already hold their share.

    A refused call ends at once with ``RESOURCE_EXHAUSTED`` and is counted in
    :attr:`refused` by reason; its slot returns when a call in progress ends.
    The asynchronous service calls :meth:`admit` and :meth:`give_back` around
    each call; a thread-per-call server uses the limiter as its interceptor.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.refused: Counter[str] = Counter()
        """Calls refused by reason (``peer_limit``, ``stream_limit``)."""
        self._lock = threading.Lock()
        self._per_peer: Counter[str] = Counter()
        self._streams = 0

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, its behaviour wrapped to take and give back a slot."""
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        streaming = bool(handler.request_streaming or handler.response_streaming)
        if handler.request_streaming and handler.response_streaming:
            inner, wrap = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            inner, wrap = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            inner, wrap = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            inner, wrap = handler.unary_unary, grpc.unary_unary_rpc_method_handler

        def bounded(request: Any, context: grpc.ServicerContext) -> Any:
            peer = peer_name(context)
            try:
                self.admit(peer, streaming)
            except CallRefused as refusal:
                context.abort(refusal.code, str(refusal))
            released = threading.Event()

            def release() -> None:
                if not released.is_set():
                    released.set()
                    self.give_back(peer, streaming)

            if not context.add_callback(release):
                release()
            return inner(request, context)

        return wrap(
            bounded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def in_use(self) -> tuple[int, dict[str, int]]:
        """The streams in progress, and the calls in progress per peer."""
        with self._lock:
            return self._streams, dict(+self._per_peer)

    def admit(self, peer: str, streaming: bool) -> None:
        """Take a slot for a call of ``peer`` (give it back when the call ends); or refuse it."""
        with self._lock:
            if self._per_peer[peer] >= self.limits.calls_per_peer:
                reason = "peer_limit"
            elif streaming and self._streams >= self.limits.max_streams:
                reason = "stream_limit"
            else:
                self._per_peer[peer] += 1
                self._streams += streaming
                return
            self.refused[reason] += 1
        if reason == "peer_limit":
            logger.warning(
                "refused a call from %s: it has %d in progress", peer, self.limits.calls_per_peer
            )
            raise CallRefused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{peer} already has {self.limits.calls_per_peer} calls in progress; wait for "
                "one to end",
            )
        raise CallRefused(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server has {self.limits.max_streams} streams in progress; retry shortly",
        )

    def give_back(self, peer: str, streaming: bool) -> None:
        """Return the slot an admitted call of ``peer`` held."""
        with self._lock:
            self._per_peer[peer] -= 1
            self._streams -= streaming


class StreamDeadlines:
    """Ends streams whose peer sends (or takes) its next message too late.

    A handler reads its request stream through :meth:`watch` and writes a
    response stream through :meth:`send`; each wait on the peer is bounded,
    and one that runs out raises :class:`StreamStalled` (the service ends the
    call with ``DEADLINE_EXCEEDED``). The clock runs only while the handler
    waits on the peer, never while it works on a message.
    """

    def __init__(self) -> None:
        self.stalled = 0
        """Streams ended for missing a deadline, over the server's life."""

    async def watch(
        self,
        messages: AsyncIterable[Message],
        first_s: float,
        between_s: float | None,
        what: str,
    ) -> AsyncIterator[Message]:
        """``messages``, the first due within ``first_s`` and each next within ``between_s``.

        ``between_s`` None leaves the messages after the first unbounded.
        """
        stream = aiter(messages)
        deadline_s: float | None = first_s
        while True:
            try:
                async with asyncio.timeout(deadline_s):
                    message = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise self._stalled(what, deadline_s) from None
            yield message
            deadline_s = between_s

    async def send(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        response: Any,
        between_s: float,
        what: str,
    ) -> None:
        """Write ``response``; the peer has ``between_s`` to take it (flow control)."""
        try:
            async with asyncio.timeout(between_s):
                await context.write(response)
        except TimeoutError:
            raise self._stalled(what, between_s) from None

    def _stalled(self, what: str, deadline_s: float | None) -> StreamStalled:
        self.stalled += 1
        return StreamStalled(f"{what} stalled: nothing within {deadline_s} s")
