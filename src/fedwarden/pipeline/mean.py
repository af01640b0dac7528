"""The streaming weighted mean: FedAvg's aggregation in O(model size) memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.pipeline.blas import blas
from fedwarden.pipeline.stage import Aggregate, Aggregator


class StreamingWeightedMean(Aggregator):
    """Weighted mean of updates, accumulated as they arrive (McMahan et al. 2017, eq. 1).

    ``weighting="examples"`` weights each update by its client's number of
    examples (FedAvg); ``"uniform"`` weights every client equally. The sum is
    one in-place BLAS ``saxpy`` per update into a single float32 buffer, so
    server memory is O(model size) whatever the cohort size.
    """

    name: ClassVar[str] = "weighted_mean"

    def __init__(self, weighting: Literal["examples", "uniform"] = "examples") -> None:
        self.weighting = weighting
        self._sum: Vector = np.zeros(0, dtype=VECTOR_DTYPE)
        self._total_weight = 0.0
        self._count = 0

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Reset the running sum for a round of ``size``-element updates."""
        if self._sum.shape != (size,):
            self._sum = np.zeros(size, dtype=VECTOR_DTYPE)
        else:
            self._sum.fill(0.0)
        self._total_weight = 0.0
        self._count = 0

    def add(self, update: ClientUpdate) -> None:
        """``sum += weight * update`` in place."""
        weight = float(update.num_examples) if self.weighting == "examples" else 1.0
        blas.saxpy(update.update, self._sum, a=weight)
        self._total_weight += weight
        self._count += 1

    def result(self) -> Aggregate:
        """``sum / total weight`` as a new vector."""
        mean = self._sum / np.float32(self._total_weight)
        return Aggregate(mean, self._total_weight, self._count)
