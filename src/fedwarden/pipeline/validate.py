"""Update validation: the server half that refuses malformed or out-of-bound updates."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from fedwarden.core.errors import UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.core.records import round_number
from fedwarden.pipeline.blas import blas
from fedwarden.pipeline.stage import Stage


class ValidateUpdate(Stage):
    """Reject updates of the wrong shape or dtype, with NaN/Inf, or above a norm bound.

    Finiteness and the norm come from one BLAS dot product ``u . u``: it is
    finite exactly when every element is finite and the square stays in float32
    range, so a non-finite dot is re-checked element-wise to tell an overflow
    (reported as a norm-bound violation) from a NaN or Inf. It reads each
    update in the clear, so it cannot follow a secure aggregator; under secure
    aggregation the client's encoder checks finiteness and clips instead.
    """

    name: ClassVar[str] = "validate"
    needs_individual_updates = True

    def __init__(self, size: int, max_norm: float | None = None) -> None:
        self.size = size
        self.max_norm = max_norm

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        """Pass ``update`` on unchanged, or raise :class:`UpdateRejected` saying why."""
        vector = update.update
        who = f"update from client {update.client_id!r} in round {round_number(update.round_index)}"
        if not isinstance(vector, np.ndarray) or vector.dtype != VECTOR_DTYPE:
            dtype = getattr(vector, "dtype", type(vector).__name__)
            raise UpdateRejected("dtype", f"{who} has dtype {dtype}; updates must be float32")
        if vector.shape != (self.size,):
            raise UpdateRejected(
                "shape", f"{who} has shape {vector.shape}; the model needs ({self.size},)"
            )
        if update.num_examples <= 0:
            raise UpdateRejected(
                "weight", f"{who} claims {update.num_examples} examples; it must be positive"
            )
        squared_norm = float(blas.sdot(vector, vector)) if self.size else 0.0
        if not math.isfinite(squared_norm):
            if not np.isfinite(vector).all():
                raise UpdateRejected("non_finite", f"{who} contains NaN or Inf values")
            squared_norm = math.inf
        if self.max_norm is not None and squared_norm > self.max_norm**2:
            norm = math.sqrt(squared_norm)
            raise UpdateRejected(
                "norm_bound", f"{who} has L2 norm {norm:.4g}, above the bound {self.max_norm:.4g}"
            )
        return update
