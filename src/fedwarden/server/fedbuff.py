"""FedBuff: buffered asynchronous aggregation (Nguyen et al., AISTATS 2022, Algorithm 1).

The server keeps ``concurrency`` clients training at all times, each on the
model version current when it started. Every arriving update goes through the
pipeline's server halves, is scaled by its staleness weight
``s(tau) = (1 + tau) ** -staleness_exponent`` (tau: server updates since its
model version; the paper's ``1/sqrt(1 + tau)`` is exponent 0.5) and enters the
buffer; after ``buffer_size`` updates the server applies their weighted mean
through the strategy (FedAvg, or a FedOpt server optimizer) as one server
update, publishes the new model, and goes on. A slow client never blocks the
others: its update simply arrives staler. Updates staler than
``max_staleness`` are refused (counted as ``stale``).

Each server update is one "round" of the run's records, checkpoints and
evaluation. A buffer holds at most one update per client: a client whose update is in
the current buffer is not dispatched again until the buffer is released, and
a second reply of such a client (a runtime that redelivers) waits for the next
buffer. With user-level DP (a :class:`~fedwarden.pipeline.dp_mean.GaussianMean`
aggregator, fixed clip norm) each release is then the noisy sum of at most
``buffer_size`` updates of norm at most ``C`` (staleness weights are at most 1),
divided by ``buffer_size``; the privacy accounting checks the budget before a
buffer opens and charges each release it actually made
(:mod:`fedwarden.privacy.user_level` says how, and why no amplification by
sampling is claimed).

Nothing accepted is lost on a crash. With a run directory the server writes
down, as tasks are sent and replies arrive, every task whose update is not yet
part of a released buffer (``open_tasks/``: each client, the index of the
model version it trains on, and which of them the current buffer holds), and
keeps those model versions. When it starts again (from the last checkpoint,
or from scratch if the first buffer was never released) it takes each such
task up once: an update the runtime had durably accepted before the crash is
read back (:meth:`~fedwarden.core.channel.AsynchronousClients.recover`; over
grpc from the spool) and enters the next buffer without its client being
asked again; any other task is resumed on its own model version, served
again, once its client is connected
(:meth:`~fedwarden.core.channel.AsynchronousClients.resume`). Either way the
update is weighted by its staleness against its own version, as if the
server had never stopped. The updates of a buffer that was released and
checkpointed are not taken up again: the record written just before the
checkpoint names them, so they are applied exactly once even when the server
dies between the checkpoint and the release of their spooled copies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from fedwarden.core.channel import AsynchronousClients
from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.core.messages import ClientFailure, ClientUpdate, FitInstruction, UpdateRefused
from fedwarden.core.records import RoundRecord, round_number
from fedwarden.server.rundir import OpenTasks
from fedwarden.server.server import Server
from fedwarden.server.traffic import RoundTraffic, TrainLoss

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""How long the server waits for replies before it tops the concurrency up again."""


def staleness_weight(staleness: int, exponent: float) -> float:
    """FedBuff's down-weighting of an update ``staleness`` server updates old."""
    return float((1.0 + staleness) ** -exponent)


