"""The NumPy fast path and PyTorch learn the same softmax regression.

A throughput lead bought with slower learning is no lead: both trainers run FedAvg on
the same FedProx Synthetic clients from the same initial weights, with the same batch
orders, and must end at the same model (up to float32 rounding) and the same accuracy.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from fedwarden.core.config import DataConfig
from fedwarden.core.messages import TrainConfig, client_seed
from fedwarden.core.params import Vector
from fedwarden.data import load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.models.torch import TorchTrainer, mlp
from fedwarden.models.trainer import ClientContext, Trainer

FEATURES, CLASSES = 60, 10
TRAIN = TrainConfig(local_epochs=1, batch_size=10, learning_rate=0.05)


def as_numpy_layout(torch_vector: Vector) -> Vector:
    """PyTorch's ``classes x features`` weight then bias, as the NumPy ``features x classes``."""
    weight = torch_vector[: FEATURES * CLASSES].reshape(CLASSES, FEATURES)
    return np.concatenate([weight.T.ravel(), torch_vector[FEATURES * CLASSES :]])


def as_torch_layout(numpy_vector: Vector) -> Vector:
    weight = numpy_vector[: FEATURES * CLASSES].reshape(FEATURES, CLASSES)
    return np.concatenate([weight.T.ravel(), numpy_vector[FEATURES * CLASSES :]])


def fedavg(trainer: Trainer, vector: Vector, seed: int, rounds: int) -> Vector:
    """``rounds`` of FedAvg over every client, written out: no runtime, no pipeline."""
    dataset = load_dataset(DataConfig(source="synthetic", num_clients=20), seed)
    vector = vector.copy()
    for round_index in range(rounds):
        total = np.zeros_like(vector, dtype=np.float64)
        examples = 0
        for client_id, data in dataset.clients.items():
            rng = np.random.default_rng(client_seed(seed, round_index, client_id))
            result = trainer.fit(vector, ClientContext(client_id, data, round_index, rng), TRAIN)
            total += result.num_examples * result.update.astype(np.float64)
            examples += result.num_examples
        vector += (total / examples).astype(np.float32)
    return vector


@pytest.mark.parametrize("seed", [0, 1])
def test_numpy_and_pytorch_softmax_regression_learn_the_same_model(seed: int) -> None:
    numpy_trainer = softmax_regression(FEATURES, CLASSES)
    torch_trainer = TorchTrainer(partial(mlp, FEATURES, CLASSES, ()))
    initial = numpy_trainer.initial_vector(seed)
    by_numpy = fedavg(numpy_trainer, initial, seed, rounds=4)
    by_torch = as_numpy_layout(fedavg(torch_trainer, as_torch_layout(initial), seed, rounds=4))
    assert np.abs(by_numpy - initial).max() > 0.1  # the models moved
    np.testing.assert_allclose(by_torch, by_numpy, atol=1e-3)
    dataset = load_dataset(DataConfig(source="synthetic", num_clients=20), seed)
    accuracy = {
        name: numpy_trainer.evaluate(vector, dataset.x_test, dataset.y_test)["accuracy"]
        for name, vector in (("numpy", by_numpy), ("torch", by_torch))
    }
    assert abs(accuracy["numpy"] - accuracy["torch"]) <= 0.01, accuracy
