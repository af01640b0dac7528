"""The Runtime interface: how instructions reach clients and replies come back.

DESIGN idea 3. A runtime moves messages and nothing else: the server decides
the cohort, the instructions and what to do with each reply. Replies are
yielded in the instructions' order (so a seeded run is reproducible whatever
the number of workers), except that a round deadline ends the wait: every
client not heard from by then is reported as a ``deadline`` failure. The
``grpc`` runtime yields replies as they arrive over the network, and also
yields :class:`~fedwarden.core.messages.UpdateRefused` for uploads its
transport checks refused (the client's instruction stays open).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import ClassVar

from fedwarden.core.channel import AsynchronousClients, ClientChannel
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    UpdateRefused,
)
from fedwarden.core.params import Vector
from fedwarden.runtime.engine import Workload


class Runtime(ABC):
    """Hosts the clients of a run and exchanges messages with them."""

    name: ClassVar[str] = "runtime"

    @abstractmethod
    def start(self, workload: Workload) -> None:
        """Bring up workers holding the workload's clients."""

    @abstractmethod
    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure | UpdateRefused]:
        """Send ``vector`` to each instructed client; yield one reply per instruction."""

    @abstractmethod
    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """Evaluate ``vector`` on each instructed client's test split."""

    @abstractmethod
    def close(self) -> None:
        """Stop every worker; safe to call twice."""

    def client_channel(self) -> ClientChannel | None:
        """A channel for multi-step protocols with remote clients (None: clients are simulated)."""
        return None

    def asynchronous(self) -> AsynchronousClients | None:
        """Asynchronous fit tasks (None: this runtime only runs synchronous cohorts)."""
        return None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def owner_of(position: int, num_workers: int) -> int:
    """The worker that hosts the client at ``position`` in the data set's order."""
    return position % num_workers
