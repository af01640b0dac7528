"""The channel a runtime offers aggregators whose protocol needs several exchanges per round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


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
