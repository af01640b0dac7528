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

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.deploy.pki import PkiError, identity_from_certificate
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.journal import EnrolmentConflict, Journal
from fedwarden.runtime.grpc.limits import StreamStalled
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

    def authenticate(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> str:
        """The client's id, after version and identity checks (aborts the call on failure)."""
        try:
            check_version(request.version, f"client {request.client_id!r}")
        except ProtocolError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        client_id = self.peer_id(context) or request.client_id
        if request.client_id != client_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {client_id!r} but the client calls itself "
                f"{request.client_id!r}",
            )
        try:
            public_key = self._identity_of(context, request)
            self.journal.enroll(client_id, raw(public_key), self._enrolment_source())
            if self.secure:
                with self.board.lock:
                    self._certificates[client_id] = bytes(
                        context.auth_context()["x509_pem_cert"][0]
                    )
        except (PkiError, ValueError) as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except EnrolmentConflict as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        return client_id

    def _enrolment_source(self) -> str:
        return "certificate" if self.secure else "insecure-first-use"

    def peer_id(self, context: grpc.ServicerContext) -> str | None:
        """The TLS peer's certificate common name (None when serving --insecure).

        A revoked certificate is refused here, on every call: its client's
        session is ended and its identity key's enrolment revoked.
        """
        if not self.secure:
            return None
        names = context.auth_context().get("x509_common_name")
        if not names:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate was presented")
        client_id = names[0].decode()
        certificate = certificate_of(context)
        if self.board.revoked(certificate):
            self._shut_out(client_id, certificate)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {client_id!r} is revoked; ask the operator for a new kit",
            )
        return str(client_id)

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

    def _identity_of(
        self, context: grpc.ServicerContext, request: pb.JoinRequest
    ) -> Ed25519PublicKey:
        """The identity key a client proves: from its certificate, or (insecure) its Join."""
        if self.secure:
            pem = certificate_of(context)
            if pem is None:
                raise PkiError("the client's certificate is not available to the server")
            return identity_from_certificate(pem)
        return Ed25519PublicKey.from_public_bytes(bytes(request.identity_public_key))

    # --- the session stream ------------------------------------------------------------------

    def connect(
        self, signals: Iterator[pb.ClientSignal], context: grpc.ServicerContext
    ) -> Iterator[pb.Task]:
        """The session stream: read the hello, then push tasks and read heartbeats.

        ``signals`` are watched for the first message's deadline; heartbeats
        after the hello need none: a session silent for three heartbeat
        periods is ended, which ends the stream.
        """
        try:
            first = next(signals)
        except StopIteration:
            return
        except StreamStalled as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        if first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with a hello")
        client_id = self.authenticate(first.hello, context)
        session = Session(client_id, certificate_of(context))
        board = self.board
        with board.connected:
            previous = board.sessions.get(client_id)
            if previous is not None:
                previous.closed.set()
                previous.tasks.put(None)
            board.sessions[client_id] = session
            board.connected.notify_all()
            for open_task in board.open.values():
                if open_task.client_id == client_id and not open_task.receiving:
                    logger.info("client %s reconnected: its open task is sent again", client_id)
                    session.tasks.put(open_task.message)
        reader = threading.Thread(
            target=self._read_signals,
            args=(session, signals),
            name=f"signals-{client_id}",
            daemon=True,
        )
        reader.start()
        context.add_callback(lambda: board.end_session(session))
        while not session.closed.is_set():
            try:
                task = session.tasks.get(timeout=1.0)
            except queue.Empty:
                continue
            if task is None:
                break
            yield task

    def _read_signals(self, session: Session, signals: Iterator[pb.ClientSignal]) -> None:
        try:
            for signal in signals:
                session.last_seen = time.monotonic()
                if signal.WhichOneof("kind") == "failed":
                    self.board.task_failed(session.client_id, signal.failed)
        except grpc.RpcError:
            pass
        finally:
            self.board.end_session(session)


def certificate_of(context: grpc.ServicerContext) -> bytes | None:
    """The TLS peer's certificate (PEM), if it presented one."""
    pem = context.auth_context().get("x509_pem_cert")
    return bytes(pem[0]) if pem else None


def raw(public_key: Ed25519PublicKey) -> bytes:
    """An Ed25519 public key as its raw 32 bytes (how the journal keeps it)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
