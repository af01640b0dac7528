"""L2 clipping of updates: the step that bounds each client's contribution.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models", Algorithm 1, ``ClipFn``): an update is scaled to L2 norm at most
``C``, either as one flat vector or per layer (each of L tensors to
``C / sqrt(L)``, so the whole stays within ``C``). Clipping on the client is
what secure aggregation needs (the server never sees an update); the server
then only checks the bound. Clipping on the server needs individual updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np

from fedwarden.core.errors import UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.stage import Stage

CLIP_MARGIN = 1e-6
"""Relative margin by which the scale factor undershoots ``C / norm``: float32
rounding then cannot leave a clipped vector's norm above ``C``."""


def clip_to_norm(vector: Vector, clip_norm: float) -> tuple[Vector, float]:
    """``vector`` scaled to L2 norm at most ``clip_norm`` (a new array) and its original norm."""
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm <= clip_norm:
        return vector.copy(), norm
    factor = np.float32(clip_norm / norm * (1.0 - CLIP_MARGIN))
    return vector * factor, norm


def clip_per_layer(vector: Vector, clip_norm: float, spec: ParamSpec) -> tuple[Vector, float]:
    """Each tensor of ``vector`` clipped to ``clip_norm / sqrt(tensors)``; returns the flat norm."""
    layer_bound = clip_norm / math.sqrt(len(spec.tensors))
    clipped = vector.copy()
    for tensor in spec.views(clipped).values():
        flat = tensor.reshape(-1)
        flat[:] = clip_to_norm(flat, layer_bound)[0]
    return clipped, float(np.linalg.norm(vector.astype(np.float64)))


@dataclass
class ClipNorm:
    """The clip norm in force this round, shared by the clip stage and the DP aggregator.

    Adaptive clipping moves it between rounds; clients receive it with their
    instructions (``round_parameters["clip_norm"]``).
    """

    value: float


class ClipUpdate(Stage):
    """Clip each update's L2 norm to the round's ``C``, on the client or on the server.

    The client half also reports whether the update needed no clipping
    (``metrics["unclipped"]`` is 1.0 or 0.0), the bit adaptive clipping counts.
    With client placement, the server half verifies the bound and rejects an
    update that exceeds it (reason ``"clip_bound"``): a client that skipped
    clipping would otherwise break the noise's calibration.
    """

    name: ClassVar[str] = "clip"

    def __init__(
        self,
        clip_norm: ClipNorm,
        *,
        placement: Literal["client", "server"] = "client",
        per_layer: ParamSpec | None = None,
    ) -> None:
        self.clip_norm = clip_norm
        self.placement = placement
        self.per_layer = per_layer
        self.needs_individual_updates = placement == "server"

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """Clip before upload (client placement)."""
        if self.placement != "client":
            return update
        bound = context.round_parameters.get("clip_norm", self.clip_norm.value)
        return self._clip(update, bound)

    def server_half(self, update: ClientUpdate) -> ClientUpdate:
        """Clip (server placement) or verify the client's clipping (client placement)."""
        bound = self.clip_norm.value
        if self.placement == "server":
            return self._clip(update, bound)
        norm = float(np.linalg.norm(update.update.astype(np.float64)))
        if norm > bound:
            raise UpdateRejected(
                "clip_bound",
                f"update from client {update.client_id!r} has L2 norm {norm:.6g}, above the "
                f"round's clip norm {bound:.6g}; the client did not clip",
            )
        return update

    def _clip(self, update: ClientUpdate, bound: float) -> ClientUpdate:
        if self.per_layer is None:
            clipped, norm = clip_to_norm(update.update, bound)
        else:
            clipped, norm = clip_per_layer(update.update, bound, self.per_layer)
        metrics = {**update.metrics, "unclipped": 1.0 if norm <= bound else 0.0}
        return replace(update, update=clipped, metrics=metrics)
