"""The Trainer protocol: how a model trains and evaluates on one client's data.

A trainer is one model object that trains many clients in turn (DESIGN idea 3):
``fit`` loads the global vector, trains on the client's data and returns the
update ``new - old``. It keeps nothing between clients; what a client keeps
between rounds lives in :attr:`ClientContext.state`, which the runtime stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.data.dataset import ClientData

ClientState = dict[str, npt.NDArray[np.generic]]
"""Per-client arrays kept between rounds (optimizer moments, personal layers, residuals)."""


@dataclass
class ClientContext:
    """Everything one client holds during one round.

    ``rng`` is seeded from (run seed, round, client id) so training is the same
    on any worker; ``state`` survives between rounds and across resume.
    """

    client_id: str
    data: ClientData
    round_index: int
    rng: np.random.Generator
    state: ClientState = field(default_factory=dict)
    round_parameters: Mapping[str, float] = field(default_factory=dict)
    """The server's per-round settings for the pipeline's client halves."""
    gradient_correction: Vector | None = None
    """A vector added to every local gradient (SCAFFOLD's ``c - c_i``), or None."""

    def test_noise_key(self) -> int:
        """The key of this client's test-mode noise: one draw from ``rng``.

        It depends only on (run seed, round, client), so a test-mode fit is the same on
        any worker; outside test mode privacy noise never comes from ``rng``.
        """
        return int(self.rng.integers(2**63))


@runtime_checkable
class Trainer(Protocol):
    """A model adapter: trains and evaluates a flat parameter vector."""

    @property
    def spec(self) -> ParamSpec:
        """Layout of the model's parameters in the flat vector."""
        ...

    def initial_vector(self, seed: int) -> Vector:
        """Freshly initialized parameters, deterministic in ``seed``."""
        ...

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Train from ``vector`` on ``client.data`` and return the update and its weight."""
        ...

    def evaluate(
        self, vector: Vector, x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]
    ) -> Metrics:
        """Loss and (for classifiers) accuracy of ``vector`` on ``(x, y)``."""
        ...


@runtime_checkable
class CohortTrainer(Trainer, Protocol):
    """A trainer that can train many clients in one pass (a vectorized cohort).

    When ``stacks_clients`` is true, ``fit_cohort`` returns, for each client,
    exactly what ``fit`` returns for it alone, whichever clients it trains
    beside; the runtimes then train a worker's share of a round in one call.
    """

    @property
    def stacks_clients(self) -> bool:
        """Whether ``fit_cohort`` may be called (the model's gradient takes stacks of clients)."""
        ...

    def fit_cohort(
        self, vector: Vector, clients: Sequence[ClientContext], train: TrainConfig
    ) -> list[FitResult]:
        """Train each of ``clients`` from ``vector``; one result per client, in order."""
        ...
