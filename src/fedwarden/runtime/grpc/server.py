"""The ``grpc`` runtime's server half: clients in other processes or on other machines.

DESIGN idea 3: the same :class:`~fedwarden.server.server.Server` drives the
rounds; this runtime only moves its messages over gRPC (``federation.proto``).

- **Sessions.** A client calls ``Join`` (version negotiation, the run's
  config) and keeps one ``Connect`` stream open, on which the server pushes
  tasks the moment a round starts and the client sends heartbeats. A client
  silent for three heartbeat periods, or whose stream breaks, is lost: its
  open tasks fail as ``worker_lost`` at once, not at the deadline.
- **Identity.** Under mutual TLS the client's id is its certificate's common
  name and its Ed25519 identity key comes from the same certificate; the key
  is enrolled in the journal (the run store) the first time and must match
  afterwards.
- **Uploads.** Each upload's header is checked before its body is read (this
  run, an open task of this client, not already delivered); the body is
  streamed chunk by chunk into a spool file while its SHA-256 is computed;
  then the signature is verified against the enrolled key. A refused upload
  (``forged``, ``replayed``, ``duplicate``, ``corrupted``, ``impersonation``,
  ``unknown_task``) is never aggregated; it is counted against the
  authenticated sender, never the client its header names, and recorded (by
  the server's listeners for the sender's own open task, in the journal at a
  bounded rate otherwise). An accepted update is fsynced and recorded in the
  journal before the client
  gets its receipt, so a server killed afterwards still has it: on restart
  the round's accepted updates are read back from the spool and only the
  clients that had not delivered are asked again.
- **Bounds** (:mod:`fedwarden.runtime.grpc.limits`): calls in progress are
  capped in all and per peer, and stalled streams are cut.
- **Memory.** The model is served from one read-only copy per round; an
  upload occupies one chunk in memory while it arrives; accepted updates are
  memory-mapped from the spool, so the server's footprint stays O(model).

The thread-per-stream gRPC server suits the cross-silo deployments this
runtime targets (tens to hundreds of sites); cross-device populations belong
behind aggregator shards (DESIGN, "Beyond one machine").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import grpc
import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.core.errors import FedwardenError, RuntimeFailure
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    TrainConfig,
    UpdateRefused,
)
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.deploy.pki import PkiError, identity_from_certificate
from fedwarden.deploy.revocation import RevocationList
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.journal import (
    AcceptedUpdate,
    DuplicateUpdate,
    EnrolmentConflict,
    Journal,
)
from fedwarden.runtime.grpc.limits import PeerLimiter, ServerLimits, StreamStalled, StreamWatchdog
from fedwarden.runtime.grpc.wire import (
    CHUNK_BYTES,
    CHUNK_DATA_TAG,
    MAX_MESSAGE_BYTES,
    PAYLOAD_KINDS,
    ProtocolError,
    UploadMetadata,
    canonical_json,
    check_version,
    chunks,
    framed,
    read_upload_chunk,
    signature_valid,
    version_message,
)

logger = logging.getLogger(__name__)

Message = TypeVar("Message")

SERVICE = "fedwarden.v1.Federation"
LOST_AFTER_HEARTBEATS = 3
"""A client silent for this many heartbeat periods is lost."""

MAX_EXPIRED_TASKS = 100_000
"""Closed-unanswered tasks remembered, to tell a late honest answer from a replay."""
MAX_PROTOCOL_BYTES = 16 << 20
"""Largest answer to a protocol step (secure aggregation's are kilobytes)."""
MAX_RECORDED_REFUSALS = 10
"""Refused uploads answering no open task of their sender, recorded one by one per peer and
round; the rest are counted, and recorded as one row when the round ends."""
MAX_QUEUED_REFUSALS = 256
"""Refusals waiting for the round loop; more are counted and logged, not queued."""
MAX_QUEUED_ANSWERS = 10_000
"""Room for answers to open tasks (the server opens far fewer at once)."""


@dataclass(frozen=True)
class ProtocolAnswer:
    """A client's answer to a protocol step."""

    client_id: str
    message: bytes


Reply = ClientUpdate | ClientEvaluation | ClientFailure | UpdateRefused | ProtocolAnswer


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


class UploadRefused(FedwardenError):
    """An upload failed a transport check; ``reason`` is the counted tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ClientLauncher(Protocol):
    """Starts client processes once the server listens, and waits for them at the end."""

    def start(self, address: str) -> None:
        """Start the clients, pointed at the server on ``address``."""

    def stop(self) -> None:
        """Wait for the clients to exit (or end them)."""


@dataclass(frozen=True)
class RunDescription:
    """What a joining client is told about the run: its id and calibrated config."""

    run_id: str
    config_json: str
    num_features: int
    num_classes: int | None


@dataclass
class _Session:
    """One connected client: its task queue and when it was last heard from."""

    client_id: str
    certificate: bytes | None = None
    """The client's TLS certificate (PEM), checked against the revocation list while it lasts."""
    tasks: queue.Queue[pb.Task | None] = field(default_factory=queue.Queue)
    last_seen: float = field(default_factory=time.monotonic)
    closed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _OpenTask:
    """A task sent and not yet answered (``receiving``: an upload for it is arriving)."""

    task_id: str
    client_id: str
    round_index: int
    kind: str
    message: pb.Task
    receiving: bool = False
    sent_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Model:
    """A global vector served by ``Download`` under its version id."""

    version: str
    vector: Vector
    sha256: bytes


class GrpcRuntime(Runtime):
    """Serves the federation protocol and exchanges tasks with connected clients.

    ``tls`` None means ``--insecure``: loopback only, identities enrolled on
    first use from the client's Join. ``launcher`` (used by ``fedwarden run``)
    starts the clients once the server listens.
    """

    name: ClassVar[str] = "grpc"

    def __init__(
        self,
        address: str,
        *,
        tls: TlsKit | None,
        journal: Journal,
        run: RunDescription,
        spool_dir: Path,
        expected_clients: Sequence[str],
        heartbeat_s: float = 30.0,
        join_timeout_s: float = 300.0,
        launcher: ClientLauncher | None = None,
        listening: threading.Event | None = None,
        step_deadline_s: float = 120.0,
        limits: ServerLimits | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        if tls is None:
            check_insecure_address(address)
        self.address = address
        self.tls = tls
        self.journal = journal
        self.run = run
        self.spool_dir = spool_dir
        self.expected_clients = list(expected_clients)
        self.heartbeat_s = heartbeat_s
        self.join_timeout_s = join_timeout_s
        self.launcher = launcher
        self.step_deadline_s = step_deadline_s
        """How long a protocol step waits for answers when the caller sets no deadline."""
        self.listening = listening or threading.Event()
        """Set once the service accepts connections."""
        self.limits = limits or ServerLimits.for_clients(len(self.expected_clients))
        self.limiter = PeerLimiter(self.limits)
        """Admits calls within the global and per-peer caps; counts those it refuses."""
        self.revocations = revocations
        """The CA's revoked certificates, refused on every call (None: nothing is revoked)."""
        self.watchdog: StreamWatchdog | None = None
        """Cancels streams that stall (created when the server starts listening)."""
        self.port: int | None = None
        self.rejections: Counter[str] = Counter()
        """Refused uploads by reason, over the server's life."""
        self.refusals_by_peer: dict[str, Counter[str]] = {}
        """Refused uploads by the peer that sent them (its certificate's name), and reason."""
        self._recorded_refusals: Counter[str] = Counter()
        self._unrecorded_refusals: dict[str, Counter[str]] = {}
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._connected = threading.Condition(self._lock)
        self._open: dict[str, _OpenTask] = {}
        self._expired: dict[str, str] = {}
        self._delivered: set[tuple[int, str]] = set()
        self._replies: queue.Queue[tuple[Reply, str | None]] = queue.Queue(
            MAX_QUEUED_REFUSALS + MAX_QUEUED_ANSWERS
        )
        self._models: dict[str, _Model] = {}
        self._certificates: dict[str, bytes] = {}
        self._asynchronous: dict[str, str] = {}
        self._current_round = -1
        self._spool_kept_from = 0
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    def serve(self) -> int:
        """Start listening (idempotent); the bound port."""
        if self._server is not None:
            assert self.port is not None
            return self.port
        server = self.limits.server(grpc_options(), self.limiter, "fedwarden-grpc")
        self.watchdog = StreamWatchdog()
        server.add_generic_rpc_handlers((self._handlers(),))
        if self.tls is None:
            port = server.add_insecure_port(self.address)
        else:
            port = server.add_secure_port(self.address, self.tls.server_credentials())
        if port == 0:
            raise RuntimeFailure(
                f"cannot listen on {self.address}: the address is taken or not this machine's"
            )
        server.start()
        self._server, self.port = server, port
        self.listening.set()
        logger.info("serving run %s on port %d", self.run.run_id, port)
        return port

    def start(self, workload: Workload) -> None:
        """Listen, launch local clients if asked, and wait for the expected clients to join."""
        port = self.serve()
        if self.launcher is not None:
            host = self.address.rsplit(":", 1)[0]
            self.launcher.start(f"{host}:{port}")
        deadline = time.monotonic() + self.join_timeout_s
        with self._connected:
            while not all(client in self._sessions for client in self.expected_clients):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._connected.wait(min(left, 1.0))
            missing = sorted(set(self.expected_clients) - set(self._sessions))
        if missing:
            logger.warning(
                "%d expected client(s) did not join within %.0f s (%s); rounds start without "
                "them and they may join later",
                len(missing),
                self.join_timeout_s,
                ", ".join(missing[:10]),
            )

    def close(self) -> None:
        """Tell connected clients the run is over, then stop serving; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            sessions = list(self._sessions.values())
        finished = pb.Task(run_id=self.run.run_id, finished=pb.RunFinished(message="run over"))
        for session in sessions:
            session.tasks.put(finished)
            session.tasks.put(None)
        if self.launcher is not None:
            self.launcher.stop()
        if self._server is not None:
            self._server.stop(grace=5.0).wait()
        self._record_unrecorded()
        if self.watchdog is not None:
            self.watchdog.stop()

    def connected_clients(self) -> list[str]:
        """The clients with an open session right now."""
        with self._lock:
            return sorted(self._sessions)

    # --- the Runtime interface ---------------------------------------------------------------

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure | UpdateRefused]:
        """Push a fit task to each instructed client; yield replies as they arrive.

        Updates accepted for this round before a server restart are read back
        from the spool and not asked for again.
        """
        if not instructions:
            return
        round_index = instructions[0].round_index
        self._begin_round(round_index)
        recovered = {
            row.client_id: row
            for row in self.journal.accepted_updates(self.run.run_id, round_index)
        }
        tasks = {}
        for instruction in instructions:
            if instruction.client_id in recovered:
                continue
            tasks[instruction.client_id] = _fit_task(instruction)
        if recovered:
            logger.warning(
                "round %d: %d update(s) accepted before the restart recovered from the spool (%s); "
                "asking only the other %d client(s)",
                round_index,
                len(recovered),
                ", ".join(sorted(recovered)),
                len(tasks),
            )
        for client_id, row in recovered.items():
            self._delivered.add((round_index, client_id))
            yield _spooled_update(round_index, client_id, row)
        for reply in self._exchange(vector, round_index, tasks, "fit", deadline_s):
            if isinstance(reply, ClientUpdate | ClientFailure | UpdateRefused):
                yield reply

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """Push an evaluate task to each instructed client; yield their metrics as they arrive."""
        if not instructions:
            return
        # Evaluation follows the last round's checkpoint: no spooled update is needed again.
        self._forget_before(self._current_round + 1)
        tasks = {}
        for instruction in instructions:
            evaluate = pb.EvaluateTask(has_finetune=instruction.finetune is not None)
            if instruction.finetune is not None:
                evaluate.finetune.CopyFrom(_train_message(instruction.finetune))
            tasks[instruction.client_id] = pb.Task(evaluate=evaluate)
        round_index = instructions[0].round_index
        for reply in self._exchange(vector, round_index, tasks, "evaluate", None):
            if isinstance(reply, ClientEvaluation | ClientFailure):
                yield reply

    def client_channel(self) -> GrpcRuntime:
        """This runtime carries protocol steps (:meth:`exchange`) to its clients."""
        return self

    def asynchronous(self) -> GrpcRuntime:
        """This runtime runs asynchronous fit tasks (:meth:`dispatch`, :meth:`poll`)."""
        return self

    def release(self, round_index: int, client_id: str) -> None:
        """Delete the spooled copy of an applied update."""
        for path in self.journal.release_payloads(self.run.run_id, round_index, client_id):
            Path(path).unlink(missing_ok=True)

    def exchange(
        self, messages: Mapping[str, bytes], deadline_s: float | None = None
    ) -> dict[str, bytes]:
        """Send each client its protocol step; the answers that arrived before the deadline.

        A client that is lost, fails the step or misses the deadline is absent
        from the answers (it has dropped out of the protocol).
        """
        round_index = max(self._current_round, 0)
        tasks = {
            client_id: pb.Task(protocol=pb.ProtocolStep(message=message))
            for client_id, message in messages.items()
        }
        answers: dict[str, bytes] = {}
        wait = deadline_s if deadline_s is not None else self.step_deadline_s
        for reply in self._exchange(None, round_index, tasks, "protocol", wait):
            if isinstance(reply, ProtocolAnswer):
                answers[reply.client_id] = reply.message
            elif isinstance(reply, ClientFailure):
                logger.warning("protocol step: client %s %s", reply.client_id, reply.message)
        return answers

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
        with self._lock:
            return {
                client_id: self._certificates[client_id]
                for client_id in clients
                if client_id in self._certificates
            }

    def _begin_round(self, round_index: int) -> None:
        """Forget the spool of rounds the server has checkpointed (its listeners record cohorts)."""
        self._record_unrecorded()
        self._forget_before(round_index)
        with self._lock:
            self._current_round = round_index
            self._delivered = {entry for entry in self._delivered if entry[0] >= round_index}

    def _forget_before(self, round_index: int) -> None:
        """Delete the spooled updates of rounds before ``round_index`` (all checkpointed)."""
        for earlier in range(self._spool_kept_from, round_index):
            for path in self.journal.release_payloads(self.run.run_id, earlier):
                Path(path).unlink(missing_ok=True)
        self._spool_kept_from = max(self._spool_kept_from, round_index)

    def publish(self, vector: Vector, label: str) -> str:
        """Serve a copy of ``vector`` to clients as a new model version; its id."""
        model = np.array(vector, dtype=VECTOR_DTYPE, copy=True)
        version = f"{label}-{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._models[version] = _Model(version, model, hashlib.sha256(model.data).digest())
        return version

    def retire(self, version: str) -> None:
        """Stop serving a model version (tasks still referring to it can no longer download it)."""
        with self._lock:
            self._models.pop(version, None)

    def dispatch(self, version: str, instruction: FitInstruction) -> None:
        """Send one fit task on model ``version`` without waiting; :meth:`poll` gives its reply.

        Asynchronous training (FedBuff): tasks of several versions may be open at once.
        """
        with self._lock:
            task_id = self._send(
                instruction.client_id,
                _fit_task(instruction),
                instruction.round_index,
                "fit",
                version,
            )
            self._asynchronous[task_id] = instruction.client_id

    def poll(
        self, timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        """Replies to dispatched tasks that arrived within ``timeout`` seconds.

        Tasks of lost clients, and tasks open longer than ``deadline_s``, come
        back as failures.
        """
        replies: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        for task in self._lost_tasks(self._asynchronous):
            del self._asynchronous[task.task_id]
            replies.append(_lost(task))
        if deadline_s is not None:
            now = time.monotonic()
            with self._lock:
                overdue = [
                    self._open[task_id]
                    for task_id in self._asynchronous
                    if task_id in self._open
                    and not self._open[task_id].receiving
                    and now - self._open[task_id].sent_at > deadline_s
                ]
                for task in overdue:
                    self._expire(task.task_id)
            for task in overdue:
                del self._asynchronous[task.task_id]
                replies.append(_overdue(task.round_index, task.client_id, deadline_s))
        wait = timeout
        while True:
            try:
                reply, answered = self._replies.get(timeout=wait)
            except queue.Empty:
                return replies
            wait = 0.0
            if answered is not None and self._asynchronous.pop(answered, None) is None:
                continue
            if isinstance(reply, ClientUpdate | ClientFailure | UpdateRefused):
                replies.append(reply)

    def _send(
        self, client_id: str, task: pb.Task, round_index: int, kind: str, version: str | None
    ) -> str:
        """Register ``task`` as open and push it to the client's session; its id (hold the lock)."""
        task_id = uuid.uuid4().hex
        task.task_id, task.run_id, task.round_index = task_id, self.run.run_id, round_index
        if version is not None:
            model = self._models[version]
            task.model.CopyFrom(
                pb.ModelRef(version=version, num_bytes=model.vector.nbytes, sha256=model.sha256)
            )
        self._open[task_id] = _OpenTask(task_id, client_id, round_index, kind, task)
        session = self._sessions.get(client_id)
        if session is not None and self._alive(session):
            session.tasks.put(task)
        return task_id

    def _exchange(
        self,
        vector: Vector | None,
        round_index: int,
        tasks: dict[str, pb.Task],
        kind: str,
        deadline_s: float | None,
    ) -> Iterator[Reply]:
        """Send ``tasks`` (``vector`` is their model, if any); yield replies until all are done."""
        version = None if vector is None else self.publish(vector, f"{round_index}-{kind}")
        with self._lock:
            open_ids = {
                self._send(client_id, task, round_index, kind, version): client_id
                for client_id, task in tasks.items()
            }
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        while open_ids:
            for task in self._lost_tasks(open_ids):
                del open_ids[task.task_id]
                yield _lost(task)
            if not open_ids:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if deadline_s is not None and left is not None and left <= 0:
                for client_id in self._close_tasks(open_ids):
                    yield _overdue(round_index, client_id, deadline_s)
                break
            try:
                reply, answered = self._replies.get(timeout=min(left or 1.0, 1.0))
            except queue.Empty:
                continue
            if answered is not None:
                if answered not in open_ids:
                    continue
                del open_ids[answered]
            yield reply
        if version is not None:
            self.retire(version)

    def _lost_tasks(self, open_ids: Mapping[str, str]) -> list[_OpenTask]:
        """Open tasks whose client is not connected or has gone silent; closed here.

        A silent client's session is ended too: when its network returns it
        reconnects and joins the next round, rather than answering stale tasks.
        """
        lost: list[_OpenTask] = []
        silent_sessions: list[_Session] = []
        with self._lock:
            for task_id, client_id in open_ids.items():
                session = self._sessions.get(client_id)
                task = self._open.get(task_id)
                if task is None or task.receiving:
                    continue
                if session is None or not self._alive(session):
                    lost.append(task)
                    self._expire(task_id)
                    if session is not None:
                        silent_sessions.append(session)
        for session in silent_sessions:
            self._end_session(session)
        return lost

    def _alive(self, session: _Session) -> bool:
        """Whether the session is open and its client spoke within three heartbeat periods."""
        silence = time.monotonic() - session.last_seen
        return (
            not session.closed.is_set()
            and silence <= LOST_AFTER_HEARTBEATS * self.heartbeat_s
            and not self._revoked(session.certificate)
        )

    def _close_tasks(self, open_ids: dict[str, str]) -> list[str]:
        """Close the open tasks at the deadline; their clients."""
        with self._lock:
            for task_id in open_ids:
                self._expire(task_id)
        return list(open_ids.values())

    def _expire(self, task_id: str) -> None:
        """Close an unanswered task, remembering it so that a late answer is told apart."""
        task = self._open.pop(task_id, None)
        if task is not None:
            self._expired[task_id] = task.client_id
            while len(self._expired) > MAX_EXPIRED_TASKS:
                del self._expired[next(iter(self._expired))]

    # --- the service -------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
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
        client_id = self._authenticate(request, context)
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

    def _authenticate(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> str:
        """The client's id, after version and identity checks (aborts the call on failure)."""
        try:
            check_version(request.version, f"client {request.client_id!r}")
        except ProtocolError as error:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        client_id = self._peer_id(context) or request.client_id
        if request.client_id != client_id:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {client_id!r} but the client calls itself "
                f"{request.client_id!r}",
            )
        try:
            public_key = self._identity_of(context, request)
            self.journal.enroll(client_id, _raw(public_key), self._enrolment_source())
            if self.tls is not None:
                with self._lock:
                    self._certificates[client_id] = bytes(
                        context.auth_context()["x509_pem_cert"][0]
                    )
        except (PkiError, ValueError) as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except EnrolmentConflict as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        return client_id

    def _enrolment_source(self) -> str:
        return "certificate" if self.tls is not None else "insecure-first-use"

    def _peer_id(self, context: grpc.ServicerContext) -> str | None:
        """The TLS peer's certificate common name (None when serving --insecure).

        A revoked certificate is refused here, on every call: its client's
        session is ended and its identity key's enrolment revoked.
        """
        if self.tls is None:
            return None
        names = context.auth_context().get("x509_common_name")
        if not names:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate was presented")
        client_id = names[0].decode()
        certificate = self._certificate(context)
        if self._revoked(certificate):
            self._shut_out(client_id, certificate)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate of {client_id!r} is revoked; ask the operator for a new kit",
            )
        return str(client_id)

    @staticmethod
    def _certificate(context: grpc.ServicerContext) -> bytes | None:
        """The TLS peer's certificate (PEM), if it presented one."""
        pem = context.auth_context().get("x509_pem_cert")
        return bytes(pem[0]) if pem else None

    def _revoked(self, certificate: bytes | None) -> bool:
        """Whether ``certificate`` is on the revocation list."""
        if self.revocations is None or certificate is None:
            return False
        return self.revocations.is_revoked(certificate)

    def _shut_out(self, client_id: str, certificate: bytes | None) -> None:
        """End a revoked client's session; revoke its enrolment if its key is the certificate's."""
        with self._lock:
            session = self._sessions.get(client_id)
        if session is not None and session.certificate == certificate:
            self._end_session(session)
        if certificate is None:
            return
        try:
            identity = _raw(identity_from_certificate(certificate))
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
        if self.tls is not None:
            pem = self._certificate(context)
            if pem is None:
                raise PkiError("the client's certificate is not available to the server")
            return identity_from_certificate(pem)
        return Ed25519PublicKey.from_public_bytes(bytes(request.identity_public_key))

    def _connect(
        self, signals: Iterator[pb.ClientSignal], context: grpc.ServicerContext
    ) -> Iterator[pb.Task]:
        """The session stream: read the hello, then push tasks and read heartbeats.

        Heartbeats after the hello need no deadline here: a session silent
        for three heartbeat periods is ended, which ends the stream.
        """
        signals = self._watched(signals, context, "session", chunks_bounded=False)
        try:
            first = next(signals)
        except StopIteration:
            return
        except StreamStalled as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        if first.WhichOneof("kind") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with a hello")
        client_id = self._authenticate(first.hello, context)
        session = _Session(client_id, self._certificate(context))
        with self._connected:
            previous = self._sessions.get(client_id)
            if previous is not None:
                previous.closed.set()
                previous.tasks.put(None)
            self._sessions[client_id] = session
            self._connected.notify_all()
            for open_task in self._open.values():
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
        context.add_callback(lambda: self._end_session(session))
        while not session.closed.is_set():
            try:
                task = session.tasks.get(timeout=1.0)
            except queue.Empty:
                continue
            if task is None:
                break
            yield task

    def _read_signals(self, session: _Session, signals: Iterator[pb.ClientSignal]) -> None:
        try:
            for signal in signals:
                session.last_seen = time.monotonic()
                if signal.WhichOneof("kind") == "failed":
                    self._task_failed(session.client_id, signal.failed)
        except grpc.RpcError:
            pass
        finally:
            self._end_session(session)

    def _watched(
        self,
        messages: Iterator[Message],
        context: grpc.ServicerContext,
        what: str,
        *,
        chunks_bounded: bool,
    ) -> Iterator[Message]:
        """``messages`` with the stream deadline on the first (and, if bounded, every next)."""
        assert self.watchdog is not None
        deadline = self.limits.stream_deadline_s
        return self.watchdog.watch(
            messages,
            context,
            deadline,
            deadline if chunks_bounded else None,
            f"{what} from {context.peer()}",
        )

    def _end_session(self, session: _Session) -> None:
        session.closed.set()
        session.tasks.put(None)
        with self._lock:
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]

    def _task_failed(self, client_id: str, failed: pb.TaskFailed) -> None:
        with self._lock:
            task = self._open.get(failed.task_id)
            if task is None or task.client_id != client_id:
                return
            del self._open[failed.task_id]
        failure = ClientFailure(task.round_index, client_id, "error", failed.message[:500])
        self._post(failure, failed.task_id)

    def _post(self, reply: Reply, task_id: str | None) -> None:
        """Hand a reply (and the task it answers) to the exchange waiting for it.

        Answers to open tasks are bounded by the tasks the server opened; a
        refusal (``task_id`` None) is dropped once ``MAX_QUEUED_REFUSALS`` wait.
        """
        if task_id is None and self._replies.qsize() >= MAX_QUEUED_REFUSALS:
            logger.warning(
                "%d refusals wait for the round loop; not queueing another", MAX_QUEUED_REFUSALS
            )
            return
        self._replies.put((reply, task_id))

    def _download(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Stream the current global vector; a peer that stops reading is cut off."""
        self._peer_id(context)
        assert self.watchdog is not None
        pieces = self._model_chunks(request, context)
        yield from self.watchdog.pace(
            pieces, context, self.limits.stream_deadline_s, f"download by {context.peer()}"
        )

    def _model_chunks(
        self, request: pb.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """The requested global vector, one ``Chunk`` message (framed bytes) at a time."""
        with self._lock:
            model = self._models.get(request.version)
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
        """Check the header, spool and hash the body, verify the signature, record, receipt."""
        peer = self._peer_id(context)
        sender = peer if peer is not None else f"unauthenticated {context.peer()}"
        stream = self._watched(stream, context, "upload", chunks_bounded=True)
        try:
            first = next(stream)
        except StopIteration:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header")
        except StreamStalled as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        if isinstance(first, memoryview) or first.WhichOneof("kind") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an upload starts with its header")
        assert isinstance(first, pb.UploadChunk)
        header = first.header
        try:
            task = self._claim(header, peer)
        except UploadRefused as refusal:
            return self._refuse(sender, None, refusal)
        except ProtocolError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        try:
            reply = self._receive(task, header, stream)
        except UploadRefused as refusal:
            self._release(task)
            return self._refuse(sender, task, refusal)
        except StreamStalled as error:
            self._release(task)
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        except (ProtocolError, grpc.RpcError) as error:
            self._release(task)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        self._post(reply, task.task_id)
        return pb.UploadReceipt(accepted=True)

    def _claim(self, header: pb.UploadHeader, peer: str | None) -> _OpenTask:
        """The open task ``header`` answers, marked as receiving; ``UploadRefused`` otherwise."""
        if header.payload_kind not in PAYLOAD_KINDS:
            raise ProtocolError(f"payload_kind must be one of {PAYLOAD_KINDS}")
        client_id = header.client_id
        if peer is not None and client_id != peer:
            raise UploadRefused(
                "impersonation", f"certificate {peer!r} uploaded as client {client_id!r}"
            )
        if header.run_id != self.run.run_id:
            raise UploadRefused(
                "replayed", f"{client_id} sent an upload of run {header.run_id!r}, not this run"
            )
        with self._lock:
            task = self._open.get(header.task_id)
            if task is None or task.client_id != client_id:
                if self._expired.get(header.task_id) == client_id:
                    raise UploadRefused(
                        "late",
                        f"{client_id} answered task {header.task_id!r} of round "
                        f"{header.round_index} after it was closed (deadline or lost session)",
                    )
                if header.round_index < self._current_round:
                    raise UploadRefused(
                        "replayed",
                        f"{client_id} sent an upload for round {header.round_index}; "
                        f"round {self._current_round} is running",
                    )
                if (header.round_index, client_id) in self._delivered:
                    raise UploadRefused(
                        "duplicate", f"{client_id} already delivered round {header.round_index}"
                    )
                raise UploadRefused(
                    "unknown_task", f"{client_id} answered task {header.task_id!r}, not open"
                )
            if task.receiving:
                raise UploadRefused("duplicate", f"{client_id} is already uploading this task")
            if header.round_index != task.round_index:
                raise UploadRefused(
                    "replayed",
                    f"{client_id}'s upload names round {header.round_index}, its task is for "
                    f"round {task.round_index}",
                )
            task.receiving = True
        return task

    def _release(self, task: _OpenTask) -> None:
        with self._lock:
            if task.task_id in self._open:
                task.receiving = False

    def _refuse(
        self, sender: str, task: _OpenTask | None, refusal: UploadRefused
    ) -> pb.UploadReceipt:
        """Count a refused upload against its sender; have it recorded; tell the client why.

        ``sender`` is the authenticated certificate's name (under --insecure,
        the connection), never the name a header claims. A refusal of an upload
        for the sender's own open ``task`` goes to the server, whose listeners
        record and audit it one by one; the rest, which the server never sees,
        are recorded in the journal up to ``MAX_RECORDED_REFUSALS`` per peer and
        round, then counted (:meth:`_record_unrecorded` writes the count).
        """
        self.rejections[refusal.reason] += 1
        receipt = pb.UploadReceipt(accepted=False, reason=refusal.reason, message=str(refusal))
        with self._lock:
            self.refusals_by_peer.setdefault(sender, Counter())[refusal.reason] += 1
            recorded = task is not None or self._recorded_refusals[sender] < MAX_RECORDED_REFUSALS
            if task is None and recorded:
                self._recorded_refusals[sender] += 1
            elif not recorded:
                self._unrecorded_refusals.setdefault(sender, Counter())[refusal.reason] += 1
        if not recorded:
            logger.debug(
                "upload refused (%s) from %s, counted: %s", refusal.reason, sender, refusal
            )
            return receipt
        logger.warning("upload refused (%s) from %s: %s", refusal.reason, sender, refusal)
        if task is None:
            self.journal.record_rejection(
                self.run.run_id, None, sender, refusal.reason, str(refusal)
            )
        else:
            refused = UpdateRefused(task.round_index, sender, refusal.reason, str(refusal))
            self._post(refused, None)
        return receipt

    def _record_unrecorded(self) -> None:
        """Record, one row per peer, the refusals counted but not recorded since the last call."""
        with self._lock:
            unrecorded, self._unrecorded_refusals = self._unrecorded_refusals, {}
            self._recorded_refusals.clear()
        for sender, reasons in unrecorded.items():
            counts = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items()))
            self.journal.record_rejection(
                self.run.run_id,
                None,
                sender,
                "rate_limited",
                f"{reasons.total()} further refused uploads ({counts}) counted, not recorded "
                "one by one",
            )

    def _receive(
        self,
        task: _OpenTask,
        header: pb.UploadHeader,
        stream: Iterator[pb.UploadChunk | memoryview],
    ) -> ClientUpdate | ClientEvaluation | ProtocolAnswer:
        """Spool and hash the body, verify the signature; the accepted reply."""
        metadata = UploadMetadata.from_json(header.metadata_json)
        expected = self._expected_bytes(task, header)
        if task.kind != "fit":
            body = self._receive_small(task, header, stream, expected)
            if task.kind == "protocol":
                return ProtocolAnswer(task.client_id, body)
            return ClientEvaluation(task.client_id, header.num_examples, metadata.metrics)
        path = self.spool_dir / f"round-{task.round_index}" / f"{task.client_id}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        digest = hashlib.sha256()
        with open(partial, "wb") as spool:
            received = 0
            for data in _data_chunks(stream):
                received += len(data)
                if received > expected:
                    raise ProtocolError(f"the upload exceeds its declared {expected} bytes")
                digest.update(data)
                spool.write(data)
            if received != expected:
                raise ProtocolError(f"the upload ended after {received} of {expected} bytes")
            if digest.digest() != bytes(header.payload_sha256):
                raise UploadRefused(
                    "corrupted", f"{task.client_id}'s payload does not match its SHA-256"
                )
            self._verify(task, header)
            spool.flush()
            os.fsync(spool.fileno())
        os.replace(partial, path)
        try:
            self.journal.accept_update(
                self.run.run_id,
                task.round_index,
                task.client_id,
                digest=digest.hexdigest(),
                num_examples=header.num_examples,
                metrics_json=header.metadata_json,
                payload_path=str(path),
                header_json=canonical_json({"payload_kind": header.payload_kind}),
            )
        except DuplicateUpdate as error:
            raise UploadRefused("duplicate", str(error)) from None
        with self._lock:
            self._open.pop(task.task_id, None)
            self._delivered.add((task.round_index, task.client_id))
        return _update_from_spool(
            task.round_index,
            task.client_id,
            header.num_examples,
            header.metadata_json,
            header.payload_kind,
            path,
        )

    def _receive_small(
        self,
        task: _OpenTask,
        header: pb.UploadHeader,
        stream: Iterator[pb.UploadChunk | memoryview],
        expected: int,
    ) -> bytes:
        """The body of an evaluation or protocol answer (small: kept in memory), checked."""
        body = bytearray()
        for data in _data_chunks(stream):
            body += data
            if len(body) > expected:
                raise ProtocolError(f"the upload exceeds its declared {expected} bytes")
        if len(body) != expected:
            raise ProtocolError(f"the upload ended after {len(body)} of {expected} bytes")
        if hashlib.sha256(body).digest() != bytes(header.payload_sha256):
            raise UploadRefused(
                "corrupted", f"{task.client_id}'s answer does not match its SHA-256"
            )
        self._verify(task, header)
        with self._lock:
            self._open.pop(task.task_id, None)
        return bytes(body)

    def _verify(self, task: _OpenTask, header: pb.UploadHeader) -> None:
        """Refuse an upload whose signature is not the enrolled identity's."""
        enrolled = self.journal.enrolled(task.client_id)
        if enrolled is None or not signature_valid(
            header, Ed25519PublicKey.from_public_bytes(enrolled.public_key)
        ):
            raise UploadRefused(
                "forged",
                f"{task.client_id}'s signature does not verify with its enrolled identity key",
            )

    def _expected_bytes(self, task: _OpenTask, header: pb.UploadHeader) -> int:
        """The body size ``header`` may declare for ``task``; ``ProtocolError`` otherwise."""
        size = task.message.model.num_bytes
        declared = header.payload_bytes
        if task.kind == "protocol" or header.payload_kind == "protocol":
            if task.kind != "protocol" or header.payload_kind != "protocol":
                raise ProtocolError("a protocol answer answers a protocol step, and only that")
            if declared > MAX_PROTOCOL_BYTES:
                raise ProtocolError(f"a protocol answer of {declared} bytes exceeds the cap")
        elif task.kind == "evaluate" or header.payload_kind == "evaluation":
            if task.kind != "evaluate" or header.payload_kind != "evaluation" or declared:
                raise ProtocolError("an evaluation answers an evaluate task and carries no payload")
        elif header.payload_kind == "update" and declared != size:
            raise ProtocolError(f"an update must be {size} bytes (the model), not {declared}")
        elif header.payload_kind == "encoded" and declared > 2 * size + CHUNK_BYTES:
            raise ProtocolError(f"an encoded update of {declared} bytes exceeds the cap")
        return int(declared)


