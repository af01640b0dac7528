"""Models written as plain NumPy functions, trained by minibatch SGD on the flat vector.

For users without a framework, for tests, and as the fast path for small
models. The functions work on the flat parameter vector itself (DESIGN idea 1;
``spec.views(vector)`` gives named tensors when a model wants them), so an SGD
step is one in-place update of one vector, and FedProx's proximal term (Li et
al. 2020, eq. 2) is one more. A ``prepare`` function turns a client's raw
arrays into what the gradient reads once per fit, not once per step.
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

Array = npt.NDArray[Any]

Gradient = Callable[[Vector, Array, Array, Vector], None]
"""``gradient(parameters, x_batch, y_batch, out)``: write d(summed loss)/d(parameters) into ``out``.

The batch's summed loss, not its mean: the trainer folds ``1 / batch size``
into the learning rate, saving a pass per step."""

Predict = Callable[[Vector, Array], npt.NDArray[np.float32]]
"""``predict(parameters, x)``: class scores ``(n, classes)`` or regression outputs ``(n,)``."""

Prepare = Callable[[Array, Array], tuple[Array, Array]]
"""``prepare(x, y)``: the arrays ``gradient`` trains on, computed once per fit."""

Initialize = Callable[[np.random.Generator], dict[str, npt.NDArray[np.float32]]]


@dataclass(frozen=True)
class NumpyTrainer:
    """A :class:`~fedwarden.models.trainer.Trainer` built from plain NumPy functions.

    ``task`` decides the metrics: ``"classification"`` reports cross-entropy and
    accuracy of ``predict``'s scores, ``"regression"`` the mean squared error.
    ``train_loss`` is the trained model's loss on the client's training data.
    All functions must be picklable (module level) so worker processes can
    receive the trainer.
    """

    param_spec: ParamSpec
    initialize: Initialize
    gradient: Gradient
    predict: Predict
    prepare: Prepare | None = None
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
        x, y = client.data.x_train, client.data.y_train
        x_train, y_train = (x, y) if self.prepare is None else self.prepare(x, y)
        mu = np.float32(train.proximal_mu)
        correction = (
            None
            if client.gradient_correction is None
            else np.float32(train.learning_rate) * client.gradient_correction
        )
        step_sizes = {
            size: np.float32(train.learning_rate / size)
            for size in {min(train.batch_size, len(y)), len(y) % train.batch_size or 1}
        }
        for _ in range(train.local_epochs):
            batches = shuffled_batches(x_train, y_train, train.batch_size, client.rng)
            for x_batch, y_batch in batches:
                self.gradient(weights, x_batch, y_batch, gradient)
                if mu:
                    gradient *= np.float32(1.0 / len(y_batch))
                    gradient += mu * (weights - vector)
                    gradient *= np.float32(train.learning_rate)
                else:
                    gradient *= step_sizes[len(y_batch)]
                if correction is not None:
                    gradient += correction
                weights -= gradient
        train_loss = self.evaluate(weights, x, y)["loss"] if len(y) else 0.0
        weights -= vector
        return FitResult(weights, len(y), {"train_loss": train_loss})

    def evaluate(self, vector: Vector, x: Array, y: Array) -> Metrics:
        """Cross-entropy and accuracy (classification) or MSE (regression) on ``(x, y)``."""
        outputs = self.predict(vector, x)
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


@dataclass(frozen=True)
class _SoftmaxModel:
    """Multinomial logistic regression with ``weight`` (features x classes) then ``bias``.

    In the flat vector, ``weight`` row-major followed by ``bias`` is exactly the
    ``(features + 1) x classes`` matrix ``[weight; bias]``. Training appends a
    column of ones to ``x`` and one-hot encodes ``y`` once per fit, so a step is
    two matrix products and a softmax on that one matrix.
    """

    num_features: int
    num_classes: int

    def initialize(self, rng: np.random.Generator) -> dict[str, npt.NDArray[np.float32]]:
        """Small random weights, zero bias."""
        scale = 1.0 / np.sqrt(self.num_features)
        weight = rng.normal(0.0, scale, (self.num_features, self.num_classes))
        return {
            "weight": weight.astype(np.float32),
            "bias": np.zeros(self.num_classes, dtype=np.float32),
        }

    def prepare(self, x: Array, y: Array) -> tuple[Array, Array]:
        """``[x, 1]`` and one-hot ``y``, as float32."""
        with_bias = np.empty((len(x), self.num_features + 1), dtype=np.float32)
        with_bias[:, :-1] = x
        with_bias[:, -1] = 1.0
        one_hot = np.zeros((len(y), self.num_classes), dtype=np.float32)
        one_hot[np.arange(len(y)), np.asarray(y, dtype=np.intp)] = 1.0
        return with_bias, one_hot

    def gradient(self, parameters: Vector, x: Array, y: Array, out: Vector) -> None:
        """``x^T (softmax(x W) - y)`` for the stacked matrix ``W = [weight; bias]``."""
        weights = parameters.reshape(self.num_features + 1, self.num_classes)
        scores = x @ weights
        scores -= np.maximum.reduce(scores, axis=1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= np.add.reduce(scores, axis=1, keepdims=True)
        scores -= y
        np.matmul(x.T, scores, out=out.reshape(weights.shape))

    def predict(self, parameters: Vector, x: Array) -> npt.NDArray[np.float32]:
        """Class scores ``x @ weight + bias``."""
        weights = parameters.reshape(self.num_features + 1, self.num_classes)
        scores: npt.NDArray[np.float32] = x @ weights[:-1] + weights[-1]
        return scores


def softmax_regression(num_features: int, num_classes: int) -> NumpyTrainer:
    """Multinomial logistic regression (a linear layer and softmax) as a NumPy trainer."""
    model = _SoftmaxModel(num_features, num_classes)
    return NumpyTrainer(
        param_spec=ParamSpec.from_arrays(model.initialize(np.random.default_rng(0))),
        initialize=model.initialize,
        gradient=model.gradient,
        predict=model.predict,
        prepare=model.prepare,
    )
