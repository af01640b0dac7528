"""What one round brought back: its traffic, the clients' training loss, their evaluations."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fedwarden.core.messages import ClientEvaluation, ClientUpdate


def weighted_client_metrics(evaluations: Iterable[ClientEvaluation]) -> dict[str, float]:
    """Example-weighted mean of each metric over the clients' evaluations."""
    totals: defaultdict[str, float] = defaultdict(float)
    weight = 0
    for evaluation in evaluations:
        weight += evaluation.num_examples
        for name, value in evaluation.metrics.items():
            totals[name] += value * evaluation.num_examples
    return {name: total / weight for name, total in totals.items()} if weight else {}


@dataclass
class TrainLoss:
    """The example-weighted mean of the clients' reported training losses in one round."""

    total: float = 0.0
    weight: int = 0

    def add(self, update: ClientUpdate) -> None:
        if "train_loss" in update.metrics:
            self.total += update.metrics["train_loss"] * update.num_examples
            self.weight += update.num_examples

    def mean(self) -> float | None:
        return self.total / self.weight if self.weight else None


@dataclass
class RoundTraffic:
    """What came back from one round's cohort: accepted clients, failures, rejections, bytes."""

    sampled: int
    vector_bytes: int
    participants: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    silent_clients: list[str] = field(default_factory=list)
    """Sampled clients that dropped out or failed."""
    rejected_clients: list[str] = field(default_factory=list)
    """Clients whose update reached the server and was refused."""

    @property
    def released(self) -> list[str]:
        """Clients whose update left them and reached the server, accepted or refused."""
        return [*self.participants, *self.rejected_clients]

    def record_fields(self) -> dict[str, Any]:
        """The :class:`RoundRecord` fields these counts fill."""
        received = len(self.participants) + sum(self.rejections.values())
        return {
            "sampled": self.sampled,
            "participants": len(self.participants),
            "dropped": self.failures["deadline"] + self.failures["worker_lost"],
            "failed": self.failures["error"],
            "rejected": sum(self.rejections.values()),
            "rejection_reasons": dict(self.rejections),
            "bytes_up": self.bytes_up,
            "bytes_down": self.vector_bytes * self.sampled,
            "compression_ratio": (
                received * self.vector_bytes / self.bytes_up if self.bytes_up else None
            ),
        }
