"""The FedOpt family: FedAdam, FedYogi and FedAdagrad (Reddi et al. 2021, Algorithm 2).

The aggregated update Δ plays the role of a (negative) gradient. Following the
paper, the first moment starts at zero, the second at ``tau**2``, and there is
no bias correction.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector
from fedwarden.strategies.base import Strategy


class FedOpt(Strategy):
    """Adaptive server optimizer; subclasses say how the second moment ``v`` moves."""

    name: ClassVar[str] = "fedopt"

    def __init__(
        self,
        train: TrainConfig,
        server_learning_rate: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(train)
        self.server_learning_rate = server_learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau

    def apply(self, global_vector: Vector, mean_update: Vector) -> Vector:
        """``m <- b1 m + (1-b1) Δ``; update ``v``; ``x <- x + lr m / (sqrt(v) + tau)``."""
        first = self._buffer("first_moment", global_vector)
        second = self._buffer("second_moment", global_vector, fill=self.tau**2)
        first *= np.float32(self.beta1)
        first += np.float32(1.0 - self.beta1) * mean_update
        self._update_second_moment(second, mean_update * mean_update)
        step = first / (np.sqrt(second) + np.float32(self.tau))
        return np.asarray(
            global_vector + np.float32(self.server_learning_rate) * step, dtype=np.float32
        )

    @abstractmethod
    def _update_second_moment(self, second: Vector, squared: Vector) -> None:
        """Move the second moment ``v`` in place given ``Δ²``."""


class FedAdam(FedOpt):
    """``v <- b2 v + (1-b2) Δ²``."""

    name: ClassVar[str] = "fedadam"

    def _update_second_moment(self, second: Vector, squared: Vector) -> None:
        second *= np.float32(self.beta2)
        second += np.float32(1.0 - self.beta2) * squared


class FedYogi(FedOpt):
    """``v <- v - (1-b2) Δ² sign(v - Δ²)``."""

    name: ClassVar[str] = "fedyogi"

    def _update_second_moment(self, second: Vector, squared: Vector) -> None:
        second -= np.float32(1.0 - self.beta2) * squared * np.sign(second - squared)


class FedAdagrad(FedOpt):
    """``v <- v + Δ²``."""

    name: ClassVar[str] = "fedadagrad"

    def _update_second_moment(self, second: Vector, squared: Vector) -> None:
        second += squared
