"""Softmax regression as pfl's ``PyTorchModel`` expects it, and a callback that scores it.

pfl calls ``module.loss(*user_data)`` to train and ``module.metrics(*user_data)``
to evaluate a user (Apple's pfl-research, ``pfl.model.pytorch.PyTorchModel``).
The loss is :class:`SoftmaxRegression`'s own; ``metrics`` reports the summed
loss and the number of correct predictions, each weighted by the number of
examples.

Imports pfl and PyTorch at the top: import this module only through
:func:`benchmarks.peers.pfl_sim.run_pfl`, which checks that they exist.
"""

from __future__ import annotations

from typing import cast

import torch
from pfl.callback.base import TrainingProcessCallback
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel
from torch.nn import functional

from benchmarks.peers._softmax_regression import SoftmaxRegression, linear_layer
from benchmarks.peers._workload import AccuracyTrace


class PflSoftmaxRegression(SoftmaxRegression):
    """:class:`SoftmaxRegression` plus the ``metrics`` method pfl evaluates users with."""

    def metrics(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, Weighted]:
        """Return the loss and accuracy on one batch as pfl ``Weighted`` values."""
        with torch.no_grad():
            logits = self(features)
            summed_loss = functional.cross_entropy(logits, labels, reduction="sum").item()
            correct = (logits.argmax(dim=1) == labels).sum().item()
        num_examples = len(labels)
        return {
            "loss": Weighted(summed_loss, num_examples),
            "accuracy": Weighted(correct, num_examples),
        }


class CentralAccuracyCallback(TrainingProcessCallback[PyTorchModel]):
    """pfl callback that records the global model's accuracy in an :class:`AccuracyTrace`.

    pfl calls ``on_train_begin`` before the first central iteration (round 0)
    and ``after_central_iteration`` once the iteration's aggregate is applied.
    """

    def __init__(self, trace: AccuracyTrace) -> None:
        self._trace = trace

    def on_train_begin(self, *, model: PyTorchModel) -> Metrics:
        """Record the initial model as round 0."""
        self._trace.record(0, *linear_layer(cast(SoftmaxRegression, model.pytorch_model)))
        return Metrics()

    def after_central_iteration(
        self, aggregate_metrics: Metrics, model: PyTorchModel, *, central_iteration: int
    ) -> tuple[bool, Metrics]:
        """Record the model after central iteration ``central_iteration`` (0-based); never stop."""
        self._trace.record(
            central_iteration + 1, *linear_layer(cast(SoftmaxRegression, model.pytorch_model))
        )
        return False, Metrics()
