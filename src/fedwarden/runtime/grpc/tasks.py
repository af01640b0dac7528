"""The grpc runtime's task board: sessions, open tasks, served models and arriving replies.

Every part of the runtime meets here, under one lock: the service registers
sessions and claims tasks for uploads, the round driver sends tasks and waits
for their replies (:meth:`TaskBoard.exchange`), asynchronous training
dispatches and polls. A task is open from the moment it is sent until it is
answered, fails, or is closed at its deadline or when its client is lost; a
closed task is remembered, so that a late honest answer is told apart from a
replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    FitInstruction,
    TrainConfig,
    UpdateRefused,
)
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.deploy.revocation import RevocationList
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.wire import CHUNK_DATA_TAG, chunks, framed

logger = logging.getLogger(__name__)

LOST_AFTER_HEARTBEATS = 3
"""A client silent for this many heartbeat periods is lost."""
MAX_EXPIRED_TASKS = 100_000
"""Closed-unanswered tasks remembered, to tell a late honest answer from a replay."""
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


@dataclass
class Session:
    """One connected client: its task queue and when it was last heard from.

    The session's stream is a coroutine on ``loop`` (the server's event
    loop); any thread hands it tasks with :meth:`push`.
    """

    client_id: str
    certificate: bytes | None
    """The client's TLS certificate (PEM), checked against the revocation list while it lasts."""
    loop: asyncio.AbstractEventLoop
    tasks: asyncio.Queue[pb.Task | None] = field(default_factory=asyncio.Queue)
    """Tasks for the stream to send; None ends the stream."""
    last_seen: float = field(default_factory=time.monotonic)
    closed: threading.Event = field(default_factory=threading.Event)

    def push(self, task: pb.Task | None) -> None:
        """Queue ``task`` for the stream (None ends it), from any thread."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.tasks.put_nowait, task)


@dataclass
class OpenTask:
    """A task sent and not yet answered (``receiving``: an upload for it is arriving)."""

    task_id: str
    client_id: str
    round_index: int
    kind: str
    message: pb.Task
    receiving: bool = False
    sent_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ServedModel:
    """A global vector served by ``Download`` under its version id, as its framed chunks.

    The chunks are framed once per version and the same bytes are written to
    every client that downloads it (a copy of the vector, made once, rather
    than one per client).
    """

    version: str
    frames: tuple[bytes, ...]
    """The vector's ``Chunk`` messages (:func:`~fedwarden.runtime.grpc.wire.framed`), in order."""
    num_bytes: int
    sha256: bytes

    @classmethod
    def of(cls, version: str, vector: Vector) -> ServedModel:
        """``vector`` (float32) framed for ``Download``, with its size and SHA-256."""
        body = memoryview(np.ascontiguousarray(vector, dtype=VECTOR_DTYPE).data).cast("B")
        frames = tuple(framed(CHUNK_DATA_TAG, piece) for piece in chunks(body))
        return cls(version, frames, body.nbytes, hashlib.sha256(body).digest())


