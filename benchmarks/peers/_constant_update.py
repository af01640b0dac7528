"""A trainer that costs nothing to train, for timing what a runtime alone adds to a round.

:func:`constant_update` is a ``model.factory`` for ``model.kind = "custom"``:
its model is one flat tensor of :data:`MODEL_SIZE` ``float32`` parameters
(40 MB), ``fit`` answers every task with the same constant update at once, and
``evaluate`` reports zeros. A round's time is then transfer, hashing, signing,
spooling and aggregation, with no training in it. Client processes import this
module by name, so the repository root must be on their ``PYTHONPATH``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import ParamSpec, TensorSpec, Vector
from fedwarden.models.trainer import ClientContext

MODEL_SIZE: Final = 10_000_000
"""Parameters of the benchmark model (a 40 MB float32 vector)."""

UPDATE_VALUE: Final = 1e-3
"""Every coordinate of every update."""


@dataclass(frozen=True)
class ConstantUpdate:
    """A model of ``size`` parameters whose every fit returns ``UPDATE_VALUE`` everywhere."""

    size: int = MODEL_SIZE

    @property
    def spec(self) -> ParamSpec:
        """One float32 tensor ``w`` of ``size`` parameters."""
        return ParamSpec((TensorSpec("w", (self.size,), "float32", 0),))

    def initial_vector(self, seed: int) -> Vector:
        """All zeros, whatever the seed."""
        return np.zeros(self.size, np.float32)

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """The constant update, weighted by the client's training examples."""
        return FitResult(
            update=np.full(self.size, UPDATE_VALUE, np.float32),
            num_examples=len(client.data.y_train),
        )

    def evaluate(
        self, vector: Vector, x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]
    ) -> Metrics:
        """Zero loss and accuracy: the benchmark does not look at the model's quality."""
        return {"loss": 0.0, "accuracy": 0.0}


def constant_update(num_features: int, num_classes: int | None) -> ConstantUpdate:
    """The ``model.factory`` entry point; the data set's shape does not matter to this model."""
    return ConstantUpdate()
