"""The grpc runtime's sessions: who a client is, its enrolment, and its ``Connect`` stream.

Under mutual TLS a client's id is its certificate's common name and its
Ed25519 identity key comes from the same certificate; the key is enrolled in
the journal the first time and must match afterwards (``--insecure``: the key
the client's Join names, on first use). A revoked certificate is refused on
every call, its session ended and its enrolment revoked. A client keeps one
``Connect`` stream open: the server pushes tasks on it, the client sends
heartbeats; a client silent for three heartbeat periods is lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.deploy.pki import PkiError, identity_from_certificate
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.journal import EnrolmentConflict, Journal
from fedwarden.runtime.grpc.limits import CallRefused
from fedwarden.runtime.grpc.serving import Workers
from fedwarden.runtime.grpc.tasks import Session, TaskBoard
from fedwarden.runtime.grpc.wire import ProtocolError, check_version

logger = logging.getLogger(__name__)


class Sessions:
    """Authenticates and enrols clients and serves their session streams.

    ``secure`` says whether the service runs under mutual TLS (identities
    from certificates) or ``--insecure`` (identities enrolled on first use).
    """

    def __init__(self, board: TaskBoard, journal: Journal, *, secure: bool) -> None:
        self.board = board
        self.journal = journal
        self.secure = secure
        self._certificates: dict[str, bytes] = {}

    def wait_for(self, expected: Sequence[str], timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for ``expected`` clients to connect; those still missing."""
        board = self.board
        deadline = time.monotonic() + timeout_s
        with board.connected:
            while not all(client in board.sessions for client in expected):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                board.connected.wait(min(left, 1.0))
            return sorted(set(expected) - set(board.sessions))

    def identity_keys(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The enrolled identity keys of ``clients`` (those enrolled)."""
        keys = {}
        for client_id in clients:
            enrolled = self.journal.enrolled(client_id)
            if enrolled is not None:
                keys[client_id] = enrolled.public_key
        return keys

    def peer_certificates(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The TLS certificates (PEM) ``clients`` presented when they joined (none --insecure)."""
        with self.board.lock:
            return {
                client_id: self._certificates[client_id]
                for client_id in clients
                if client_id in self._certificates
            }

    # --- identity ----------------------------------------------------------------------------

    def authenticate(self, request: pb.JoinRequest, caller: Caller) -> str:
        """The client's id, after version and identity checks (``CallRefused`` on failure).

        Blocking (the journal): the service runs it on its worker threads.
        """
        try:
            check_version(request.version, f"client {request.client_id!r}")
        except ProtocolError as error:
            raise CallRefused(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        client_id = self.peer_id(caller) or request.client_id
        if request.client_id != client_id:
            raise CallRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {client_id!r} but the client calls itself "
                f"{request.client_id!r}",
            )
        try:
            public_key = self._identity_of(caller, request)
            self.journal.enroll(client_id, raw(public_key), self._enrolment_source())
        except (PkiError, ValueError, EnrolmentConflict) as error:
            raise CallRefused(grpc.StatusCode.PERMISSION_DENIED, str(error)) from None
        if caller.certificate is not None:
            with self.board.lock:
                self._certificates[client_id] = caller.certificate
        return client_id

    def _enrolment_source(self) -> str:
        return "certificate" if self.secure else "insecure-first-use"

    def peer_id(self, caller: Caller) -> str | None:
        """The TLS peer's certificate common name (None when serving --insecure).

        A revoked certificate is refused here, on every call: its client's
        session is ended and its identity key's enrolment revoked (the journal:
        blocking, so the service runs this on its worker threads).
        """
        if not self.secure:
            return None
        if caller.name is None:
            raise CallRefused(
                grpc.StatusCode.UNAUTHENTICATED, "no client certificate was presented"
            )
        if self.board.revoked(caller.certificate):
            self._shut_out(caller.name, caller.certificate)
            raise CallRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {caller.name!r} is revoked; ask the operator for a new kit",
            )
        return caller.name

    def _shut_out(self, client_id: str, certificate: bytes | None) -> None:
        """End a revoked client's session; revoke its enrolment if its key is the certificate's."""
        with self.board.lock:
            session = self.board.sessions.get(client_id)
        if session is not None and session.certificate == certificate:
            self.board.end_session(session)
        if certificate is None:
            return
        try:
            identity = raw(identity_from_certificate(certificate))
        except PkiError:
            return
        enrolled = self.journal.enrolled(client_id)
        if enrolled is not None and enrolled.public_key == identity:
            logger.warning(
                "client %s presented a revoked certificate; enrolment revoked", client_id
            )
            self.journal.revoke(client_id)

    def _identity_of(self, caller: Caller, request: pb.JoinRequest) -> Ed25519PublicKey:
        """The identity key a client proves: from its certificate, or (insecure) its Join."""
        if self.secure:
            if caller.certificate is None:
                raise PkiError("the client's certificate is not available to the server")
            return identity_from_certificate(caller.certificate)
        return Ed25519PublicKey.from_public_bytes(bytes(request.identity_public_key))

    # --- the session stream ------------------------------------------------------------------

    async def connect(
        self, signals: AsyncIterator[pb.ClientSignal], caller: Caller, workers: Workers
    ) -> AsyncIterator[pb.Task]:
        """The session stream: read the hello, then push tasks and read heartbeats.

        ``signals`` are watched for the first message's deadline; heartbeats
        after the hello need none: a session silent for three heartbeat
        periods is ended, which ends the stream. While it waits for a task the
        stream holds no thread.
        """
        first = await anext(signals, None)
        if first is None:
            return
        if first.WhichOneof("kind") != "hello":
            raise CallRefused(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with a hello")
        client_id = await workers.run(self.authenticate, first.hello, caller)
        session = Session(client_id, caller.certificate, asyncio.get_running_loop())
        board = self.board
        with board.connected:
            previous = board.sessions.get(client_id)
            if previous is not None:
                previous.closed.set()
                previous.push(None)
            board.sessions[client_id] = session
            board.connected.notify_all()
            for open_task in board.open.values():
                if open_task.client_id == client_id and not open_task.receiving:
                    logger.info("client %s reconnected: its open task is sent again", client_id)
                    session.push(open_task.message)
        reader = asyncio.create_task(self._read_signals(session, signals))
        try:
            while (task := await session.tasks.get()) is not None:
                yield task
        finally:
            reader.cancel()
            board.end_session(session)

    async def _read_signals(
        self, session: Session, signals: AsyncIterator[pb.ClientSignal]
    ) -> None:
        try:
            async for signal in signals:
                session.last_seen = time.monotonic()
                if signal.WhichOneof("kind") == "failed":
                    self.board.task_failed(session.client_id, signal.failed)
        except grpc.RpcError:
            pass
        finally:
            self.board.end_session(session)


@dataclass(frozen=True)
class Caller:
    """Who a call comes from, as TLS authenticated it (read once, on the event loop)."""

    name: str | None
    """The certificate's common name (None: no certificate, as under --insecure)."""
    certificate: bytes | None
    """The certificate (PEM)."""
    address: str
    """The connection's address and port."""

    @classmethod
    def of(cls, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        """The caller of the call ``context`` serves."""
        auth = context.auth_context()
        names = auth.get("x509_common_name")
        pem = auth.get("x509_pem_cert")
        return cls(
            names[0].decode() if names else None,
            bytes(pem[0]) if pem else None,
            str(context.peer()),
        )


def raw(public_key: Ed25519PublicKey) -> bytes:
    """An Ed25519 public key as its raw 32 bytes (how the journal keeps it)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
