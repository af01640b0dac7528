"""What crosses between parties in split learning: cut-layer activations and their gradients.

Two messages, each a frozen record of a float32 array of shape
``(batch, cut_width)`` between two named parties, and nothing else: no raw
feature, no label, no model parameter ever crosses. The arrays are read-only
copies, so a message cannot change after it is sent.

* :class:`CutActivation`: a feature party's bottom-model outputs for a batch,
  sent to the label party (forward pass; at prediction time too).
* :class:`CutGradient`: the gradient of the loss with respect to those
  outputs, one row per example (the gradient of that example's loss), sent
  back by the label party (backward pass).

:class:`ExchangeLog` records every message that crosses from one party to
another, so tests and audits can see exactly what was revealed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import FedwardenError


class VerticalError(FedwardenError):
    """A vertical-learning party got a message, data or model it cannot use as given."""


def _frozen_float32(values: npt.ArrayLike, what: str) -> npt.NDArray[np.float32]:
    """A read-only float32 copy of a two-dimensional array; anything else is refused."""
    array = np.array(values, dtype=np.float32, copy=True)
    if array.ndim != 2:
        raise VerticalError(
            f"a {what} carries a (batch, cut_width) array, got shape {array.shape}; send one row "
            "per example"
        )
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class CutActivation:
    """Feature party to label party: cut-layer activations, one float32 row per example."""

    sender: str
    recipient: str
    values: npt.NDArray[np.float32] = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _frozen_float32(self.values, "CutActivation"))


@dataclass(frozen=True)
class CutGradient:
    """Label party to feature party: each example's loss gradient at the cut layer, float32 rows."""

    sender: str
    recipient: str
    values: npt.NDArray[np.float32] = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _frozen_float32(self.values, "CutGradient"))


class ExchangeLog:
    """Every message that crossed from one party to another, in order."""

    def __init__(self) -> None:
        self._messages: list[CutActivation | CutGradient] = []

    @property
    def messages(self) -> tuple[CutActivation | CutGradient, ...]:
        """The crossing messages so far."""
        return tuple(self._messages)

    def record(self, message: CutActivation | CutGradient) -> None:
        """Keep ``message`` if it crosses between parties (a party's own messages stay local)."""
        if message.sender != message.recipient:
            self._messages.append(message)
