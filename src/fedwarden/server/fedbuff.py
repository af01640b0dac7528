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
evaluation. Clients still training when the server stops are not waited for.
After a server restart the open tasks are not resumed: their late answers are
refused and fresh clients are dispatched on the restored model.
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
        self._backlog: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        """Replies that arrived after the buffer filled: they start the next one."""

    def run_round(self, round_index: int) -> RoundRecord:
        """Fill the buffer with ``buffer_size`` updates, then apply them as one server update."""
        started = time.perf_counter()
        if round_index not in self._versions:
            self._versions[round_index] = self.clients.publish(self.vector, f"v{round_index}")
            self._dispatched_on_current = set()
        for listener in self.listeners:
            listener.buffer_started(round_index, self.buffer_size)
        self.pipeline.aggregator.start(self.vector.size, self.client_ids)
        traffic = RoundTraffic(sampled=0, vector_bytes=self.vector.nbytes)
        train_loss = TrainLoss()
        accept = self.accepting(train_loss)
        buffered: list[tuple[int, str]] = []
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
            while self._backlog and len(traffic.participants) < self.buffer_size:
                reply = self._backlog.pop(0)
                self._in_flight.pop(reply.client_id, None)
                admit = partial(self._admit_stale, round_index, accept)
                if self.receive(round_index, reply, traffic, admit) is not None:
                    buffered.append((reply.round_index, reply.client_id))
        record = self.conclude_round(round_index, started, traffic, train_loss)
        for version_index, client_id in buffered:
            self.clients.release(version_index, client_id)
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
        """As :meth:`Server.refused`, and the refused upload's spooled copy is released."""
        super().refused(traffic, round_index, update, rejection)
        self.clients.release(update.round_index, update.client_id)

    def _top_up(self, round_index: int) -> int:
        """Dispatch idle connected clients until ``concurrency`` train; how many were sent."""
        wanted = self.concurrency - len(self._in_flight)
        if wanted <= 0:
            return 0
        population = self.client_ids
        if self.reputation is not None:
            population = self.reputation.eligible(population)
        connected = set(self.clients.connected_clients())
        idle = [
            client
            for client in population
            if client in connected
            and client not in self._in_flight
            and client not in self._dispatched_on_current
        ]
        if not idle:
            return 0
        chosen = self.cohort_randomness.subset(len(idle), min(wanted, len(idle)))
        train = self.strategy.train_config(round_index)
        parameters = self.pipeline.aggregator.round_parameters()
        for position in chosen:
            client = idle[position]
            instruction = FitInstruction(round_index, client, train, parameters)
            self.clients.dispatch(self._versions[round_index], instruction)
            self._in_flight[client] = round_index
            self._dispatched_on_current.add(client)
        return len(chosen)

    def _retire_unused(self, round_index: int) -> None:
        """Stop serving model versions no training client still needs to download."""
        needed = set(self._in_flight.values())
        for version_index in [index for index in self._versions if index <= round_index]:
            if version_index not in needed:
                self.clients.retire(self._versions.pop(version_index))
