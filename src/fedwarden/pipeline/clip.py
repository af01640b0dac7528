"""The clip stage: each update's L2 norm bounded by the round's ``C``, on the client or server.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models", Algorithm 1, ``ClipFn``; the clipping itself is
:mod:`fedwarden.privacy.clipping`). Clipping on the client is what secure
aggregation needs (the server never sees an update); the server then only
checks the bound. Clipping on the server needs individual updates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

import numpy as np

from fedwarden.core.errors import UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import ParamSpec
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.clipping import ClipNorm, clip_per_layer, clip_to_norm


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
