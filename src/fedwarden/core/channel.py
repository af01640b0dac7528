"""What a runtime with remote clients offers beyond rounds: protocol steps and asynchronous tasks.

:class:`ClientChannel` serves aggregators whose protocol needs several
exchanges per round (secure aggregation), and :class:`ProtocolHalf` is what
answers them on a client; :class:`AsynchronousClients` serves servers that do
not wait for a cohort (FedBuff).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from fedwarden.core.messages import ClientFailure, ClientUpdate, FitInstruction, UpdateRefused
from fedwarden.core.params import Vector


class ClientChannel(Protocol):
    """Protocol steps between an aggregator's server half and its clients' halves.

    Offered by runtimes whose clients live in other processes (``grpc``), for
    aggregators that need several exchanges per round (secure aggregation).
    The messages are bytes only the aggregator's halves read.
    """

    def exchange(
        self, messages: Mapping[str, bytes], deadline_s: float | None = None
    ) -> dict[str, bytes]:
        """Send ``messages[c]`` to each client ``c``; the answers that arrived in time."""
        ...

    def identity_keys(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The enrolled Ed25519 identity public keys (raw 32 bytes) of ``clients``."""
        ...

    def peer_certificates(self, clients: Sequence[str]) -> dict[str, bytes]:
        """The certificates (PEM) of ``clients``, for each client to check against its own CA."""
        ...


@runtime_checkable
class ProtocolHalf(Protocol):
    """A client's half of a multi-step protocol: a pipeline stage that answers the steps.

    A deployed client hands each protocol step its server sends to the stage
    of its pipeline that is one (secure aggregation's client half).
    """

    def answer(self, message: bytes) -> bytes:
        """The answer to one step (bytes only the protocol's halves read)."""
        ...


class AsynchronousClients(Protocol):
    """Fit tasks on several model versions at once, answered as they finish."""

    def publish(self, vector: Vector, label: str) -> str:
        """Serve a copy of ``vector`` as a new model version; its id."""
        ...

    def retire(self, version: str) -> None:
        """Stop serving a model version."""

    def dispatch(self, version: str, instruction: FitInstruction) -> None:
        """Send one fit task on model ``version``; its reply comes from :meth:`poll`."""

    def resume(self, version: str, instruction: FitInstruction) -> None:
        """Take up a task sent before a server restart; its reply comes from :meth:`poll`.

        ``version`` is the task's own model version, served again. A runtime
        whose client still holds the task waits for its reply; one that lost
        the client's session sends the same task again when it reconnects.
        """

    def recover(self, tasks: Mapping[str, int]) -> list[ClientUpdate]:
        """The updates answering ``tasks`` (client -> model version index) of the server before
        its restart that the runtime accepted durably and that were not released since.

        They are read back from the runtime's durable copy, their clients not
        asked again; :meth:`poll` never returns them.
        """
        ...

    def poll(
        self, timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        """Replies that arrived within ``timeout`` s; lost or overdue tasks as failures."""
        ...

    def release(self, round_index: int, client_id: str) -> None:
        """Forget the durable copy of an update the server has applied and checkpointed."""

    def connected_clients(self) -> list[str]:
        """The clients that can be sent a task now."""
        ...
