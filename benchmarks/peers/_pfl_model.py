"""Softmax regression as pfl's ``PyTorchModel`` expects it: with a ``metrics`` method.

pfl calls ``module.loss(*user_data)`` to train and ``module.metrics(*user_data)``
to evaluate a user (Apple's pfl-research, ``pfl.model.pytorch.PyTorchModel``).
The loss is :class:`SoftmaxRegression`'s own; ``metrics`` reports the summed
loss and the number of correct predictions, each weighted by the number of
examples.

Imports pfl and PyTorch at the top: import this module only through
:func:`benchmarks.peers.pfl_sim.run_pfl`, which checks that they exist.
"""

from __future__ import annotations

import torch
from pfl.metrics import Weighted
from torch.nn import functional

from benchmarks.peers._softmax_regression import SoftmaxRegression


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
