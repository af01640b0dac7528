"""Models written as plain NumPy functions, trained by minibatch SGD on the flat vector.

For users without a framework, for tests, and as the fast path for small
models: the whole parameter set is one float32 vector, so an SGD step is a
single in-place ``axpy`` on it, and FedProx's proximal term (Li et al. 2020,
eq. 2) is one more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.models.batching import shuffled_batches
from fedwarden.models.trainer import ClientContext

Params = dict[str, npt.NDArray[np.float32]]
Array = npt.NDArray[Any]

LossAndGrad = Callable[[Params, Array, Array, Params], float]
"""``loss_and_grad(params, x, y, grads) -> mean loss``; writes d loss / d params into ``grads``."""

Predict = Callable[[Params, Array], npt.NDArray[np.float32]]
"""``predict(params, x)``: class scores ``(n, classes)`` or regression outputs ``(n,)``."""

Initialize = Callable[[np.random.Generator], Params]


@dataclass(frozen=True)
class NumpyTrainer:
    """A :class:`~fedwarden.models.trainer.Trainer` built from three NumPy functions.

    ``task`` decides the evaluation metrics: ``"classification"`` reports
    cross-entropy loss and accuracy from ``predict``'s scores, ``"regression"``
    the mean squared error. All functions must be picklable (module level) so
    worker processes can receive the trainer.
    """

    param_spec: ParamSpec
    initialize: Initialize
    loss_and_grad: LossAndGrad
    predict: Predict
    task: Literal["classification", "regression"] = "classification"

    @property
    def spec(self) -> ParamSpec:
        """Layout of the parameters in the flat vector."""
        return self.param_spec

    def initial_vector(self, seed: int) -> Vector:
        """Parameters from ``initialize``, flattened; deterministic in ``seed``."""
        return self.param_spec.flatten(self.initialize(np.random.default_rng(seed)))

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Minibatch SGD from ``vector`` for ``train.local_epochs`` epochs."""
        weights = vector.copy()
        gradient = self.param_spec.zeros()
        params = self.param_spec.views(weights)
        grads = self.param_spec.views(gradient)
        x, y = client.data.x_train, client.data.y_train
        learning_rate = np.float32(train.learning_rate)
        mu = np.float32(train.proximal_mu)
        epoch_loss = 0.0
        for _ in range(train.local_epochs):
            total, count = 0.0, 0
            for x_batch, y_batch in shuffled_batches(x, y, train.batch_size, client.rng):
                total += self.loss_and_grad(params, x_batch, y_batch, grads) * len(y_batch)
                count += len(y_batch)
                if mu:
                    gradient += mu * (weights - vector)
                gradient *= learning_rate
                weights -= gradient
            epoch_loss = total / max(count, 1)
        weights -= vector
        return FitResult(weights, len(y), {"train_loss": epoch_loss})

    def evaluate(self, vector: Vector, x: Array, y: Array) -> Metrics:
        """Cross-entropy and accuracy (classification) or MSE (regression) on ``(x, y)``."""
        outputs = self.predict(self.param_spec.views(vector), x)
        if self.task == "regression":
            return {"loss": float(np.mean((outputs - y) ** 2))}
        return classification_metrics(outputs, y)


def classification_metrics(scores: npt.NDArray[np.float32], y: Array) -> dict[str, float]:
    """Mean cross-entropy of softmax(scores) and accuracy of argmax(scores)."""
    labels = np.asarray(y, dtype=np.intp)
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    log_likelihood = shifted[np.arange(len(labels)), labels] - log_norm
    return {
        "loss": float(-log_likelihood.mean()),
        "accuracy": float((scores.argmax(axis=1) == labels).mean()),
    }


def _softmax_loss_and_grad(params: Params, x: Array, y: Array, grads: Params) -> float:
    """Cross-entropy of a linear softmax classifier and its gradient."""
    weight, bias = params["weight"], params["bias"]
    scores = x @ weight
    scores += bias
    scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
    rows = np.arange(len(y))
    true_scores = scores[rows, y]
    np.exp(scores, out=scores)
    normalizers = np.add.reduce(scores, axis=1, keepdims=True)
    loss = -float(np.add.reduce(true_scores - np.log(normalizers[:, 0]))) / len(y)
    scores /= normalizers
    scores[rows, y] -= 1.0
    scores /= np.float32(len(y))
    np.matmul(x.T, scores, out=grads["weight"])
    np.add.reduce(scores, axis=0, out=grads["bias"])
    return loss


def _linear_scores(params: Params, x: Array) -> npt.NDArray[np.float32]:
    """``x @ weight + bias``."""
    result: npt.NDArray[np.float32] = x @ params["weight"] + params["bias"]
    return result


@dataclass(frozen=True)
class _SoftmaxInit:
    """Small random weights and zero bias for a ``features x classes`` softmax model."""

    num_features: int
    num_classes: int

    def __call__(self, rng: np.random.Generator) -> Params:
        scale = 1.0 / np.sqrt(self.num_features)
        weight = rng.normal(0.0, scale, (self.num_features, self.num_classes))
        return {
            "weight": weight.astype(np.float32),
            "bias": np.zeros(self.num_classes, dtype=np.float32),
        }


def softmax_regression(num_features: int, num_classes: int) -> NumpyTrainer:
    """Multinomial logistic regression (a linear layer and softmax) as a NumPy trainer."""
    init = _SoftmaxInit(num_features, num_classes)
    return NumpyTrainer(
        param_spec=ParamSpec.from_arrays(init(np.random.default_rng(0))),
        initialize=init,
        loss_and_grad=_softmax_loss_and_grad,
        predict=_linear_scores,
    )
