"""Bounds that keep one peer from exhausting the grpc server (issue 17, finding 1).

The thread-per-stream gRPC server gives every call in progress a thread.
Unbounded, one certified client (or, under ``--insecure``, any local process)
that opens Upload streams and never sends a header holds every thread, and an
honest ``Join`` waits until its deadline. These bounds keep the server serving:

- **Global cap** (:meth:`ServerLimits.server`): ``maximum_concurrent_rpcs`` is
  the streams plus the slots kept for ``Join``, with one thread per admitted
  call; an excess call is refused at once (``RESOURCE_EXHAUSTED``), not queued.
- **Stream and per-peer caps** (:class:`PeerLimiter`, an interceptor): streams
  never take the ``Join`` slots, and one peer holds at most ``calls_per_peer``.
- **Deadlines** (:class:`StreamWatchdog`): a stream's first message and each
  next chunk arrive within ``stream_deadline_s``, or the call is cancelled.
- **Connections** (:meth:`ServerLimits.server_options`): streams per
  connection, and idle and age limits, so no connection lives for ever.

A *peer* is the authenticated certificate's common name under mutual TLS;
under ``--insecure`` nobody is authenticated, so a peer is one connection
(its address and port). A local process that opens many connections can
still fill the stream slots of an insecure server until the deadline frees
them: ``--insecure`` is for loopback tests only.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from fedwarden.core.errors import FedwardenError

logger = logging.getLogger(__name__)

Message = TypeVar("Message")


class StreamStalled(FedwardenError):
    """A stream's peer did not send (or take) its next message within the deadline."""


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

    def __post_init__(self) -> None:
        if min(self.max_streams, self.join_slots, self.calls_per_peer) < 1:
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
        """A gRPC server bounded by these limits: one thread per call it admits, no queue."""
        return grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.max_concurrent_rpcs, thread_name_prefix=thread_name
            ),
            interceptors=(limiter,),
            options=options + self.server_options(),
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
        )


def peer_name(context: grpc.ServicerContext) -> str:
    """Who a call comes from: its certificate's common name, else its connection's address."""
    names = context.auth_context().get("x509_common_name")
    if names:
        return str(names[0].decode())
    return str(context.peer())


class PeerLimiter(grpc.ServerInterceptor):
    """Refuses a call when its peer, or all streams together, already hold their share.

    A refused call ends at once with ``RESOURCE_EXHAUSTED`` and is counted in
    :attr:`refused` by reason; its slot returns when a call in progress ends.
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
            self._admit(context, streaming)
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

    def _admit(self, context: grpc.ServicerContext, streaming: bool) -> None:
        """Take a slot for this call until it ends, or refuse it (aborts the call)."""
        peer = peer_name(context)
        with self._lock:
            if self._per_peer[peer] >= self.limits.calls_per_peer:
                reason = "peer_limit"
            elif streaming and self._streams >= self.limits.max_streams:
                reason = "stream_limit"
            else:
                reason = ""
                self._per_peer[peer] += 1
                self._streams += streaming
            if reason:
                self.refused[reason] += 1
        if reason == "peer_limit":
            logger.warning(
                "refused a call from %s: it has %d in progress", peer, self.limits.calls_per_peer
            )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{peer} already has {self.limits.calls_per_peer} calls in progress; wait for "
                "one to end",
            )
        if reason == "stream_limit":
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server has {self.limits.max_streams} streams in progress; retry shortly",
            )
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._per_peer[peer] -= 1
                self._streams -= streaming

        if not context.add_callback(release):
            release()


class StreamWatchdog:
    """Cancels calls whose peer sends (or takes) its next message too late; one thread for all.

    A handler reads its request stream through :meth:`watch` (and paces a
    response stream through :meth:`pace`); each wait for the peer is armed
    with a deadline, and a call still waiting when it passes is cancelled (the
    peer sees ``CANCELLED``), so the thread blocked on it is freed and
    :class:`StreamStalled` raised there.
    """

    def __init__(self) -> None:
        self.stalled = 0
        """Calls cancelled for missing a deadline, over the watchdog's life."""
        self._lock = threading.Condition()
        self._due: dict[int, tuple[float, grpc.ServicerContext]] = {}
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
        self._thread.start()

    def watch(
        self,
        messages: Iterator[Message],
        context: grpc.ServicerContext,
        first_s: float,
        between_s: float | None,
        what: str,
    ) -> Iterator[Message]:
        """``messages``, the first due within ``first_s`` and each next within ``between_s``.

        The clock runs only while the handler waits on the peer, never while
        it works on a message; ``between_s`` None leaves later messages unbounded.
        """
        token = next(self._tokens)
        deadline_s: float | None = first_s
        try:
            while True:
                if deadline_s is not None:
                    self._arm(token, context, deadline_s)
                try:
                    message = next(messages)
                except StopIteration:
                    return
                except grpc.RpcError:
                    self._raise_if_expired(token, what, deadline_s)
                    raise
                finally:
                    self._disarm(token)
                yield message
                deadline_s = between_s
        finally:
            self._forget(token)

    def pace(
        self,
        responses: Iterator[Message],
        context: grpc.ServicerContext,
        between_s: float,
        what: str,
    ) -> Iterator[Message]:
        """``responses``, the peer given ``between_s`` to take each one (flow control)."""
        token = next(self._tokens)
        try:
            for response in responses:
                self._arm(token, context, between_s)
                yield response
                self._disarm(token)
            self._raise_if_expired(token, what, between_s)
        finally:
            self._forget(token)

    def stop(self) -> None:
        """End the watchdog's thread."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    def _raise_if_expired(self, token: int, what: str, deadline_s: float | None) -> None:
        with self._lock:
            expired = token in self._expired
        if expired:
            raise StreamStalled(f"{what} stalled: nothing within {deadline_s} s")

    def _arm(self, token: int, context: grpc.ServicerContext, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        with self._lock:
            earliest = min((due for due, _ in self._due.values()), default=None)
            self._due[token] = (deadline, context)
            if earliest is None or deadline < earliest:
                self._lock.notify_all()

    def _disarm(self, token: int) -> None:
        with self._lock:
            self._due.pop(token, None)

    def _forget(self, token: int) -> None:
        with self._lock:
            self._due.pop(token, None)
            self._expired.discard(token)

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopped:
                    return
                now = time.monotonic()
                overdue = [token for token, (due, _) in self._due.items() if due <= now]
                contexts = [self._due.pop(token)[1] for token in overdue]
                self._expired.update(overdue)
                self.stalled += len(overdue)
                if not overdue:
                    earliest = min((due for due, _ in self._due.values()), default=None)
                    self._lock.wait(None if earliest is None else earliest - now)
                    continue
            for context in contexts:
                context.cancel()
