"""Softmax regression in PyTorch: the one model every peer benchmark trains.

Multinomial logistic regression, the model of the FedProx Synthetic
experiments (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", Section 5.1): one ``nn.Linear`` layer with bias, trained under the
mean cross-entropy of a minibatch. The Flower and pfl benchmarks both build it
here, so their rows differ only in the framework around it.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from benchmarks.peers._workload import NUM_CLASSES


class SoftmaxRegression(nn.Module):
    """Class logits ``x W^T + b`` of a linear layer ``num_features -> NUM_CLASSES``."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, NUM_CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the class logits ``[batch, NUM_CLASSES]`` of ``features`` ``[batch, d]``."""
        logits: torch.Tensor = self.linear(features)
        return logits

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy of the minibatch, the quantity SGD minimises."""
        return functional.cross_entropy(self(features), labels)


Model = TypeVar("Model", bound=SoftmaxRegression)


def initial_model(model_class: type[Model], num_features: int, seed: int) -> Model:
    """Build ``model_class`` with PyTorch's default initialisation drawn from ``seed``.

    The draw uses a forked generator, so the caller's global PyTorch RNG is
    untouched, and every peer starts from the same weights for the same seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(num_features)


def linear_layer(
    model: SoftmaxRegression,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return ``model``'s weight ``[NUM_CLASSES, d]`` and bias as NumPy copies."""
    return (
        model.linear.weight.detach().numpy().copy(),
        model.linear.bias.detach().numpy().copy(),
    )
