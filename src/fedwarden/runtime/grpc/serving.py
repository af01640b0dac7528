"""The asynchronous gRPC server of the ``grpc`` runtime: one event loop, a fixed pool of threads.

A call that waits on its peer (a connected device's ``Connect`` stream, an
upload between chunks) is a coroutine on one event loop, so thousands of
connected devices hold memory, not threads. Work that blocks (the journal's
database, fsyncing the spool, verifying signatures) runs on
:class:`Workers`, a pool of ``ServerLimits.worker_threads`` threads, however
many devices are connected. The round driver stays synchronous: it runs in
the caller's thread and reaches the loop only through the task board's
thread-safe handoffs (:meth:`~fedwarden.runtime.grpc.tasks.Session.push`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from fedwarden.core.errors import RuntimeFailure

logger = logging.getLogger(__name__)

Result = TypeVar("Result")

LOOP_THREAD = "fedwarden-grpc-loop"
"""The name of the thread that runs the server's event loop."""


class Workers:
    """A fixed pool of threads for the blocking work of calls served on the event loop."""

    def __init__(self, threads: int, name: str) -> None:
        self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, function: Callable[..., Result], *args: Any) -> Result:
        """``function(*args)`` on a pool thread; the calling coroutine waits without a thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    def submit(self, function: Callable[..., object], *args: Any) -> None:
        """Start ``function(*args)`` on a pool thread without waiting for it (from any thread).

        An exception it raises is logged, since no caller waits for it.
        """
        self._pool.submit(function, *args).add_done_callback(_log_failure)

    def stop(self) -> None:
        """Finish the work started and end the threads."""
        self._pool.shutdown(wait=True)


def _log_failure(done: futures.Future[object]) -> None:
    error = done.exception()
    if error is not None:
        logger.error("background work of the grpc server failed: %s", error, exc_info=error)


class AsyncServer:
    """A ``grpc.aio`` server on its own event-loop thread, started and stopped from sync code.

    ``build`` makes the server inside the loop (``grpc.aio`` servers belong
    to the loop that creates them) and binds its port; the bound port is
    returned by :meth:`start`.
    """

    def __init__(self, build: Callable[[], tuple[grpc.aio.Server, int]], address: str) -> None:
        self._build = build
        self._address = address
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._grace_s = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Start serving on the loop thread; the bound port (``RuntimeFailure`` if none)."""
        started: futures.Future[int] = futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name=LOOP_THREAD, daemon=True
        )
        self._thread.start()
        return started.result()

    def stop(self, grace_s: float) -> None:
        """Stop serving, giving calls in progress ``grace_s``; wait for the loop to end."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if loop is None or stopping is None or thread is None:
            return
        self._grace_s = grace_s
        loop.call_soon_threadsafe(stopping.set)
        thread.join()

    async def _serve(self, started: futures.Future[int]) -> None:
        try:
            server, port = self._build()
        except RuntimeError:
            port = 0
        try:
            if port == 0:
                raise RuntimeFailure(
                    f"cannot listen on {self._address}: the address is taken or not this machine's"
                )
            await server.start()
        except BaseException as error:
            started.set_exception(error)
            return
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        started.set_result(port)
        await self._stopping.wait()
        await server.stop(self._grace_s)