def _data_chunks(stream: Iterator[pb.UploadChunk | memoryview]) -> Iterator[memoryview | bytes]:
    """The bytes of the data chunks after an upload's header (``ProtocolError`` for another)."""
    for message in stream:
        if isinstance(message, memoryview):
            yield message
        elif message.WhichOneof("kind") == "data":
            yield message.data
        else:
            raise ProtocolError("an upload sends one header, then only data chunks")


def _update_from_spool(
    round_index: int,
    client_id: str,
    num_examples: int,
    metadata_json: str,
    payload_kind: str,
    path: Path,
) -> ClientUpdate:
    """An accepted update read back (memory-mapped, copy on write) from its spool file."""
    metadata = UploadMetadata.from_json(metadata_json)
    if payload_kind == "encoded":
        return ClientUpdate(
            round_index,
            client_id,
            np.empty(0, dtype=VECTOR_DTYPE),
            num_examples,
            metadata.metrics,
            payload=path.read_bytes(),
            payload_header=metadata.payload_header,
        )
    vector = np.memmap(path, dtype=VECTOR_DTYPE, mode="c")
    return ClientUpdate(round_index, client_id, vector, num_examples, metadata.metrics)


def _spooled_update(round_index: int, client_id: str, row: AcceptedUpdate) -> ClientUpdate:
    """An update accepted before a restart, from its store row and spool file."""
    payload_kind = json.loads(row.header_json)["payload_kind"]
    return _update_from_spool(
        round_index,
        client_id,
        row.num_examples,
        row.metrics_json,
        payload_kind,
        Path(row.payload_path),
    )


def _fit_task(instruction: FitInstruction) -> pb.Task:
    task = pb.Task(fit=pb.FitTask(train=_train_message(instruction.train)))
    task.fit.round_parameters.update(instruction.round_parameters)
    return task


def _lost(task: _OpenTask) -> ClientFailure:
    return ClientFailure(
        task.round_index,
        task.client_id,
        "worker_lost",
        f"is not connected (no stream, or silent for {LOST_AFTER_HEARTBEATS} heartbeats)",
    )


def _overdue(round_index: int, client_id: str, deadline_s: float) -> ClientFailure:
    return ClientFailure(round_index, client_id, "deadline", f"did not reply within {deadline_s} s")


def _train_message(train: TrainConfig) -> pb.TrainConfig:
    return pb.TrainConfig(
        local_epochs=train.local_epochs,
        batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        proximal_mu=train.proximal_mu,
    )


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
