"""Models written as plain NumPy functions, trained by minibatch SGD on the flat vector.

For users without a framework, for tests, and as the fast path for small
models. The functions work on the flat parameter vector itself (DESIGN idea 1;
``spec.views(vector)`` gives named tensors when a model wants them), so an SGD
step is one in-place update of one vector, and FedProx's proximal term (Li et
al. 2020, eq. 2) is one more. A ``prepare`` function turns a client's raw
arrays into what the gradient reads once per fit, not once per step.

A gradient that also takes a stack of clients (``stacks_clients``) trains a
whole cohort at once: step ``s`` of every client that has an ``s``-th batch is
one call on ``(clients, batch, ...)`` arrays, so a round of small models costs
as many NumPy calls as its largest client has batches, not as all its clients
have together. Written here because it is the product: a simulation's round
of small models is bound by Python's per-call cost, which no library removes.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.batching import epoch_order, shuffled_batches
from fedwarden.models.trainer import ClientContext

Array = npt.NDArray[Any]

Gradient = Callable[[Vector, Array, Array, Vector], None]
"""``gradient(parameters, x_batch, y_batch, out)``: write d(summed loss)/d(parameters) into ``out``.

The batch's summed loss, not its mean: the trainer folds ``1 / batch size``
into the learning rate, saving a pass per step. A gradient that stacks clients
also takes ``parameters`` and ``out`` of shape ``(clients, size)`` with
``x_batch`` and ``y_batch`` of shape ``(clients, batch, ...)``, one client per
leading index, where a row of zeros in both (padding) adds nothing."""

Predict = Callable[[Vector, Array], npt.NDArray[np.float32]]
"""``predict(parameters, x)``: class scores ``(n, classes)`` or regression outputs ``(n,)``."""

Prepare = Callable[[Array, Array], tuple[Array, Array]]
"""``prepare(x, y)``: the arrays ``gradient`` trains on, computed once per fit."""

Initialize = Callable[[np.random.Generator], dict[str, npt.NDArray[np.float32]]]


class _Scratch:
    """Epoch buffers a trainer reuses from cohort to cohort, never pickled or copied.

    A round's epoch layout is tens of megabytes. Allocated afresh each round,
    its pages fault in again every round; allocated by NumPy, it is also
    marked for transparent huge pages, whose faults took about 4 ms per 2 MiB
    on the 2-core virtual machine (0.3 s stalls in rounds that grew it, ten
    rounds' arithmetic). So each buffer is a plain anonymous mapping, kept and
    grown by half again when a cohort needs more. Scratch, not state: every
    byte a cohort reads was written for it (its rows, or zeros for padding).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._buffers: dict[str, Array] = {}

    def __reduce__(self) -> tuple[type[_Scratch], tuple[()]]:
        return _Scratch, ()

    def rows(self, name: str, steps: _CohortSteps, like: Array) -> Array:
        """All of an epoch's batch rows, shaped like ``like``'s rows; padding rows zeroed."""
        shape = (steps.batches * steps.batch_size, *like.shape[1:])
        size = prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != like.dtype or buffer.size < size:
            grown = max(size + size // 2, 1)
            mapping = mmap.mmap(-1, grown * like.dtype.itemsize)
            buffer = self._buffers[name] = np.frombuffer(mapping, like.dtype, grown)
        rows = buffer[:size].reshape(shape)
        rows[steps.padding_rows()] = 0
        return rows


@dataclass(frozen=True)
class NumpyTrainer:
    """A :class:`~fedwarden.models.trainer.Trainer` built from plain NumPy functions.

    ``task`` decides the metrics: ``"classification"`` reports cross-entropy and
    accuracy of ``predict``'s scores, ``"regression"`` the mean squared error.
    ``train_loss`` is the trained model's loss on the client's training data.
    All functions must be picklable (module level) so worker processes can
    receive the trainer. ``stacks_clients`` says ``gradient`` takes stacks of
    clients (see :data:`Gradient`); then :meth:`fit_cohort` trains many
    clients in one pass and :meth:`fit` is its one-client case, so a client's
    update is the same bits whichever clients it trains beside.
    """

    param_spec: ParamSpec
    initialize: Initialize
    gradient: Gradient
    predict: Predict
    prepare: Prepare | None = None
    task: Literal["classification", "regression"] = "classification"
    stacks_clients: bool = False
    _scratch: _Scratch = field(default_factory=_Scratch, init=False, repr=False, compare=False)

    @property
    def spec(self) -> ParamSpec:
        """Layout of the parameters in the flat vector."""
        return self.param_spec

    def initial_vector(self, seed: int) -> Vector:
        """Parameters from ``initialize``, flattened; deterministic in ``seed``."""
        return self.param_spec.flatten(self.initialize(np.random.default_rng(seed)))

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Minibatch SGD from ``vector`` for ``train.local_epochs`` epochs."""
        if self.stacks_clients:
            return self.fit_cohort(vector, [client], train)[0]
        weights = vector.copy()
        gradient = self.param_spec.zeros()
        x, y = client.data.x_train, client.data.y_train
        x_train, y_train = self._training_arrays(client)
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

    def fit_cohort(
        self, vector: Vector, clients: Sequence[ClientContext], train: TrainConfig
    ) -> list[FitResult]:
        """:meth:`fit` for every client in ``clients``, one stacked gradient call per step.

        Each client visits its examples in its own :func:`epoch_order` and takes
        exactly the steps :meth:`fit` would, its last batch padded with zero
        rows. Clients are stacked largest first, so those with an ``s``-th batch
        are a prefix of the stack and a step touches no finished client. An
        epoch's batches are laid out step by step in one array, so a step reads
        one contiguous block; ``prepare`` runs once per client.

        Raises:
            ConfigError: if ``gradient`` does not take stacks of clients.
        """
        if not self.stacks_clients:
            raise ConfigError(
                "this NumpyTrainer's gradient takes one client's batch; train clients with "
                "fit, or set stacks_clients=True for a gradient that takes stacks of clients"
            )
        if not clients:
            return []
        sizes = np.array([len(client.data.y_train) for client in clients], dtype=np.intp)
        stack = np.argsort(-sizes, kind="stable")
        steps = _CohortSteps(sizes[stack], train)
        prepared = [self._training_arrays(clients[index]) for index in stack]
        with self._scratch.lock:
            x_rows = self._scratch.rows("x", steps, prepared[0][0])
            y_rows = self._scratch.rows("y", steps, prepared[0][1])
            return self._train_stack(vector, clients, train, stack, steps, prepared, x_rows, y_rows)

    def _train_stack(
        self,
        vector: Vector,
        clients: Sequence[ClientContext],
        train: TrainConfig,
        stack: npt.NDArray[np.intp],
        steps: _CohortSteps,
        prepared: list[tuple[Array, Array]],
        x_rows: Array,
        y_rows: Array,
    ) -> list[FitResult]:
        """SGD for the stacked clients, their epochs laid out in ``x_rows`` and ``y_rows``."""
        x_epoch = x_rows.reshape(steps.batches, steps.batch_size, *x_rows.shape[1:])
        y_epoch = y_rows.reshape(steps.batches, steps.batch_size, *y_rows.shape[1:])
        weights = np.repeat(vector[None, :], len(clients), axis=0)
        correction = self._stacked_correction([clients[index] for index in stack], train)
        gradient = np.empty_like(weights)
        for _ in range(train.local_epochs):
            for position, (index, (x, y)) in enumerate(zip(stack, prepared, strict=True)):
                rows = np.empty(len(y), dtype=np.intp)
                rows[epoch_order(len(y), clients[index].rng)] = steps.rows_of(position)
                x_rows[rows], y_rows[rows] = x, y
            for step, (active, first) in enumerate(zip(steps.active, steps.first, strict=True)):
                out = gradient[:active]
                self.gradient(
                    weights[:active],
                    x_epoch[first : first + active],
                    y_epoch[first : first + active],
                    out,
                )
                steps.scale(out, step, weights[:active], vector)
                if correction is not None:
                    out += correction[:active]
                weights[:active] -= out
        losses = self._losses(weights, [clients[index].data for index in stack])
        results: list[FitResult] = [FitResult(vector, 0, {})] * len(clients)
        for position, index in enumerate(stack):
            update = weights[position] - vector
            metrics = {"train_loss": float(losses[position])}
            results[index] = FitResult(update, int(steps.sizes[position]), metrics)
        return results

    def _stacked_correction(
        self, clients: Sequence[ClientContext], train: TrainConfig
    ) -> npt.NDArray[np.float32] | None:
        """The clients' gradient corrections times the learning rate, stacked (or None)."""
        if all(client.gradient_correction is None for client in clients):
            return None
        corrections = [
            self.param_spec.zeros()
            if client.gradient_correction is None
            else client.gradient_correction
            for client in clients
        ]
        return np.float32(train.learning_rate) * np.stack(corrections)

    def _losses(
        self, weights: npt.NDArray[np.float32], data: Sequence[ClientData]
    ) -> npt.NDArray[np.float64]:
        """Each client's loss at its row of ``weights`` on its training data (0: it has none)."""
        outputs = np.concatenate(
            [self.predict(row, client.x_train) for row, client in zip(weights, data, strict=True)]
        )
        sizes = np.array([client.num_train for client in data], dtype=np.intp)
        totals = np.zeros(len(sizes))
        if len(outputs):
            nonempty = sizes > 0
            starts = np.cumsum(sizes) - sizes
            labels = np.concatenate([client.y_train for client in data])
            row_losses = self._row_losses(outputs, labels)
            totals[nonempty] = np.add.reduceat(row_losses, starts[nonempty])
        return totals / np.maximum(sizes, 1)

    def _training_arrays(self, client: ClientContext) -> tuple[Array, Array]:
        """The client's training arrays, through ``prepare`` if the model has one."""
        x, y = client.data.x_train, client.data.y_train
        return (x, y) if self.prepare is None else self.prepare(x, y)

    def evaluate(self, vector: Vector, x: Array, y: Array) -> Metrics:
        """Cross-entropy and accuracy (classification) or MSE (regression) on ``(x, y)``."""
        outputs = self.predict(vector, x)
        if self.task == "regression":
            return {"loss": float(self._row_losses(outputs, y).mean())}
        return classification_metrics(outputs, y)

    def _row_losses(self, outputs: npt.NDArray[np.float32], y: Array) -> npt.NDArray[np.floating]:
        """Each example's loss: cross-entropy (classification) or squared error (regression)."""
        if self.task == "regression":
            return np.asarray((outputs - y) ** 2)
        return cross_entropies(outputs, y)


def cross_entropies(scores: npt.NDArray[np.float32], y: Array) -> npt.NDArray[np.floating]:
    """Each row's cross-entropy of softmax(scores) against its label in ``y``."""
    labels = np.asarray(y, dtype=np.intp)
    by_class = np.ascontiguousarray(scores.T)  # reductions over classes run along rows, 3x faster
    largest = np.maximum.reduce(by_class, axis=0)
    by_class -= largest
    np.exp(by_class, out=by_class)
    log_norm = np.log(np.add.reduce(by_class, axis=0))
    return np.asarray(log_norm - (scores[np.arange(len(labels)), labels] - largest))


def classification_metrics(scores: npt.NDArray[np.float32], y: Array) -> dict[str, float]:
    """Mean cross-entropy of softmax(scores) and accuracy of argmax(scores)."""
    labels = np.asarray(y, dtype=np.intp)
    return {
        "loss": float(cross_entropies(scores, labels).mean()),
        "accuracy": float((scores.argmax(axis=1) == labels).mean()),
    }


class _CohortSteps:
    """The SGD steps of a stack of clients, largest first: who takes each, and its step size.

    ``active[s]`` clients (a prefix of the stack) have an ``s``-th batch. An
    epoch's ``batches`` are laid out step by step: step ``s``'s start at
    ``first[s]``, the ``i``-th client's at ``first[s] + i``. :meth:`scale`
    turns their batches' summed gradients into the steps
    :meth:`NumpyTrainer.fit` takes (mean, proximal term, learning rate), with
    the same float32 factors.
    """

    def __init__(self, sizes: npt.NDArray[np.intp], train: TrainConfig) -> None:
        self.sizes = sizes
        self.batch_size = batch = train.batch_size
        count = -(-int(sizes.max(initial=0)) // batch)
        rows = np.minimum(batch, sizes[:, None] - batch * np.arange(count))
        active = (rows > 0).sum(axis=0)
        self.active = [int(clients) for clients in active]
        self.first = np.cumsum(active) - active
        self.batches = int(active.sum())
        self.mu = np.float32(train.proximal_mu)
        self.learning_rate = np.float32(train.learning_rate)
        numerator = 1.0 if self.mu else train.learning_rate
        self.factors = (numerator / np.maximum(rows, 1)).astype(np.float32)[:, :, None]

    def padding_rows(self) -> npt.NDArray[np.intp]:
        """The rows of the clients' last batches that no example fills."""
        if not self.batches:
            return np.empty(0, dtype=np.intp)
        last = self.first[-(-self.sizes // self.batch_size) - 1] + np.arange(len(self.sizes))
        filled = self.sizes % self.batch_size
        short = (filled > 0) & (self.sizes > 0)
        rows = last[short, None] * self.batch_size + np.arange(self.batch_size)
        padding: npt.NDArray[np.intp] = rows[np.arange(self.batch_size) >= filled[short, None]]
        return padding

    def rows_of(self, position: int) -> npt.NDArray[np.intp]:
        """The rows (of all batches, row by row) that the ``position``-th client's examples fill."""
        size = int(self.sizes[position])
        own = self.first[: -(-size // self.batch_size)] + position
        rows: npt.NDArray[np.intp] = own[:, None] * self.batch_size + np.arange(self.batch_size)
        return rows.ravel()[:size]

    def scale(
        self,
        out: npt.NDArray[np.float32],
        step: int,
        weights: npt.NDArray[np.float32],
        start: Vector,
    ) -> None:
        """Turn the summed gradients ``out`` at ``step`` of clients at ``weights`` into steps."""
        out *= self.factors[: len(out), step]
        if self.mu:
            out += self.mu * (weights - start)
            out *= self.learning_rate


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
        """``x^T (softmax(x W) - y)`` for the matrix ``W = [weight; bias]``, or for a stack of them.

        Leading axes of ``parameters`` (and of ``x``, ``y``, ``out``) index
        clients; a padding row of zeros in ``x`` adds nothing.
        """
        matrix = (self.num_features + 1, self.num_classes)
        weights = parameters.reshape(*parameters.shape[:-1], *matrix)
        # Scores as classes x batch: the softmax's reductions over classes run along rows.
        by_class = weights.mT @ x.mT
        by_class -= np.maximum.reduce(by_class, axis=-2, keepdims=True)
        np.exp(by_class, out=by_class)
        by_class /= np.add.reduce(by_class, axis=-2, keepdims=True)
        residual = by_class.mT
        residual -= y
        np.matmul(x.mT, residual, out=out.reshape(weights.shape))

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
        stacks_clients=True,
    )