class FedBuffServer(Server):
    """A :class:`Server` whose rounds are FedBuff's buffered server updates."""

    def __init__(
        self,
        *,
        buffer_size: int,
        concurrency: int,
        staleness_exponent: float = 0.5,
        max_staleness: int | None = None,
        **server: Any,
    ) -> None:
        super().__init__(**server)
        clients = self.runtime.asynchronous()
        if clients is None:
            raise ConfigError(
                f"FedBuff needs clients that train while the server aggregates; the "
                f"{self.runtime.name!r} runtime runs synchronous cohorts only: use runtime.kind "
                "'grpc'"
            )
        self.clients: AsynchronousClients = clients
        self.buffer_size = buffer_size
        self.concurrency = concurrency
        self.staleness_exponent = staleness_exponent
        self.max_staleness = max_staleness
        self._versions: dict[int, str] = {}
        self._in_flight: dict[str, int] = {}
        self._dispatched_on_current: set[str] = set()
        self._buffered: dict[str, int] = {}
        """Clients with an update in the current buffer, and its model version: none may add a
        second."""
        self._backlog: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        """Replies that arrived after the buffer filled: they start the next one."""
        self._to_resume: dict[str, int] = {}
        """Tasks open when the server last stopped, by client: taken up once it is connected."""
        self._taken_up = False
        """Whether the tasks the run directory recorded before a restart were taken up."""
        self._recorded_tasks: OpenTasks | None = None
        """The open tasks last written to the run directory (None: not written yet)."""

    def run_round(self, round_index: int) -> RoundRecord:
        """Fill the buffer with ``buffer_size`` updates, then apply them as one server update."""
        started = time.perf_counter()
        if not self._taken_up:
            self._take_up_open_tasks(round_index)
        self._record_open_tasks(round_index)
        if self.privacy is not None:
            self.privacy.before_round(round_index)
        if round_index not in self._versions:
            if self.run_dir is not None:
                self.run_dir.save_model_version(round_index, self.vector)
            self._versions[round_index] = self.clients.publish(self.vector, f"v{round_index}")
            self._dispatched_on_current = set()
        for listener in self.listeners:
            listener.buffer_started(round_index, self.buffer_size)
        self.pipeline.aggregator.start(self.vector.size, self.client_ids)
        traffic = RoundTraffic(sampled=0, vector_bytes=self.vector.nbytes)
        train_loss = TrainLoss()
        accept = self.accepting(train_loss)
        second_replies: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        deadline = None if self.settings.deadline_s is None else started + self.settings.deadline_s
        while len(traffic.participants) < self.buffer_size:
            traffic.sampled += self._top_up(round_index)
            if not self._in_flight:
                logger.warning(
                    "server update %d: no client is connected and idle; applying %d update(s)",
                    round_number(round_index),
                    len(traffic.participants),
                )
                break
            if deadline is not None and time.perf_counter() > deadline:
                break
            if not self._backlog:
                self._backlog.extend(self.clients.poll(POLL_S, self.settings.deadline_s))
                self._record_open_tasks(round_index)
            while self._backlog and len(traffic.participants) < self.buffer_size:
                reply = self._backlog.pop(0)
                if reply.client_id in self._buffered:
                    second_replies.append(reply)
                    continue
                self._in_flight.pop(reply.client_id, None)
                admit = partial(self._admit_stale, round_index, accept)
                if self.receive(round_index, reply, traffic, admit) is not None:
                    self._buffered[reply.client_id] = reply.round_index
        self._backlog[:0] = second_replies
        # Written before the checkpoint: a restart after it knows the buffer was released.
        self._record_open_tasks(round_index)
        record = self.conclude_round(round_index, started, traffic, train_loss)
        for client_id, version_index in self._buffered.items():
            self.clients.release(version_index, client_id)
        self._buffered = {}
        self._retire_unused(round_index)
        return record

    def _admit_stale(
        self, round_index: int, accept: Callable[[ClientUpdate], None], update: ClientUpdate
    ) -> ClientUpdate:
        """Refuse ``update`` if too stale; else admit it down-weighted by its staleness."""
        staleness = round_index - update.round_index
        if self.max_staleness is not None and staleness > self.max_staleness:
            raise UpdateRejected(
                "stale",
                f"{update.client_id}'s update is {staleness} server updates old, "
                f"more than max_staleness={self.max_staleness}",
            )
        weight = np.float32(staleness_weight(staleness, self.staleness_exponent))
        return self.admit(
            update, lambda checked: accept(replace(checked, update=checked.update * weight))
        )

    def refused(
        self,
        traffic: RoundTraffic,
        round_index: int,
        update: ClientUpdate,
        rejection: UpdateRejected,
    ) -> None:
        """As :meth:`Server.refused`, and the refused upload's spooled copy is released.

        Its task is written off first, so that a restart never asks its client again.
        """
        super().refused(traffic, round_index, update, rejection)
        self._record_open_tasks(round_index)
        self.clients.release(update.round_index, update.client_id)

    def _top_up(self, round_index: int) -> int:
        """Dispatch idle connected clients until ``concurrency`` train; how many were sent."""
        connected = set(self.clients.connected_clients())
        self._resume_open_tasks(connected)
        wanted = self.concurrency - len(self._in_flight)
        if wanted <= 0:
            return 0
        population = self.client_ids
        if self.privacy is not None:
            population = self.privacy.eligible(population)
        if self.reputation is not None:
            population = self.reputation.eligible(population)
        busy = (
            self._in_flight.keys()
            | self._to_resume.keys()
            | self._dispatched_on_current
            | self._buffered.keys()
        )
        idle = [client for client in population if client in connected and client not in busy]
        if not idle:
            return 0
        chosen = self.cohort_randomness.subset(len(idle), min(wanted, len(idle)))
        train = self.strategy.train_config(round_index)
        parameters = self.pipeline.aggregator.round_parameters()
        clients = [idle[position] for position in chosen]
        for client in clients:
            self._in_flight[client] = round_index
            self._dispatched_on_current.add(client)
        self._record_open_tasks(round_index)
        for client in clients:
            instruction = FitInstruction(round_index, client, train, parameters)
            self.clients.dispatch(self._versions[round_index], instruction)
        return len(chosen)

    def _resume_open_tasks(self, connected: set[str]) -> None:
        """Take up the tasks open before the restart whose clients are connected."""
        parameters = self.pipeline.aggregator.round_parameters()
        for client in sorted(self._to_resume.keys() & connected):
            index = self._to_resume.pop(client)
            instruction = FitInstruction(
                index, client, self.strategy.train_config(index), parameters
            )
            self.clients.resume(self._versions[index], instruction)
            self._in_flight[client] = index

    def _take_up_open_tasks(self, round_index: int) -> None:
        """Take up the tasks whose updates were not in a released buffer when the server stopped.

        An update the runtime accepted before the stop is read back into the
        backlog; every other task waits for its client to connect
        (:meth:`_resume_open_tasks`). Their model versions are served again
        from the run directory until no task needs them, and their clients
        get no fresh task meanwhile.
        """
        self._taken_up = True
        if self.run_dir is None:
            return
        recorded = self.run_dir.read_open_tasks()
        if recorded is None:
            return
        if recorded.server_update not in (round_index, round_index - 1):
            raise ConfigError(
                f"{self.run_dir.open_tasks_dir} records the tasks of server update "
                f"{recorded.server_update}, but the checkpoint continues at {round_index}; the "
                "run directory was edited: restore both from the same backup"
            )
        tasks = dict(recorded.tasks)
        if recorded.server_update < round_index:
            # That buffer was released and checkpointed: its updates are applied.
            for client in recorded.buffered:
                self.clients.release(tasks.pop(client), client)
        for index in sorted(set(tasks.values())):
            vector = self.run_dir.load_model_version(index)
            self.trainer.spec.check_vector(vector)
            self._versions[index] = self.clients.publish(vector, f"v{index}")
        self._dispatched_on_current = {
            client for client, index in tasks.items() if index == round_index
        }
        recovered = self.clients.recover(tasks)
        for update in recovered:
            self._in_flight[update.client_id] = tasks.pop(update.client_id)
        self._backlog.extend(recovered)
        self._to_resume = tasks
        logger.info(
            "server update %d: %d update(s) accepted before the restart read back, %d task(s) "
            "to resume",
            round_index,
            len(recovered),
            len(tasks),
        )

    def _record_open_tasks(self, round_index: int) -> None:
        """Write down the tasks whose updates are not in a released buffer, for a restart."""
        if self.run_dir is None:
            return
        open_tasks = OpenTasks(
            server_update=round_index,
            tasks={**self._in_flight, **self._buffered, **self._to_resume},
            buffered=frozenset(self._buffered),
        )
        if open_tasks != self._recorded_tasks:
            self.run_dir.write_open_tasks(open_tasks)
            self._recorded_tasks = open_tasks

    def _retire_unused(self, round_index: int) -> None:
        """Stop serving model versions no training client still needs to download."""
        needed = {*self._in_flight.values(), *self._to_resume.values()}
        for version_index in [index for index in self._versions if index <= round_index]:
            if version_index not in needed:
                self.clients.retire(self._versions.pop(version_index))
                if self.run_dir is not None:
                    self.run_dir.delete_model_version(version_index)
