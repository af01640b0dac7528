"""Strategy: what clients are told to do, and how the server turns their mean update into a model.

A strategy is a template (as in Flower): :meth:`Strategy.train_config` says how
clients train in a round, :meth:`Strategy.apply` is the server optimizer that
moves the global vector along the aggregated update (Reddi et al. 2021 view
FedAvg, FedAvgM and FedOpt as server optimizers over the pseudo-gradient
``-mean_update``). Sampling, the pipeline and the runtime are separate objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import SpecMismatchError
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import Vector

StrategyState = dict[str, npt.NDArray[np.float32]]


class Strategy(ABC):
    """Client training instructions plus a server optimizer with checkpointable state."""

    name: ClassVar[str] = "strategy"

    def __init__(self, train: TrainConfig) -> None:
        self.train = train
        self._state: StrategyState = {}

    def train_config(self, round_index: int) -> TrainConfig:
        """How clients train in ``round_index`` (the same every round unless overridden)."""
        return self.train

    @abstractmethod
    def apply(self, global_vector: Vector, mean_update: Vector) -> Vector:
        """The next global vector from the current one and the round's mean update."""

    def state_dict(self) -> StrategyState:
        """Copies of the server optimizer buffers, for checkpoints."""
        return {name: buffer.copy() for name, buffer in self._state.items()}

    def load_state_dict(self, state: StrategyState) -> None:
        """Restore buffers saved by :meth:`state_dict`."""
        self._state = {name: np.array(value, dtype=np.float32) for name, value in state.items()}

    def _buffer(self, name: str, like: Vector, fill: float = 0.0) -> Vector:
        """The named optimizer buffer, created filled with ``fill`` on first use."""
        buffer = self._state.get(name)
        if buffer is None:
            buffer = np.full_like(like, fill)
            self._state[name] = buffer
        elif buffer.shape != like.shape:
            raise SpecMismatchError(
                f"{self.name} buffer {name!r} has shape {buffer.shape} but the model has "
                f"{like.shape}; the checkpoint belongs to a different model"
            )
        return buffer
