"""Stage and Pipeline: what happens to an update between training and the new model.

DESIGN idea 2. A :class:`Stage` is one step of the math with an optional
client half (runs on the client, before upload) and server half (runs on the
server as each update arrives, and may reject it). A :class:`Pipeline` is the
ordered stages plus one :class:`Aggregator`, the streaming reduction that turns
accepted updates into one mean update. Stages compose in the spirit of
TensorFlow Federated's aggregation factories and Flower's mods; choices that
cannot work together are refused when the pipeline is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fedwarden.core.channel import ClientChannel
from fedwarden.core.errors import PipelineError
from fedwarden.core.messages import ClientUpdate, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.models.trainer import ClientContext


class Stage:
    """One step of the update pipeline; both halves default to passing the update on.

    ``needs_individual_updates`` marks a server half that must see each
    client's update in the clear (robust statistics, server-side clipping);
    ``hides_individual_updates`` marks a stage after which the server cannot
    (secure aggregation). A pipeline holding both kinds is refused.
    """

    name: ClassVar[str] = "stage"
    needs_individual_updates: bool = False
    hides_individual_updates: bool = False

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """Transform the update on the client, before it is sent."""
        return update

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        """Check or transform one arriving update; raise ``UpdateRejected`` to drop it."""
        return update


def client_halves(
    stages: Sequence[Stage], update: ClientUpdate, context: ClientContext
) -> ClientUpdate:
    """Run each stage's client half in order (what a client does before uploading)."""
    for stage in stages:
        update = stage.client_half(update, context)
    return update


@dataclass(frozen=True)
class Aggregate:
    """The reduced result of one round's accepted updates."""

    mean_update: Vector
    total_weight: float
    num_updates: int


class Aggregator(ABC):
    """Streaming reduction of accepted updates: ``start``, ``add`` each, then ``result``.

    ``hides_individual_updates`` marks a secure aggregator: the server learns
    only the sum (see :class:`Stage`).
    """

    name: ClassVar[str] = "aggregator"
    needs_individual_updates: bool = False
    hides_individual_updates: bool = False

    @abstractmethod
    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Begin a round whose updates have ``size`` elements, from clients in ``cohort``."""

    @abstractmethod
    def add(self, update: ClientUpdate) -> None:
        """Fold one accepted update in; ``UpdateRejected`` leaves the aggregate unchanged."""

    @abstractmethod
    def result(self) -> Aggregate:
        """The round's aggregate after at least one ``add`` (``RoundAborted``: none released)."""

    def attach(self, channel: ClientChannel | None) -> None:
        """Take the runtime's channel to remote clients (None in simulation); most ignore it."""
        return None

    def round_model(self, vector: Vector, train: TrainConfig) -> None:
        """After ``start``: the global vector the round's clients train from, and how they train.

        Most ignore it; FLTrust trains the same model the same way on its root set.
        """
        return None

    def round_parameters(self) -> dict[str, float]:
        """Settings the clients' pipeline halves need this round (sent with the instructions)."""
        return {}

    def report(self) -> dict[str, Any]:
        """What the run summary says about this aggregator (empty for plain ones)."""
        return {}

    def client_scores(self) -> Mapping[str, Any]:
        """The last round's per-client anomaly scores (``ClientScore``), for reputation.

        Only aggregators that see each update (robust rules) score clients.
        """
        return {}


class Pipeline:
    """Ordered stages and one aggregator, checked for compatibility when built."""

    def __init__(self, stages: Sequence[Stage], aggregator: Aggregator) -> None:
        self.stages = tuple(stages)
        self.aggregator = aggregator
        self._check_compatible()

    def hiding_individual_updates(self) -> list[str]:
        """Names of the stages, then the aggregator, that hide single updates from the server."""
        return [part.name for part in self._parts() if part.hides_individual_updates]

    def _parts(self) -> list[Stage | Aggregator]:
        return [*self.stages, self.aggregator]

    def _check_compatible(self) -> None:
        hiding = self.hiding_individual_updates()
        if not hiding:
            return
        needing = [part.name for part in self._parts() if part.needs_individual_updates]
        if needing:
            raise PipelineError(
                f"{', '.join(needing)} must see each client's update, but {hiding[0]} "
                "hides individual updates from the server; drop one of them, or clip on the "
                "client instead of the server"
            )

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        """Run every stage's server half in order; ``UpdateRejected`` propagates."""
        for stage in self.stages:
            update = stage.server_half(update)
        return update

    def describe(self) -> list[str]:
        """Stage names in order, then the aggregator's, for run summaries."""
        return [stage.name for stage in self.stages] + [self.aggregator.name]
