"""FedAvg, FedProx and FedAvgM."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector
from fedwarden.strategies.base import Strategy


class FedAvg(Strategy):
    """Federated averaging (McMahan et al. 2017): ``x <- x + server_lr * mean_update``."""

    name: ClassVar[str] = "fedavg"

    def __init__(self, train: TrainConfig, server_learning_rate: float = 1.0) -> None:
        super().__init__(train)
        self.server_learning_rate = server_learning_rate

    def apply(self, global_vector: Vector, mean_update: Vector) -> Vector:
        """Step along the mean update."""
        return global_vector + np.float32(self.server_learning_rate) * mean_update


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg whose clients add ``mu/2 ||w - w_global||^2`` (eq. 2)."""

    name: ClassVar[str] = "fedprox"

    def __init__(
        self, train: TrainConfig, proximal_mu: float, server_learning_rate: float = 1.0
    ) -> None:
        super().__init__(replace(train, proximal_mu=proximal_mu), server_learning_rate)


class FedAvgM(Strategy):
    """FedAvg with server momentum (Hsu et al. 2019): ``v <- beta v + Δ; x <- x + lr v``."""

    name: ClassVar[str] = "fedavgm"

    def __init__(
        self, train: TrainConfig, server_learning_rate: float = 1.0, momentum: float = 0.9
    ) -> None:
        super().__init__(train)
        self.server_learning_rate = server_learning_rate
        self.momentum = momentum

    def apply(self, global_vector: Vector, mean_update: Vector) -> Vector:
        """Accumulate momentum and step along it."""
        velocity = self._buffer("velocity", global_vector)
        velocity *= np.float32(self.momentum)
        velocity += mean_update
        return global_vector + np.float32(self.server_learning_rate) * velocity
