"""The ``grpc`` runtime's server half: clients in other processes or on other machines.

DESIGN idea 3: the same :class:`~fedwarden.server.server.Server` drives the
rounds; this runtime only moves its messages over gRPC (``federation.proto``).
It is put together from parts, each in its own module:

- :mod:`~fedwarden.runtime.grpc.tasks`: the task board every part shares
  (sessions, open tasks, served models, arriving replies);
- :mod:`~fedwarden.runtime.grpc.sessions`: identity, enrolment and the
  ``Connect`` stream (a client silent for three heartbeat periods, or whose
  stream breaks, is lost: its open tasks fail as ``worker_lost`` at once);
- :mod:`~fedwarden.runtime.grpc.uploads`: header checks, spooling and
  hashing, signatures, acceptance (fsynced and in the journal before the
  client's receipt, so a restarted server asks only the clients that had
  not delivered);
- :mod:`~fedwarden.runtime.grpc.steps`: protocol steps for multi-step
  aggregators (secure aggregation);
- :mod:`~fedwarden.runtime.grpc.dispatch`: asynchronous fit tasks (FedBuff);
- :mod:`~fedwarden.runtime.grpc.service`: the gRPC handlers, under the
  bounds of :mod:`~fedwarden.runtime.grpc.limits` (calls in progress capped
  in all and per peer, stalled streams cut);
- :mod:`~fedwarden.runtime.grpc.serving`: the ``grpc.aio`` server on its
  own event-loop thread, and the fixed pool of threads for blocking work.

What the runtime must not forget it writes to a
:class:`~fedwarden.runtime.grpc.journal.Journal` its caller gives it; the
cohorts and the refusals the server sees are recorded by the server's own
listeners. The model is served from one read-only copy per round and
accepted updates are memory-mapped from the spool, so the server's footprint
stays O(model).

The server's threads do not grow with its clients: a connected device is a
coroutine waiting on its session stream, and one process serves thousands
(``benchmarks/many_devices.py``). Populations beyond one machine's sockets
belong behind aggregator shards (DESIGN, "Beyond one machine").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import grpc

from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    UpdateRefused,
)
from fedwarden.core.params import Vector
from fedwarden.core.records import round_number
from fedwarden.deploy.revocation import RevocationList
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.grpc import federation_pb2 as pb
from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.dispatch import AsynchronousTasks
from fedwarden.runtime.grpc.journal import Journal
from fedwarden.runtime.grpc.limits import PeerLimiter, ServerLimits
from fedwarden.runtime.grpc.service import FederationService, RunDescription
from fedwarden.runtime.grpc.serving import AsyncServer, Workers
from fedwarden.runtime.grpc.sessions import Sessions
from fedwarden.runtime.grpc.steps import ProtocolSteps
from fedwarden.runtime.grpc.tasks import TaskBoard, fit_task, train_message
from fedwarden.runtime.grpc.uploads import Uploads
from fedwarden.runtime.grpc.wire import grpc_options

logger = logging.getLogger(__name__)


class ClientLauncher(Protocol):
    """Starts client processes once the server listens, and waits for them at the end."""

    def start(self, address: str) -> None:
        """Start the clients, pointed at the server on ``address``."""

    def stop(self) -> None:
        """Wait for the clients to exit (or end them)."""


class GrpcRuntime(Runtime):
    """Serves the federation protocol and exchanges tasks with connected clients.

    ``tls`` None means ``--insecure``: loopback only, identities enrolled on
    first use from the client's Join. ``journal`` keeps enrolments and
    accepted uploads (the run store). ``launcher`` (used by ``fedwarden run``)
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
        self.run = run
        self.expected_clients = list(expected_clients)
        self.join_timeout_s = join_timeout_s
        self.launcher = launcher
        self.listening = listening or threading.Event()
        """Set once the service accepts connections."""
        self.limits = limits or ServerLimits.for_clients(len(self.expected_clients))
        self.limiter = PeerLimiter(self.limits)
        """Admits calls within the global and per-peer caps; counts those it refuses."""
        self.port: int | None = None
        self.board = TaskBoard(run.run_id, heartbeat_s, revocations)
        self.sessions = Sessions(self.board, journal, secure=tls is not None)
        self.workers = Workers(self.limits.worker_threads, "fedwarden-grpc")
        """The fixed pool of threads for the calls' blocking work."""
        self.uploads = Uploads(self.board, journal, spool_dir, self.workers)
        self.steps = ProtocolSteps(self.board, self.sessions, step_deadline_s)
        self.dispatched = AsynchronousTasks(self.board, self.uploads)
        self.service = FederationService(
            run,
            heartbeat_s,
            self.limits,
            self.limiter,
            self.workers,
            self.board,
            self.sessions,
            self.uploads,
        )
        self._server: AsyncServer | None = None
        self._spool_kept_from = 0
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    def serve(self) -> int:
        """Start listening (idempotent); the bound port."""
        if self._server is not None:
            assert self.port is not None
            return self.port
        server = AsyncServer(self._bind, self.address)
        port = server.start()
        self._server, self.port = server, port
        self.listening.set()
        logger.info("serving run %s on port %d", self.run.run_id, port)
        return port

    def _bind(self) -> tuple[grpc.aio.Server, int]:
        """The bounded ``grpc.aio`` server and its bound port (run on the server's loop)."""
        server = grpc.aio.server(
            options=grpc_options() + self.limits.server_options(),
            maximum_concurrent_rpcs=self.limits.max_concurrent_rpcs,
        )
        server.add_generic_rpc_handlers((self.service.handlers(),))
        if self.tls is None:
            return server, server.add_insecure_port(self.address)
        return server, server.add_secure_port(self.address, self.tls.server_credentials())

    def start(self, workload: Workload) -> None:
        """Listen, launch local clients if asked, and wait for the expected clients to join."""
        port = self.serve()
        if self.launcher is not None:
            host = self.address.rsplit(":", 1)[0]
            self.launcher.start(f"{host}:{port}")
        missing = self.sessions.wait_for(self.expected_clients, self.join_timeout_s)
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
        with self.board.lock:
            sessions = list(self.board.sessions.values())
        finished = pb.Task(run_id=self.run.run_id, finished=pb.RunFinished(message="run over"))
        for session in sessions:
            session.push(finished)
            session.push(None)
        if self.launcher is not None:
            self.launcher.stop()
        if self._server is not None:
            self._server.stop(grace_s=5.0)
        self.workers.stop()
        self.uploads.record_unrecorded()

    def connected_clients(self) -> list[str]:
        """The clients with an open session right now."""
        return self.board.connected_clients()

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
        recovered = self.uploads.accepted(round_index)
        tasks = {
            instruction.client_id: fit_task(instruction)
            for instruction in instructions
            if instruction.client_id not in recovered
        }
        if recovered:
            logger.warning(
                "round %d: %d update(s) accepted before the restart recovered from the spool (%s); "
                "asking only the other %d client(s)",
                round_number(round_index),
                len(recovered),
                ", ".join(sorted(recovered)),
                len(tasks),
            )
        for row in recovered.values():
            yield self.uploads.read_back(row)
        for reply in self.board.exchange(vector, round_index, tasks, "fit", deadline_s):
            if isinstance(reply, ClientUpdate | ClientFailure | UpdateRefused):
                yield reply

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """Push an evaluate task to each instructed client; yield their metrics as they arrive."""
        if not instructions:
            return
        # Evaluation follows the last round's checkpoint: no spooled update is needed again.
        self._forget_before(self.board.current_round + 1)
        tasks = {}
        for instruction in instructions:
            evaluate = pb.EvaluateTask(has_finetune=instruction.finetune is not None)
            if instruction.finetune is not None:
                evaluate.finetune.CopyFrom(train_message(instruction.finetune))
            tasks[instruction.client_id] = pb.Task(evaluate=evaluate)
        round_index = instructions[0].round_index
        for reply in self.board.exchange(vector, round_index, tasks, "evaluate", None):
            if isinstance(reply, ClientEvaluation | ClientFailure):
                yield reply

    def client_channel(self) -> ProtocolSteps:
        """This runtime carries protocol steps to its clients."""
        return self.steps

    def asynchronous(self) -> AsynchronousTasks:
        """This runtime runs asynchronous fit tasks (FedBuff)."""
        return self.dispatched

    def _begin_round(self, round_index: int) -> None:
        """Forget the spool of rounds the server has checkpointed (its listeners record cohorts)."""
        self.uploads.record_unrecorded()
        self._forget_before(round_index)
        board = self.board
        with board.lock:
            board.current_round = round_index
            board.delivered = {entry for entry in board.delivered if entry[0] >= round_index}

    def _forget_before(self, round_index: int) -> None:
        """Delete the spooled updates of rounds before ``round_index`` (all checkpointed)."""
        for earlier in range(self._spool_kept_from, round_index):
            self.uploads.delete_spooled(earlier)
        self._spool_kept_from = max(self._spool_kept_from, round_index)