class TaskBoard:
    """The state the runtime's parts share: sessions, open and closed tasks, models, replies.

    ``lock`` guards every dict and set here; ``connected`` (on the same lock)
    is notified when a session opens.
    """

    def __init__(self, run_id: str, heartbeat_s: float, revocations: RevocationList | None) -> None:
        self.run_id = run_id
        self.heartbeat_s = heartbeat_s
        self.revocations = revocations
        """The CA's revoked certificates, refused on every call (None: nothing is revoked)."""
        self.lock = threading.Lock()
        self.connected = threading.Condition(self.lock)
        self.sessions: dict[str, Session] = {}
        self.open: dict[str, OpenTask] = {}
        self.expired: dict[str, str] = {}
        self.delivered: set[tuple[int, str]] = set()
        """(round, client) pairs whose update was accepted."""
        self.models: dict[str, ServedModel] = {}
        self.current_round = -1
        self.replies: queue.Queue[tuple[Reply, str | None]] = queue.Queue(
            MAX_QUEUED_REFUSALS + MAX_QUEUED_ANSWERS
        )

    # --- models ------------------------------------------------------------------------------

    def publish(self, vector: Vector, label: str) -> str:
        """Serve a copy of ``vector`` to clients as a new model version; its id."""
        version = f"{label}-{uuid.uuid4().hex[:8]}"
        model = ServedModel.of(version, vector)
        with self.lock:
            self.models[version] = model
        return version

    def retire(self, version: str) -> None:
        """Stop serving a model version (tasks still referring to it can no longer download it)."""
        with self.lock:
            self.models.pop(version, None)

    # --- tasks -------------------------------------------------------------------------------

    def send(
        self, client_id: str, task: pb.Task, round_index: int, kind: str, version: str | None
    ) -> str:
        """Register ``task`` as open and push it to the client's session; its id (hold the lock)."""
        task_id = uuid.uuid4().hex
        task.task_id, task.run_id, task.round_index = task_id, self.run_id, round_index
        if version is not None:
            model = self.models[version]
            task.model.CopyFrom(
                pb.ModelRef(version=version, num_bytes=model.num_bytes, sha256=model.sha256)
            )
        self.open[task_id] = OpenTask(task_id, client_id, round_index, kind, task)
        session = self.sessions.get(client_id)
        if session is not None and self.alive(session):
            session.push(task)
        return task_id

    def exchange(
        self,
        vector: Vector | None,
        round_index: int,
        tasks: dict[str, pb.Task],
        kind: str,
        deadline_s: float | None,
    ) -> Iterator[Reply]:
        """Send ``tasks`` (``vector`` is their model, if any); yield replies until all are done."""
        version = None if vector is None else self.publish(vector, f"{round_index}-{kind}")
        with self.lock:
            open_ids = {
                self.send(client_id, task, round_index, kind, version): client_id
                for client_id, task in tasks.items()
            }
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        while open_ids:
            for task in self.lost_tasks(open_ids):
                del open_ids[task.task_id]
                yield lost(task)
            if not open_ids:
                break
            left = None if deadline is None else deadline - time.monotonic()
            if deadline_s is not None and left is not None and left <= 0:
                for client_id in self.close_tasks(open_ids):
                    yield overdue(round_index, client_id, deadline_s)
                break
            try:
                reply, answered = self.replies.get(timeout=min(left or 1.0, 1.0))
            except queue.Empty:
                continue
            if answered is not None:
                if answered not in open_ids:
                    continue
                del open_ids[answered]
            yield reply
        if version is not None:
            self.retire(version)

    def lost_tasks(self, open_ids: Mapping[str, str]) -> list[OpenTask]:
        """Open tasks whose client is not connected or has gone silent; closed here.

        A silent client's session is ended too: when its network returns it
        reconnects and joins the next round, rather than answering stale tasks.
        """
        lost_tasks: list[OpenTask] = []
        silent_sessions: list[Session] = []
        with self.lock:
            for task_id, client_id in open_ids.items():
                session = self.sessions.get(client_id)
                task = self.open.get(task_id)
                if task is None or task.receiving:
                    continue
                if session is None or not self.alive(session):
                    lost_tasks.append(task)
                    self.expire(task_id)
                    if session is not None:
                        silent_sessions.append(session)
        for session in silent_sessions:
            self.end_session(session)
        return lost_tasks

    def close_tasks(self, open_ids: dict[str, str]) -> list[str]:
        """Close the open tasks at the deadline; their clients."""
        with self.lock:
            for task_id in open_ids:
                self.expire(task_id)
        return list(open_ids.values())

    def expire(self, task_id: str) -> None:
        """Close an unanswered task, remembering it so that a late answer is told apart."""
        task = self.open.pop(task_id, None)
        if task is not None:
            self.expired[task_id] = task.client_id
            while len(self.expired) > MAX_EXPIRED_TASKS:
                del self.expired[next(iter(self.expired))]

    def task_failed(self, client_id: str, failed: pb.TaskFailed) -> None:
        """A client reported that it could not do one of its open tasks."""
        with self.lock:
            task = self.open.get(failed.task_id)
            if task is None or task.client_id != client_id:
                return
            del self.open[failed.task_id]
        failure = ClientFailure(task.round_index, client_id, "error", failed.message[:500])
        self.post(failure, failed.task_id)

    def post(self, reply: Reply, task_id: str | None) -> None:
        """Hand a reply (and the task it answers) to the exchange waiting for it.

        Answers to open tasks are bounded by the tasks the server opened; a
        refusal (``task_id`` None) is dropped once ``MAX_QUEUED_REFUSALS`` wait.
        """
        if task_id is None and self.replies.qsize() >= MAX_QUEUED_REFUSALS:
            logger.warning(
                "%d refusals wait for the round loop; not queueing another", MAX_QUEUED_REFUSALS
            )
            return
        self.replies.put((reply, task_id))

    # --- sessions ----------------------------------------------------------------------------

    def alive(self, session: Session) -> bool:
        """Whether the session is open and its client spoke within three heartbeat periods."""
        silence = time.monotonic() - session.last_seen
        return (
            not session.closed.is_set()
            and silence <= LOST_AFTER_HEARTBEATS * self.heartbeat_s
            and not self.revoked(session.certificate)
        )

    def revoked(self, certificate: bytes | None) -> bool:
        """Whether ``certificate`` is on the revocation list."""
        if self.revocations is None or certificate is None:
            return False
        return self.revocations.is_revoked(certificate)

    def end_session(self, session: Session) -> None:
        """Close a session's stream and forget it (if it is still the client's current one)."""
        session.closed.set()
        session.push(None)
        with self.lock:
            if self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]

    def connected_clients(self) -> list[str]:
        """The clients with an open session right now."""
        with self.lock:
            return sorted(self.sessions)


def fit_task(instruction: FitInstruction) -> pb.Task:
    """The task message of a fit instruction (its ids and model are filled when sent)."""
    task = pb.Task(fit=pb.FitTask(train=train_message(instruction.train)))
    task.fit.round_parameters.update(instruction.round_parameters)
    return task


def train_message(train: TrainConfig) -> pb.TrainConfig:
    """A training config as the wire carries it."""
    return pb.TrainConfig(
        local_epochs=train.local_epochs,
        batch_size=train.batch_size,
        learning_rate=train.learning_rate,
        proximal_mu=train.proximal_mu,
    )


def lost(task: OpenTask) -> ClientFailure:
    """The failure of a task whose client was lost."""
    return ClientFailure(
        task.round_index,
        task.client_id,
        "worker_lost",
        f"is not connected (no stream, or silent for {LOST_AFTER_HEARTBEATS} heartbeats)",
    )


def overdue(round_index: int, client_id: str, deadline_s: float) -> ClientFailure:
    """The failure of a client that missed the deadline."""
    return ClientFailure(round_index, client_id, "deadline", f"did not reply within {deadline_s} s")
